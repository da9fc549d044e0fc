import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { FileTarget } from '../../core/storage/file';
import { silentReporter, type Vault } from '../../core/vault';
import { verifyWalArchive } from '../../core/wal/archive';
import { queueBackfill, switchesOf } from '../../core/wal/backfill';
import { newArchiveIdentity } from '../../core/wal/fetch';
import { tempDir } from '../helpers/vault';

/**
 * The hole at a failover, as the archive shows it (verify wal) and as a promoted node's pg_wal can
 * fill it (queueBackfill: .done turned back into .ready for PostgreSQL's archiver). 16 MiB segments:
 * segment n of log 0 starts at LSN 0/n000000.
 */
const seg = (tli: number, n: number) =>
  `${tli.toString(16).toUpperCase().padStart(8, '0')}00000000${n.toString(16).toUpperCase().padStart(8, '0')}`;
const range = (tli: number, from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => seg(tli, from + i));

let dirs: Awaited<ReturnType<typeof tempDir>>[] = [];
afterEach(async () => {
  await Promise.all(dirs.map((d) => d.remove()));
  dirs = [];
});

async function archiveIn(
  segments: readonly string[],
  histories: Record<number, string>,
): Promise<FileTarget> {
  const dir = await tempDir('pgvault-backfill-');
  dirs.push(dir);
  const root = join(dir.path, 'c', 'wal');
  for (const name of segments) {
    const folder = join(root, name.slice(0, 8), name.slice(0, 16));
    mkdirSync(folder, { recursive: true });
    writeFileSync(join(folder, `${name}.zst`), '');
  }
  for (const [tli, text] of Object.entries(histories)) {
    const hex = Number(tli).toString(16).toUpperCase().padStart(8, '0');
    mkdirSync(join(root, hex), { recursive: true });
    writeFileSync(join(root, hex, `${hex}.history`), text);
  }
  writeFileSync(
    join(root, 'archive.json'),
    JSON.stringify(newArchiveIdentity('c', '42', 16 * 1024 * 1024, 1000)),
  );
  return new FileTarget(dir.path);
}

function vaultOf(target: FileTarget): Vault {
  const config = parseConfig({ BACKUP_DIR: target.root, CLUSTER_NAME: 'c', COMPRESSION: 'none' });
  return {
    config,
    targets: [target],
    catalog: { list: async () => [] } as unknown as Vault['catalog'],
    reporter: silentReporter,
  };
}

const HISTORY_2 = '1\t0/8000000\tno recovery target specified\n';

describe('verify wal and a timeline switch', () => {
  it('reports the old timeline segments missing before the switch point as a gap, and the switch itself', async () => {
    // Prepare: timeline 1 archived up to 5; timeline 2 begins at 0/8000000 (segment 8).
    const target = await archiveIn([...range(1, 1, 5), ...range(2, 8, 9)], { 2: HISTORY_2 });

    // Act
    const report = await verifyWalArchive(vaultOf(target));

    // Assess
    expect(report.ok).toBe(false);
    expect(report.gaps).toEqual([{ timeline: 1, from: seg(1, 6), to: seg(1, 7), count: 2 }]);
    expect(report.switches).toEqual([
      {
        from: 1,
        to: 2,
        switchLsn: '0/8000000',
        history: '00000002.history',
        oldTimelineEnd: seg(1, 7),
        oldTimelineLast: seg(1, 5),
        hole: { timeline: 1, from: seg(1, 6), to: seg(1, 7), count: 2 },
      },
    ]);
  });

  it('is clean when the old timeline is archived up to the switch', async () => {
    const target = await archiveIn([...range(1, 1, 7), ...range(2, 8, 9)], { 2: HISTORY_2 });

    const report = await verifyWalArchive(vaultOf(target));

    expect(report.ok).toBe(true);
    expect(report.gaps).toEqual([]);
    expect(report.switches?.[0]).toMatchObject({ from: 1, to: 2, oldTimelineLast: seg(1, 7) });
    expect(report.switches?.[0]?.hole).toBeUndefined();
  });
  it('counts no hole while the new timeline has only its history file (a copy promoted ahead of a running old timeline)', async () => {
    const target = await archiveIn(range(1, 1, 5), { 2: HISTORY_2 });

    const report = await verifyWalArchive(vaultOf(target));

    expect(report.ok).toBe(true);
    expect(report.switches?.[0]).toMatchObject({ from: 1, to: 2, oldTimelineLast: seg(1, 5) });
    expect(report.switches?.[0]?.hole).toBeUndefined();
  });
});

describe('queueBackfill', () => {
  it('turns .done back into .ready for the old timeline segments before the switch that the archive lacks, and only those', async () => {
    // Prepare: a promoted node's pg_wal: timeline 1 segments 3-8 received (.done), 00000002.history.
    const target = await archiveIn(range(1, 1, 5), {});
    const dir = await tempDir('pgvault-backfill-pgwal-');
    dirs.push(dir);
    const pgWal = join(dir.path, 'pg_wal');
    mkdirSync(join(pgWal, 'archive_status'), { recursive: true });
    for (const name of [...range(1, 3, 8), seg(2, 8)]) {
      writeFileSync(join(pgWal, name), '');
      writeFileSync(join(pgWal, 'archive_status', `${name}.done`), '');
    }
    writeFileSync(join(pgWal, '00000002.history'), HISTORY_2);
    const vault = vaultOf(target);

    // Act
    const report = await queueBackfill(vault, pgWal, join(pgWal, '00000002.history'));

    // Assess: 6 and 7 queued; 3-5 archived already; 8 of timeline 1 holds the switch (PostgreSQL's .partial).
    expect(report.switches).toEqual([{ parent: 1, timeline: 2, switchLsn: '0/8000000' }]);
    expect(report.queued).toEqual([seg(1, 6), seg(1, 7)]);
    expect(report.alreadyArchived).toBe(3);
    const status = (name: string) =>
      ['ready', 'done'].filter((s) => existsSync(join(pgWal, 'archive_status', `${name}.${s}`)));
    expect(range(1, 3, 8).map(status)).toEqual([
      ['done'],
      ['done'],
      ['done'],
      ['ready'],
      ['ready'],
      ['done'],
    ]);
    expect(status(seg(2, 8))).toEqual(['done']);
  });

  it('reads every ancestor of a history file', () => {
    expect(switchesOf('00000003.history', '1\t0/8000000\tx\n2\t0/A000000\ty\n')).toEqual([
      { parent: 1, timeline: 2, switchLsn: '0/8000000' },
      { parent: 2, timeline: 3, switchLsn: '0/A000000' },
    ]);
  });
});
