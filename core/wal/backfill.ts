import { readdir, readFile, rename, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { errorMessage } from '../errors';
import type { StorageTarget } from '../storage/target';
import { parseTimelineHistory } from './archive';
import {
  DEFAULT_SEGMENT_BYTES,
  parseLsn,
  parseWalFileName,
  segmentNumber,
  timelineOf,
  walFolder,
  walNameFromKey,
} from './naming';
import { pushWalFile, type WalPushContext } from './push';

/**
 * Gap backfill: the segments of an old timeline that its leader never archived, pushed from this
 * node's pg_wal after a promotion.
 *
 * Why they are here and nowhere else: a streaming standby writes every segment it receives into its
 * own pg_wal and, with archive_mode=on, marks it `.done` at once (the primary is supposed to archive
 * it). When the primary dies with segments it had not archived yet (archive_command failing or
 * slow), the promoted standby still holds them, but PostgreSQL never archives a `.done` file: it
 * archives only the new timeline's history file and the old timeline's last, partial segment
 * (`.partial`). Its first checkpoints then recycle the old segments once they are out of
 * wal_keep_size / the slots' reach, and the hole at the failover becomes permanent.
 *
 * So when a node archives a new timeline's `.history` file (the first file PostgreSQL archives after
 * a promotion, before the new timeline's segments), this reads the switch points from it and pushes
 * every segment of an ancestor timeline before its switch point that is in pg_wal and missing from a
 * target. The lookup is one listing per target and per 256 segments (the archive's folders), so it
 * costs almost nothing when nothing is missing; the pushes are pushWalFile's (header and name
 * checked, same bytes already there succeed, different bytes under one name fail loudly). A failure
 * never fails the history file's archive_command (PostgreSQL would retry it forever and archive
 * nothing of the new timeline meanwhile): it is reported, with the segments named, and `pgvault wal
 * backfill` retries on demand.
 */

export interface TimelineSwitch {
  /** The old timeline. */
  readonly parent: number;
  /** The timeline that branched from it. */
  readonly timeline: number;
  /** The first LSN of the new timeline (the history file's switch point). */
  readonly switchLsn: string;
}

export interface BackfillFailure {
  readonly segment: string;
  readonly error: string;
}

export interface BackfillReport {
  readonly ok: boolean;
  readonly pgWal: string;
  /** The history file read. */
  readonly history?: string;
  readonly switches: readonly TimelineSwitch[];
  /** Segments of old timelines before their switch point found in pg_wal. */
  readonly candidates: number;
  /** Of those, in every target already. */
  readonly alreadyArchived: number;
  /** Stored now. */
  readonly pushed: readonly string[];
  readonly failed: readonly BackfillFailure[];
  /** Not tried: the time budget ran out first. */
  readonly notTried: readonly string[];
}

export interface BackfillOptions {
  /** Stop starting new pushes after this many milliseconds (the rest is reported). @default no limit */
  readonly budgetMs?: number;
}

/** The switches a history file records: each ancestor timeline, where its child begins. */
export function switchesOf(historyName: string, text: string): TimelineSwitch[] {
  const entries = parseTimelineHistory(text);
  const own = timelineOf(historyName);
  return entries.map((e, i) => ({
    parent: e.timeline,
    timeline: entries[i + 1]?.timeline ?? own,
    switchLsn: e.switchLsn,
  }));
}

const SEGMENT_NAME = /^[0-9A-F]{24}$/;

/**
 * The segments of `pgWalDir` that belong to an old timeline before its switch point, oldest first,
 * and the segment size (from the files themselves; 16 MiB when there are none).
 */
async function oldTimelineSegments(
  pgWalDir: string,
  switches: readonly TimelineSwitch[],
): Promise<{ names: string[]; segmentBytes: number }> {
  const parents = new Map(switches.map((s) => [s.parent, parseLsn(s.switchLsn)]));
  const files = (await readdir(pgWalDir))
    .filter((n) => SEGMENT_NAME.test(n) && parents.has(timelineOf(n)))
    .sort();
  if (files.length === 0) return { names: [], segmentBytes: DEFAULT_SEGMENT_BYTES };
  const size = (await stat(join(pgWalDir, files[0]!))).size;
  // wal_segment_size is a power of two from 1 MiB to 1 GiB; anything else is not a whole segment.
  const segmentBytes =
    size >= 1 << 20 && size <= 1 << 30 && (size & (size - 1)) === 0 ? size : DEFAULT_SEGMENT_BYTES;
  const names = files.filter((n) => {
    const switchSegment = parents.get(timelineOf(n))! / BigInt(segmentBytes);
    // The segment holding the switch point is the new timeline's (its first segment starts with a
    // copy of the parent's part; PostgreSQL archives the old one as .partial itself).
    return segmentNumber(n, segmentBytes) < switchSegment;
  });
  return { names, segmentBytes };
}

/** Names of the WAL segments a target holds in the folders of `names` (one listing per folder). */
async function archivedIn(
  target: StorageTarget,
  cluster: string,
  names: readonly string[],
): Promise<Set<string>> {
  const folders = new Set(names.map((n) => walFolder(cluster, parseWalFileName(n)!)));
  const found = new Set<string>();
  for (const folder of folders) {
    for await (const info of target.list(`${folder}/`)) {
      const file = walNameFromKey(info.key);
      if (file?.kind === 'segment') found.add(file.name);
    }
  }
  return found;
}

/**
 * Pushes the old timelines' segments that `historyPath` (a `.history` file in pg_wal) makes
 * ancestors and that some target lacks. Never throws for a segment: failures are in the report.
 */
export async function backfillFromHistory(
  ctx: WalPushContext,
  pgWalDir: string,
  historyPath: string,
  options: BackfillOptions = {},
): Promise<BackfillReport> {
  const started = Date.now();
  const history = basename(historyPath);
  const switches = switchesOf(history, await readFile(historyPath, 'utf8'));
  const { names } = await oldTimelineSegments(pgWalDir, switches);
  const base = { pgWal: pgWalDir, history, switches, candidates: names.length };
  if (names.length === 0)
    return { ...base, ok: true, alreadyArchived: 0, pushed: [], failed: [], notTried: [] };
  const cluster = ctx.config.clusterName;
  const failed: BackfillFailure[] = [];
  // Which targets lack which segment; a target that cannot be listed counts as lacking all.
  const held = await Promise.all(
    ctx.targets.map((t) =>
      archivedIn(t, cluster, names).catch((err: unknown) => {
        ctx.warn?.(`cannot list the WAL archive in ${t.location}: ${errorMessage(err)}`);
        return new Set<string>();
      }),
    ),
  );
  const missing = names.filter((n) => held.some((set) => !set.has(n)));
  const pushed: string[] = [];
  const notTried: string[] = [];
  for (const name of missing) {
    if (options.budgetMs !== undefined && Date.now() - started > options.budgetMs) {
      notTried.push(name);
      continue;
    }
    try {
      await pushWalFile(ctx, join(pgWalDir, name));
      pushed.push(name);
    } catch (err) {
      failed.push({ segment: name, error: errorMessage(err).split('\n')[0]! });
    }
  }
  return {
    ...base,
    ok: failed.length === 0 && notTried.length === 0,
    alreadyArchived: names.length - missing.length,
    pushed,
    failed,
    notTried,
  };
}

export interface BackfillQueueReport {
  readonly pgWal: string;
  readonly history: string;
  readonly switches: readonly TimelineSwitch[];
  /** Old-timeline segments before their switch point that PostgreSQL had marked archived (.done). */
  readonly candidates: number;
  /** Of those, in every target already. */
  readonly alreadyArchived: number;
  /** Marked `.ready`: PostgreSQL's archiver stores them through archive_command. */
  readonly queued: readonly string[];
  /** Why the archive could not be looked at (every candidate stays queued), when it could not. */
  readonly listingFailed?: string;
}

/**
 * The form archive_command and the uploader use when they archive a `.history` file: the missing
 * segments are handed to PostgreSQL's own archiver, by turning their `.done` status back into
 * `.ready`. That is what makes the backfill safe against the checkpoint a promotion requests: a
 * `.ready` segment is never removed or recycled until archive_command has stored it, while a `.done`
 * one goes at the first checkpoint once out of wal_keep_size. So every candidate is marked first
 * (local renames, microseconds), then the archive is listed and the segments it already holds are
 * set back to `.done` (the archiver is busy with this very history file meanwhile, so it has not
 * taken them). The pushes are then PostgreSQL's usual archive_command calls, oldest first, with
 * pgvault's usual checks and conflict rules; this call itself returns in one listing's time.
 */
export async function queueBackfill(
  ctx: Pick<WalPushContext, 'config' | 'targets' | 'warn'>,
  pgWalDir: string,
  historyPath: string,
): Promise<BackfillQueueReport> {
  const history = basename(historyPath);
  const switches = switchesOf(history, await readFile(historyPath, 'utf8'));
  const { names } = await oldTimelineSegments(pgWalDir, switches);
  const status = join(pgWalDir, 'archive_status');
  const marked: string[] = [];
  for (const name of names) {
    try {
      await rename(join(status, `${name}.done`), join(status, `${name}.ready`));
      marked.push(name);
    } catch {
      // No .done: already .ready (queued), or PostgreSQL has no status for it; left as it is.
    }
  }
  const base = { pgWal: pgWalDir, history, switches, candidates: marked.length };
  if (marked.length === 0) return { ...base, alreadyArchived: 0, queued: [] };
  let held: Set<string>[];
  try {
    held = await Promise.all(ctx.targets.map((t) => archivedIn(t, ctx.config.clusterName, marked)));
  } catch (err) {
    return { ...base, alreadyArchived: 0, queued: marked, listingFailed: errorMessage(err) };
  }
  const queued: string[] = [];
  let alreadyArchived = 0;
  for (const name of marked) {
    if (held.every((set) => set.has(name))) {
      alreadyArchived++;
      // Not yet taken by the archiver (it waits for this call); if it was, it archives the same bytes.
      await rename(join(status, `${name}.ready`), join(status, `${name}.done`)).catch(() => {});
    } else queued.push(name);
  }
  return { ...base, alreadyArchived, queued };
}

/**
 * `pgvault wal backfill`: the same from the newest `.history` file in pg_wal (it lists every
 * ancestor), for Patroni's on_role_change callback, by hand after a failed backfill, or on a
 * standby that still holds segments the dead leader never archived.
 */
export async function backfillPgWal(
  ctx: WalPushContext,
  pgWalDir: string,
  options: BackfillOptions = {},
): Promise<BackfillReport> {
  const histories = (await readdir(pgWalDir)).filter((n) => /^[0-9A-F]{8}\.history$/.test(n)).sort();
  const newest = histories[histories.length - 1];
  if (newest === undefined)
    return {
      ok: true,
      pgWal: pgWalDir,
      switches: [],
      candidates: 0,
      alreadyArchived: 0,
      pushed: [],
      failed: [],
      notTried: [],
    };
  return backfillFromHistory(ctx, pgWalDir, join(pgWalDir, newest), options);
}

/** One line for the log / stderr, or undefined when there is nothing to say (nothing was missing). */
export function describeBackfill(report: BackfillReport): string | undefined {
  const at = report.switches.map((s) => `${s.parent} → ${s.timeline} at ${s.switchLsn}`).join(', ');
  if (report.ok) {
    if (report.pushed.length === 0) return undefined;
    return `WAL backfill after the timeline switch ${at}: stored ${report.pushed.length} segment(s) the old leader never archived (${range(report.pushed)}) from ${report.pgWal}`;
  }
  const bad = [...report.failed.map((f) => f.segment), ...report.notTried];
  const reason =
    report.failed.length > 0
      ? `${report.failed[0]!.segment}: ${report.failed[0]!.error}`
      : 'the time budget ran out';
  return `WAL backfill after the timeline switch ${at} is INCOMPLETE: ${bad.length} segment(s) of the old timeline are in ${report.pgWal} but not archived (${range(bad)}; ${reason}); the archive has a hole at the failover until they are: run pgvault wal backfill in this data directory before PostgreSQL recycles them`;
}

function range(names: readonly string[]): string {
  if (names.length <= 3) return names.join(', ');
  return `${names[0]} .. ${names[names.length - 1]}`;
}

/**
 * After a history file is stored (archive_command or the uploader): the missing old-timeline
 * segments queued for PostgreSQL's archiver (queueBackfill), and a line saying so. Never throws: a
 * failure is a warning and an alert naming the segments, never the history file's failure
 * (PostgreSQL would retry it forever and archive nothing of the new timeline meanwhile).
 */
export async function backfillAfterHistory(
  ctx: WalPushContext,
  pgWalDir: string,
  historyPath: string,
  say: { info: (line: string) => void; warn: (line: string) => void },
): Promise<BackfillQueueReport | undefined> {
  let report: BackfillQueueReport;
  try {
    report = await queueBackfill(ctx, pgWalDir, historyPath);
  } catch (err) {
    const line = `WAL backfill after ${basename(historyPath)} failed (${errorMessage(err)}): segments of the old timeline the old leader never archived may be missing from the archive (pgvault verify wal shows it); run pgvault wal backfill in this data directory before PostgreSQL recycles them`;
    say.warn(line);
    await alertBackfill(ctx, line, pgWalDir);
    return undefined;
  }
  if (report.queued.length === 0) return report;
  const at = report.switches.map((s) => `${s.parent} → ${s.timeline} at ${s.switchLsn}`).join(', ');
  const line = `WAL backfill after the timeline switch ${at}: ${report.queued.length} segment(s) of the old timeline are in ${pgWalDir} but not in the archive (${range(report.queued)}); queued for archive_command (.ready), which stores them before the new timeline's segments${report.listingFailed ? ` (the archive could not be listed: ${report.listingFailed}; all ${report.candidates} candidates queued)` : ''}`;
  say.info(line);
  return report;
}

async function alertBackfill(ctx: WalPushContext, line: string, pgWal: string): Promise<void> {
  try {
    const { sendAlerts } = require('../alert/notify') as typeof import('../alert/notify');
    await sendAlerts(
      ctx.config,
      [
        {
          kind: 'wal-gap',
          severity: 'critical',
          cluster: ctx.config.clusterName,
          title: 'WAL hole at the failover: backfill failed',
          what: line,
          since: new Date().toISOString(),
          sinceKind: 'observed',
          nextStep: 'pgvault wal backfill',
          hint: `run it in the data directory of the node whose pg_wal is ${pgWal}; pgvault verify wal shows the hole and which node still has the segments`,
        },
      ],
      { stderr: false, write: () => {} },
    );
  } catch {
    // An alert setting in error: the warning line still says it.
  }
}
