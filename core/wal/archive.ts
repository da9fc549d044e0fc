import { errorMessage, IntegrityError } from '../errors';
import type { StorageTarget } from '../storage/target';
import type { Vault } from '../vault';
import { openWalObject, readArchiveIdentity, type WalArchiveIdentity, walCodec } from './fetch';
import { checkWalKeys, type WalKeyReport } from './keys';
import {
  DEFAULT_SEGMENT_BYTES,
  formatLsn,
  parseLsn,
  segmentName,
  segmentNumber,
  timelineOf,
  walNameFromKey,
} from './naming';

/**
 * The WAL archive as its listing shows it: per timeline the segments present (as runs, so memory
 * grows with the number of gaps, not of segments), the gaps, the newest object's time (RPO), and
 * the timeline history from the `.history` files. The PITR code plans recoveries with it
 * (`missingSegments`, `continuousUntil`), `verify wal` reports it.
 */

export interface WalGap {
  /** First missing segment. */
  readonly from: string;
  /** Last missing segment. */
  readonly to: string;
}

/** A stretch of consecutive segments present on one timeline. */
export interface WalRun {
  readonly first: string;
  readonly last: string;
  /** When `last` was archived (its object's modified time). */
  readonly lastModified?: Date;
}

export interface WalTimeline {
  readonly timeline: number;
  /** Number of segments present. */
  readonly segments: number;
  readonly first?: string;
  readonly last?: string;
  /** Missing segment ranges between first and last, oldest first. */
  readonly gaps: WalGap[];
  /** The timeline this one branched from (from its .history file). */
  readonly parent?: number;
  /** Where it branched: the first LSN of this timeline (from its .history file). */
  readonly switchLsn?: string;
  /** Newest object on this timeline. */
  readonly lastModified?: Date;
  /** Runs of consecutive segments; when absent they are derived from first, last and gaps. */
  readonly runs?: WalRun[];
  /** A `.partial` segment archived at a promotion (the old timeline's last, incomplete segment). */
  readonly partial?: string;
}

export interface WalArchiveState {
  readonly timelines: WalTimeline[];
  /** Newest WAL object in the archive: RPO is now minus this. */
  readonly newestModified?: Date;
  readonly systemIdentifier?: string;
  /** wal_segment_size of the archive (from its identity). @default 16 MiB */
  readonly segmentBytes?: number;
}

/** One line of a timeline history file: `parentTLI<TAB>switchLSN<TAB>reason`. */
export interface TimelineHistoryEntry {
  readonly timeline: number;
  readonly switchLsn: string;
  readonly reason: string;
}

/** Parses a `.history` file; comment and blank lines are skipped, as PostgreSQL does. */
export function parseTimelineHistory(text: string): TimelineHistoryEntry[] {
  const entries: TimelineHistoryEntry[] = [];
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const match = /^(\d+)\s+([0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8})\s*(.*)$/.exec(trimmed);
    if (!match)
      throw new IntegrityError(
        `timeline history line ${JSON.stringify(trimmed)} is not "TLI<TAB>LSN<TAB>reason"`,
      );
    entries.push({
      timeline: Number(match[1]),
      switchLsn: formatLsn(parseLsn(match[2]!)),
      reason: match[3]!.trim(),
    });
  }
  return entries;
}

interface RunBuilder {
  start: bigint;
  end: bigint;
  endModified: Date;
}

/** What one target's listing says about one timeline. */
class TimelineListing {
  readonly runs: RunBuilder[] = [];
  lastModified?: Date;
  historyKey?: string;
  partial?: string;

  addSegment(n: bigint, modified: Date): void {
    this.touch(modified);
    const last = this.runs[this.runs.length - 1];
    if (last === undefined || n > last.end + 1n) {
      this.runs.push({ start: n, end: n, endModified: modified });
    } else if (n === last.end + 1n) {
      last.end = n;
      last.endModified = modified;
    } else if (n === last.end) {
      // The same segment under a second extension: it was first archived at the earlier time.
      if (modified < last.endModified) last.endModified = modified;
    } else if (n < last.start) {
      // A listing out of key order (not one of ours): merge it in.
      this.runs.push({ start: n, end: n, endModified: modified });
      const merged = mergeRuns([this.runs]);
      this.runs.length = 0;
      this.runs.push(...merged);
    }
  }

