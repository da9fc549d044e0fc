import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import type { ManifestBody } from '../../core/catalog/manifest';
import { TempCluster } from '../../core/pg/cluster';
import {
  parseRecoveryTarget,
  restorePitrDatabase,
  restorePitrToDataDirectory,
} from '../../core/restore/pitr';
import { readWalArchive } from '../../core/wal/archive';
import {
  type ArchivingCluster,
  type Batch,
  batchesIn,
  between,
  commitBatch,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
  waitForPromotion,
} from './pitr-fixture';

/**
 * PITR across a promotion. A server restored from the archive to a restore point is started with
 * archiving into the same archive, so it promotes to timeline 2 and writes 00000002.history and
 * timeline-2 WAL, while the original goes on writing timeline 1. Recovering from the timeline-1
 * base backup to a time on timeline 2 must follow the history file:
 *
 *   timeline 1:  batch 1 · base backup · batch 2 · restore point "fork" · batch 9 (original only)
 *   timeline 2:                                   └ batch 3 · batch 4 (the restored server)
 */
let a: ArchivingCluster;
let b: TempCluster | undefined;
let base: ManifestBody;
const onTimeline2: Batch[] = [];

beforeAll(async () => {
  a = await startAppCluster({ cluster: 'forked' });
  await commitBatch(a.cluster, 1);
  base = await backupBase(a.vault(), { schedule: 'daily' });
  await commitBatch(a.cluster, 2);
  await a.cluster.query("SELECT pg_create_restore_point('fork')");
  await switchAndWaitArchived(a.cluster);

  const pgdata = join(a.work, 'timeline-2');
  // It replaces the original (a failover): it archives into the same cluster, on a new timeline.
  await restorePitrToDataDirectory(a.vault(), 'auto', parseRecoveryTarget({ name: 'fork' }), {
    pgdata,
    asOriginal: true,
  });
  b = await TempCluster.startOn({
    dataDir: pgdata,
    settings: {
      archive_mode: 'on',
      archive_command: a.archiveCommand,
      track_commit_timestamp: 'on',
      fsync: 'off',
    },
  });
  await waitForPromotion(b, 300);
  await commitBatch(a.cluster, 9);
  await switchAndWaitArchived(a.cluster);
  await sleep(1100);
  onTimeline2.push(await commitBatch(b, 3));
  await sleep(1100);
  onTimeline2.push(await commitBatch(b, 4));
  await switchAndWaitArchived(b);
}, 120_000);

afterAll(async () => {
  await b?.stop();
  await a?.stop();
});

describe('restore pitr after a promotion', () => {
  it('the archive holds both timelines and the history file', async () => {
    const state = await readWalArchive(a.vault());
    const two = state.timelines.find((t) => t.timeline === 2);
    expect(two?.parent).toBe(1);
    expect(two?.segments).toBeGreaterThan(0);
  });

  it('recovers from the timeline-1 base backup to a time on timeline 2, following the history file', async () => {
    // Prepare
    const target = parseRecoveryTarget({
      time: between(onTimeline2[0]!.commitTime, onTimeline2[1]!.commitTime),
    });

    // Act
    const r = await restorePitrDatabase(a.vault(), 'auto', target, {
      database: 'from_timeline_2',
      from: 'app',
    });

    // Assess: timeline 2's batch 3, not its batch 4, and nothing of timeline 1 after the fork.
    expect(await batchesIn(a.cluster, 'from_timeline_2')).toEqual({ 1: 50, 2: 50, 3: 50 });
    expect(r.backupId).toBe(base.id);
    expect(r.recovered.timeline).toBe(3);
    expect(r.window).toMatch(/segment 00000002/);
  });
});
