import type { BackupType, Schedule } from '../catalog/naming';
import type { Config } from '../config';
import type { WalArchiveState, WalTimeline } from '../wal/archive';
import { DEFAULT_SEGMENT_BYTES, parseLsn, segmentName, segmentNumber, segmentsPerLog } from '../wal/naming';

/**
 * The retention planner: pure. Given the catalog (every manifest with whether its objects are all
 * there), the objects without a manifest, a summary of the WAL archive, the policy and a clock, it
 * decides what to keep and what to delete, with the rule that decided each. The executor
 * (apply.ts) only carries the plan out; the property tests drive this function with generated
 * catalogs and clocks.
 */

export interface RetentionPolicy {
  /** Newest backup of each of the N most recent days that have one (full and base, each). */
  readonly daily: number;
  /** Of each of the N most recent ISO weeks that have one. */
  readonly weekly: number;
  /** Of each of the N most recent months that have one. */
  readonly monthly: number;
  /** Newest N config backups. */
  readonly configCount: number;
  /** Newest N index backups. */
  readonly indexesCount: number;
  /** The PITR window: every point of the last N days stays recoverable. */
  readonly walDays: number;
}

export const DEFAULT_POLICY: RetentionPolicy = {
  daily: 7,
  weekly: 4,
  monthly: 6,
  configCount: 10,
  indexesCount: 5,
  walDays: 7,
};

/** The policy of a configuration (RETENTION_*). */
export function retentionPolicy(config: Pick<Config, 'retention'>): RetentionPolicy {
  const r = config.retention;
  return {
    daily: r.days,
    weekly: r.weeks,
    monthly: r.months,
    configCount: r.configCount,
    indexesCount: r.indexesCount,
    walDays: r.walDays,
  };
}

/** Objects of a backup without a manifest are removed once the newest of them is this old. */
export const LEFTOVER_AGE_MS = 24 * 3600 * 1000;

/** One backup with a manifest, as the executor found it in the targets. */
export interface RetentionBackup {
  readonly id: string;
  readonly type: BackupType;
  readonly schedule?: Schedule;
  /** ISO time the backup started (the id's time). */
  readonly startedAt: string;
  /** ISO time the backup was finished (base backups: the server's stop time when recorded). */
  readonly finishedAt: string;
  /** Every object of the manifest is present, with its recorded size, in at least one target. */
  readonly complete: boolean;
  /** Why it is not complete (missing object keys). */
  readonly missing?: readonly string[];
  /** PostgreSQL system identifier and major version: a re-initialised or upgraded server is a new lineage. */
  readonly lineage: string;
  readonly storedSize: number;
  readonly manifestKey: string;
  /** The manifest's objects; deleted after the manifest (see apply.ts). */
  readonly objectKeys: readonly string[];
  readonly physical?: {
    readonly timeline: number;
    readonly startWal: string;
    readonly stopWal: string;
    readonly stopLsn: string;
  };
  /** An incremental base backup: the id of the base backup it needs (its parent). */
  readonly incrementalOf?: string;
}

/** Objects of one backup id that no manifest in their target describes. */
export interface RetentionLeftover {
  readonly id: string;
  readonly keys: readonly string[];
  /** Target locations holding them without a manifest. */
  readonly targets: readonly string[];
  /** Newest modification time among them. */
  readonly newestModified: Date;
  readonly storedSize: number;
}

export interface RetentionInput {
  readonly backups: readonly RetentionBackup[];
  readonly leftovers: readonly RetentionLeftover[];
  /** The WAL archive's listing summary (core/wal/archive.ts#readWalArchive); undefined: no WAL. */
  readonly wal?: WalArchiveState;
  readonly policy: RetentionPolicy;
  readonly now: Date;
}

export type RetentionAction = 'keep' | 'delete';

export interface BackupDecision {
  readonly id: string;
  readonly type: BackupType;
  readonly schedule?: Schedule;
  readonly startedAt: string;
  readonly complete: boolean;
  readonly action: RetentionAction;
  /** Every rule that keeps it, or the one reason it goes. */
  readonly rules: readonly string[];
  readonly storedSize: number;
  readonly manifestKey: string;
  readonly objectKeys: readonly string[];
}

