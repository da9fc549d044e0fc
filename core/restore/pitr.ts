import { existsSync } from 'node:fs';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { CatalogEntry } from '../catalog/catalog';
import { describeChain } from '../catalog/chain';
import type { Manifest, PhysicalInfo, StoredObject } from '../catalog/manifest';
import type { Config } from '../config';
import { IntegrityError, UsageError } from '../errors';
import { asServerUser, chownToServerUser, freeServerPort } from '../pg/cluster';
import { countUserRelations } from '../pg/server';
import { findPgBinary, withClient } from '../pg/tools';
import type { Vault } from '../vault';
import {
  continuousUntil,
  latestTimelinePath,
  missingSegments,
  readWalArchive,
  type WalArchiveState,
} from '../wal/archive';
import { formatLsn, nextSegment, parseLsn, segmentNumber } from '../wal/naming';
import { resolveBaseChain } from './chain';
import { copyLineageName, copySettings } from './copy';
import { buildBeside, clearInterruptedRestore } from './datadir';
import { chooseSourceDatabase, openBackup } from './fetch';
import {
  assertServerUserCanUse,
  copyDatabase,
  extractBaseBackup,
  prepareRecovery,
  type RecoveredPoint,
  RecoverySandbox,
  type StagedChain,
  shellWord,
  stageBaseChain,
  writeRestoreCommandFiles,
} from './sandbox';

/**
 * `restore pitr`: a physical base backup rolled forward through the WAL archive to a target.
 * Everything that can be refused is refused before a byte is restored: an unknown or wrongly keyed
 * backup, a target before the oldest base backup, after the newest archived WAL, or across a gap.
 */

export type RecoveryTarget =
  | {
      readonly kind: 'time';
      readonly time: Date /** As written into recovery_target_time (UTC). */;
      readonly text: string;
    }
  | { readonly kind: 'lsn'; readonly lsn: bigint; readonly text: string }
  | { readonly kind: 'xid'; readonly xid: string }
  | { readonly kind: 'name'; readonly name: string }
  | { readonly kind: 'immediate' }
  /** No target: replay every archived segment, then promote. */
  | { readonly kind: 'end' };

export interface RecoveryTargetInput {
  readonly time?: string;
  readonly lsn?: string;
  readonly xid?: string;
  readonly name?: string;
  readonly immediate?: boolean;
}

/** One target from the command line's choices; more than one is a usage error. */
export function parseRecoveryTarget(input: RecoveryTargetInput): RecoveryTarget {
  const given = (
    [
      ['time', input.time],
      ['lsn', input.lsn],
      ['xid', input.xid],
      ['name', input.name],
      ['immediate', input.immediate ? 'yes' : undefined],
    ] as const
  ).filter(([, v]) => v !== undefined && v !== '');
  if (given.length > 1) {
    throw new UsageError(
      `give one recovery target, not ${given.map(([k]) => k).join(' and ')}: a time, --target-lsn, --target-xid, --target-name or --immediate`,
    );
  }
  if (input.time !== undefined && input.time !== '') {
    const { time, text } = parseTargetTime(input.time);
    return { kind: 'time', time, text };
  }
  if (input.lsn !== undefined && input.lsn !== '') {
    const lsn = parseLsn(input.lsn);
    return { kind: 'lsn', lsn, text: formatLsn(lsn) };
  }
  if (input.xid !== undefined && input.xid !== '') {
    if (!/^\d+$/.test(input.xid.trim()))
      throw new UsageError(
        `--target-xid ${input.xid} is not a transaction id; use the number txid_current() returned`,
      );
    return { kind: 'xid', xid: input.xid.trim() };
  }
  if (input.name !== undefined && input.name !== '') {
    if (Buffer.byteLength(input.name) > 63)
      throw new UsageError(
        `--target-name ${input.name} is longer than a restore point name can be (63 bytes)`,
      );
    return { kind: 'name', name: input.name };
  }
  if (input.immediate) return { kind: 'immediate' };
  return { kind: 'end' };
}

const TIME_PATTERN =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$/i;

/** The time zone pgvault reads zoneless times in: the process's (TZ), as Intl resolves it. */
export function localTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC';
}

