import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ObjectExistsError, ObjectNotFoundError, StorageError } from '../../core/errors';
import { AzureTarget, blockSizeAt, chooseBlockSize } from '../../core/storage/azure';
import { FileTarget } from '../../core/storage/file';
import { GcsTarget } from '../../core/storage/gcs';
import { ArchivedObjectError, S3Target } from '../../core/storage/s3';
import type { ObjectInfo, StorageTarget } from '../../core/storage/target';
import { type AzuriteServer, startAzurite } from '../helpers/azurite';
import { startFaultProxy } from '../helpers/fault-proxy';
import { type GcsStandIn, startGcsStandIn } from '../helpers/gcs-server';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';

const MiB = 1024 * 1024;

/** One backend under test: how to make a target, and how to look behind it for leftovers. */
interface Backend {
  readonly name: 'file' | 's3' | 'azure' | 'gcs';
  /**
   * Real S3 lists in UTF-8 byte order ('a-c' before 'a/b'); s3rver walks its directory tree and puts
   * 'a/b' first, so that one ordering case is only asserted where the backend is faithful.
   */
  readonly listsInByteOrder: boolean;
  setUp(): Promise<StorageTarget>;
  tearDown(): Promise<void>;
  /** Temp files or other partial state a failed put must not leave behind. */
  leftovers(): Promise<string[]>;
}

function fileBackend(): Backend {
  let root = '';
  return {
    name: 'file',
    listsInByteOrder: true,
    async setUp() {
      root = await mkdtemp(join(tmpdir(), 'pgvault-file-target-'));
      return new FileTarget(root);
    },
    async tearDown() {
      await rm(root, { recursive: true, force: true });
    },
    async leftovers() {
      const names = await readdir(root, { recursive: true });
      return names.filter((name) => name.includes('.tmp-'));
    },
  };
}

function s3Backend(): Backend {
  let server: S3TestServer | undefined;
  return {
    name: 's3',
    listsInByteOrder: false,
    async setUp() {
      server = await startS3Server();
      return new S3Target({
        bucket: server.bucket,
        // A prefix, so every test also checks that keys are stripped of it.
        prefix: 'vault/ci',
        region: server.region,
        endpoint: server.endpoint,
        credentials: server.credentials,
        // S3's minimum part size, so a 20 MiB stream takes four parts.
        partSize: 5 * MiB,
      });
    },
    async tearDown() {
      await server?.stop();
    },
    async leftovers() {
      // s3rver cannot list multipart uploads (ListMultipartUploads is not implemented).
      return [];
    },
  };
}

function azureBackend(): Backend {
  let server: AzuriteServer | undefined;
  return {
    name: 'azure',
    listsInByteOrder: true,
    async setUp() {
      server = await startAzurite();
      return new AzureTarget({
        container: server.container,
        // A prefix, so every test also checks that names are stripped of it.
        prefix: 'vault/ci',
        endpoint: server.endpoint,
        account: server.account,
        accountKey: server.accountKey,
        // 5 MiB blocks, so a 20 MiB stream takes five staged blocks and a commit.
        blockSize: 5 * MiB,
      });
    },
    async tearDown() {
      await server?.stop();
    },
    async leftovers() {
      // Uncommitted blocks are not objects (never listed, never readable); Azure discards them.
      return [];
    },
  };
}

/**
 * GCS through the real @google-cloud/storage client against the stand-in JSON-API server
 * (test/helpers/gcs-server.ts: no GCS emulator can be installed here), so the client's own resumable
 * upload path runs.
 */
function gcsBackend(): Backend {
  let server: GcsStandIn | undefined;
  return {
    name: 'gcs',
    listsInByteOrder: true,
    async setUp() {
      server = await startGcsStandIn();
      return new GcsTarget({
        bucket: server.bucket,
        // A prefix, so every test also checks that names are stripped of it.
        prefix: 'vault/ci',
        endpoint: server.endpoint,
        // 4 MiB chunks, so a 20 MiB stream takes six requests of one session.
        chunkSize: 4 * MiB,
      });
    },
    async tearDown() {
      await server?.stop();
    },
    async leftovers() {
      // An unfinished upload session is not an object; a failed put cancels its own.
      return server!.openSessions() > 0 ? [`${server!.openSessions()} open upload session(s)`] : [];
    },
  };
}