  touch(modified: Date): void {
    if (this.lastModified === undefined || modified > this.lastModified) this.lastModified = modified;
  }
}

/** Union of run lists (each target's), sorted; the end's time is the earliest archiving of that segment. */
function mergeRuns(lists: readonly (readonly RunBuilder[])[]): RunBuilder[] {
  const all = lists.flat().sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const out: RunBuilder[] = [];
  for (const run of all) {
    const last = out[out.length - 1];
    if (last !== undefined && run.start <= last.end + 1n) {
      if (run.end > last.end) {
        last.end = run.end;
        last.endModified = run.endModified;
      } else if (run.end === last.end && run.endModified < last.endModified) {
        last.endModified = run.endModified;
      }
    } else {
      out.push({ ...run });
    }
  }
  return out;
}

/**
 * Reads the archive of the vault's cluster from every target (a segment held by any of them counts,
 * since `restore wal` falls back from one to the next). Listings are streamed per target in key
 * order; memory grows with timelines and gaps only. A target that cannot be listed is reported
 * through the vault's reporter; if none can, the first error is thrown.
 */
export async function readWalArchive(vault: Vault): Promise<WalArchiveState> {
  const { targets } = vault;
  const cluster = vault.config.clusterName;
  const identity = await readIdentityTolerantly(targets, cluster, (line) => vault.reporter.warn(line));
  const segmentBytes = identity?.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  const perTarget: Map<number, TimelineListing>[] = [];
  const historyFrom = new Map<number, { target: StorageTarget; key: string }>();
  const failures: unknown[] = [];
  for (const target of targets) {
    const timelines = new Map<number, TimelineListing>();
    const listing = (timeline: number) => {
      let found = timelines.get(timeline);
      if (found === undefined) {
        found = new TimelineListing();
        timelines.set(timeline, found);
      }
      return found;
    };
    try {
      for await (const info of target.list(`${cluster}/wal/`)) {
        const file = walNameFromKey(info.key);
        if (file === undefined) continue;
        const timeline = listing(timelineOf(file.timeline));
        switch (file.kind) {
          case 'segment':
            timeline.addSegment(segmentNumber(file.segment!, segmentBytes), info.modified);
            break;
          case 'partial':
            timeline.touch(info.modified);
            if (timeline.partial === undefined || file.name > timeline.partial) timeline.partial = file.name;
            break;
          case 'history':
            timeline.touch(info.modified);
            if (!historyFrom.has(timelineOf(file.timeline)))
              historyFrom.set(timelineOf(file.timeline), { target, key: info.key });
            break;
          case 'backup':
            timeline.touch(info.modified);
            break;
        }
      }
      perTarget.push(timelines);
    } catch (err) {
      failures.push(err);
      vault.reporter.warn(`cannot list the WAL archive in ${target.location}: ${errorMessage(err)}`);
    }
  }
  if (failures.length > 0 && failures.length === targets.length) throw failures[0];

  const numbers = new Set(perTarget.flatMap((m) => [...m.keys()]));
  const timelines: WalTimeline[] = [];
  let newestModified: Date | undefined;
  for (const number of [...numbers].sort((a, b) => a - b)) {
    const listings = perTarget.map((m) => m.get(number)).filter((l): l is TimelineListing => l !== undefined);
    const runs = mergeRuns(listings.map((l) => l.runs));
    const lastModified = latest(listings.map((l) => l.lastModified));
    newestModified = latest([newestModified, lastModified]);
    const partial = listings
      .map((l) => l.partial)
      .filter((p): p is string => p !== undefined)
      .sort()
      .pop();
    const history = historyFrom.get(number);
    let parent: number | undefined;
    let switchLsn: string | undefined;
    if (history !== undefined) {
      try {
        const entries = parseTimelineHistory(
          await readSmallObject(history.target, history.key, vault, identity),
        );
        const branch = entries[entries.length - 1];
        parent = branch?.timeline;
        switchLsn = branch?.switchLsn;
      } catch (err) {
        vault.reporter.warn(`cannot read ${history.key} in ${history.target.location}: ${errorMessage(err)}`);
      }
    }
    timelines.push(
      timelineFromRuns(number, runs, segmentBytes, { parent, switchLsn, lastModified, partial }),
    );
  }
  return { timelines, newestModified, systemIdentifier: identity?.systemIdentifier, segmentBytes };
}

