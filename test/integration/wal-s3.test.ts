import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Target } from '../../core/storage/s3';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { CLUSTER_NAME, readSegment, sha256, startWalFixture, type WalFixture } from './wal-fixture';

/** S3 as the only WAL target: PostgreSQL's archiver pushes into s3rver, restore_command reads back. */
let s3: S3TestServer;
let fx: WalFixture;
let bucket: S3Target;
const PREFIX = 'pitr';
let credentials: Record<string, string>;

beforeAll(async () => {
  s3 = await startS3Server('pgvault-wal');
  credentials = {
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  };
  // The server passes its environment to archive_command: that is how the SDK gets its credentials.
  Object.assign(process.env, credentials);
  fx = await startWalFixture({
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    CLOUD_PREFIX: PREFIX,
    S3_ENDPOINT: s3.endpoint,
    LOCAL_COPY: 'false',
  });
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
  await s3?.stop();
});

describe('WAL archiving into S3', () => {
  it('archives segments from the archiver into the bucket and restores them byte for byte', async () => {
    // Prepare
    const names = await fx.makeSegments(3);
    await fx.waitArchived(names[names.length - 1]!, 60_000);
    const restoreDir = join(fx.work, 'restore');
    mkdirSync(join(restoreDir, 'pg_wal'), { recursive: true });

    // Act
    const keys: string[] = [];
    for await (const info of bucket.list(`${CLUSTER_NAME}/wal/`)) keys.push(info.key);
    const restored = names.map((name) => {
      const result = fx.pgvault(['restore', 'wal', name, 'pg_wal/RECOVERYXLOG'], {
        cwd: restoreDir,
        env: credentials,
      });
      return { result, bytes: readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG')) };
    });

    // Assess
    expect(keys).toContain(`${CLUSTER_NAME}/wal/archive.json`);
    for (const [i, name] of names.entries()) {
      expect(keys).toContain(`${CLUSTER_NAME}/wal/00000001/${name.slice(0, 16)}/${name}.zst.enc`);
      expect(restored[i]!.result.code, restored[i]!.result.stderr).toBe(0);
      expect(sha256(restored[i]!.bytes)).toBe(sha256(readSegment(fx.cluster, name)));
    }
  });

  it('fails within seconds, with one line, when the endpoint cannot be reached', async () => {
    // Prepare
    const [name] = await fx.makeSegments(1);
    await fx.waitArchived(name!, 60_000);

    // Act: the environment wins over the config file, so this call goes to a port nobody listens on.
    const result = fx.pgvault(['backup', 'wal', `pg_wal/${name}`], {
      env: { ...credentials, S3_ENDPOINT: 'http://127.0.0.1:9' },
    });

    // Assess
    expect(result.code).not.toBe(0);
    expect(result.ms).toBeLessThan(15_000);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/S3 endpoint http:\/\/127\.0\.0\.1:9 cannot be reached/);
  });
});