/**
 * A target time as ISO 8601 or PostgreSQL's own output ('2026-02-12 10:30:00.123456+00'). Without a
 * zone it is pgvault's local time (TZ), as an operator reads a clock; a local time that does not
 * exist (skipped by a daylight-saving change) is refused. Microseconds are kept: commit times have
 * them, and a target one microsecond after a commit is how "just after this transaction" is said.
 */
export function parseTargetTime(input: string): { time: Date; text: string } {
  const m = TIME_PATTERN.exec(input.trim());
  if (!m) {
    throw new UsageError(
      `${input} is not a time; use ISO 8601 like "2026-02-12 10:30:00" (local time, TZ=${localTimeZone()}) or "2026-02-12T10:30:00+01:00"`,
    );
  }
  const [, y, mo, d, h, mi, s = '0', frac = '', zone] = m;
  let offsetMinutes = 0;
  if (zone === undefined) {
    // The offset the local zone had at that wall-clock time (Date's local constructor applies TZ).
    const wall = new Date(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s));
    if (wall.getHours() !== Number(h) || wall.getMinutes() !== Number(mi) || wall.getDate() !== Number(d)) {
      throw new UsageError(
        `${input} does not exist in ${localTimeZone()} (the clocks skipped it); give the time with its offset, like "${y}-${mo}-${d}T${h}:${mi}:${s.padStart(2, '0')}+00:00"`,
      );
    }
    offsetMinutes = -wall.getTimezoneOffset();
  } else if (!/^(Z|UTC|GMT)$/i.test(zone)) {
    const z = /^([+-])(\d{2}):?(\d{2})?$/.exec(zone)!;
    offsetMinutes = (z[1] === '-' ? -1 : 1) * (Number(z[2]) * 60 + Number(z[3] ?? 0));
  }
  const micro = frac.padEnd(6, '0');
  const local = Date.UTC(
    Number(y),
    Number(mo) - 1,
    Number(d),
    Number(h),
    Number(mi),
    Number(s),
    Number(micro.slice(0, 3)),
  );
  const check = new Date(local);
  if (
    check.getUTCFullYear() !== Number(y) ||
    check.getUTCMonth() !== Number(mo) - 1 ||
    check.getUTCDate() !== Number(d) ||
    Number(h) > 23 ||
    Number(mi) > 59 ||
    Number(s) > 59
  ) {
    throw new UsageError(`${input} is not a valid date and time`);
  }
  const time = new Date(local - offsetMinutes * 60_000);
  const iso = time.toISOString(); // 2026-02-12T10:30:00.123Z
  return { time, text: `${iso.slice(0, 10)} ${iso.slice(11, 19)}.${micro}+00` };
}

/** A target time in UTC and in pgvault's local time zone, as every PITR prints it. */
export interface TargetTime {
  readonly utc: string;
  readonly local: string;
  readonly timeZone: string;
}

export function targetTimeOf(target: RecoveryTarget): TargetTime | undefined {
  if (target.kind !== 'time') return undefined;
  const t = target.time;
  const micro = target.text.slice(20, 26);
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  const offset = -t.getTimezoneOffset();
  const sign = offset < 0 ? '-' : '+';
  const local = `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}.${micro}${sign}${pad(Math.floor(Math.abs(offset) / 60))}:${pad(Math.abs(offset) % 60)}`;
  return { utc: `${target.text.slice(0, 26)} UTC`, local, timeZone: localTimeZone() };
}

/** "target time 2026-02-12 15:30:00.000000 UTC = 2026-02-12 10:30:00.000000-05:00 (America/New_York)". */
export function targetTimeLine(target: RecoveryTarget): string | undefined {
  const t = targetTimeOf(target);
  return t && `target time ${t.utc} = ${t.local} (${t.timeZone})`;
}

export function describeTarget(target: RecoveryTarget): string {
  switch (target.kind) {
    case 'time':
      return `time ${target.text}`;
    case 'lsn':
      return `LSN ${target.text}`;
    case 'xid':
      return `transaction ${target.xid}`;
    case 'name':
      return `restore point "${target.name}"`;
    case 'immediate':
      return 'the end of the base backup (immediate)';
    case 'end':
      return 'the end of the archived WAL';
  }
}

