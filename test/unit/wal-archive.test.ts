import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CatalogEntry } from '../../core/catalog/catalog';
import { parseConfig } from '../../core/config';
import { FileTarget } from '../../core/storage/file';
import { silentReporter, type Vault } from '../../core/vault';
import {
  continuousUntil,
  missingSegments,
  parseTimelineHistory,
  readWalArchive,
  verifyWalArchive,
  type WalArchiveState,
} from '../../core/wal/archive';
import { newArchiveIdentity } from '../../core/wal/fetch';
import { tempDir } from '../helpers/vault';

/**
 * The archive read from listings (no WAL content is needed except history files) and the planning
 * functions PITR uses. Segments are 16 MiB: segment n of log 0 starts at LSN 0/n000000.
 */
const seg = (tli: number, n: number) =>
  `${tli.toString(16).toUpperCase().padStart(8, '0')}00000000${n.toString(16).toUpperCase().padStart(8, '0')}`;

let dirs: Awaited<ReturnType<typeof tempDir>>[] = [];

beforeEach(() => {
  dirs = [];
});
afterEach(async () => {
  await Promise.all(dirs.map((d) => d.remove()));
});

/** A target holding empty objects under WAL keys (uncompressed, unencrypted), plus history texts. */
async function archiveIn(
  segments: readonly string[],
  histories: Record<number, string> = {},
  withIdentity = true,
): Promise<FileTarget> {
  const dir = await tempDir('pgvault-walarch-');
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
  if (withIdentity) {
    mkdirSync(root, { recursive: true });
    writeFileSync(
      join(root, 'archive.json'),
      JSON.stringify(newArchiveIdentity('c', '42', 16 * 1024 * 1024, 1000)),
    );
  }
  return new FileTarget(dir.path);
}

function vaultOf(
  targets: FileTarget[],
  bases: Array<{ id: string; startWal: string; timeline: number }> = [],
): Vault {
  const config = parseConfig({ BACKUP_DIR: targets[0]!.root, CLUSTER_NAME: 'c', COMPRESSION: 'none' });
  const entries = bases.map(
    (b) =>
      ({
        manifest: { id: b.id, physical: { startWal: b.startWal, timeline: b.timeline } },
      }) as unknown as CatalogEntry,
  );
  return {
    config,
    targets,
    catalog: { list: async () => entries } as unknown as Vault['catalog'],
    reporter: silentReporter,
  };
}

const range = (tli: number, from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => seg(tli, from + i));

describe('readWalArchive', () => {
  it('lists timelines with their segments, gaps, history and times', async () => {
    // Prepare: timeline 1 has 1-5 and 7-9; timeline 2 branched at 0/8000000 and has 8-10.
    const target = await archiveIn([...range(1, 1, 5), ...range(1, 7, 9), ...range(2, 8, 10)], {
      2: '1\t0/8000000\tno recovery target specified\n',
    });

    // Act
    const state = await readWalArchive(vaultOf([target]));

    // Assess
    expect(state.systemIdentifier).toBe('42');
    expect(state.newestModified).toBeInstanceOf(Date);
    expect(state.timelines).toMatchObject([
      {
        timeline: 1,
        segments: 8,
        first: seg(1, 1),
        last: seg(1, 9),
        gaps: [{ from: seg(1, 6), to: seg(1, 6) }],
      },
      {
        timeline: 2,
        segments: 3,
        first: seg(2, 8),
        last: seg(2, 10),
        gaps: [],
        parent: 1,
        switchLsn: '0/8000000',
      },
    ]);
  });

  it('counts a segment held by any target (restore falls back from one to the next)', async () => {
    const local = await archiveIn([...range(1, 1, 3), ...range(1, 5, 6)]);
    const cloud = await archiveIn(range(1, 3, 5));

    const state = await readWalArchive(vaultOf([local, cloud]));

    expect(state.timelines).toMatchObject([{ timeline: 1, segments: 6, gaps: [] }]);
  });
});

