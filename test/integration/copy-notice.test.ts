import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackupTargets } from '../../core/backup/init';
import type { TempCluster } from '../../core/pg/cluster';
import { checkArchiving } from '../../core/wal/check';
import { startCluster } from '../helpers/pg';
import { tempDir, testVault } from '../helpers/vault';

/**
 * `backup init` and `pgvault check` against a server marked as a copy by restore pitr --pgdata
 * (pgvault.copy_of in its postgresql.auto.conf, as core/restore/copy.ts writes it): one line says
 * so under the original's CLUSTER_NAME, whose writers refuse the copy; nothing about it under the
 * copy's own lineage.
 */
let cluster: TempCluster;
let work: { path: string; remove(): Promise<void> };

beforeAll(async () => {
  work = await tempDir('pgvault-copy-notice-');
  cluster = await startCluster();
  // As restore pitr --pgdata marks a copy (copySettings), appended to postgresql.auto.conf.
  await appendFile(
    join(cluster.dataDir, 'postgresql.auto.conf'),
    "pgvault.copy_of = 'main'\npgvault.lineage = 'main-copy-20261205120000'\n",
  );
  await cluster.psql('SELECT pg_reload_conf()');
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  await work?.remove();
});

describe('a server that is a copy of the configured cluster', () => {
  it('pgvault check says so in one line (broken, no WAL switch forced) and names the lineage to use', async () => {
    // Act
    const report = await checkArchiving(testVault(cluster, work.path, { CLUSTER_NAME: 'main' }), {
      timeoutSeconds: 5,
    });

    // Assert
    expect(report.verdict).toBe('broken');
    expect(report.summary).toMatch(/this server is a copy of cluster main laid down by pgvault restore pitr/);
    expect(report.nextStep).toMatch(/CLUSTER_NAME=main-copy-20261205120000/);
    expect(report.segment).toBeUndefined();
  });

  it('backup init says so in its WAL archiving line, even with archive_mode off', async () => {
    // Act
    const checks = await initBackupTargets(testVault(cluster, work.path, { CLUSTER_NAME: 'main' }));

    // Assert
    const line = checks.find((c) => c.check === 'WAL archiving');
    expect(line?.ok).toBe(false);
    expect(line?.detail).toMatch(
      /copy of cluster main .*refused under CLUSTER_NAME=main; set CLUSTER_NAME=main-copy-/,
    );
    expect(line?.detail).not.toContain('\n');
  });

  it('under the copy own lineage, neither mentions it', async () => {
    // Act
    const vault = testVault(cluster, work.path, { CLUSTER_NAME: 'main-copy-20261205120000' });
    const checks = await initBackupTargets(vault);
    const report = await checkArchiving(vault, { timeoutSeconds: 5 });

    // Assert
    expect(JSON.stringify(checks)).not.toMatch(/is a copy of/);
    expect(report.summary).not.toMatch(/is a copy of/);
  });
});
