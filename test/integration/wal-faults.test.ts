import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Target } from '../../core/storage/s3';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { BIN, CLUSTER_NAME, readSegment, sha256, startWalFixture, type WalFixture } from './wal-fixture';

/**
 * WAL archiving (and a base-less `backup full`) into s3rver behind a fault-injecting proxy: lost
 * answers with two archivers on one segment, a truncated object left by a cut PUT, a conflicting
 * object, stalled requests. PostgreSQL's own archiver is off (archive_command unset): the tests run
 * `backup wal` themselves, as archive_command would, on segments waiting in pg_wal.
 */
let s3: S3TestServer;
let proxy: FaultProxy;
let fx: WalFixture;
/** The bucket straight, not through the proxy: what a user would look at. */
let bucket: S3Target;
const PREFIX = 'faults';
let env: Record<string, string>;

beforeAll(async () => {
  s3 = await startS3Server('pgvault-walfaults');
  proxy = await startFaultProxy(s3.endpoint);
  env = {
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  };
  fx = await startWalFixture(
    {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      CLOUD_PREFIX: PREFIX,
      S3_ENDPOINT: proxy.endpoint,
      LOCAL_COPY: 'false',
      S3_REQUEST_TIMEOUT: '2',
      S3_MAX_ATTEMPTS: '2',
    },
    { archiveCommand: '' },
  );
  bucket = new S3Target({
    bucket: s3.bucket,
    prefix: PREFIX,
    region: s3.region,
    endpoint: s3.endpoint,
    credentials: s3.credentials,
  });
});

afterAll(async () => {
  await fx?.stop();
  await proxy?.stop();
  await s3?.stop();
});