export interface LeftoverDecision {
  readonly id: string;
  readonly keys: readonly string[];
  readonly targets: readonly string[];
  readonly newestModified: string;
  readonly storedSize: number;
  readonly action: RetentionAction;
  readonly rule: string;
}

/** A WAL log folder ({cluster}/wal/{timeline}/{timeline+log}/) with segments to delete. */
export interface WalFolderDecision {
  readonly timeline: number;
  /** Timeline + log: the folder's name, 16 hex digits. */
  readonly folder: string;
  /** Every segment the folder can hold is deletable: drop it whole (one prefix listing, no filter). */
  readonly whole: boolean;
  /** First and last deletable segment present (as the archive listing saw them). */
  readonly from: string;
  readonly to: string;
  /** Deletable segments the listing saw in this folder. */
  readonly segments: number;
}

export interface WalPlan {
  /** Start of the PITR window (now minus walDays). */
  readonly windowStart: string;
  /**
   * Segments numbered below this (on every timeline) may go, except those a kept base backup needs
   * for consistency. Decimal string (segment number: log × segments per log + segment). Absent: no WAL
   * is deleted.
   */
  readonly keepFromNumber?: string;
  /** keepFromNumber as a segment name on the timeline of the base backup that set it. */
  readonly keepFrom?: string;
  /** Why WAL starts where it does. */
  readonly reason: string;
  /** WAL ranges kept for a base backup's consistency, below keepFrom. Numbers as decimal strings. */
  readonly protected: ReadonlyArray<{
    id: string;
    from: string;
    to: string;
    fromNumber: string;
    toNumber: string;
  }>;
  readonly folders: readonly WalFolderDecision[];
  readonly segmentBytes: number;
  /** History files are never deleted (see apply.ts). */
  readonly notes: readonly string[];
}

export interface RetentionPlan {
  readonly now: string;
  readonly policy: RetentionPolicy;
  /** Newest first. */
  readonly backups: readonly BackupDecision[];
  readonly leftovers: readonly LeftoverDecision[];
  readonly wal: WalPlan;
  readonly summary: {
    readonly keep: number;
    readonly delete: number;
    readonly deleteBytes: number;
    readonly leftoversToDelete: number;
    readonly walSegmentsToDelete: number;
    readonly walFoldersToDelete: number;
  };
}

const DAY_MS = 24 * 3600 * 1000;

