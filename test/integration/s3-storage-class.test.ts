import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, type SeenRequest, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { type ArchivingCluster, startAppCluster, switchAndWaitArchived } from './pitr-fixture';

/**
 * A storage class per lifecycle kind (S3_STORAGE_CLASS_ARCHIVE, S3_STORAGE_CLASS_EXPIRE), end to end:
 * a real PostgreSQL archiving its WAL through `pgvault backup wal` and a `pgvault backup full weekly`
 * by the built CLI, into s3rver behind a recording proxy. What is checked is what S3 is told: the
 * `x-amz-storage-class` header on the request that created each object (PutObject for small objects,
 * CreateMultipartUpload for the large dump), and no header where no class is configured
 * (S3_STORAGE_CLASS unset: manifests and the archive identity stay in the bucket's STANDARD).
 */
let s3: S3TestServer;
let proxy: FaultProxy;
let a: ArchivingCluster;

beforeAll(async () => {
  s3 = await startS3Server('pgvault-class-e2e');
  proxy = await startFaultProxy(s3.endpoint);
  // The server's archive_command inherits these.
  process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey;
  a = await startAppCluster({
    cluster: 'classy',
    extra: {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      CLOUD_PREFIX: 'vault',
      S3_ENDPOINT: proxy.endpoint,
      AWS_REGION: s3.region,
      LOCAL_COPY: 'false',
      S3_STORAGE_CLASS_ARCHIVE: 'standard_ia',
      S3_STORAGE_CLASS_EXPIRE: 'ONEZONE_IA',
    },
  });
  // About 20 MB of incompressible bytes, so the dump is a multipart upload (parts of at least 8 MiB);
  // unlogged (pg_dump still dumps it), so archiving has no backlog of its WAL.
  await a.cluster.query(
    `CREATE UNLOGGED TABLE blob AS SELECT g, decode(string_agg(md5(random()::text || g || h), ''), 'hex') AS b
       FROM generate_series(1, 1250) g, generate_series(1, 1000) h GROUP BY g`,
    [],
    'app',
  );
}, 180_000);

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
const isMultipart = (r: SeenRequest) => r.method === 'POST';
const storageClass = (r: SeenRequest) => r.headers['x-amz-storage-class'];

describe('each object is written in the storage class of its lifecycle kind', () => {
  it('weekly backup data: STANDARD_IA (multipart too); WAL: ONEZONE_IA; manifest and archive identity: none', async () => {
    // Act
    const backup = await runPgvault(
      ['--config', a.configFile, 'backup', 'full', 'weekly', '--json'],
      {
        PATH: process.env.PATH,
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      },
      a.work,
    );
    const segment = await switchAndWaitArchived(a.cluster, 90_000);

    // Assess
    expect(backup.stderr).not.toMatch(/error/i);
    expect(backup.code).toBe(0);
    const made = creations();
    const weekly = [...made].filter(([k]) => k.startsWith('classy/full/weekly/') && !k.includes('.claim-'));
    const manifests = weekly.filter(([k]) => k.endsWith('.manifest.json'));
    const data = weekly.filter(([k]) => !k.endsWith('.manifest.json'));
    expect(manifests).toHaveLength(1);
    expect(data.length).toBeGreaterThan(1);
    expect(
      data.filter(([, r]) => isMultipart(r)).map(([k]) => k),
      'the app dump was a multipart upload',
    ).not.toEqual([]);
    expect(
      data.filter(([, r]) => !isMultipart(r)).map(([k]) => k),
      'small objects were single PutObjects',
    ).not.toEqual([]);
    for (const [key, r] of data) expect(storageClass(r), key).toBe('STANDARD_IA');
    for (const [key, r] of manifests) expect(storageClass(r), key).toBeUndefined();
    const wal = [...made].filter(([k]) => k.startsWith('classy/wal/') && k.includes(segment));
    expect(wal, `WAL ${segment} put`).toHaveLength(1);
    expect(storageClass(wal[0]![1])).toBe('ONEZONE_IA');
    const archiveIdentity = made.get('classy/wal/archive.json');
    expect(archiveIdentity, 'wal/archive.json written').toBeDefined();
    expect(storageClass(archiveIdentity!)).toBeUndefined();
  }, 180_000);
});
