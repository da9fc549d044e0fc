import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, type SeenRequest, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { type ArchivingCluster, startAppCluster, switchAndWaitArchived } from './pitr-fixture';

/**
 * Compliance-mode Object Lock from the settings the AWS deployment gives its writers
 * (S3_OBJECT_LOCK_MODE=compliance, S3_OBJECT_LOCK_RETAIN=gfs, S3_OBJECT_LOCK_MIN_DAYS), end to end: a
 * real PostgreSQL archiving its WAL through `pgvault backup wal` and a `pgvault backup full daily` by
 * the built CLI, into s3rver behind a recording proxy. s3rver ignores Object Lock, so what is checked is
 * what S3 would be told: the lock headers on the request that created each object.
 */
const DAY = 86_400_000;
let s3: S3TestServer;
let proxy: FaultProxy;
let a: ArchivingCluster;

beforeAll(async () => {
  s3 = await startS3Server('pgvault-lock-e2e');
  proxy = await startFaultProxy(s3.endpoint);
  // The server's archive_command inherits these.
  process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey;
  a = await startAppCluster({
    cluster: 'locked',
    extra: {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      CLOUD_PREFIX: 'vault',
      S3_ENDPOINT: proxy.endpoint,
      AWS_REGION: s3.region,
      LOCAL_COPY: 'false',
      RETENTION_DAYS: '7',
      RETENTION_WAL_DAYS: '3',
      S3_OBJECT_LOCK_MODE: 'compliance',
      S3_OBJECT_LOCK_RETAIN: 'gfs',
      S3_OBJECT_LOCK_MIN_DAYS: '1',
    },
  });
}, 120_000);

afterAll(async () => {
  await a?.stop();
  await proxy?.stop();
  await s3?.stop();
});

/** The requests that created objects (PutObject, CreateMultipartUpload), by key below the prefix. */
function creations(): Map<string, SeenRequest> {
  const out = new Map<string, SeenRequest>();
  for (const r of proxy.requests) {
    const put = r.method === 'PUT' && !/partNumber=|tagging/.test(r.query);
    const create = r.method === 'POST' && /(^|&)uploads(=|&|$)/.test(r.query);
    if ((put || create) && r.key.startsWith('vault/')) out.set(r.key.slice('vault/'.length), r);
  }
  return out;
}
const until = (r: SeenRequest) =>
  new Date(String(r.headers['x-amz-object-lock-retain-until-date'])).getTime();

describe('backups and WAL are put under a compliance lock until their GFS expiry', () => {
  it('daily backup objects and manifest: start of the day + RETENTION_DAYS; WAL: write + RETENTION_WAL_DAYS', async () => {
    // Act
    const started = Date.now();
    const backup = await runPgvault(
      ['--config', a.configFile, 'backup', 'full', 'daily', '--json'],
      {
        PATH: process.env.PATH,
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      },
      a.work,
    );
    const segment = await switchAndWaitArchived(a.cluster);
    const finished = Date.now();

    // Assess
    expect(backup.stderr).not.toMatch(/error/i);
    expect(backup.code).toBe(0);
    const made = creations();
    const daily = [...made].filter(([k]) => k.startsWith('locked/full/daily/') && !k.includes('.claim-'));
    // The backup's claim, removed when it is done, gets no date of its own.
    const claims = [...made].filter(([k]) => k.startsWith('locked/full/daily/') && k.includes('.claim-'));
    for (const [key, r] of claims) expect(r.headers['x-amz-object-lock-mode'], key).toBeUndefined();
    expect(daily.some(([k]) => k.endsWith('.manifest.json'))).toBe(true);
    expect(daily.length).toBeGreaterThan(2);
    const today = new Date(started);
    const dayEnd = Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate()) + 7 * DAY;
    for (const [key, r] of daily) {
      expect(r.headers['x-amz-object-lock-mode'], key).toBe('COMPLIANCE');
      expect(until(r), key).toBe(dayEnd);
    }
    const wal = [...made].filter(([k]) => k.startsWith('locked/wal/') && k.includes(segment));
    expect(wal, `WAL ${segment} put`).toHaveLength(1);
    const [walKey, walPut] = wal[0]!;
    expect(walPut.headers['x-amz-object-lock-mode'], walKey).toBe('COMPLIANCE');
    expect(until(walPut)).toBeGreaterThanOrEqual(Math.floor(started / 1000) * 1000 + 3 * DAY);
    expect(until(walPut)).toBeLessThanOrEqual(finished + 3 * DAY);
    // What retention does not expire by date gets no date of its own (the bucket default applies).
    const archiveIdentity = made.get('locked/wal/archive.json');
    expect(archiveIdentity, 'wal/archive.json written').toBeDefined();
    expect(archiveIdentity!.headers['x-amz-object-lock-mode']).toBeUndefined();
  }, 120_000);
});