/** The recovery_target_* settings for a target (the rest of the recovery settings are fixed). */
export function recoveryTargetSettings(target: RecoveryTarget): Record<string, string> {
  switch (target.kind) {
    case 'time':
      return { recovery_target_time: target.text };
    case 'lsn':
      return { recovery_target_lsn: target.text };
    case 'xid':
      return { recovery_target_xid: target.xid };
    case 'name':
      return { recovery_target_name: target.name };
    case 'immediate':
      return { recovery_target: 'immediate' };
    case 'end':
      return {};
  }
}

/**
 * Everything postgresql.auto.conf gets for a recovery: 'latest' follows promotions recorded in the
 * archive's history files; 'promote' opens the server for writes once the target is reached.
 */
export function recoverySettings(restoreCommand: string, target: RecoveryTarget): Record<string, string> {
  return {
    restore_command: restoreCommand,
    ...recoveryTargetSettings(target),
    recovery_target_timeline: 'latest',
    recovery_target_action: 'promote',
  };
}

/** How far one base backup can be rolled forward with the archive as it is. */
export interface BackupReach {
  readonly entry: CatalogEntry;
  readonly physical: PhysicalInfo;
  /** The earliest point recovery can stop at: the backup's end. */
  readonly consistentLsn: bigint;
  readonly consistentTime: Date;
  /** Timelines recovery follows from the backup's to the newest ('latest'), oldest first. */
  readonly timelinePath: readonly number[];
  /** False when the archive was not read (--immediate needs none of it). */
  readonly archiveRead: boolean;
  /** End of the WAL continuously archived from the backup on (undefined: not even its stop segment). */
  readonly endSegment?: string;
  readonly endLsn?: bigint;
  readonly endTime?: Date;
  /** The first missing segments after endSegment when the archive continues past a gap. */
  readonly gap?: { readonly first: string; readonly last: string; readonly count: number };
}

export interface PitrPlan {
  readonly reach: BackupReach;
  readonly manifest: Manifest;
  readonly object: StoredObject;
  readonly target: RecoveryTarget;
  /** Why this backup: for `auto`, which rule picked it. */
  readonly choice: string;
  /** Every base backup's reachable window, newest first, for messages. */
  readonly window: string;
  readonly warnings: readonly string[];
  /**
   * The chain that restores the backup, full first (resolveBaseChain): [the backup] for a full one;
   * members checked (manifest, key, every object stored) before anything is restored.
   */
  readonly chain: readonly CatalogEntry[];
}

/** "full X + incr Y" when the plan restores an incremental chain; undefined for a full backup. */
export function combinedChainOf(plan: Pick<PitrPlan, 'chain'>): string | undefined {
  return plan.chain.length > 1 ? describeChain(plan.chain) : undefined;
}

function consistentTime(entry: CatalogEntry): Date {
  const p = entry.manifest.physical;
  return new Date(p?.stopTime ?? entry.manifest.finishedAt);
}

function lsnAtSegmentEnd(segment: string, segmentBytes: number): bigint {
  return (segmentNumber(segment, segmentBytes) + 1n) * BigInt(segmentBytes);
}

/** How far the archive carries a backup. */
export function backupReach(entry: CatalogEntry, state: WalArchiveState | undefined): BackupReach {
  const physical = entry.manifest.physical!;
  const consistentLsn = parseLsn(physical.stopLsn);
  const base = { entry, physical, consistentLsn, consistentTime: consistentTime(entry) };
  if (state === undefined) return { ...base, timelinePath: [physical.timeline], archiveRead: false };
  const path = latestTimelinePath(state, physical.stopWal);
  if (missingSegments(state, physical.stopWal, physical.stopWal, path).length > 0) {
    return { ...base, timelinePath: path, archiveRead: true };
  }
  const until = continuousUntil(state, physical.stopWal, path);
  const reach = {
    ...base,
    timelinePath: path,
    archiveRead: true,
    endSegment: until.last,
    endLsn: lsnAtSegmentEnd(until.last, physical.segmentBytes),
    endTime: until.lastModified,
  };
  // Segments archived past the continuous run mean a gap (numbers compare across timelines).
  const newest = state.timelines.find((t) => t.timeline === path[path.length - 1])?.last;
  const bytes = physical.segmentBytes;
  if (newest === undefined || segmentNumber(newest, bytes) <= segmentNumber(until.last, bytes)) return reach;
  const missing = missingSegments(state, nextSegment(until.last, bytes), newest, path);
  if (missing.length === 0) return reach;
  return {
    ...reach,
    gap: { first: missing[0]!, last: missing[missing.length - 1]!, count: missing.length },
  };
}

