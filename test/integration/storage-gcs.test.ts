import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { ObjectExistsError, ObjectLockedError, StorageError } from '../../core/errors';
import { lockedDetail } from '../../core/retention/apply';
import { createTargets } from '../../core/storage';
import { GcsTarget, type GcsTargetOptions } from '../../core/storage/gcs';
import { type GcsStandIn, startGcsStandIn } from '../helpers/gcs-server';

/**
 * The GCS target against the stand-in JSON-API server (test/helpers/gcs-server.ts; no GCS emulator can
 * be installed here) through the real @google-cloud/storage client: its resumable upload path, its
 * retries, and what pgvault does when they give up. The stand-in's fault switches play the faults.
 */

const MiB = 1024 * 1024;

function source(size: number) {
  const data = randomBytes(size);
  return { data, stream: () => Readable.from([data.subarray(0, size >> 1), data.subarray(size >> 1)]) };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('GCS target (stand-in server)', () => {
  let server: GcsStandIn;

  beforeAll(async () => {
    server = await startGcsStandIn();
  });

  afterAll(async () => {
    await server.stop();
  });

  beforeEach(() => {
    server.clearFaults();
  });

  function target(options: Partial<GcsTargetOptions> = {}): GcsTarget {
    return new GcsTarget({
      bucket: server.bucket,
      prefix: 'pgvault',
      endpoint: server.endpoint,
      chunkSize: MiB,
      ...options,
    });
  }

  it('resumes an upload whose connection is reset mid-chunk, and stores the whole object', async () => {
    // Prepare: the second chunk's first attempt is cut after 100 KiB.
    const gcs = target();
    const fault = server.addFault({
      request: 'chunk',
      name: /reset-once/,
      times: 1,
      action: { kind: 'reset', afterBytes: 100 * 1024 },
    });
    const body = source(3 * MiB + 5);

    // Act
    const put = await gcs.put('c1/full/daily/reset-once.dump', body.stream());

    // Assess
    expect(server.hits(fault)).toBe(1);
    expect(put.size).toBe(3 * MiB + 5);
    expect(sha(await gcs.getBytes('c1/full/daily/reset-once.dump'))).toBe(sha(body.data));
  });

  it('streams: never holds more than about two chunks of a source far larger than a chunk', async () => {
    // Prepare: 24 chunks of a generated stream (64 KiB pieces, produced only when asked for); at each
    // piece, how far the source is ahead of what the stand-in has received. A target that buffered
    // the object (or let the client queue it) reads the source far ahead of the server.
    const gcs = target({ chunkSize: MiB });
    const size = 24 * MiB;
    const piece = 64 * 1024;
    const hash = createHash('sha256');
    let produced = 0;
    let maxAhead = 0;
    const generated = new Readable({
      read() {
        if (produced >= size) {
          this.push(null);
          return;
        }
        maxAhead = Math.max(maxAhead, produced - server.receivedBytes());
        const chunk = randomBytes(piece);
        hash.update(chunk);
        produced += piece;
        this.push(chunk);
      },
    });
    const receivedBefore = server.receivedBytes();
    maxAhead = 0;

    // Act
    const put = await gcs.put('c1/full/daily/streamed.dump', generated);

    // Assert: all stored, and never more than two chunks (and a few pieces in the pipes) in flight.
    expect(put.size).toBe(size);
    expect(server.receivedBytes() - receivedBefore).toBe(size);
    expect(sha(server.objects.get('pgvault/c1/full/daily/streamed.dump')!.data)).toBe(hash.digest('hex'));
    expect(maxAhead).toBeLessThanOrEqual(2 * MiB + 8 * piece);
  });

  it('retries 503 answers and then stores a good object', async () => {
    // Prepare
    const gcs = target();
    const fault = server.addFault({
      request: 'chunk',
      name: /busy/,
      times: 2,
      action: { kind: 'status', status: 503 },
    });
    const body = source(2 * MiB + 77);

    // Act
    await gcs.put('c1/full/daily/busy.dump', body.stream());

    // Assess
    expect(server.hits(fault)).toBe(2);
    expect(sha(await gcs.getBytes('c1/full/daily/busy.dump'))).toBe(sha(body.data));
  });

  it('gives up on resets that do not stop: cancels the session, leaves nothing, names the dropped connection', async () => {
    // Prepare
    const gcs = target({ maxAttempts: 2 });
    server.addFault({
      request: 'chunk',
      name: /always-reset/,
      action: { kind: 'reset', afterBytes: 64 * 1024 },
    });
    const cancelledBefore = server.cancelledSessions();

    // Act
    const [put] = await Promise.allSettled([
      gcs.put('c1/full/daily/always-reset.dump', source(3 * MiB).stream()),
    ]);

    // Assess
    expect(put.status === 'rejected' && put.reason).toBeInstanceOf(StorageError);
    expect(put.status === 'rejected' && put.reason.message).toBe(
      `Google Cloud Storage at ${server.endpoint} dropped the connection (ECONNRESET) trying to upload c1/full/daily/always-reset.dump in gs://${server.bucket}/pgvault; check STORAGE_EMULATOR_HOST and the network`,
    );
    expect(server.objects.has('pgvault/c1/full/daily/always-reset.dump')).toBe(false);
    expect(await gcs.stat('c1/full/daily/always-reset.dump')).toBeUndefined();
    expect(server.cancelledSessions()).toBe(cancelledBefore + 1);
    expect(server.openSessions()).toBe(0);
  });

  it('gives up on 500 answers that do not stop, with the status and the server message in one line', async () => {
    // Prepare
    const gcs = target({ maxAttempts: 2 });
    server.addFault({ request: 'chunk', name: /always-500/, action: { kind: 'status', status: 500 } });

    // Act
    const [put] = await Promise.allSettled([
      gcs.put('c1/full/daily/always-500.dump', source(2 * MiB).stream()),
    ]);

    // Assess
    const message = put.status === 'rejected' ? (put.reason as Error).message : '';
    expect(message).toBe(
      'GCS could not upload c1/full/daily/always-500.dump in gs://pgvault-test/pgvault (500: injected by the GCS stand-in (500); gave up after its retries)',
    );
    expect(await gcs.stat('c1/full/daily/always-500.dump')).toBeUndefined();
    expect(server.openSessions()).toBe(0);
  });

  it('cuts an upload the server never answers after the time limit, and leaves nothing', async () => {
    // Prepare
    const gcs = target({ requestTimeoutMs: 500, maxAttempts: 1 });
    server.addFault({ request: 'chunk', name: /stalled/, action: { kind: 'stall' } });

    // Act
    const [put] = await Promise.allSettled([gcs.put('c1/full/daily/stalled.dump', source(2 * MiB).stream())]);

    // Assess
    expect(put.status === 'rejected' && put.reason.message).toBe(
      `Google Cloud Storage at ${server.endpoint} did not answer in time: upload c1/full/daily/stalled.dump in gs://${server.bucket}/pgvault timed out after 0.5 s (TimeoutError); check STORAGE_EMULATOR_HOST and the network, or raise S3_REQUEST_TIMEOUT`,
    );
    expect(await gcs.stat('c1/full/daily/stalled.dump')).toBeUndefined();
    expect(server.openSessions()).toBe(0);
  });

  it('cuts a metadata request the server never answers', async () => {
    // Prepare
    const gcs = target({ requestTimeoutMs: 400, maxAttempts: 1 });
    server.addFault({ method: 'GET', name: /never/, action: { kind: 'stall' } });

    // Act
    const [stat] = await Promise.allSettled([gcs.stat('c1/never')]);

    // Assess
    expect(stat.status === 'rejected' && stat.reason.message).toMatch(
      /^Google Cloud Storage at .* did not answer in time: look up c1\/never in gs:\/\/pgvault-test\/pgvault timed out after 0\.4 s/,
    );
  });

  it('refuses a create-only put over another writer object, and leaves that object', async () => {
    // Prepare
    const gcs = target();
    await gcs.putBytes('c1/wal/000000010000000000000001', 'first writer');

    // Act
    const [second] = await Promise.allSettled([
      gcs.put('c1/wal/000000010000000000000001', Readable.from([Buffer.from('second')]), { ifAbsent: true }),
    ]);

    // Assess
    expect(second.status === 'rejected' && second.reason).toBeInstanceOf(ObjectExistsError);
    expect((await gcs.getBytes('c1/wal/000000010000000000000001')).toString()).toBe('first writer');
  });

  it('writes each object in the storage class of its lifecycle kind, and reads an ARCHIVE object at once', async () => {
    // Prepare
    const gcs = target({ storageClass: { default: 'STANDARD', archive: 'ARCHIVE', expire: 'NEARLINE' } });

    // Act
    await gcs.putBytes('c1/full/weekly/full-weekly-20260104-020000.dump', 'weekly');
    await gcs.putBytes('c1/full/weekly/full-weekly-20260104-020000.dump.manifest.json', '{}');
    await gcs.put(
      'c1/wal/00000001/0000000100000000/000000010000000000000002',
      Readable.from([Buffer.from('wal')]),
    );
    await gcs.putBytes('c1/manual/manual-1.dump', 'manual');

    // Assess
    const cls = (k: string) => server.objects.get(`pgvault/${k}`)?.storageClass;
    expect(cls('c1/full/weekly/full-weekly-20260104-020000.dump')).toBe('ARCHIVE');
    expect(cls('c1/full/weekly/full-weekly-20260104-020000.dump.manifest.json')).toBe('STANDARD');
    expect(cls('c1/wal/00000001/0000000100000000/000000010000000000000002')).toBe('NEARLINE');
    expect(cls('c1/manual/manual-1.dump')).toBe('STANDARD');
    // GCS's ARCHIVE class is online: no restore step (unlike S3 Glacier or Azure's Archive tier).
    expect((await gcs.getBytes('c1/full/weekly/full-weekly-20260104-020000.dump')).toString()).toBe('weekly');
  });

  it('locks each object until its planned GFS expiry (config to object), and a refused delete reads as still locked', async () => {
    // Prepare: the config a user writes, through createTargets.
    const [gcs] = createTargets(
      parseConfig({
        BACKUP_DIR: '/tmp/pgvault-gcs-unused',
        LOCAL_COPY: 'false',
        CLOUD_PROVIDER: 'gcs',
        CLOUD_BUCKET: server.bucket,
        CLOUD_PREFIX: 'locked',
        STORAGE_EMULATOR_HOST: server.endpoint,
        OBJECT_LOCK_MODE: 'governance',
        RETENTION_DAYS: '7',
        RETENTION_WAL_DAYS: '3',
      }),
    ) as [GcsTarget];
    const before = Date.now();

    // Act
    await gcs.putBytes('c1/full/daily/full-daily-20991231-020000.dump', 'daily');
    await gcs.putBytes('c1/wal/00000001/0000000100000000/000000010000000000000003', 'wal');
    await gcs.putBytes('c1/reports/r.json', '{}');
    const [deletion] = await Promise.allSettled([
      gcs.delete('c1/full/daily/full-daily-20991231-020000.dump'),
    ]);

    // Assess
    const daily = server.objects.get('locked/c1/full/daily/full-daily-20991231-020000.dump');
    expect(daily?.retention).toEqual({ mode: 'Unlocked', retainUntilTime: '2100-01-07T00:00:00.000Z' });
    const wal = server.objects.get('locked/c1/wal/00000001/0000000100000000/000000010000000000000003');
    const walUntil = new Date(wal!.retention!.retainUntilTime).getTime();
    expect(walUntil).toBeGreaterThanOrEqual(before + 3 * 86_400_000);
    expect(walUntil).toBeLessThanOrEqual(Date.now() + 3 * 86_400_000);
    expect(server.objects.get('locked/c1/reports/r.json')?.retention).toBeUndefined();
    expect(deletion.status === 'rejected' && deletion.reason).toBeInstanceOf(ObjectLockedError);
    expect(deletion.status === 'rejected' && lockedDetail(gcs, deletion.reason)).toBe(
      'locked until 2100-01-07T00:00:00.000Z',
    );
    expect(server.objects.has('locked/c1/full/daily/full-daily-20991231-020000.dump')).toBe(true);
  });

  it('is a repository of its own beside a file one (REPO2_TYPE=gcs with REPO2_STORAGE_EMULATOR_HOST)', async () => {
    // Prepare
    const targets = createTargets(
      parseConfig({
        CLUSTER_NAME: 'main',
        REPO1_TYPE: 'file',
        REPO1_PATH: '/tmp/pgvault-gcs-repo1-unused',
        REPO2_TYPE: 'gcs',
        REPO2_BUCKET: server.bucket,
        REPO2_PREFIX: 'repo2',
        REPO2_STORAGE_EMULATOR_HOST: server.endpoint,
        REPO2_GCS_STORAGE_CLASS: 'NEARLINE',
      }),
    );

    // Act
    await targets[1]!.putBytes('main/config/config-20260101-000000.tar', 'config');

    // Assess
    expect(targets.map((t) => t.location)).toEqual([
      'file:///tmp/pgvault-gcs-repo1-unused',
      `gs://${server.bucket}/repo2`,
    ]);
    expect(server.objects.get('repo2/main/config/config-20260101-000000.tar')?.storageClass).toBe('NEARLINE');
  });

  it('names a missing bucket', async () => {
    // Prepare
    const gcs = new GcsTarget({ bucket: 'no-such-bucket', endpoint: server.endpoint });

    // Act
    const probe = gcs.probe('c1');

    // Assess
    await expect(probe).rejects.toThrow(
      'bucket no-such-bucket does not exist (404 notFound); create it (gcloud storage buckets create gs://no-such-bucket) or check CLOUD_BUCKET',
    );
  });
});
