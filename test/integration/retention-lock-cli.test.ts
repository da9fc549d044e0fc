import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inMemorySource, runBackup } from '../../core/backup/run';
import { parseConfig } from '../../core/config';
import type { ServerInfo } from '../../core/pg/server';
import { openVault } from '../../core/vault';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { recordingReporter, tempDir } from '../helpers/vault';

/**
 * `pgvault backup retention` (the built CLI) when S3 refuses a delete because of Object Lock: the
 * fault proxy in front of s3rver answers that DELETE with the error S3 gives for a locked object
 * version (403 AccessDenied, "Access Denied because object protected by object lock."). Documented
 * (docs/architecture.md "Object Lock"): reported as locked, the backup stays whole, exit 0; any other
 * refused delete is a failure, exit 1 with one line naming it.
 */
const DAY = 86_400_000;
const SERVER: ServerInfo = {
  version: '15.8',
  versionNum: 150008,
  major: 15,
  systemIdentifier: '7345000000000000002',
  superuser: true,
};

let s3: S3TestServer;
let proxy: FaultProxy;
let work: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  [s3, work] = await Promise.all([startS3Server('pgvault-lock-cli'), tempDir('pgvault-lock-cli-')]);
  proxy = await startFaultProxy(s3.endpoint);
});
afterAll(async () => {
  await proxy?.stop();
  await Promise.all([s3?.stop(), work?.remove()]);
});

function settings(prefix: string): Record<string, string> {
  return {
    CLUSTER_NAME: 'main',
    BACKUP_DIR: `${work.path}/${prefix}`,
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    CLOUD_PREFIX: prefix,
    S3_ENDPOINT: proxy.endpoint,
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_REGION: s3.region,
    LOCAL_COPY: 'false',
    COMPRESSION: 'none',
    RETENTION_DAYS: '1',
    RETENTION_WEEKS: '0',
    RETENTION_MONTHS: '0',
    S3_MAX_ATTEMPTS: '1',
  };
}

/** Two daily backups: one of a minute ago (kept), one of three days ago (to be deleted). */
async function twoBackups(prefix: string) {
  const vault = openVault(parseConfig(settings(prefix)), recordingReporter());
  const take = (at: Date) =>
    runBackup(vault, {
      type: 'full',
      schedule: 'daily',
      server: SERVER,
      tools: {},
      now: at,
      sources: [
        {
          ...inMemorySource('database', 'dump', 'app', Buffer.from('app data')),
          part: 'app',
          database: 'app',
        },
      ],
    });
  const newest = await take(new Date(Date.now() - 60_000));
  const old = await take(new Date(Date.now() - 3 * DAY));
  return { newest, old };
}

const run = (prefix: string) =>
  runPgvault(['backup', 'retention', '--json'], { PATH: process.env.PATH, ...settings(prefix) }, work.path);

describe('backup retention against a locked object (S3 error XML from the fault proxy)', () => {
  it('reports the locked manifest as locked, keeps the backup whole, exits 0', async () => {
    const { newest, old } = await twoBackups('locked');
    const rule = proxy.addRule({
      method: 'DELETE',
      key: new RegExp(`${old.id}\\.manifest\\.json$`),
      action: {
        kind: 's3-error',
        status: 403,
        code: 'AccessDenied',
        message: 'Access Denied because object protected by object lock.',
      },
    });
    try {
      const result = await run('locked');
      expect(result.stderr).not.toMatch(/could not be deleted/);
      expect(result.code).toBe(0);
      const out = JSON.parse(result.stdout);
      expect(out.ok).toBe(true);
      expect(out.failed).toEqual([]);
      expect(out.locked).toEqual([
        {
          key: `main/full/daily/${old.id}.manifest.json`,
          target: `s3://${s3.bucket}/locked`,
          detail: 'still locked (S3 Object Lock)',
        },
      ]);
      expect(proxy.hits(rule)).toBeGreaterThan(0);
      // The locked manifest's backup is whole: its objects were not touched.
      const listed = await runPgvault(
        ['restore', 'list', '--json'],
        { PATH: process.env.PATH, ...settings('locked') },
        work.path,
      );
      expect(listed.stdout).toContain(old.id);
      expect(listed.stdout).toContain(newest.id);
    } finally {
      proxy.clearRules();
    }
  });

  it('a delete refused for another reason is a failure: exit 1, one line naming it', async () => {
    const { old } = await twoBackups('broken');
    proxy.addRule({
      method: 'DELETE',
      key: new RegExp(`${old.id}\\.manifest\\.json$`),
      action: { kind: 's3-error', status: 400, code: 'InvalidRequest', message: 'Malformed request' },
    });
    try {
      const result = await run('broken');
      expect(result.code).toBe(1);
      const out = JSON.parse(result.stdout);
      expect(out.locked).toEqual([]);
      expect(out.failed).toHaveLength(1);
      const lines = result.stderr.trim().split('\n');
      expect(lines.at(-1)).toMatch(
        new RegExp(
          `^pgvault: 1 object\\(s\\) could not be deleted \\(first: main/full/daily/${old.id}\\.manifest\\.json in s3://`,
        ),
      );
    } finally {
      proxy.clearRules();
    }
  });
});