/** Runs the CLI without blocking this process (the proxy lives in it); killed after `limitMs`. */
function run(
  args: string[],
  extraEnv: Record<string, string> = {},
  limitMs = 90_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(BIN, ['--config', fx.configFile, ...args], {
      cwd: fx.cluster.dataDir,
      env: { PATH: process.env.PATH ?? '', HOME: '/root', ...env, ...extraEnv },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    const timer = setTimeout(() => {
      stderr += `\n[test] killed after ${limitMs} ms\n`;
      child.kill('SIGKILL');
    }, limitMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function objectKey(name: string): string {
  return `${CLUSTER_NAME}/wal/00000001/${name.slice(0, 16)}/${name}.zst.enc`;
}

/** What `restore wal` gives back for a segment (as restore_command would), or its failure. */
async function restored(name: string): Promise<{ code: number | null; sha256?: string; stderr: string }> {
  const target = `${fx.work}/restored-${name}`;
  const r = await run(['restore', 'wal', name, target]);
  if (r.code !== 0) return { code: r.code, stderr: r.stderr };
  const { readFileSync, rmSync } = await import('node:fs');
  const digest = sha256(readFileSync(target));
  rmSync(target);
  return { code: 0, sha256: digest, stderr: r.stderr };
}

describe('WAL archiving into a faulty S3', () => {
  it('keeps the object another archiver acknowledged when a second archiver of the same segment loses its answer', async () => {
    // Prepare: every PUT of this segment is stored by the server, but its answer is lost; the first
    // answer is held back until the other archiver has finished.
    const [name] = await fx.makeSegments(1);
    let releaseFirst!: () => void;
    const firstHeld = new Promise<void>((resolve) => {
      releaseFirst = resolve;
    });
    const rule = proxy.addRule({
      method: 'PUT',
      path: new RegExp(`/${name}\\.`),
      action: { kind: 'lose-response', answer: 'reset', after: firstHeld },
    });

    // Act: archiver A writes (stored, answer held); archiver B finds the object and acknowledges it;
    // then A's answer is lost.
    const a = run(['backup', 'wal', `pg_wal/${name}`]);
    await proxy.waitFor(rule);
    const b = await run(['backup', 'wal', `pg_wal/${name}`]);
    releaseFirst();
    const aResult = await a;
    proxy.clearRules();

    // Assess: B told PostgreSQL the segment is archived, so it must still be there and decode to it.
    expect(b.code, b.stderr).toBe(0);
    expect(aResult.stderr).not.toMatch(/killed after/);
    // A's object is there and is A's own (its write id): only the answer was lost, so A succeeded too.
    expect(aResult.code, aResult.stderr).toBe(0);
    expect(await bucket.stat(objectKey(name!))).toBeDefined();
    const back = await restored(name!);
    expect(back.code, back.stderr).toBe(0);
    expect(back.sha256).toBe(sha256(readSegment(fx.cluster, name!)));
  });

  it('replaces a truncated object (a cut PUT kept by the store) with the intact local segment, and says so', async () => {
    // Prepare: the segment archived, then its object cut short, as a store that keeps a reset PUT's
    // first bytes leaves it.
    const [name] = await fx.makeSegments(1);
    const first = await run(['backup', 'wal', `pg_wal/${name}`]);
    expect(first.code, first.stderr).toBe(0);
    const whole = await bucket.getBytes(objectKey(name!));
    await bucket.putBytes(objectKey(name!), whole.subarray(0, Math.floor(whole.length / 2)));

    // Act
    const again = await run(['backup', 'wal', `pg_wal/${name}`, '--json']);

    // Assess
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/warning: .*cannot be decoded.*replac/i);
    expect(JSON.parse(again.stdout).replacedIn).toEqual([`s3://${s3.bucket}/${PREFIX}`]);
    const back = await restored(name!);
    expect(back.code, back.stderr).toBe(0);
    expect(back.sha256).toBe(sha256(readSegment(fx.cluster, name!)));
  });

  it('refuses, and keeps, an undecodable object that nothing proves a damaged copy (as a wrong key would see it)', async () => {
    // Prepare: an encrypted-looking object whose ciphertext decrypts to noise under the archive's key.
    const [name] = await fx.makeSegments(1);
    const { randomBytes } = await import('node:crypto');
    const noise = Buffer.concat([Buffer.from('Salted__'), randomBytes(8), randomBytes(64 * 1024)]);
    await bucket.putBytes(objectKey(name!), noise);

    // Act
    const r = await run(['backup', 'wal', `pg_wal/${name}`]);

    // Assess
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/cannot be decoded .*nothing proves it a damaged copy/);
    expect(Buffer.compare(await bucket.getBytes(objectKey(name!)), noise)).toBe(0);
  });

  it('still refuses, and keeps, an object that decodes but holds other content', async () => {
    // Prepare: under the new segment's name, the (valid) object of another segment.
    const [other, name] = await fx.makeSegments(2);
    const archived = await run(['backup', 'wal', `pg_wal/${other}`]);
    expect(archived.code, archived.stderr).toBe(0);
    const foreign = await bucket.getBytes(objectKey(other!));
    await bucket.putBytes(objectKey(name!), foreign);

    // Act
    const r = await run(['backup', 'wal', `pg_wal/${name}`]);

    // Assess
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/different content/);
    expect(Buffer.compare(await bucket.getBytes(objectKey(name!)), foreign)).toBe(0);
  });

  it('retries a WAL PUT answered 503, and a PUT cut after 100 kB fails the call with nothing kept until the next call', async () => {
    // Prepare
    const [busy, cut] = await fx.makeSegments(2);
    proxy.addRule({
      method: 'PUT',
      path: new RegExp(`/${busy}\\.`),
      nth: 1,
      action: { kind: 'status', status: 503 },
    });
    proxy.addRule({
      method: 'PUT',
      path: new RegExp(`/${cut}\\.`),
      action: { kind: 'reset-request', afterBytes: 100 * 1024 },
    });

    // Act
    const retried = await run(['backup', 'wal', `pg_wal/${busy}`]);
    const failed = await run(['backup', 'wal', `pg_wal/${cut}`]);
    const leftAfterFailure = await bucket.stat(objectKey(cut!));
    proxy.clearRules();
    const again = await run(['backup', 'wal', `pg_wal/${cut}`]);

    // Assess
    expect(retried.code, retried.stderr).toBe(0);
    // Every WAL PUT carries a checksum of its body: S3 refuses a body cut short instead of storing it.
    const walPuts = proxy.requests.filter((q) => q.method === 'PUT' && q.path.includes(busy!));
    expect(walPuts.length).toBeGreaterThan(0);
    for (const put of walPuts) expect(put.headers['x-amz-checksum-crc32']).toBeTruthy();
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toMatch(/dropped the connection \(ECONNRESET\) trying to upload/);
    expect(failed.stderr).toContain(cut);
    expect(leftAfterFailure).toBeUndefined();
    expect(again.code, again.stderr).toBe(0);
    for (const name of [busy!, cut!]) {
      const back = await restored(name);
      expect(back.code, back.stderr).toBe(0);
      expect(back.sha256).toBe(sha256(readSegment(fx.cluster, name)));
    }
  });

  it('fails backup wal with a timeout naming the object when the WAL PUT stalls', async () => {
    // Prepare
    const [name] = await fx.makeSegments(1);
    proxy.addRule({ method: 'PUT', path: new RegExp(`/${name}\\.`), action: { kind: 'stall' } });

    // Act
    const r = await run(['backup', 'wal', `pg_wal/${name}`]);
    proxy.clearRules();

    // Assess
    expect(r.stderr).not.toMatch(/killed after/);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/timed out/);
    expect(r.stderr).toContain(name);
    expect(await bucket.stat(objectKey(name!))).toBeUndefined();
  });

  it('fails backup full with a timeout, leaving no manifest, when an UploadPart stalls', async () => {
    // Prepare: a database whose dump is larger than one part (8 MiB), uncompressed.
    await fx.cluster.query('CREATE DATABASE big');
    await fx.cluster.query(
      'CREATE TABLE t AS SELECT g, md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) AS h FROM generate_series(1, 200000) g',
      [],
      'big',
    );
    proxy.addRule({
      method: 'PUT',
      path: /\/full\//,
      query: /partNumber=/,
      action: { kind: 'stall' },
    });

    // Act
    const r = await run(['backup', 'full', 'daily', '--database', 'big'], {
      COMPRESSION: 'none',
      PGHOST: fx.cluster.host,
      PGPORT: String(fx.cluster.port),
      PGUSER: fx.cluster.superuser,
    });
    proxy.clearRules();

    // Assess
    expect(r.stderr).not.toMatch(/killed after/);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/timed out/);
    expect(r.stderr).toContain('big.dump');
    const parts = proxy.requests.filter((q) => q.method === 'PUT' && /partNumber=/.test(q.query));
    expect(parts.length).toBeGreaterThan(0);
    for (const part of parts) expect(part.headers['x-amz-checksum-crc32']).toBeTruthy();
    const keys: string[] = [];
    for await (const info of bucket.list(`${CLUSTER_NAME}/`)) keys.push(info.key);
    expect(keys.filter((k) => k.endsWith('.manifest.json'))).toEqual([]);
  });
});