function isoSeconds(d: Date | undefined): string {
  return d === undefined ? 'unknown time' : `${d.toISOString().replace('T', ' ').slice(0, 19)}Z`;
}

/** One line per base backup: from its consistency point to where its archive ends. */
export function describeWindow(reaches: readonly BackupReach[]): string {
  if (reaches.length === 0) return 'nothing (no base backup)';
  const parts = reaches.slice(0, 3).map((r) => {
    const from = `${isoSeconds(r.consistentTime)} (LSN ${formatLsn(r.consistentLsn)})`;
    const to = !r.archiveRead
      ? 'the archive (not read: --immediate needs none of it)'
      : r.endSegment === undefined
        ? `its own end only (its last segment ${r.physical.stopWal} is not archived)`
        : `${isoSeconds(r.endTime)} (LSN ${formatLsn(r.endLsn!)}, segment ${r.endSegment})`;
    const gap = r.gap
      ? `, then a gap: ${r.gap.first}${r.gap.count > 1 ? ` to ${r.gap.last} (${r.gap.count} segments)` : ''} missing`
      : '';
    return `from ${r.entry.manifest.id}: ${from} to ${to}${gap}`;
  });
  const more = reaches.length > 3 ? `; ${reaches.length - 3} older base backup(s) not shown` : '';
  return `${parts.join('; ')}${more}`;
}

/**
 * Refuses a target the chosen backup and the archive cannot reach, naming the window. Returns
 * what could not be checked.
 */
function assertReachable(reach: BackupReach, target: RecoveryTarget, window: string): string[] {
  const id = reach.entry.manifest.id;
  const beyond = (what: string) => {
    if (reach.gap) {
      return new UsageError(
        `${what} lies beyond a gap in the WAL archive: ${reach.gap.first}${reach.gap.count > 1 ? ` to ${reach.gap.last}` : ''} missing, so recovery from ${id} stops at ${isoSeconds(reach.endTime)} (segment ${reach.endSegment}); nothing was restored. Reachable: ${window}`,
      );
    }
    return new UsageError(
      `${what} is after the last archived WAL (segment ${reach.endSegment ?? 'none'} stored ${isoSeconds(reach.endTime)}); archive the current segment (SELECT pg_switch_wal()) and retry, or choose an earlier target; nothing was restored. Reachable: ${window}`,
    );
  };
  if (target.kind === 'time') {
    if (target.time < reach.consistentTime) {
      throw new UsageError(
        `target ${target.text} is before ${id} became consistent (${isoSeconds(reach.consistentTime)}); use an older base backup or auto; nothing was restored. Reachable: ${window}`,
      );
    }
    if (reach.endSegment === undefined) throw beyond(`target ${target.text}`);
    if (reach.endTime === undefined) {
      return [
        `the archive does not say when ${reach.endSegment} was stored, so ${target.text} is not checked against its end; recovery stops where the WAL ends`,
      ];
    }
    if (target.time > reach.endTime) throw beyond(`target ${target.text}`);
  } else if (target.kind === 'lsn') {
    if (target.lsn < reach.consistentLsn) {
      throw new UsageError(
        `target LSN ${target.text} is before ${id} became consistent (LSN ${formatLsn(reach.consistentLsn)}); use an older base backup or auto; nothing was restored. Reachable: ${window}`,
      );
    }
    if (reach.endLsn === undefined || target.lsn > reach.endLsn) throw beyond(`target LSN ${target.text}`);
  } else if (target.kind === 'end') {
    if (reach.gap) throw beyond('the end of the archived WAL');
  }
  return [];
}

/**
 * Chooses the base backup (`auto`: the newest one consistent before the target), checks the key
 * and refuses an unreachable target. Reads the catalog and the archive listing; restores nothing.
 */