export function planRetention(input: RetentionInput): RetentionPlan {
  const { policy, now } = input;
  const rules = new Map<string, string[]>();
  const keep = (id: string, rule: string) => {
    const list = rules.get(id);
    if (list) list.push(rule);
    else rules.set(id, [rule]);
  };
  const sorted = [...input.backups].sort(newestFirst);
  const complete = sorted.filter((b) => b.complete);

  // Never delete the newest complete backup of a type, per lineage (a major upgrade or a
  // re-initialised server starts a new one, and its newest backup is the way back).
  for (const type of ['full', 'base', 'config', 'indexes'] as const) {
    const ofType = complete.filter((b) => b.type === type);
    const lineages = new Set(ofType.map((b) => b.lineage));
    for (const lineage of lineages) {
      const newest = ofType.find((b) => b.lineage === lineage)!;
      keep(newest.id, lineages.size > 1 ? `newest ${type} of lineage ${lineage}` : `newest ${type}`);
    }
  }

  for (const b of complete) {
    if (b.schedule === 'manual') keep(b.id, 'manual: kept until deleted by hand (backup delete)');
  }

  for (const type of ['full', 'base'] as const) {
    const scheduled = complete.filter((b) => b.type === type && b.schedule !== 'manual');
    gfsTier(scheduled, 'daily', policy.daily, dayKey, () => true, keep);
    gfsTier(scheduled, 'weekly', policy.weekly, isoWeekKey, (b) => b.schedule !== 'daily', keep);
    gfsTier(scheduled, 'monthly', policy.monthly, monthKey, (b) => b.schedule === 'monthly', keep);
  }
  for (const [type, count] of [
    ['config', policy.configCount],
    ['indexes', policy.indexesCount],
  ] as const) {
    complete
      .filter((b) => b.type === type && b.schedule !== 'manual')
      .slice(0, count)
      .forEach((b, i) => {
        keep(b.id, `${type} #${i + 1} of ${count}`);
      });
  }

  // The PITR window needs a base backup that finished before it starts.
  const windowStart = new Date(now.getTime() - policy.walDays * DAY_MS);
  const anchor = complete.find(
    (b) => b.type === 'base' && b.physical !== undefined && new Date(b.finishedAt) <= windowStart,
  );
  if (anchor) keep(anchor.id, `starts the ${policy.walDays}-day PITR window`);

  // A kept incremental needs its whole chain: every parent up to the full is kept with it.
  const byId = new Map(input.backups.map((b) => [b.id, b]));
  for (const id of [...rules.keys()]) {
    let child = byId.get(id);
    const seen = new Set<string>([id]);
    while (child?.incrementalOf !== undefined && !seen.has(child.incrementalOf)) {
      seen.add(child.incrementalOf);
      const parentId: string = child.incrementalOf;
      keep(parentId, `in the chain of incremental ${id} (parent of ${child.id})`);
      child = byId.get(parentId);
    }
  }

  const backups: BackupDecision[] = sorted.map((b) => {
    const kept = rules.get(b.id);
    return {
      id: b.id,
      type: b.type,
      schedule: b.schedule,
      startedAt: b.startedAt,
      complete: b.complete,
      action: kept ? 'keep' : 'delete',
      rules: kept ?? [deleteReason(b, complete, policy)],
      storedSize: b.storedSize,
      manifestKey: b.manifestKey,
      objectKeys: b.objectKeys,
    };
  });

  const leftovers: LeftoverDecision[] = input.leftovers.map((l) => {
    const age = now.getTime() - l.newestModified.getTime();
    const old = age > LEFTOVER_AGE_MS;
    return {
      id: l.id,
      keys: l.keys,
      targets: l.targets,
      newestModified: l.newestModified.toISOString(),
      storedSize: l.storedSize,
      action: old ? 'delete' : 'keep',
      rule: old
        ? `incomplete leftover: ${l.keys.length} object(s) with no manifest, newest ${formatAge(age)} old`
        : `no manifest yet (a backup may still be running); removed once older than a day`,
    };
  });

  const wal = planWal(
    input.wal,
    complete.filter((b) => b.type === 'base' && rules.has(b.id)),
    windowStart,
    policy,
  );

  const deleted = backups.filter((b) => b.action === 'delete');
  return {
    now: now.toISOString(),
    policy,
    backups,
    leftovers,
    wal,
    summary: {
      keep: backups.length - deleted.length,
      delete: deleted.length,
      deleteBytes:
        deleted.reduce((n, b) => n + b.storedSize, 0) +
        leftovers.filter((l) => l.action === 'delete').reduce((n, l) => n + l.storedSize, 0),
      leftoversToDelete: leftovers.filter((l) => l.action === 'delete').length,
      walSegmentsToDelete: wal.folders.reduce((n, f) => n + f.segments, 0),
      walFoldersToDelete: wal.folders.length,
    },
  };
}

