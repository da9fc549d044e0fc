import { describe, expect, it } from 'vitest';
import {
  DEFAULT_POLICY,
  planRetention,
  type RetentionBackup,
  walSegmentDeletable,
} from '../../core/retention/plan';
import type { WalArchiveState, WalTimeline } from '../../core/wal/archive';
import { segmentName } from '../../core/wal/naming';

/**
 * WAL retention across timelines. Segments are 16 MiB, so segment n of log 0 starts at LSN
 * 0/n000000 and 256 segments fill a log folder.
 */
const SEG = 16 * 1024 * 1024;
const seg = (tli: number, n: number) => segmentName(tli, BigInt(n), SEG);
const lsn = (n: number) => `0/${(n * SEG + 0x28).toString(16).toUpperCase()}`;
const now = new Date('2026-11-24T12:00:00Z');
const daysAgo = (d: number) => new Date(now.getTime() - d * 86_400_000);

function base(id: string, tli: number, start: number, stop: number, finished: Date): RetentionBackup {
  return {
    id,
    type: 'base',
    schedule: 'daily',
    startedAt: new Date(finished.getTime() - 60_000).toISOString(),
    finishedAt: finished.toISOString(),
    complete: true,
    lineage: '7345/15',
    storedSize: 1,
    manifestKey: `main/base/daily/${id}.manifest.json`,
    objectKeys: [`main/base/daily/${id}.tar`],
    physical: { timeline: tli, startWal: seg(tli, start), stopWal: seg(tli, stop), stopLsn: lsn(stop) },
  };
}

function timeline(
  tli: number,
  first: number,
  last: number,
  lastModified: Date,
  extra: Partial<WalTimeline> = {},
) {
  return {
    timeline: tli,
    segments: last - first + 1,
    first: seg(tli, first),
    last: seg(tli, last),
    gaps: [],
    runs: [{ first: seg(tli, first), last: seg(tli, last), lastModified }],
    lastModified,
    ...extra,
  } satisfies WalTimeline;
}

describe('WAL retention', () => {
  it('keeps WAL from the base backup on the live timeline’s history, not from a newer one on an abandoned branch', () => {
    // Timeline 2 branched from timeline 1 at segment 40 (a recovery to an earlier point); base A was
    // taken on timeline 1 after that point, so only base Z can reach timeline 2's points in the window.
    const wal: WalArchiveState = {
      segmentBytes: SEG,
      timelines: [
        timeline(1, 0, 100, daysAgo(19)),
        timeline(2, 40, 600, now, { parent: 1, switchLsn: `0/${(40 * SEG).toString(16).toUpperCase()}` }),
      ],
    };
    const z = base('base-daily-20261025-020000', 1, 10, 11, daysAgo(30));
    const a = base('base-daily-20261104-020000', 1, 60, 61, daysAgo(20));
    const p = planRetention({ backups: [a, z], leftovers: [], wal, policy: DEFAULT_POLICY, now });
    expect(p.wal.keepFrom).toBe(seg(1, 10));
    expect(p.wal.reason).toContain(z.id);
    expect(walSegmentDeletable(p.wal, seg(1, 9))).toBe(true);
    expect(walSegmentDeletable(p.wal, seg(1, 10))).toBe(false);
    expect(walSegmentDeletable(p.wal, seg(1, 50))).toBe(false);
    expect(p.wal.folders).toEqual([
      {
        timeline: 1,
        folder: '0000000100000000',
        whole: false,
        from: seg(1, 0),
        to: seg(1, 9),
        segments: 10,
      },
    ]);
  });

  it('drops whole log folders below the window and trims the one it starts in', () => {
    const wal: WalArchiveState = { segmentBytes: SEG, timelines: [timeline(1, 0, 1000, now)] };
    const old = base('base-weekly-20261001-020000', 1, 100, 101, daysAgo(54));
    const anchor = base('base-daily-20261115-020000', 1, 700, 702, daysAgo(9));
    const p = planRetention({
      backups: [anchor, old],
      leftovers: [],
      wal,
      policy: { ...DEFAULT_POLICY, walDays: 7 },
      now,
    });
    expect(p.wal.keepFrom).toBe(seg(1, 700));
    expect(p.wal.protected).toEqual([
      { id: old.id, from: seg(1, 100), to: seg(1, 101), fromNumber: '100', toNumber: '101' },
    ]);
    expect(p.wal.folders.map((f) => [f.folder, f.whole, f.from, f.to, f.segments])).toEqual([
      ['0000000100000000', false, seg(1, 0), seg(1, 255), 254],
      ['0000000100000001', true, seg(1, 256), seg(1, 511), 256],
      ['0000000100000002', false, seg(1, 512), seg(1, 699), 188],
    ]);
    expect(p.summary.walSegmentsToDelete).toBe(700 - 2);
  });

  it('keeps every WAL file when no base backup is kept, or when a live timeline’s history is missing', () => {
    const wal: WalArchiveState = {
      segmentBytes: SEG,
      timelines: [timeline(1, 0, 100, daysAgo(19)), timeline(2, 40, 600, now)],
    };
    const none = planRetention({ backups: [], leftovers: [], wal, policy: DEFAULT_POLICY, now });
    expect(none.wal.keepFromNumber).toBeUndefined();
    expect(none.wal.folders).toEqual([]);
    expect(none.wal.reason).toMatch(/no complete base backup/);

    // Timeline 2 without its history file: which base reaches it cannot be told, so none is trusted.
    const z = base('base-daily-20261025-020000', 1, 10, 11, daysAgo(30));
    const a = base('base-daily-20261104-020000', 1, 60, 61, daysAgo(20));
    const p = planRetention({ backups: [a, z], leftovers: [], wal, policy: DEFAULT_POLICY, now });
    expect(p.wal.keepFrom).toBe(seg(1, 10));
    expect(p.wal.reason).toMatch(/timeline 2 does not lead to a kept base backup/);
  });

  it('keeps the base backup that starts the PITR window even beyond the GFS counts', () => {
    const wal: WalArchiveState = { segmentBytes: SEG, timelines: [timeline(1, 0, 1000, now)] };
    const older = base('base-daily-20261101-020000', 1, 100, 101, daysAgo(23));
    const newer = base('base-daily-20261120-020000', 1, 800, 801, daysAgo(4));
    const p = planRetention({
      backups: [newer, older],
      leftovers: [],
      wal,
      policy: { ...DEFAULT_POLICY, daily: 1, weekly: 0, monthly: 0, walDays: 14 },
      now,
    });
    expect(p.backups.map((b) => [b.id, b.action, b.rules.join('; ')])).toEqual([
      [newer.id, 'keep', 'newest base; daily 2026-11-20 (#1 of 1)'],
      [older.id, 'keep', 'starts the 14-day PITR window'],
    ]);
    expect(p.wal.keepFrom).toBe(seg(1, 100));
  });
});