export async function planPitr(vault: Vault, ref: string, target: RecoveryTarget): Promise<PitrPlan> {
  const wanted = ref.trim();
  const listed = (await vault.catalog.list('base')).filter((e) => e.manifest.physical !== undefined);
  // `auto` and `latest` choose among base backups whose objects are all there (a manifest that
  // outlived its data must not be chosen over the good one before it); a named one is taken as named.
  const bases =
    wanted === 'auto' || wanted === 'latest'
      ? (await Promise.all(listed.map((e) => vault.catalog.whole(e)))).filter(
          (e): e is CatalogEntry => e !== undefined,
        )
      : listed;
  if (bases.length === 0) {
    throw new UsageError(
      `no complete base backup of cluster ${vault.config.clusterName} in ${vault.targets.map((t) => t.location).join(', ')}; take one with \`pgvault backup base\``,
    );
  }
  const state = target.kind === 'immediate' ? undefined : await readWalArchive(vault);
  // Newest first by consistency point, the order `auto` prefers.
  const reaches = bases
    .map((e) => backupReach(e, state))
    .sort((a, b) => b.consistentTime.getTime() - a.consistentTime.getTime());
  const window = describeWindow(reaches);
  const warnings: string[] = [];

  let reach: BackupReach;
  let choice: string;
  if (wanted === 'auto') {
    if (target.kind === 'time' || target.kind === 'lsn') {
      const eligible = reaches.filter((r) =>
        target.kind === 'time' ? r.consistentTime <= target.time : r.consistentLsn <= target.lsn,
      );
      if (eligible.length === 0) {
        const oldest = reaches[reaches.length - 1]!;
        throw new UsageError(
          `target ${describeTarget(target)} is before the oldest base backup (${oldest.entry.manifest.id}, consistent from ${isoSeconds(oldest.consistentTime)}, LSN ${formatLsn(oldest.consistentLsn)}); nothing was restored. Reachable: ${window}`,
        );
      }
      reach = eligible[0]!;
      choice = `auto: ${reach.entry.manifest.id} is the newest base backup that ended before the target (consistent from ${isoSeconds(reach.consistentTime)}, LSN ${formatLsn(reach.consistentLsn)})`;
    } else {
      reach = reaches[0]!;
      choice =
        target.kind === 'xid' || target.kind === 'name'
          ? `auto: ${reach.entry.manifest.id}, the newest base backup (pgvault cannot tell from the catalog when ${describeTarget(target)} happened; if it is older than ${isoSeconds(reach.consistentTime)}, name an older base backup)`
          : `auto: ${reach.entry.manifest.id}, the newest base backup`;
    }
  } else {
    const entry =
      wanted === 'latest'
        ? bases.reduce((a, b) => (consistentTime(b) > consistentTime(a) ? b : a))
        : await vault.catalog.resolve(wanted, 'base');
    if (entry.manifest.type !== 'base' || entry.manifest.physical === undefined) {
      throw new UsageError(
        `backup ${entry.manifest.id} is a ${entry.manifest.type} backup; point-in-time recovery needs a base backup (see \`pgvault restore list\`, or take one with \`pgvault backup base\`)`,
      );
    }
    reach = reaches.find((r) => r.entry.manifest.id === entry.manifest.id) ?? backupReach(entry, state);
    choice = `${reach.entry.manifest.id}${wanted === 'latest' ? ' (latest)' : ''}`;
  }

  const manifest = reach.entry.manifest;
  const archiveId = state?.systemIdentifier;
  if (
    archiveId !== undefined &&
    manifest.server.systemIdentifier !== 'unknown' &&
    archiveId !== manifest.server.systemIdentifier
  ) {
    throw new UsageError(
      `the WAL archive of cluster ${vault.config.clusterName} belongs to system ${archiveId}, but ${manifest.id} was taken from system ${manifest.server.systemIdentifier}; check CLUSTER_NAME and the target, nothing was restored`,
    );
  }
  warnings.push(...assertReachable(reach, target, window));
  if ((target.kind === 'xid' || target.kind === 'name') && reach.gap) {
    warnings.push(
      `the archive has a gap after ${reach.endSegment}: recovery cannot pass ${isoSeconds(reach.endTime)}; if ${describeTarget(target)} is later, it will stop short and fail`,
    );
  }
  // A wrong key is refused here, before any directory or database is touched.
  await openBackup(reach.entry, vault.config);
  const object = manifest.objects.find((o) => o.kind === 'base');
  if (object === undefined) throw new IntegrityError(`backup ${manifest.id} lists no base backup object`);
  // An incremental: its whole chain, checked before anything is written (a missing member refused here).
  const chain = await resolveBaseChain(vault, reach.entry);
  return { reach, manifest, object, target, choice, window, warnings, chain };
}