function newestFirst(a: { startedAt: string; id: string }, b: { startedAt: string; id: string }): number {
  const ta = Date.parse(a.startedAt);
  const tb = Date.parse(b.startedAt);
  if (ta !== tb) return tb - ta;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/**
 * One GFS tier: the N most recent periods (days, ISO weeks, months) that have a backup each keep
 * one, the newest of the period, preferring one taken on the tier's own schedule (a `weekly`
 * backup for its week over a later `daily`). Periods without a backup do not count, so a week of
 * failed backups never empties the tier (restic's --keep-daily semantics).
 */
function gfsTier(
  newestFirstBackups: readonly RetentionBackup[],
  tier: string,
  count: number,
  periodOf: (d: Date) => string,
  preferred: (b: RetentionBackup) => boolean,
  keep: (id: string, rule: string) => void,
): void {
  if (count <= 0) return;
  const periods: string[] = [];
  const members = new Map<string, RetentionBackup[]>();
  for (const b of newestFirstBackups) {
    const period = periodOf(new Date(b.startedAt));
    let list = members.get(period);
    if (!list) {
      if (periods.length === count) continue;
      periods.push(period);
      list = [];
      members.set(period, list);
    }
    list.push(b);
  }
  periods.forEach((period, i) => {
    const list = members.get(period)!;
    const chosen = list.find(preferred) ?? list[0]!;
    keep(chosen.id, `${tier} ${period} (#${i + 1} of ${count})`);
  });
}

function deleteReason(
  b: RetentionBackup,
  complete: readonly RetentionBackup[],
  policy: RetentionPolicy,
): string {
  if (!b.complete) {
    const missing = b.missing ?? [];
    return `incomplete: ${missing.length} object(s) missing${missing[0] ? ` (${missing[0]}${missing.length > 1 ? ', …' : ''})` : ''}; never counted as kept`;
  }
  if (b.type === 'config' || b.type === 'indexes') {
    const count = b.type === 'config' ? policy.configCount : policy.indexesCount;
    return `older than the newest ${count} ${b.type} backups`;
  }
  const day = dayKey(new Date(b.startedAt));
  const sameDayNewer = complete.find(
    (o) =>
      o.type === b.type &&
      o.schedule !== 'manual' &&
      o.id !== b.id &&
      dayKey(new Date(o.startedAt)) === day &&
      newestFirst(o, b) < 0,
  );
  const slots = `daily ${policy.daily}, weekly ${policy.weekly}, monthly ${policy.monthly}`;
  return sameDayNewer
    ? `superseded by ${sameDayNewer.id} (same day) and not a weekly or monthly keeper (${slots})`
    : `outside the GFS slots (${slots})`;
}

export function dayKey(d: Date): string {
  return d.toISOString().slice(0, 10);
}

export function monthKey(d: Date): string {
  return d.toISOString().slice(0, 7);
}

/** ISO 8601 week of a UTC date: 2026-W45 (weeks start on Monday; week 1 holds the year's first Thursday). */
export function isoWeekKey(d: Date): string {
  const date = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const weekday = date.getUTCDay() || 7;
  date.setUTCDate(date.getUTCDate() + 4 - weekday);
  const yearStart = Date.UTC(date.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((date.getTime() - yearStart) / DAY_MS + 1) / 7);
  return `${date.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

function formatAge(ms: number): string {
  const hours = ms / 3600_000;
  return hours < 48 ? `${hours.toFixed(0)} h` : `${(hours / 24).toFixed(0)} days`;
}

// ---------------------------------------------------------------------------------------------
// WAL
// ---------------------------------------------------------------------------------------------

interface Interval {
  readonly start: bigint;
  readonly end: bigint;
}

/**
 * Which WAL may go. Every point of the window [now - walDays, now] on a live timeline must stay
 * reachable from a kept base backup: the newest kept base that finished before the window starts
 * and lies on that timeline's history (its "anchor"), or any kept base finishing inside the window.
 * WAL is kept from the lowest start segment among them, on every timeline (segment numbers are
 * compared across timelines, which only ever keeps more). Below that, each kept base backup keeps
 * its own start..stop range (consistency). When in doubt (no base backup, a live timeline whose
 * history does not lead to any kept base), nothing below the oldest kept base is deleted.
 */
function planWal(
  state: WalArchiveState | undefined,
  keptBases: readonly RetentionBackup[],
  windowStart: Date,
  policy: RetentionPolicy,
): WalPlan {
  const segmentBytes = state?.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  const notes = ['history files are never deleted (PostgreSQL picks new timeline ids from them)'];
  const base = {
    windowStart: windowStart.toISOString(),
    protected: [],
    folders: [],
    segmentBytes,
    notes,
  };
  const bases = keptBases.filter((b) => b.physical !== undefined);
  if (!state || state.timelines.length === 0) return { ...base, reason: 'no WAL archived' };
  if (bases.length === 0) {
    return {
      ...base,
      reason: 'no complete base backup is kept: WAL is kept (nothing anchors the PITR window)',
    };
  }
  const num = (s: string) => segmentNumber(s, segmentBytes);
  const live = liveTimelines(state, windowStart);
  const before = bases.filter((b) => new Date(b.finishedAt) <= windowStart);
  const needed = new Map<string, RetentionBackup>();
  for (const b of bases) if (new Date(b.finishedAt) > windowStart) needed.set(b.id, b);
  let doubt: string | undefined;
  for (const timeline of live) {
    const path = timelinePath(state, timeline);
    const anchor = before.find((b) => onPath(b, path));
    if (anchor) needed.set(anchor.id, anchor);
    else if (before.length > 0) doubt ??= `timeline ${timeline}`;
  }
  if (doubt !== undefined) {
    // A live timeline whose history does not lead to any kept base: keep WAL back to the oldest.
    for (const b of bases) needed.set(b.id, b);
  }
  if (needed.size === 0) {
    return { ...base, reason: 'no kept base backup reaches the PITR window: WAL is kept' };
  }
  let from: RetentionBackup | undefined;
  for (const b of needed.values()) {
    if (!from || num(b.physical!.startWal) < num(from.physical!.startWal)) from = b;
  }
  const cutoff = num(from!.physical!.startWal);
  const protectedRanges = bases
    .map((b) => ({ id: b.id, start: num(b.physical!.startWal), end: num(b.physical!.stopWal), b }))
    .filter((r) => r.start < cutoff)
    .map((r) => ({ ...r, end: r.end < cutoff ? r.end : cutoff - 1n }))
    .sort((x, y) => (x.start < y.start ? -1 : x.start > y.start ? 1 : 0));
  const deletable = subtract({ start: 0n, end: cutoff - 1n }, protectedRanges);
  const per = BigInt(segmentsPerLog(segmentBytes));
  const folders: WalFolderDecision[] = [];
  for (const timeline of state.timelines) {
    for (const run of runsOf(timeline, segmentBytes)) {
      for (const d of deletable) {
        const start = run.start > d.start ? run.start : d.start;
        const end = run.end < d.end ? run.end : d.end;
        if (start > end) continue;
        for (let folder = start / per; folder <= end / per; folder++) {
          const fStart = folder * per;
          const fEnd = fStart + per - 1n;
          const s = start > fStart ? start : fStart;
          const e = end < fEnd ? end : fEnd;
          addFolder(folders, {
            timeline: timeline.timeline,
            folder: segmentName(timeline.timeline, fStart, segmentBytes).slice(0, 16),
            whole: deletable.some((x) => x.start <= fStart && x.end >= fEnd),
            from: segmentName(timeline.timeline, s, segmentBytes),
            to: segmentName(timeline.timeline, e, segmentBytes),
            segments: Number(e - s + 1n),
          });
        }
      }
    }
  }
  const anchorNote = doubt
    ? `; ${doubt} does not lead to a kept base backup by its history, so WAL is kept back to the oldest kept base`
    : '';
  return {
    ...base,
    keepFromNumber: cutoff.toString(),
    keepFrom: from!.physical!.startWal,
    reason: `${from!.id} needs WAL from ${from!.physical!.startWal} to reach the ${policy.walDays}-day PITR window${anchorNote}`,
    protected: protectedRanges.map((r) => ({
      id: r.id,
      from: segmentName(r.b.physical!.timeline, r.start, segmentBytes),
      to: segmentName(r.b.physical!.timeline, r.end, segmentBytes),
      fromNumber: r.start.toString(),
      toNumber: r.end.toString(),
    })),
    folders,
  };
}

/**
 * The order a backup's keys are deleted in, per target: the manifest first, then the objects. A run
 * stopped in between leaves objects without a manifest (invisible to list and restore, removed by a
 * later run as leftovers), never a manifest that points at missing objects.
 */
export function backupDeletionOrder(b: Pick<BackupDecision, 'manifestKey' | 'objectKeys'>): string[] {
  return [b.manifestKey, ...b.objectKeys];
}

/** Whether the executor may delete a WAL file of this segment (any timeline), per the plan. */
export function walSegmentDeletable(wal: WalPlan, segment: string): boolean {
  if (wal.keepFromNumber === undefined) return false;
  const n = segmentNumber(segment, wal.segmentBytes);
  if (n >= BigInt(wal.keepFromNumber)) return false;
  return !wal.protected.some((p) => n >= BigInt(p.fromNumber) && n <= BigInt(p.toNumber));
}

function addFolder(folders: WalFolderDecision[], next: WalFolderDecision): void {
  const last = folders[folders.length - 1];
  if (last && last.timeline === next.timeline && last.folder === next.folder) {
    folders[folders.length - 1] = { ...last, to: next.to, segments: last.segments + next.segments };
  } else folders.push(next);
}

function subtract(range: Interval, holes: readonly Interval[]): Interval[] {
  const out: Interval[] = [];
  let cursor = range.start;
  for (const h of holes) {
    if (h.end < cursor) continue;
    if (h.start > range.end) break;
    if (h.start > cursor) out.push({ start: cursor, end: h.start - 1n });
    cursor = h.end + 1n;
  }
  if (cursor <= range.end) out.push({ start: cursor, end: range.end });
  return out;
}

function runsOf(timeline: WalTimeline, segmentBytes: number): Interval[] {
  const num = (s: string) => segmentNumber(s, segmentBytes);
  if (timeline.runs) return timeline.runs.map((r) => ({ start: num(r.first), end: num(r.last) }));
  if (timeline.first === undefined || timeline.last === undefined) return [];
  return subtract(
    { start: num(timeline.first), end: num(timeline.last) },
    timeline.gaps.map((g) => ({ start: num(g.from), end: num(g.to) })),
  );
}

/**
 * Timelines with points inside the window: those archived into during it (a commit is archived
 * after it happened, so a timeline whose newest object predates the window holds no point in it),
 * and always the newest timeline, so that an archive that stopped receiving WAL keeps its latest
 * recoverable stretch.
 */
function liveTimelines(state: WalArchiveState, windowStart: Date): number[] {
  const live = new Set<number>();
  let newest: WalTimeline | undefined;
  for (const t of state.timelines) {
    if (t.lastModified === undefined || t.lastModified >= windowStart) live.add(t.timeline);
    if (!newest || t.timeline > newest.timeline) newest = t;
  }
  if (newest) live.add(newest.timeline);
  return [...live];
}

/** A timeline's history back to its root: each timeline and the LSN where its child left it. */
function timelinePath(
  state: WalArchiveState,
  timeline: number,
): Array<{ timeline: number; leftAt?: bigint }> {
  const path: Array<{ timeline: number; leftAt?: bigint }> = [{ timeline }];
  let current = state.timelines.find((t) => t.timeline === timeline);
  for (
    let guard = 0;
    guard < 10_000 && current?.parent !== undefined && current.switchLsn !== undefined;
    guard++
  ) {
    const leftAt = parseLsn(current.switchLsn);
    path.push({ timeline: current.parent, leftAt });
    current = state.timelines.find((t) => t.timeline === current!.parent);
    if (current === undefined) break;
  }
  return path;
}

/** A base backup lies on a timeline's history if its timeline is on it and it ended before the branch. */
function onPath(b: RetentionBackup, path: ReadonlyArray<{ timeline: number; leftAt?: bigint }>): boolean {
  const step = path.find((p) => p.timeline === b.physical!.timeline);
  if (!step) return false;
  return step.leftAt === undefined || parseLsn(b.physical!.stopLsn) <= step.leftAt;
}
