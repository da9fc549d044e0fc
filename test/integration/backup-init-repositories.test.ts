import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { tempDir } from '../helpers/vault';

/**
 * `pgvault backup init --print-lifecycle` (the built CLI; `npm run build` first) with several
 * repositories (issue 14): one lifecycle document per cloud repository, each from that repository's
 * own retention and placement, the line naming the repository. Two S3 repositories on s3rver (two
 * prefixes of one bucket), behind the fault proxy only to record that no lifecycle request is sent.
 */
let s3: S3TestServer;
let proxy: FaultProxy;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [s3, work] = await Promise.all([startS3Server('pgvault-init-repos'), tempDir('pgvault-init-repos-')]);
  proxy = await startFaultProxy(s3.endpoint);
});
afterAll(async () => {
  await proxy?.stop();
  await Promise.all([s3?.stop(), work?.remove()]);
});

describe('backup init with repositories', () => {
  it('prints one document per cloud repository, each from its own retention and holds', async () => {
    // Prepare
    const env = {
      PATH: process.env.PATH ?? '',
      CLUSTER_NAME: 'main',
      AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      AWS_REGION: s3.region,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      S3_ENDPOINT: proxy.endpoint,
      S3_MAX_ATTEMPTS: '1',
      RETENTION_MONTHS: '6',
      REPO1_TYPE: 'file',
      REPO1_PATH: `${work.path}/local`,
      REPO2_TYPE: 's3',
      REPO2_BUCKET: s3.bucket,
      REPO2_PREFIX: 'daily',
      REPO2_HOLDS: 'full:daily,wal',
      REPO2_RETENTION_DAYS: '3',
      REPO2_RETENTION_WAL_DAYS: '3',
      REPO3_TYPE: 's3',
      REPO3_BUCKET: s3.bucket,
      REPO3_PREFIX: 'archive',
      REPO3_HOLDS: 'full',
      REPO3_RETENTION_MONTHS: '12',
      // No server: the archiving check says it skipped.
      PGHOST: '127.0.0.1',
      PGPORT: '1',
    };
    const before = proxy.requests.length;

    // Act
    const json = await runPgvault(['backup', 'init', '--print-lifecycle', '--json'], env, work.path);
    const text = await runPgvault(['backup', 'init', '--print-lifecycle'], env, work.path);

    // Assess
    expect(json.code, json.stderr).toBe(0);
    const out = JSON.parse(json.stdout) as {
      lifecycle: { repository: number; target: string; document: { Rules: Record<string, unknown>[] } }[];
    };
    expect(out.lifecycle.map((l) => [l.repository, l.target])).toEqual([
      [2, `s3://${s3.bucket}/daily`],
      [3, `s3://${s3.bucket}/archive`],
    ]);
    const [daily, archive] = out.lifecycle.map((l) => l.document.Rules);
    expect(daily!.filter((r) => r.Transitions)).toEqual([]);
    expect(daily!.filter((r) => r.Expiration).map((r) => [r.ID, r.Expiration])).toEqual([
      ['pgvault:daily/main/full/daily/expire', { Days: 63 }],
      ['pgvault:daily/main/wal/0expire', { Days: 63 }],
    ]);
    expect(archive!.filter((r) => r.Transitions).map((r) => r.ID)).toEqual([
      'pgvault:archive/main/full/weekly/archive',
      'pgvault:archive/main/full/monthly/archive',
    ]);
    expect(archive!.filter((r) => r.Expiration).map((r) => (r.Expiration as { Days: number }).Days)).toEqual([
      432, 432, 432,
    ]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`lifecycle rules repo2 s3://${s3.bucket}/daily: printed, not applied`);
    expect(text.stdout).toContain(`lifecycle rules repo3 s3://${s3.bucket}/archive: printed, not applied`);
    expect(proxy.requests.slice(before).filter((q) => q.query.includes('lifecycle'))).toEqual([]);
  });
});