/** A stream of `size` random bytes in 64 KiB chunks; `sha256()` is the digest of what it produced. */
function randomSource(size: number, failure?: { afterBytes: number; error: Error }) {
  const hash = createHash('sha256');
  async function* produce() {
    let sent = 0;
    while (sent < size) {
      if (failure !== undefined && sent >= failure.afterBytes) throw failure.error;
      const chunk = randomBytes(Math.min(64 * 1024, size - sent));
      hash.update(chunk);
      sent += chunk.length;
      yield chunk;
      // Let the consumer work between chunks, as a real producer (pg_dump) would.
      if (sent % MiB === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    if (failure !== undefined) throw failure.error;
  }
  return { stream: Readable.from(produce(), { objectMode: false }), sha256: () => hash.digest('hex') };
}

async function sha256Of(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function collect(listing: AsyncIterable<ObjectInfo>): Promise<ObjectInfo[]> {
  const found: ObjectInfo[] = [];
  for await (const info of listing) found.push(info);
  return found;
}

async function keysOf(listing: AsyncIterable<ObjectInfo>): Promise<string[]> {
  return (await collect(listing)).map((info) => info.key);
}

/** Runs `work` over `items` with at most `limit` in flight. */
async function inBatches<T>(items: readonly T[], limit: number, work: (item: T) => Promise<unknown>) {
  let next = 0;
  const workers = Array.from({ length: limit }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await work(item);
    }
  });
  await Promise.all(workers);
}

describe.each([fileBackend(), s3Backend(), azureBackend(), gcsBackend()])(
  'storage target contract: $name',
  (backend) => {
    let target: StorageTarget;

    beforeAll(async () => {
      target = await backend.setUp();
    });

    afterAll(async () => {
      await backend.tearDown();
    });

    it('round-trips a multi-MB stream byte for byte', async () => {
      // Prepare
      const source = randomSource(3 * MiB + 12_345);

      // Act
      const { size } = await target.put('roundtrip/small.bin', source.stream, { sizeHint: 3 * MiB });
      const stored = await sha256Of(await target.get('roundtrip/small.bin'));

      // Assess
      expect(size).toBe(3 * MiB + 12_345);
      expect(stored).toBe(source.sha256());
      expect((await target.stat('roundtrip/small.bin'))?.size).toBe(3 * MiB + 12_345);
    });

    it('round-trips a stream larger than one part', async () => {
      // Prepare
      const source = randomSource(20 * MiB + 7);

      // Act
      const { size } = await target.put('roundtrip/large.bin', source.stream);
      const stored = await sha256Of(await target.get('roundtrip/large.bin'));

      // Assess
      expect(size).toBe(20 * MiB + 7);
      expect(stored).toBe(source.sha256());
    });

    it('round-trips an empty stream', async () => {
      // Prepare
      const source = Readable.from([]);

      // Act
      const { size } = await target.put('roundtrip/empty.bin', source);

      // Assess
      expect(size).toBe(0);
      expect(await target.getBytes('roundtrip/empty.bin')).toEqual(Buffer.alloc(0));
    });

    it('stores and reads bytes with putBytes/getBytes, and stat reports size and time', async () => {
      // Prepare
      const manifest = JSON.stringify({ id: 'full-daily-20260212-020000', sizes: [1, 2, 3] });
      const before = Date.now();

      // Act
      await target.putBytes('bytes/manifest.json', manifest);
      await target.putBytes('bytes/raw.bin', Buffer.from([0, 1, 2, 255]));
      const info = await target.stat('bytes/manifest.json');

      // Assess
      expect((await target.getBytes('bytes/manifest.json')).toString('utf8')).toBe(manifest);
      expect(await target.getBytes('bytes/raw.bin')).toEqual(Buffer.from([0, 1, 2, 255]));
      expect(info?.key).toBe('bytes/manifest.json');
      expect(info?.size).toBe(Buffer.byteLength(manifest));
      expect(info?.modified).toBeInstanceOf(Date);
      // Second-granular clocks (S3 Last-Modified) may round down.
      expect(info!.modified.getTime()).toBeGreaterThanOrEqual(before - 2000);
    });

    it('replaces an object put again under the same key', async () => {
      // Prepare
      await target.putBytes('replace/object', 'first');

      // Act
      await target.put('replace/object', Readable.from([Buffer.from('second')]));

      // Assess
      expect((await target.getBytes('replace/object')).toString()).toBe('second');
    });

    it('lists only the keys under a prefix, ascending, including a prefix that stops mid-name', async () => {
      // Prepare
      const keys = [
        'list/c1/full/daily/full-daily-20251231-020000.dump',
        'list/c1/full/daily/full-daily-20260101-020000.dump',
        'list/c1/full/daily/full-daily-20260102-020000.dump',
        'list/c1/full/daily/full-daily-20260102-020000.dump.manifest.json',
        'list/c1/full/weekly/full-weekly-20260104-020000.dump',
        'list/c1/wal/00000001/0000000100000000/000000010000000000000001',
        'list/c1/wal/00000001/0000000100000000/000000010000000000000002',
        'list/c10/full/daily/full-daily-20260101-020000.dump',
      ];
      // '-' sorts before '/': 'a-c' comes before everything under 'a/'.
      const orderKeys = ['list/order/a-c', 'list/order/a/b', 'list/order/a0'];
      await Promise.all([...keys, ...orderKeys].reverse().map((key) => target.putBytes(key, key)));

      // Act
      const all = await collect(target.list('list/c'));
      const ordered = await keysOf(target.list('list/order/'));
      const midName = await keysOf(target.list('list/c1/full/daily/full-daily-2026'));
      const cluster = await keysOf(target.list('list/c1/'));
      const clusterMidName = await keysOf(target.list('list/c1'));
      const nothing = await keysOf(target.list('list/c2/'));

      // Assess
      expect(all.map((info) => info.key)).toEqual(keys);
      if (backend.listsInByteOrder) expect(ordered).toEqual(orderKeys);
      else expect([...ordered].sort()).toEqual([...orderKeys].sort());
      expect(all.every((info) => info.size === Buffer.byteLength(info.key))).toBe(true);
      expect(midName).toEqual([
        'list/c1/full/daily/full-daily-20260101-020000.dump',
        'list/c1/full/daily/full-daily-20260102-020000.dump',
        'list/c1/full/daily/full-daily-20260102-020000.dump.manifest.json',
      ]);
      expect(cluster).toEqual(keys.slice(0, 7));
      expect(clusterMidName).toEqual(keys.slice(0, 8));
      expect(nothing).toEqual([]);
    });

    it('lists more than one page of objects (over 1000)', async () => {
      // Prepare
      const keys = Array.from({ length: 1100 }, (_, i) => `paged/${String(i).padStart(5, '0')}`);
      await inBatches(keys, 16, (key) => target.putBytes(key, 'x'));

      // Act
      const listed = await keysOf(target.list('paged/'));

      // Assess
      expect(listed).toEqual(keys);
    });

    it('rejects get and getBytes of a missing key with ObjectNotFoundError; stat returns undefined', async () => {
      // Act
      const [get, getBytes, stat] = await Promise.allSettled([
        target.get('missing/object'),
        target.getBytes('missing/object'),
        target.stat('missing/object'),
      ]);

      // Assess
      expect(get.status === 'rejected' && get.reason).toBeInstanceOf(ObjectNotFoundError);
      expect(get.status === 'rejected' && get.reason.key).toBe('missing/object');
      expect(getBytes.status === 'rejected' && getBytes.reason).toBeInstanceOf(ObjectNotFoundError);
      expect(stat.status === 'fulfilled' && stat.value).toBeUndefined();
    });

    it('deletes idempotently', async () => {
      // Prepare
      await target.putBytes('delete/object', 'data');

      // Act
      await target.delete('delete/object');
      await target.delete('delete/object');
      await target.delete('delete/never-existed');

      // Assess
      expect(await target.stat('delete/object')).toBeUndefined();
      expect(await keysOf(target.list('delete/'))).toEqual([]);
    });

    it('rejects with the source error and leaves nothing when the source fails within the first part', async () => {
      // Prepare
      const source = randomSource(2 * MiB, {
        afterBytes: MiB,
        error: new Error('pg_dump exited with code 1'),
      });

      // Act
      const put = target.put('failed/small.bin', source.stream);

      // Assess
      await expect(put).rejects.toThrow('pg_dump exited with code 1');
      expect(await target.stat('failed/small.bin')).toBeUndefined();
      expect(await keysOf(target.list('failed/small'))).toEqual([]);
      expect(await backend.leftovers()).toEqual([]);
    });

    it('rejects with the source error and leaves nothing when the source fails after several parts', async () => {
      // Prepare
      const error = new Error('compressor crashed');
      const source = randomSource(30 * MiB, { afterBytes: 12 * MiB, error });

      // Act
      const put = target.put('failed/large.bin', source.stream);

      // Assess
      // On s3rver the multipart abort itself fails (405); the caller must still see the source's error.
      await expect(put).rejects.toBe(error);
      expect(await target.stat('failed/large.bin')).toBeUndefined();
      expect(await backend.leftovers()).toEqual([]);
    });

    it('keeps the previous object when a put over it fails', async () => {
      // Prepare
      await target.putBytes('failed/existing', 'previous');
      const source = randomSource(MiB, { afterBytes: 256 * 1024, error: new Error('source failed') });

      // Act
      const put = target.put('failed/existing', source.stream);

      // Assess
      await expect(put).rejects.toThrow('source failed');
      expect((await target.getBytes('failed/existing')).toString()).toBe('previous');
    });

    it('runs concurrent puts of different keys', async () => {
      // Prepare
      const sources = Array.from({ length: 6 }, (_, i) => ({
        key: `concurrent/${i}.bin`,
        ...randomSource(MiB + i),
      }));

      // Act
      const sizes = await Promise.all(sources.map((s) => target.put(s.key, s.stream)));
      const digests = await Promise.all(sources.map(async (s) => sha256Of(await target.get(s.key))));

      // Assess
      expect(sizes.map((s) => s.size)).toEqual(sources.map((_, i) => MiB + i));
      expect(digests).toEqual(sources.map((s) => s.sha256()));
    });

    it('rejects keys that could escape the root', async () => {
      // Prepare
      const invalidKeys = [
        '',
        '/etc/passwd',
        '../outside',
        'a/../../outside',
        'a//b',
        'a/./b',
        'a\\b',
        'a\0b',
        'dir/',
      ];

      // Act
      const attempts = await Promise.allSettled(
        invalidKeys.flatMap((key) => [
          target.putBytes(key, 'x'),
          target.put(key, Readable.from([Buffer.from('x')])),
          target.get(key),
          target.stat(key),
          target.delete(key),
        ]),
      );
      const [listing] = await Promise.allSettled([collect(target.list('../'))]);

      // Assess
      for (const attempt of attempts) {
        expect(attempt.status).toBe('rejected');
        expect(attempt.status === 'rejected' && attempt.reason).toBeInstanceOf(StorageError);
        expect(attempt.status === 'rejected' && attempt.reason.message).toMatch(/^invalid key /);
      }
      expect(listing.status === 'rejected' && listing.reason.message).toMatch(/^invalid key prefix /);
    });

    it('passes its probe', async () => {
      // Act
      const probe = target.probe('c1');

      // Assess
      await expect(probe).resolves.toBeUndefined();
      expect((await keysOf(target.list(''))).filter((key) => key.includes('probe'))).toEqual([]);
    });
  },
);

describe('S3 target failures', () => {
  let server: S3TestServer;

  beforeAll(async () => {
    server = await startS3Server();
  });

  afterAll(async () => {
    await server.stop();
  });

  async function closedPort(): Promise<number> {
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as { port: number };
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    return port;
  }

  it('fails fast with one line naming the endpoint when nothing listens there', async () => {
    // Prepare
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    const target = new S3Target({
      bucket: 'any',
      region: 'us-east-1',
      endpoint,
      credentials: server.credentials,
    });
    const started = Date.now();

    // Act
    const [put, probe] = await Promise.allSettled([
      target.put('wal/000000010000000000000001', randomSource(MiB).stream),
      target.probe('c1'),
    ]);

    // Assess
    const expected = `S3 endpoint ${endpoint} cannot be reached (ECONNREFUSED); check S3_ENDPOINT and the network`;
    expect(Date.now() - started).toBeLessThan(5000);
    expect(put.status === 'rejected' && put.reason).toBeInstanceOf(StorageError);
    expect(put.status === 'rejected' && put.reason.message).toBe(expected);
    expect(probe.status === 'rejected' && probe.reason.message).toBe(expected);
  });

  it('gives up on an endpoint that accepts connections but never answers', async () => {
    // Prepare
    const silent = createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const endpoint = `http://127.0.0.1:${(silent.address() as { port: number }).port}`;
    const target = new S3Target({
      bucket: 'any',
      region: 'us-east-1',
      endpoint,
      credentials: server.credentials,
      requestTimeoutMs: 300,
    });
    const started = Date.now();

    try {
      // Act
      const [stat] = await Promise.allSettled([target.stat('wal/000000010000000000000001')]);

      // Assess
      expect(Date.now() - started).toBeLessThan(5000);
      expect(stat.status === 'rejected' && stat.reason.message).toBe(
        `S3 endpoint ${endpoint} did not answer in time: look up wal/000000010000000000000001 in s3://any timed out after 0.3 s without an answer (TimeoutError); check S3_ENDPOINT and the network, or raise S3_REQUEST_TIMEOUT`,
      );
    } finally {
      silent.close();
    }
  });

  it('reports the source error of a failed multipart upload although s3rver refuses the abort', async () => {
    // Prepare
    const { S3Client } = await import('@aws-sdk/client-s3');
    const client = new S3Client({
      region: server.region,
      endpoint: server.endpoint,
      forcePathStyle: true,
      credentials: server.credentials,
    });
    const outcomes: string[] = [];
    client.middlewareStack.add(
      (next, context) => async (args) => {
        try {
          const result = await next(args);
          outcomes.push(`${context.commandName} ok`);
          return result;
        } catch (err) {
          outcomes.push(`${context.commandName} ${(err as Error).name}`);
          throw err;
        }
      },
      { step: 'initialize' },
    );
    const target = new S3Target({ bucket: server.bucket, region: server.region, client, partSize: 5 * MiB });
    const error = new Error('pg_basebackup lost its connection');

    // Act
    const [put] = await Promise.allSettled([
      target.put('base/failed.tar', randomSource(20 * MiB, { afterBytes: 11 * MiB, error }).stream),
    ]);

    // Assess
    expect(put.status === 'rejected' && put.reason).toBe(error);
    expect(outcomes).toContain('CreateMultipartUploadCommand ok');
    expect(outcomes).toContain('UploadPartCommand ok');
    expect(outcomes).toContain('AbortMultipartUploadCommand MethodNotAllowed');
    expect(outcomes).not.toContain('CompleteMultipartUploadCommand ok');
    expect(await target.stat('base/failed.tar')).toBeUndefined();
  });

  it('probes under the cluster prefix it is given, never at the root a cluster-scoped role may not write', async () => {
    // Prepare: every request goes through a proxy that records the keys it touches.
    const proxy = await startFaultProxy(server.endpoint);
    const target = new S3Target({
      bucket: server.bucket,
      prefix: 'pgvault',
      region: server.region,
      endpoint: proxy.endpoint,
      credentials: server.credentials,
    });

    try {
      // Act
      await target.probe('c1');

      // Assess
      const keys = proxy.requests.map((r) => r.key);
      expect(keys.length).toBeGreaterThan(0);
      expect(keys.filter((key) => !key.startsWith('pgvault/c1/'))).toEqual([]);
      expect(await keysOf(target.list(''))).toEqual([]);
    } finally {
      await proxy.stop();
    }
  });

  it('names a missing bucket in its probe', async () => {
    // Prepare
    const target = new S3Target({
      bucket: 'no-such-bucket',
      region: server.region,
      endpoint: server.endpoint,
      credentials: server.credentials,
    });

    // Act
    const probe = target.probe('c1');

    // Assess
    await expect(probe).rejects.toThrow(StorageError);
    await expect(probe).rejects.toThrow(
      'bucket no-such-bucket does not exist or is not accessible (NoSuchBucket); create it or check CLOUD_BUCKET and credentials',
    );
  });

  it('pages through listings with a small page size', async () => {
    // Prepare
    const target = new S3Target({
      bucket: server.bucket,
      region: server.region,
      endpoint: server.endpoint,
      credentials: server.credentials,
      pageSize: 7,
    });
    const keys = Array.from({ length: 30 }, (_, i) => `small-pages/${String(i).padStart(3, '0')}`);
    await Promise.all(keys.map((key) => target.putBytes(key, key)));

    // Act
    const listed = await keysOf(target.list('small-pages/'));

    // Assess
    expect(listed).toEqual(keys);
  });
});

describe('file target failures', () => {
  it('reports an unwritable BACKUP_DIR in one line', async () => {
    // Prepare
    const parent = await mkdtemp(join(tmpdir(), 'pgvault-file-target-'));
    await chmod(parent, 0o500);
    // root ignores permission bits; sysfs refuses new directories even to root.
    const runsAsRoot = process.getuid?.() === 0;
    const root = runsAsRoot ? '/sys/pgvault-probe-test' : join(parent, 'backups');
    const target = new FileTarget(root);

    try {
      // Act
      const [probe] = await Promise.allSettled([target.probe('c1')]);

      // Assess
      const message = probe.status === 'rejected' ? probe.reason.message : 'resolved';
      if (runsAsRoot) {
        expect(message).toMatch(
          /^BACKUP_DIR \/sys\/pgvault-probe-test is not writable \((EACCES|EPERM|EROFS)\); /,
        );
      } else {
        expect(message).toBe(`BACKUP_DIR ${root} is not writable (EACCES); fix its owner or permissions`);
      }
      expect(probe.status === 'rejected' && probe.reason).toBeInstanceOf(StorageError);
    } finally {
      await chmod(parent, 0o700);
      await rm(parent, { recursive: true, force: true });
    }
  });
});

describe('file target create-only puts (PutOptions.ifAbsent)', () => {
  it('refuses a taken key with ObjectExistsError, keeping the other writer’s object and no temp file', async () => {
    // Prepare
    const root = await mkdtemp(join(tmpdir(), 'pgvault-file-ifabsent-'));
    const target = new FileTarget(root);
    await target.putBytes('wal/segment', 'first writer');

    try {
      // Act
      const [put] = await Promise.allSettled([
        target.put('wal/segment', Readable.from([Buffer.from('second writer')]), { ifAbsent: true }),
      ]);

      // Assess
      expect(put.status === 'rejected' && put.reason).toBeInstanceOf(ObjectExistsError);
      expect((await target.getBytes('wal/segment')).toString()).toBe('first writer');
      expect(await readdir(join(root, 'wal'))).toEqual(['segment']);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('lets exactly one of two concurrent writers of one key win, the object whole', async () => {
    // Prepare
    const root = await mkdtemp(join(tmpdir(), 'pgvault-file-ifabsent-'));
    const target = new FileTarget(root);
    const bodies = [randomBytes(MiB), randomBytes(MiB)];

    try {
      // Act
      const puts = await Promise.allSettled(
        bodies.map((body) => target.put('wal/segment', Readable.from([body]), { ifAbsent: true })),
      );

      // Assess
      const won = puts.findIndex((p) => p.status === 'fulfilled');
      expect(puts.filter((p) => p.status === 'fulfilled')).toHaveLength(1);
      const lost = puts[1 - won]!;
      expect(lost.status === 'rejected' && lost.reason).toBeInstanceOf(ObjectExistsError);
      expect((await target.getBytes('wal/segment')).equals(bodies[won]!)).toBe(true);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe('Azure target (Azurite)', () => {
  let server: AzuriteServer;

  beforeAll(async () => {
    server = await startAzurite();
  });

  afterAll(async () => {
    await server.stop();
  });

  function target(options: Partial<ConstructorParameters<typeof AzureTarget>[0]> = {}): AzureTarget {
    return new AzureTarget({
      container: server.container,
      prefix: 'pgvault',
      connectionString: server.connectionString,
      ...options,
    });
  }

  it('chooses blocks so a multi-terabyte stream fits 50,000 blocks, with or without a size hint', () => {
    // Prepare
    const TiB = 1024 * 1024 * MiB;
    const totalOf = (base: number) =>
      Array.from({ length: 50_000 }, (_, i) => blockSizeAt(i, base)).reduce((a, b) => a + b, 0);

    // Act
    const unhinted = chooseBlockSize();
    const tenTiB = chooseBlockSize(10 * TiB);

    // Assess
    expect(unhinted).toBe(8 * MiB);
    expect(totalOf(unhinted)).toBeGreaterThan(2 * TiB);
    expect(tenTiB * 50_000).toBeGreaterThan(10 * TiB);
    expect(tenTiB % MiB).toBe(0);
    expect(chooseBlockSize(100 * MiB)).toBe(8 * MiB);
  });

  it('refuses a create-only put over a taken name with ObjectExistsError and keeps the first object', async () => {
    // Prepare
    const azure = target();
    await azure.putBytes('c1/wal/000000010000000000000001', 'first writer');

    // Act
    const [small, large] = await Promise.allSettled([
      azure.put('c1/wal/000000010000000000000001', Readable.from([Buffer.from('second writer')]), {
        ifAbsent: true,
      }),
      target({ blockSize: MiB }).put('c1/wal/000000010000000000000001', randomSource(3 * MiB).stream, {
        ifAbsent: true,
      }),
    ]);

    // Assess
    expect(small.status === 'rejected' && small.reason).toBeInstanceOf(ObjectExistsError);
    expect(large.status === 'rejected' && large.reason).toBeInstanceOf(ObjectExistsError);
    expect((await azure.getBytes('c1/wal/000000010000000000000001')).toString()).toBe('first writer');
  });

  it('lets exactly one of two concurrent create-only writers of one name win, the object whole', async () => {
    // Prepare
    const azure = target({ blockSize: MiB });
    const bodies = [randomBytes(3 * MiB), randomBytes(3 * MiB)];

    // Act
    const puts = await Promise.allSettled(
      bodies.map((body) =>
        azure.put('c1/wal/000000010000000000000002', Readable.from([body]), { ifAbsent: true }),
      ),
    );

    // Assess
    const won = puts.findIndex((p) => p.status === 'fulfilled');
    expect(puts.filter((p) => p.status === 'fulfilled')).toHaveLength(1);
    const lost = puts[1 - won]!;
    expect(lost.status === 'rejected' && lost.reason).toBeInstanceOf(ObjectExistsError);
    expect((await azure.getBytes('c1/wal/000000010000000000000002')).equals(bodies[won]!)).toBe(true);
  });

  it('shows no object while blocks are staged, only once the block list is committed', async () => {
    // Prepare: a source that pauses after three blocks until the test has looked.
    const azure = target({ blockSize: MiB });
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let staged = 0;
    async function* produce() {
      for (let i = 0; i < 6; i++) {
        yield randomBytes(MiB);
        if (++staged === 4) await gate;
      }
    }

    // Act
    const put = azure.put('c1/base/staged.tar', Readable.from(produce()));
    while (staged < 4) await new Promise((resolve) => setTimeout(resolve, 20));
    await new Promise((resolve) => setTimeout(resolve, 300));
    const during = await azure.stat('c1/base/staged.tar');
    const listedDuring = await keysOf(azure.list('c1/base/'));
    release();
    const { size } = await put;

    // Assess
    expect(during).toBeUndefined();
    expect(listedDuring).toEqual([]);
    expect(size).toBe(6 * MiB);
    expect((await azure.stat('c1/base/staged.tar'))?.size).toBe(6 * MiB);
  });

  it.each([
    ['a block list commit', 3 * MiB, /comp=blocklist/],
    ['a single Put Blob', 64 * 1024, /^(?!.*comp=)/],
  ])(
    'keeps a create-only put whose answer was lost (%s) as stored, not as another writer’s',
    async (_, size, query) => {
      // Prepare: the store commits the blob, the client never hears back and retries into If-None-Match: *.
      const proxy = await startFaultProxy(server.endpoint.replace(/\/devstoreaccount1$/, ''));
      const azure = target({
        connectionString: undefined,
        endpoint: `${proxy.endpoint}/devstoreaccount1`,
        account: server.account,
        accountKey: server.accountKey,
        blockSize: MiB,
        requestTimeoutMs: 5000,
      });
      const key = `c1/wal/lost-answer-${size}`;
      const rule = proxy.addRule({
        method: 'PUT',
        path: new RegExp(key),
        query,
        nth: 1,
        action: { kind: 'lose-response' },
      });
      const source = randomSource(size);

      try {
        // Act
        const put = await azure.put(key, source.stream, { ifAbsent: true });

        // Assess
        expect(proxy.hits(rule)).toBe(1);
        expect(put.size).toBe(size);
        expect(await sha256Of(await azure.get(key))).toBe(source.sha256());
      } finally {
        await proxy.stop();
      }
    },
  );

  it('pages through listings with a small page size', async () => {
    // Prepare
    const azure = target({ pageSize: 7 });
    const keys = Array.from({ length: 30 }, (_, i) => `small-pages/${String(i).padStart(3, '0')}`);
    await Promise.all(keys.map((key) => azure.putBytes(key, key)));

    // Act
    const listed = await keysOf(azure.list('small-pages/'));

    // Assess
    expect(listed).toEqual(keys);
  });

  it('authenticates with the account key and with a SAS token too', async () => {
    // Prepare
    const {
      generateAccountSASQueryParameters,
      AccountSASPermissions,
      AccountSASResourceTypes,
      AccountSASServices,
      StorageSharedKeyCredential,
    } = await import('@azure/storage-blob');
    const sas = generateAccountSASQueryParameters(
      {
        expiresOn: new Date(Date.now() + 3600_000),
        permissions: AccountSASPermissions.parse('rwdlc'),
        resourceTypes: AccountSASResourceTypes.parse('sco').toString(),
        services: AccountSASServices.parse('b').toString(),
      },
      new StorageSharedKeyCredential(server.account, server.accountKey),
    ).toString();
    const byKey = target({
      connectionString: undefined,
      endpoint: server.endpoint,
      account: server.account,
      accountKey: server.accountKey,
    });
    const bySas = target({
      connectionString: undefined,
      endpoint: server.endpoint,
      account: server.account,
      sasToken: sas,
    });

    // Act
    await byKey.putBytes('auth/key', 'by key');
    await bySas.putBytes('auth/sas', 'by sas');

    // Assess
    expect((await bySas.getBytes('auth/key')).toString()).toBe('by key');
    expect((await byKey.getBytes('auth/sas')).toString()).toBe('by sas');
  });

  it('says how to rehydrate a blob in the Archive tier when a read is refused', async () => {
    // Prepare
    const azure = target();
    await azure.putBytes('c1/full/weekly/full-weekly-20260104-020000.app.dump', 'archived');
    const { BlobServiceClient } = await import('@azure/storage-blob');
    await BlobServiceClient.fromConnectionString(server.connectionString)
      .getContainerClient(server.container)
      .getBlockBlobClient('pgvault/c1/full/weekly/full-weekly-20260104-020000.app.dump')
      .setAccessTier('Archive');

    // Act
    const [read] = await Promise.allSettled([
      azure.getBytes('c1/full/weekly/full-weekly-20260104-020000.app.dump'),
    ]);

    // Assess
    expect(read.status === 'rejected' && read.reason).toBeInstanceOf(ArchivedObjectError);
    expect(read.status === 'rejected' && read.reason.message).toBe(
      "object c1/full/weekly/full-weekly-20260104-020000.app.dump in azure://devstoreaccount1/pgvault-test/pgvault is in the Archive tier and cannot be read until it is rehydrated (BlobArchived); start with az storage blob set-tier --account-name devstoreaccount1 --container-name pgvault-test --name pgvault/c1/full/weekly/full-weekly-20260104-020000.app.dump --tier Hot --rehydrate-priority Standard (and the backup's other archived objects) and retry once it is done (up to 15 hours; --rehydrate-priority High: about an hour)",
    );
  });

  it('names a missing container in its probe', async () => {
    // Act
    const probe = target({ container: 'no-such-container' }).probe('c1');

    // Assess
    await expect(probe).rejects.toThrow(StorageError);
    await expect(probe).rejects.toThrow(
      'container no-such-container does not exist (ContainerNotFound); create it (az storage container create --name no-such-container) or check CLOUD_BUCKET',
    );
  });

  it('fails with one line naming the endpoint when nothing listens there, without the key', async () => {
    // Prepare
    const probeServer = createServer();
    await new Promise<void>((resolve) => probeServer.listen(0, '127.0.0.1', resolve));
    const { port } = probeServer.address() as { port: number };
    await new Promise<void>((resolve) => probeServer.close(() => resolve()));
    const endpoint = `http://127.0.0.1:${port}/devstoreaccount1`;
    const azure = target({
      connectionString: undefined,
      endpoint,
      account: server.account,
      accountKey: server.accountKey,
      maxAttempts: 1,
    });

    // Act
    const [put, probe] = await Promise.allSettled([
      azure.put('c1/wal/000000010000000000000001', randomSource(MiB).stream),
      azure.probe('c1'),
    ]);

    // Assess
    expect(put.status === 'rejected' && put.reason).toBeInstanceOf(StorageError);
    expect(put.status === 'rejected' && put.reason.message).toBe(
      `Azure Blob Storage at ${endpoint} cannot be reached (ECONNREFUSED) trying to upload c1/wal/000000010000000000000001 in azure://devstoreaccount1/pgvault-test/pgvault; check AZURE_STORAGE_ACCOUNT (or the connection string's endpoint) and the network`,
    );
    expect(probe.status === 'rejected' && probe.reason.message).toMatch(/cannot be reached \(ECONNREFUSED\)/);
    expect(probe.status === 'rejected' && probe.reason.message).not.toContain(server.accountKey);
  });

  it('gives up on an endpoint that accepts connections but never answers', async () => {
    // Prepare
    const silent = createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const endpoint = `http://127.0.0.1:${(silent.address() as { port: number }).port}/devstoreaccount1`;
    const azure = target({
      connectionString: undefined,
      endpoint,
      account: server.account,
      accountKey: server.accountKey,
      maxAttempts: 1,
      requestTimeoutMs: 300,
    });

    try {
      // Act
      const [stat] = await Promise.allSettled([azure.stat('c1/wal/000000010000000000000001')]);

      // Assess
      expect(stat.status === 'rejected' && stat.reason.message).toBe(
        `Azure Blob Storage at ${endpoint} did not answer in time: look up c1/wal/000000010000000000000001 in azure://devstoreaccount1/pgvault-test/pgvault timed out after 0.3 s (TimeoutError); check the network, or raise S3_REQUEST_TIMEOUT`,
      );
    } finally {
      silent.close();
    }
  });
});