export interface PitrDataDirectoryOptions {
  readonly pgdata: string;
  /** Use a directory that is not empty (its contents are removed first). */
  readonly force?: boolean;
  /** Keep archiving (into the copy's own lineage, never the original's); off by default. */
  readonly archive?: boolean;
  /**
   * The copy replaces the original server (disaster recovery, the original gone for good): it keeps
   * the original's port, archive settings and CLUSTER_NAME, and is not marked as a copy.
   */
  readonly asOriginal?: boolean;
}

export interface PitrDataDirectoryResult {
  readonly backupId: string;
  readonly choice: string;
  readonly target: string;
  readonly pgdata: string;
  /** The config file restore_command reads, beside the data directory. */
  readonly configFile: string;
  /** The key file restore_command uses; written by this command when the key was given inline. */
  readonly keyFile?: string;
  readonly keyFileWritten: boolean;
  /** The config file holds the AWS keys of pgvault's config (restore_command reads the archive with them). */
  readonly credentialsWritten: boolean;
  readonly restoreCommand: string;
  /**
   * The port written into the copy's postgresql.auto.conf, free on this host when it was laid down;
   * undefined with asOriginal (the original's port is kept).
   */
  readonly port?: number;
  /** 'off' (default), 'on' into the copy's own lineage (--archive), 'original' (asOriginal: unchanged). */
  readonly archiveMode: 'off' | 'on' | 'original';
  /** The CLUSTER_NAME the copy archives and must be backed up under (pgvault.lineage). */
  readonly lineage: string;
  /** The CLUSTER_NAME of the original (pgvault.copy_of), refused for the copy's WAL and backups; none with asOriginal. */
  readonly copyOf?: string;
  readonly archiveCommand?: string;
  /** Starts the copy on this host (as the server's OS user), its log in logFile. */
  readonly startCommand: string;
  readonly logFile: string;
  readonly window: string;
  readonly warnings: readonly string[];
  readonly durationMs: number;
  /** "full X + incr Y + incr Z" when an incremental chain was combined. */
  readonly combinedChain?: string;
}