function latest(dates: readonly (Date | undefined)[]): Date | undefined {
  let newest: Date | undefined;
  for (const d of dates) if (d !== undefined && (newest === undefined || d > newest)) newest = d;
  return newest;
}

function timelineFromRuns(
  timeline: number,
  runs: readonly RunBuilder[],
  segmentBytes: number,
  extra: { parent?: number; switchLsn?: string; lastModified?: Date; partial?: string },
): WalTimeline {
  const name = (n: bigint) => segmentName(timeline, n, segmentBytes);
  let segments = 0n;
  const gaps: WalGap[] = [];
  runs.forEach((run, i) => {
    segments += run.end - run.start + 1n;
    const next = runs[i + 1];
    if (next !== undefined) gaps.push({ from: name(run.end + 1n), to: name(next.start - 1n) });
  });
  return {
    timeline,
    segments: Number(segments),
    first: runs[0] === undefined ? undefined : name(runs[0].start),
    last: runs.length === 0 ? undefined : name(runs[runs.length - 1]!.end),
    gaps,
    ...(extra.parent !== undefined ? { parent: extra.parent } : {}),
    ...(extra.switchLsn !== undefined ? { switchLsn: extra.switchLsn } : {}),
    ...(extra.lastModified !== undefined ? { lastModified: extra.lastModified } : {}),
    ...(extra.partial !== undefined ? { partial: extra.partial } : {}),
    runs: runs.map((r) => ({ first: name(r.start), last: name(r.end), lastModified: r.endModified })),
  };
}

async function readIdentityTolerantly(
  targets: readonly StorageTarget[],
  cluster: string,
  warn: (line: string) => void,
): Promise<WalArchiveIdentity | undefined> {
  for (const target of targets) {
    try {
      const { identity } = await readArchiveIdentity([target], cluster);
      if (identity !== undefined) return identity;
    } catch (err) {
      warn(`cannot read the WAL archive identity in ${target.location}: ${errorMessage(err)}`);
    }
  }
  return undefined;
}