describe('planning over the archive', () => {
  const state: WalArchiveState = {
    segmentBytes: 16 * 1024 * 1024,
    timelines: [
      {
        timeline: 1,
        segments: 8,
        first: seg(1, 1),
        last: seg(1, 9),
        gaps: [{ from: seg(1, 6), to: seg(1, 6) }],
      },
      {
        timeline: 2,
        segments: 3,
        first: seg(2, 8),
        last: seg(2, 10),
        gaps: [],
        parent: 1,
        switchLsn: '0/8000000',
      },
      {
        timeline: 3,
        segments: 1,
        first: seg(3, 3),
        last: seg(3, 3),
        gaps: [],
        parent: 1,
        switchLsn: '0/3000000',
      },
    ],
  };

  it('missingSegments follows the switch point into the next timeline', () => {
    expect(missingSegments(state, seg(1, 2), seg(2, 10), [1, 2])).toEqual([seg(1, 6)]);
    expect(missingSegments(state, seg(1, 7), seg(2, 12))).toEqual([seg(2, 11), seg(2, 12)]);
    expect(missingSegments(state, seg(1, 1), seg(1, 5))).toEqual([]);
  });

  it('missingSegments names a history file the path needs and the archive lacks', () => {
    const orphan: WalArchiveState = {
      timelines: [
        ...state.timelines,
        { timeline: 4, segments: 1, first: seg(4, 12), last: seg(4, 12), gaps: [] },
      ],
    };
    expect(missingSegments(orphan, seg(1, 7), seg(4, 12))).toEqual(['00000004.history']);
  });

  it('continuousUntil stops at a gap, and follows the latest timeline that branched after the start', () => {
    // From segment 1 the latest timeline is 3 (branched at segment 3).
    expect(continuousUntil(state, seg(1, 1)).last).toBe(seg(3, 3));
    expect(continuousUntil(state, seg(1, 1), [1]).last).toBe(seg(1, 5));
    // Timeline 3 branched at segment 3, before segment 7: recovery from 7 cannot join it, 2 it can.
    expect(continuousUntil(state, seg(1, 7)).last).toBe(seg(2, 10));
    expect(continuousUntil(state, seg(1, 7), [1]).last).toBe(seg(1, 9));
    expect(continuousUntil(state, seg(1, 6)).last).toBe(seg(1, 5));
  });

  it('derives runs from first, last and gaps when a state is built by hand', () => {
    const until = continuousUntil(state, seg(2, 8), [2]);
    expect(until.last).toBe(seg(2, 10));
  });
});

describe('verifyWalArchive', () => {
  it('reports a gap on the way from a base backup, the window and the RPO', async () => {
    const target = await archiveIn([...range(1, 1, 5), ...range(1, 7, 9)]);
    const vault = vaultOf([target], [{ id: 'base-daily-20260101-000000', startWal: seg(1, 2), timeline: 1 }]);

    const report = await verifyWalArchive(vault, new Date(Date.now() + 10_000));

    expect(report.ok).toBe(false);
    expect(report.gaps).toEqual([{ timeline: 1, from: seg(1, 6), to: seg(1, 6), count: 1 }]);
    expect(report.backups[0]).toMatchObject({ recoverableTo: seg(1, 5), missingCount: 1 });
    expect(report.windows).toEqual([
      expect.objectContaining({ timeline: 1, from: seg(1, 2), to: seg(1, 5) }),
    ]);
    expect(report.rpoSeconds).toBeGreaterThanOrEqual(9);
  });

  it('ignores a gap before the oldest base backup, and checks the archive itself when there is none', async () => {
    const target = await archiveIn([...range(1, 1, 2), ...range(1, 4, 9)]);

    const fromBase = await verifyWalArchive(
      vaultOf([target], [{ id: 'b', startWal: seg(1, 4), timeline: 1 }]),
    );
    const withoutBase = await verifyWalArchive(vaultOf([target]));

    expect(fromBase.ok).toBe(true);
    expect(withoutBase.ok).toBe(false);
    expect(withoutBase.gaps).toEqual([{ timeline: 1, from: seg(1, 3), to: seg(1, 3), count: 1 }]);
  });
});

describe('parseTimelineHistory', () => {
  it('reads PostgreSQL history lines and skips comments', () => {
    const text =
      '1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5A000028\tbefore 2026-01-01 00:00:00+00\n';
    expect(parseTimelineHistory(text)).toEqual([
      { timeline: 1, switchLsn: '0/3000000', reason: 'no recovery target specified' },
      { timeline: 2, switchLsn: '0/5A000028', reason: 'before 2026-01-01 00:00:00+00' },
    ]);
    expect(() => parseTimelineHistory('garbage')).toThrow(/not "TLI<TAB>LSN<TAB>reason"/);
  });
});