/** Refuses a directory that holds anything (unless --force) or belongs to a running server. */
async function assertUsableDataDirectory(dir: string, force: boolean): Promise<void> {
  let entries: string[];
  try {
    const info = await stat(dir);
    if (!info.isDirectory()) throw new UsageError(`--pgdata ${dir} exists and is not a directory`);
    entries = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (entries.includes('postmaster.pid')) {
    throw new UsageError(
      `--pgdata ${dir} holds postmaster.pid: a server may be running on it; stop it (pg_ctl -D ${dir} stop) and remove postmaster.pid if it is stale, then retry`,
    );
  }
  if (entries.length > 0 && !force) {
    throw new UsageError(
      `--pgdata ${dir} is not empty (${entries.length} entries); choose an empty directory, or pass --force to replace its contents`,
    );
  }
}

/**
 * `restore pitr <backup> --pgdata DIR`: lays down a data directory that recovers to the target when
 * started: the base backup extracted, recovery.signal, and in postgresql.auto.conf a restore_command
 * that runs this pgvault with a config file written beside the directory (never the key itself).
 */
export async function restorePitrToDataDirectory(
  vault: Vault,
  ref: string,
  target: RecoveryTarget,
  options: PitrDataDirectoryOptions,
): Promise<PitrDataDirectoryResult> {
  const started = Date.now();
  const pgdata = resolve(options.pgdata);
  // What a killed restore of DIR left (beside it, or inside it when it is a mount point) is ours: gone first.
  await clearInterruptedRestore(pgdata, (line) => vault.reporter.warn(line));
  await assertUsableDataDirectory(pgdata, options.force === true);
  const plan = await planPitr(vault, ref, target);
  const { config, reporter } = vault;
  for (const w of plan.warnings) reporter.warn(w);
  reporter.info(`restoring ${plan.choice}`);
  // An incremental chain is read (and checked) in full beside the directory before it is touched.
  const staged =
    plan.chain.length > 1
      ? await stageBaseChain({ chain: plan.chain, config, reporter, parentDir: dirname(pgdata) })
      : undefined;
  try {
    return await layDownPitrDataDirectory(vault, plan, target, options, pgdata, started, staged);
  } finally {
    await staged?.remove();
  }
}

async function layDownPitrDataDirectory(
  vault: Vault,
  plan: PitrPlan,
  target: RecoveryTarget,
  options: PitrDataDirectoryOptions,
  pgdata: string,
  started: number,
  staged: StagedChain | undefined,
): Promise<PitrDataDirectoryResult> {
  const { config, reporter } = vault;
  // Built in a hidden sibling, renamed into place only once complete (./datadir.ts): a failed or
  // killed restore leaves nothing at --pgdata that could be started; --force's old contents go last.
  const slot = { pgdata, replaces: existsSync(pgdata) && (await readdir(pgdata)).length > 0 };
  const stem = `${basename(pgdata)}.pgvault-recovery`;
  const files = await writeRestoreCommandFiles(config, dirname(pgdata), stem);
  try {
    await assertServerUserCanUse(config, [
      { path: dirname(pgdata), what: 'the parent of --pgdata' },
      { path: files.configFile, what: 'the restore_command config file' },
      ...(files.keyFile ? [{ path: files.keyFile, what: 'ENCRYPTION_KEY_FILE' }] : []),
    ]);
    const warnings = [...plan.warnings];
    // The copy is a server of its own on this host: another port, no archiving into the original's
    // archive (or, with --archive, into its own lineage), marked as a copy (see ./copy.ts).
    const asCopy = options.asOriginal !== true;
    const port = asCopy ? await freeServerPort() : undefined;
    const lineage = asCopy ? copyLineageName(config.clusterName) : config.clusterName;
    const archiveCommand =
      asCopy && options.archive ? `CLUSTER_NAME=${lineage} ${files.pgvaultCommand} backup wal %p` : undefined;
    const settings = {
      ...recoverySettings(files.restoreCommand, target),
      ...(port === undefined
        ? {}
        : copySettings({ sourceCluster: config.clusterName, lineage, port, archiveCommand })),
    };
    const dataDir = { entry: plan.reach.entry, object: plan.object, config, reporter };
    const how = `pgvault restore pitr from ${plan.manifest.id} to ${describeTarget(target)}`;
    const build = async (dir: string) => {
      await extractBaseBackup({ ...dataDir, dataDir: dir, staged });
      warnings.push(...(await prepareRecovery(dir, settings, how)).warnings);
    };
    await buildBeside(slot, build, (line) => reporter.warn(line));
    const logFile = join(dirname(pgdata), `${stem}.log`);
    await writeFile(logFile, '', { mode: 0o600, flag: 'a' });
    await chownToServerUser(logFile);
    const start = asServerUser(findPgBinary('pg_ctl', config.pgBinDir), [
      '-D',
      pgdata,
      '-l',
      logFile,
      'start',
    ]);
    return {
      backupId: plan.manifest.id,
      choice: plan.choice,
      target: describeTarget(target),
      pgdata,
      configFile: files.configFile,
      keyFile: files.keyFile,
      keyFileWritten: files.keyFileWritten,
      credentialsWritten: files.credentialsWritten,
      restoreCommand: files.restoreCommand,
      port,
      archiveMode: !asCopy ? 'original' : archiveCommand === undefined ? 'off' : 'on',
      lineage,
      copyOf: asCopy ? config.clusterName : undefined,
      archiveCommand,
      startCommand: [start.file, ...start.args].map(shellWord).join(' '),
      logFile,
      window: plan.window,
      warnings,
      durationMs: Date.now() - started,
      ...(staged ? { combinedChain: staged.description } : {}),
    };
  } catch (err) {
    // buildBeside removed its half-built directory: --pgdata is as it was.
    await files.remove();
    throw err;
  }
}

export interface PitrDatabaseOptions {
  /** Name of the database created in the configured server. */
  readonly database: string;
  /**
   * Database inside the recovered cluster. Default (chooseSourceDatabase): the one with the target's
   * name, else the cluster's one user database besides postgres.
   */
  readonly from?: string;
  /** Give up waiting for recovery after this long; no limit by default. */
  readonly maxWaitMs?: number;
}

export interface PitrDatabaseResult {
  readonly backupId: string;
  readonly choice: string;
  readonly target: string;
  readonly source: string;
  readonly database: string;
  readonly createdDatabase: boolean;
  readonly recovered: RecoveredPoint;
  readonly window: string;
  readonly warnings: readonly string[];
  /** Start to finish: an RTO sample. */
  readonly durationMs: number;
  readonly recoveryMs: number;
  readonly copyMs: number;
  /** "full X + incr Y + incr Z" when an incremental chain was combined. */
  readonly combinedChain?: string;
}

/** The configured server must be reachable and must not hold a non-empty database of that name. */
async function checkTargetDatabase(config: Config, database: string): Promise<{ exists: boolean }> {
  const exists = await withClient(config.pg, config.pg.database ?? 'postgres', async (c) => {
    const r = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    return (r.rowCount ?? 0) > 0;
  });
  if (exists && (await countUserRelations(config.pg, database)) > 0) {
    throw new UsageError(
      `database "${database}" already exists on the target server and is not empty; choose another name or drop it first; nothing was restored`,
    );
  }
  return { exists };
}

/**
 * `restore pitr <backup> <time> <database>`: recovers into a sandbox instance this command starts
 * (temporary directory, its own socket, as the server's OS user), waits until it reached the target
 * and promoted, copies the database into the configured server, and always removes the sandbox.
 */
export async function restorePitrDatabase(
  vault: Vault,
  ref: string,
  target: RecoveryTarget,
  options: PitrDatabaseOptions,
): Promise<PitrDatabaseResult> {
  const started = Date.now();
  const { config, reporter } = vault;
  const plan = await planPitr(vault, ref, target);
  const { exists } = await checkTargetDatabase(config, options.database);
  for (const w of plan.warnings) reporter.warn(w);
  reporter.info(`recovering ${plan.choice} to ${describeTarget(target)} in a sandbox`);

  const sandbox = await RecoverySandbox.create(config, reporter);
  try {
    await sandbox.layDown(
      plan.reach.entry,
      plan.object,
      (restoreCommand) => ({
        settings: recoverySettings(restoreCommand, target),
        comment: `pgvault restore pitr (sandbox) from ${plan.manifest.id} to ${describeTarget(target)}`,
      }),
      plan.chain,
    );
    reporter.info(
      `base backup extracted into the sandbox in ${((Date.now() - started) / 1000).toFixed(1)} s; starting recovery`,
    );
    const recoveryStarted = Date.now();
    await sandbox.start();
    const recovered = await sandbox.waitForPromotion({ maxWaitMs: options.maxWaitMs });
    const recoveryMs = Date.now() - recoveryStarted;
    const names = await withClient(sandbox.connection('template1'), 'template1', async (c) => {
      const r = await c.query<{ datname: string }>(
        'SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY 1',
      );
      return r.rows.map((x) => x.datname);
    });
    const source = chooseSourceDatabase(
      names,
      { from: options.from, target: options.database },
      `the cluster recovered from ${plan.manifest.id}`,
      false,
    );
    reporter.info(
      `recovered to ${recovered.lastTransactionTime ?? 'no transaction after the backup'}${recovered.lsn ? ` (LSN ${recovered.lsn})` : ''}; copying "${source}" into "${options.database}"`,
    );
    const copyStarted = Date.now();
    const created = await copyDatabase(sandbox, config, {
      source,
      target: options.database,
      targetExists: exists,
    });
    return {
      backupId: plan.manifest.id,
      choice: plan.choice,
      target: describeTarget(target),
      source,
      database: options.database,
      createdDatabase: created,
      recovered,
      window: plan.window,
      warnings: plan.warnings,
      durationMs: Date.now() - started,
      recoveryMs,
      copyMs: Date.now() - copyStarted,
      ...(plan.chain.length > 1 ? { combinedChain: describeChain(plan.chain) } : {}),
    };
  } finally {
    await sandbox.remove();
  }
}