async function readSmallObject(
  target: StorageTarget,
  key: string,
  vault: Vault,
  identity: WalArchiveIdentity | undefined,
): Promise<string> {
  const file = walNameFromKey(key)!;
  const chunks: Buffer[] = [];
  for await (const chunk of await openWalObject(
    target,
    key,
    file,
    await walCodec(vault.config, identity, file),
  ))
    chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

// ---------------------------------------------------------------------------------------------
// Planning over a state: which segments a recovery needs, and how far the archive carries it.
// ---------------------------------------------------------------------------------------------

interface Span {
  readonly start: bigint;
  readonly end: bigint;
  readonly lastModified?: Date;
}

function segmentBytesOf(state: WalArchiveState): number {
  return state.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
}

/** Present runs of a timeline as numbers: its `runs`, or derived from first, last and gaps. */
function spansOf(state: WalArchiveState, timeline: WalTimeline | undefined): Span[] {
  if (timeline === undefined || timeline.first === undefined || timeline.last === undefined) return [];
  const bytes = segmentBytesOf(state);
  const n = (s: string) => segmentNumber(s, bytes);
  if (timeline.runs !== undefined) {
    return timeline.runs.map((r) => ({ start: n(r.first), end: n(r.last), lastModified: r.lastModified }));
  }
  const spans: Span[] = [];
  let start = n(timeline.first);
  for (const gap of [...timeline.gaps].sort((a, b) => (n(a.from) < n(b.from) ? -1 : 1))) {
    if (n(gap.from) > start) spans.push({ start, end: n(gap.from) - 1n });
    start = n(gap.to) + 1n;
  }
  const end = n(timeline.last);
  if (end >= start)
    spans.push({ start, end, lastModified: end === n(timeline.last) ? timeline.lastModified : undefined });
  return spans;
}

function timelineByNumber(state: WalArchiveState, timeline: number): WalTimeline | undefined {
  return state.timelines.find((t) => t.timeline === timeline);
}

function historyName(timeline: number): string {
  return `${timeline.toString(16).toUpperCase().padStart(8, '0')}.history`;
}

/**
 * Timelines from `from`'s to `to`'s, following parents in the history files. A timeline whose
 * history is not archived breaks the chain: it is returned in `missingHistory`.
 */
function pathBetween(
  state: WalArchiveState,
  fromTimeline: number,
  toTimeline: number,
): { path: number[]; missingHistory: string[] } {
  if (fromTimeline === toTimeline) return { path: [fromTimeline], missingHistory: [] };
  const chain = [toTimeline];
  let current = toTimeline;
  for (let guard = 0; guard < 100_000 && current !== fromTimeline; guard++) {
    const parent = timelineByNumber(state, current)?.parent;
    if (parent === undefined) return { path: chain, missingHistory: [historyName(current)] };
    chain.unshift(parent);
    current = parent;
  }
  return { path: chain, missingHistory: [] };
}

/**
 * The timelines recovery_target_timeline = 'latest' follows from a segment: to the newest timeline
 * descending from the segment's whose branch point is at or after that segment.
 */
export function latestTimelinePath(state: WalArchiveState, fromSegment: string): number[] {
  const bytes = segmentBytesOf(state);
  const start = timelineOf(fromSegment);
  const fromNumber = segmentNumber(fromSegment, bytes);
  let best = [start];
  for (const candidate of state.timelines) {
    if (candidate.timeline <= start) continue;
    const { path, missingHistory } = pathBetween(state, start, candidate.timeline);
    if (missingHistory.length > 0 || path[0] !== start) continue;
    const child = timelineByNumber(state, path[1]!);
    const branchesAfter =
      child?.switchLsn === undefined || parseLsn(child.switchLsn) / BigInt(bytes) >= fromNumber;
    if (branchesAfter && candidate.timeline > best[best.length - 1]!) best = path;
  }
  return best;
}

/**
 * Where each timeline of a path takes over: recovery reads a segment from the newest timeline of
 * the path that had begun by that segment (the segment holding a switch point comes from the new
 * timeline, which starts with a copy of its parent's part of it).
 */
function stretches(
  state: WalArchiveState,
  fromNumber: bigint,
  toNumber: bigint | undefined,
  path: readonly number[],
): { timeline: number; start: bigint; end: bigint | undefined; missingHistory?: string }[] {
  const bytes = BigInt(segmentBytesOf(state));
  const begins = path.map((tli, i) => {
    if (i === 0) return { begin: -1n };
    const switchLsn = timelineByNumber(state, tli)?.switchLsn;
    return switchLsn === undefined ? { begin: undefined } : { begin: parseLsn(switchLsn) / bytes };
  });
  const out: { timeline: number; start: bigint; end: bigint | undefined; missingHistory?: string }[] = [];
  path.forEach((timeline, i) => {
    const begin = begins[i]!.begin;
    const nextBegin = i + 1 < path.length ? begins[i + 1]!.begin : undefined;
    const start = begin === undefined || begin < fromNumber ? fromNumber : begin;
    let end = toNumber;
    if (i + 1 < path.length && nextBegin !== undefined) {
      end = end === undefined || nextBegin - 1n < end ? nextBegin - 1n : end;
    }
    out.push({
      timeline,
      start,
      end,
      ...(begin === undefined ? { missingHistory: historyName(timeline) } : {}),
    });
  });
  return out;
}

/**
 * The files recovery needs between two segments (inclusive) that the archive lacks, in the order
 * recovery asks for them. With a path that crosses timelines, each timeline's share ends where the
 * next one branched (switch points from the history files); a missing history file on the way is
 * listed by name (`00000002.history`). Without a path, the parents of `toSegment`'s timeline are
 * followed back to `fromSegment`'s.
 */
export function missingSegments(
  state: WalArchiveState,
  fromSegment: string,
  toSegment: string,
  timelinePath?: number[],
): string[] {
  const bytes = segmentBytesOf(state);
  const fromNumber = segmentNumber(fromSegment, bytes);
  const toNumber = segmentNumber(toSegment, bytes);
  const { path, missingHistory } =
    timelinePath !== undefined && timelinePath.length > 0
      ? { path: timelinePath, missingHistory: [] as string[] }
      : pathBetween(state, timelineOf(fromSegment), timelineOf(toSegment));
  // Without the history the switch points are unknown: nothing more can be said.
  if (missingHistory.length > 0) return missingHistory;
  const missing: string[] = [];
  for (const stretch of stretches(state, fromNumber, toNumber, path)) {
    if (stretch.missingHistory !== undefined) {
      // Without the switch point the rest of the path cannot be laid out.
      missing.push(stretch.missingHistory);
      break;
    }
    const end = stretch.end ?? toNumber;
    if (stretch.start > end) continue;
    let cursor = stretch.start;
    for (const span of spansOf(state, timelineByNumber(state, stretch.timeline))) {
      if (span.end < cursor) continue;
      if (span.start > end) break;
      for (let n = cursor; n < span.start; n++) missing.push(segmentName(stretch.timeline, n, bytes));
      cursor = span.end + 1n;
      if (cursor > end) break;
    }
    for (let n = cursor; n <= end; n++) missing.push(segmentName(stretch.timeline, n, bytes));
  }
  return missing;
}

/**
 * How far WAL is continuous from a segment, following the timeline path (default: the latest
 * timeline descending from the segment's, as recovery_target_timeline = 'latest' does). `last` is
 * the last segment of the unbroken stretch (named on its timeline) and `lastModified` when it was
 * archived, when known. If `fromSegment` itself is missing, `last` is the segment before it.
 */
export function continuousUntil(
  state: WalArchiveState,
  fromSegment: string,
  timelinePath?: number[],
): { last: string; lastModified?: Date } {
  const bytes = segmentBytesOf(state);
  const fromNumber = segmentNumber(fromSegment, bytes);
  const path =
    timelinePath !== undefined && timelinePath.length > 0
      ? timelinePath
      : latestTimelinePath(state, fromSegment);
  let last: { last: string; lastModified?: Date } = {
    last: segmentName(timelineOf(fromSegment), fromNumber > 0n ? fromNumber - 1n : 0n, bytes),
  };
  let cursor = fromNumber;
  for (const stretch of stretches(state, fromNumber, undefined, path)) {
    if (stretch.missingHistory !== undefined) return last;
    if (stretch.end !== undefined && cursor > stretch.end) continue;
    if (stretch.start > cursor) return last;
    const span = spansOf(state, timelineByNumber(state, stretch.timeline)).find(
      (s) => s.start <= cursor && s.end >= cursor,
    );
    if (span === undefined) return last;
    if (stretch.end === undefined || span.end < stretch.end) {
      return { last: segmentName(stretch.timeline, span.end, bytes), lastModified: span.lastModified };
    }
    last = {
      last: segmentName(stretch.timeline, stretch.end, bytes),
      ...(span.end === stretch.end && span.lastModified ? { lastModified: span.lastModified } : {}),
    };
    cursor = stretch.end + 1n;
  }
  return last;
}

// ---------------------------------------------------------------------------------------------
// verify wal
// ---------------------------------------------------------------------------------------------

export interface WalGapReport {
  readonly timeline: number;
  readonly from: string;
  readonly to: string;
  readonly count: number;
}

export interface WalBackupReach {
  readonly id: string;
  readonly timeline: number;
  readonly startWal: string;
  readonly timelinePath: number[];
  /** Last segment of the unbroken WAL from the backup's start, and when it was archived. */
  readonly recoverableTo: string;
  readonly recoverableToTime?: string;
  /** Missing files between the backup's start and the newest segment of its path. */
  readonly missing: WalGapReport[];
  readonly missingCount: number;
}

export interface WalWindow {
  readonly timeline: number;
  readonly from: string;
  readonly to: string;
  readonly toTime?: string;
}

export interface WalVerifyReport {
  readonly ok: boolean;
  readonly cluster: string;
  readonly systemIdentifier?: string;
  readonly segmentBytes: number;
  readonly checkedAt: string;
  readonly newestModified?: string;
  /** Seconds since the newest archived WAL object. */
  readonly rpoSeconds?: number;
  readonly timelines: Array<Omit<WalTimeline, 'runs' | 'lastModified'> & { lastModified?: string }>;
  readonly backups: WalBackupReach[];
  /** Gaps that break a recovery (from a base backup, or anywhere when there is none). */
  readonly gaps: WalGapReport[];
  /** Recoverable windows per timeline, from the base backups (or the archive itself without one). */
  readonly windows: WalWindow[];
  /** Which key opens each WAL object, when asked for (`verify wal`, `verify all`): faults fail the check. */
  readonly keys?: WalKeyReport;
  /** The failovers and switchovers the archive's history files record. */
  readonly switches?: WalTimelineSwitch[];
}

/** A timeline switch (a promotion) as the archive shows it: the history file, and the old timeline's end. */
export interface WalTimelineSwitch {
  /** The old timeline. */
  readonly from: number;
  /** The new one. */
  readonly to: number;
  /** The new timeline's first LSN. */
  readonly switchLsn: string;
  readonly history: string;
  /** The old timeline's last segment before the switch point (the new timeline's first holds the rest). */
  readonly oldTimelineEnd: string;
  /** The old timeline's last archived segment. */
  readonly oldTimelineLast?: string;
  /** Segments of the old timeline missing right before the switch point: the hole at the failover. */
  readonly hole?: WalGapReport;
}

/**
 * Each timeline switch, with the hole at its end: the old timeline's segments after its last
 * archived one up to the switch point (the old leader died before archiving them). Only when the
 * old timeline has archived segments at all (an archive begun after the switch has no hole there),
 * and only once the new timeline has archived segments of its own.
 */
export function timelineSwitches(state: WalArchiveState): WalTimelineSwitch[] {
  const bytes = segmentBytesOf(state);
  const out: WalTimelineSwitch[] = [];
  for (const t of state.timelines) {
    if (t.parent === undefined || t.switchLsn === undefined) continue;
    const switchSegment = parseLsn(t.switchLsn) / BigInt(bytes);
    if (switchSegment === 0n) continue;
    const end = switchSegment - 1n;
    const parent = timelineByNumber(state, t.parent);
    const lastNumber = parent?.last === undefined ? undefined : segmentNumber(parent.last, bytes);
    const holeFrom = lastNumber === undefined ? undefined : lastNumber + 1n;
    out.push({
      from: t.parent,
      to: t.timeline,
      switchLsn: t.switchLsn,
      history: historyName(t.timeline),
      oldTimelineEnd: segmentName(t.parent, end, bytes),
      ...(parent?.last !== undefined ? { oldTimelineLast: parent.last } : {}),
      // Only once the new timeline has archived segments: a history file alone (a promoted copy, or
      // the first seconds after a failover) can branch ahead of an old timeline still being written.
      ...(holeFrom !== undefined && holeFrom <= end && t.last !== undefined
        ? {
            hole: {
              timeline: t.parent,
              from: segmentName(t.parent, holeFrom, bytes),
              to: segmentName(t.parent, end, bytes),
              count: Number(end - holeFrom + 1n),
            },
          }
        : {}),
    });
  }
  return out;
}

/** Groups missing names into ranges of consecutive segments on one timeline; history files stand alone. */
function rangesOf(missing: readonly string[], segmentBytes: number): WalGapReport[] {
  const out: { timeline: number; from: string; to: string; count: number; lastNumber?: bigint }[] = [];
  for (const name of missing) {
    if (name.endsWith('.history')) {
      out.push({ timeline: timelineOf(name), from: name, to: name, count: 1 });
      continue;
    }
    const n = segmentNumber(name, segmentBytes);
    const last = out[out.length - 1];
    if (last?.lastNumber !== undefined && last.timeline === timelineOf(name) && last.lastNumber + 1n === n) {
      last.to = name;
      last.count++;
      last.lastNumber = n;
    } else {
      out.push({ timeline: timelineOf(name), from: name, to: name, count: 1, lastNumber: n });
    }
  }
  return out.map(({ timeline, from, to, count }) => ({ timeline, from, to, count }));
}

/**
 * Walks the archive from each physical base backup to the newest segment of the timeline it leads
 * to, and reports gaps on the way, the recoverable window per timeline and the RPO. Without base
 * backups, every gap inside the archive counts.
 */
export async function verifyWalArchive(
  vault: Vault,
  now = new Date(),
  options: { keys?: boolean } = {},
): Promise<WalVerifyReport> {
  const state = await readWalArchive(vault);
  const keys = options.keys ? await checkWalKeys(vault) : undefined;
  const bytes = segmentBytesOf(state);
  const bases = (await vault.catalog.list('base')).filter((e) => e.manifest.physical !== undefined);
  const backups: WalBackupReach[] = [];
  /** Continuous stretches per timeline; overlapping or adjacent ones are merged at the end. */
  const stretchesSeen: Array<{ timeline: number; from: bigint; to: bigint; toTime?: Date }> = [];
  const widen = (timeline: number, from: bigint, to: bigint, toTime?: Date) => {
    stretchesSeen.push({ timeline, from, to, toTime });
  };
  for (const base of bases) {
    const physical = base.manifest.physical!;
    const path = latestTimelinePath(state, physical.startWal);
    const newest = timelineByNumber(state, path[path.length - 1]!)?.last;
    const missing = missingSegments(state, physical.startWal, newest ?? physical.stopWal, path);
    const until = continuousUntil(state, physical.startWal, path);
    const startNumber = segmentNumber(physical.startWal, bytes);
    const untilNumber = segmentNumber(until.last, bytes);
    if (untilNumber >= startNumber) {
      for (const stretch of stretches(state, startNumber, untilNumber, path)) {
        const end = stretch.end ?? untilNumber;
        if (stretch.start <= end)
          widen(stretch.timeline, stretch.start, end, end === untilNumber ? until.lastModified : undefined);
      }
    }
    backups.push({
      id: base.manifest.id,
      timeline: physical.timeline,
      startWal: physical.startWal,
      timelinePath: path,
      recoverableTo: until.last,
      ...(until.lastModified ? { recoverableToTime: until.lastModified.toISOString() } : {}),
      missing: rangesOf(missing, bytes),
      missingCount: missing.length,
    });
  }
  let gaps: WalGapReport[];
  if (bases.length > 0) {
    const seen = new Set<string>();
    gaps = backups
      .flatMap((b) => b.missing)
      .filter((g) => {
        const key = `${g.from}-${g.to}`;
        if (seen.has(key)) return false;
        seen.add(key);
        return true;
      });
  } else {
    gaps = state.timelines.flatMap((t) =>
      t.gaps.map((g) => ({
        timeline: t.timeline,
        from: g.from,
        to: g.to,
        count: Number(segmentNumber(g.to, bytes) - segmentNumber(g.from, bytes) + 1n),
      })),
    );
    for (const t of state.timelines) {
      for (const span of spansOf(state, t)) widen(t.timeline, span.start, span.end, span.lastModified);
    }
  }
  // The hole at a failover: the old timeline's tail the dead leader never archived. From a base
  // backup before it, the walk above finds it; without one it is not between two archived segments
  // of one timeline, so it is added here.
  const switches = timelineSwitches(state);
  if (bases.length === 0) {
    for (const sw of switches) {
      if (sw.hole !== undefined && !gaps.some((g) => g.from === sw.hole!.from)) gaps.push(sw.hole);
    }
  }
  return {
    ok: gaps.length === 0 && (keys === undefined || keys.faults.length === 0),
    cluster: vault.config.clusterName,
    ...(state.systemIdentifier ? { systemIdentifier: state.systemIdentifier } : {}),
    segmentBytes: bytes,
    checkedAt: now.toISOString(),
    ...(state.newestModified
      ? {
          newestModified: state.newestModified.toISOString(),
          rpoSeconds: Math.max(0, Math.round((now.getTime() - state.newestModified.getTime()) / 1000)),
        }
      : {}),
    timelines: state.timelines.map(({ runs: _runs, lastModified, ...t }) => ({
      ...t,
      ...(lastModified ? { lastModified: lastModified.toISOString() } : {}),
    })),
    backups,
    gaps,
    windows: mergeWindows(stretchesSeen).map((w) => ({
      timeline: w.timeline,
      from: segmentName(w.timeline, w.from, bytes),
      to: segmentName(w.timeline, w.to, bytes),
      ...(w.toTime ? { toTime: w.toTime.toISOString() } : {}),
    })),
    ...(keys !== undefined ? { keys } : {}),
    switches,
  };
}

function mergeWindows(
  stretches: readonly { timeline: number; from: bigint; to: bigint; toTime?: Date }[],
): { timeline: number; from: bigint; to: bigint; toTime?: Date }[] {
  const sorted = [...stretches].sort((a, b) =>
    a.timeline !== b.timeline ? a.timeline - b.timeline : a.from < b.from ? -1 : a.from > b.from ? 1 : 0,
  );
  const out: { timeline: number; from: bigint; to: bigint; toTime?: Date }[] = [];
  for (const w of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && last.timeline === w.timeline && w.from <= last.to + 1n) {
      if (w.to > last.to) {
        last.to = w.to;
        last.toTime = w.toTime;
      }
    } else {
      out.push({ ...w });
    }
  }
  return out;
}
