import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import type { ManifestBody } from '../../core/catalog/manifest';
import { parseRecoveryTarget, restorePitrToDataDirectory } from '../../core/restore/pitr';
import { runRetention } from '../../core/retention/apply';
import { readWalArchive, verifyWalArchive } from '../../core/wal/archive';
import { segmentNumber } from '../../core/wal/naming';
import {
  type ArchivingCluster,
  type Batch,
  batchesAfterRecovery,
  between,
  commitBatch,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * Retention on a real archive: PostgreSQL archives through pgvault's archive_command, two real base
 * backups are taken, retention (keep one day, a PITR window of 0 days) deletes the older base backup
 * and the WAL before the newer one, and point-in-time recovery from what is left still works.
 *
 *   batch 0 · base A · batch 1 · switch · base B · batch 2 · batch 3 · switch
 */
let a: ArchivingCluster;
let baseA: ManifestBody;
let baseB: ManifestBody;
const batches: Batch[] = [];

beforeAll(async () => {
  a = await startAppCluster({ cluster: 'retention' });
  batches.push(await commitBatch(a.cluster, 0));
  baseA = await backupBase(a.vault(), { schedule: 'daily' });
  batches.push(await commitBatch(a.cluster, 1));
  await switchAndWaitArchived(a.cluster);
  await sleep(1100);
  baseB = await backupBase(a.vault(), { schedule: 'daily' });
  batches.push(await commitBatch(a.cluster, 2));
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 3));
  await switchAndWaitArchived(a.cluster);
}, 180_000);

afterAll(async () => {
  await a?.stop();
});

describe('retention on a real WAL archive', () => {
  it('deletes the older base backup and the WAL before the newer one; PITR from what is left works', async () => {
    // Prepare
    const vault = a.vault({
      RETENTION_DAYS: '1',
      RETENTION_WEEKS: '0',
      RETENTION_MONTHS: '0',
      RETENTION_WAL_DAYS: '0',
    });
    const bytes = (await readWalArchive(vault)).segmentBytes!;
    const n = (s: string) => segmentNumber(s, bytes);

    // Act
    const result = await runRetention(vault);
    const after = await readWalArchive(vault);
    const report = await verifyWalArchive(vault);
    const pgdata = join(a.work, 'after-retention');
    const target = parseRecoveryTarget({ time: between(batches[2]!.commitTime, batches[3]!.commitTime) });
    const recovered = await restorePitrToDataDirectory(vault, 'auto', target, { pgdata });
    const rows = await batchesAfterRecovery(pgdata);

    // Assess
    expect(result.failed).toEqual([]);
    expect(result.deleted.backups).toEqual([baseA.id]);
    expect(result.plan.wal.keepFrom).toBe(baseB.physical!.startWal);
    expect(result.deleted.walObjects).toBeGreaterThan(0);
    expect((await vault.catalog.list('base')).map((e) => e.manifest.id)).toEqual([baseB.id]);
    const timeline = after.timelines.find((t) => t.timeline === 1)!;
    expect(timeline.first).toBe(baseB.physical!.startWal);
    expect(n(timeline.first!)).toBeGreaterThan(n(baseA.physical!.startWal));
    expect(report.ok, JSON.stringify(report.gaps)).toBe(true);
    expect(recovered.backupId).toBe(baseB.id);
    expect(rows).toEqual({ 0: 50, 1: 50, 2: 50 });
  });
});
