import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inMemorySource, runBackup } from '../../core/backup/run';
import { parseConfig } from '../../core/config';
import type { ServerInfo } from '../../core/pg/server';
import { openVault } from '../../core/vault';
import { runPgvault } from '../helpers/cli';
import { type GcsStandIn, startGcsStandIn } from '../helpers/gcs-server';
import { recordingReporter, tempDir } from '../helpers/vault';

/**
 * `pgvault backup retention` (the built CLI) with GCS object retention (OBJECT_LOCK_MODE=governance:
 * GCS's Unlocked mode): every object of a dated backup is written with its retain-until (its planned
 * GFS expiry, never less than OBJECT_LOCK_MIN_DAYS from the write). The GCS stand-in (test/helpers/gcs-server.ts; no GCS
 * emulator can be installed here) refuses a delete before that time with GCS's 403 retention message,
 * as GCS does. A backup retention would delete but whose lock has not ended is reported as locked,
 * kept whole, exit 0 (as S3 Object Lock, retention-lock-cli.test.ts).
 */
const DAY = 86_400_000;
const SERVER: ServerInfo = {
  version: '15.8',
  versionNum: 150008,
  major: 15,
  systemIdentifier: '7345000000000000003',
  superuser: true,
};

let gcs: GcsStandIn;
let work: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  [gcs, work] = await Promise.all([startGcsStandIn('pgvault-lock-gcs'), tempDir('pgvault-lock-gcs-')]);
});
afterAll(async () => {
  await Promise.all([gcs?.stop(), work?.remove()]);
});

function settings(prefix: string): Record<string, string> {
  return {
    CLUSTER_NAME: 'main',
    BACKUP_DIR: `${work.path}/${prefix}`,
    CLOUD_PROVIDER: 'gcs',
    CLOUD_BUCKET: gcs.bucket,
    CLOUD_PREFIX: prefix,
    STORAGE_EMULATOR_HOST: gcs.endpoint,
    OBJECT_LOCK_MODE: 'governance',
    OBJECT_LOCK_MIN_DAYS: '1',
    LOCAL_COPY: 'false',
    COMPRESSION: 'none',
    RETENTION_DAYS: '1',
    RETENTION_WEEKS: '0',
    RETENTION_MONTHS: '0',
    S3_MAX_ATTEMPTS: '1',
  };
}

describe('backup retention against objects under GCS object retention', () => {
  it('reports the locked manifest as locked until its retain-until, keeps the backup whole, exits 0', async () => {
    // Prepare: a daily backup of a minute ago (kept) and one of three days ago (due, but locked a day).
    const vault = openVault(parseConfig(settings('locked')), recordingReporter());
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
    const manifest = gcs.objects.get(`locked/main/full/daily/${old.id}.manifest.json`);

    // Act
    const result = await runPgvault(
      ['backup', 'retention', '--json'],
      { PATH: process.env.PATH, ...settings('locked') },
      work.path,
    );
    const listed = await runPgvault(
      ['restore', 'list', '--json'],
      { PATH: process.env.PATH, ...settings('locked') },
      work.path,
    );

    // Assess
    expect(manifest?.retention?.mode).toBe('Unlocked');
    expect(result.code, result.stderr).toBe(0);
    const out = JSON.parse(result.stdout);
    expect(out.failed).toEqual([]);
    expect(out.locked).toEqual([
      {
        key: `main/full/daily/${old.id}.manifest.json`,
        target: `gs://${gcs.bucket}/locked`,
        detail: `locked until ${manifest!.retention!.retainUntilTime}`,
      },
    ]);
    expect(listed.stdout).toContain(old.id);
    expect(listed.stdout).toContain(newest.id);
  });
});
