import { backupBase } from '../../core/backup/base';
import type { ManifestBody } from '../../core/catalog/manifest';
import { SCHEDULES, type Schedule } from '../../core/catalog/naming';
import { UsageError } from '../../core/errors';
import {
  parseRecoveryTarget,
  restorePitrDatabase,
  restorePitrToDataDirectory,
  targetTimeLine,
  targetTimeOf,
} from '../../core/restore/pitr';
import { emit, formatBytes, formatDuration, type GlobalOptions, vaultFor } from '../output';

function baseSummary(m: ManifestBody, notes: readonly string[]): string {
  const o = m.objects[0]!;
  const p = m.physical;
  return [
    `backup ${m.id} complete: ${formatBytes(m.rawSize)} read, ${formatBytes(m.storedSize)} stored, ${formatDuration(m.durationMs)}`,
    ...(m.incrementalOf !== undefined ? [`  incremental of ${m.incrementalOf}`] : []),
    ...notes.map((n) => `  ${n}`),
    `  ${o.key}`,
    ...(p
      ? [
          `  timeline ${p.timeline}, WAL ${p.startLsn} to ${p.stopLsn} (${p.startWal} to ${p.stopWal}${p.walIncluded ? ', inside the backup' : ''})`,
        ]
      : []),
  ].join('\n');
}

export async function backupBaseCommand(
  schedule: string | undefined,
  opts: GlobalOptions & { incremental?: boolean },
) {
  const s = (schedule ?? 'manual').toLowerCase();
  if (!(SCHEDULES as readonly string[]).includes(s)) {
    throw new UsageError(`schedule ${schedule} is not allowed; use one of ${SCHEDULES.join(', ')}`);
  }
  const notes: string[] = [];
  const m = await backupBase(vaultFor(opts), {
    schedule: s as Schedule,
    incremental: opts.incremental === true,
    note: (line) => notes.push(line),
  });
  emit(
    opts,
    {
      ok: true,
      incremental: m.incrementalOf !== undefined,
      ...(m.incrementalOf !== undefined ? { incrementalOf: m.incrementalOf } : {}),
      ...(notes.length > 0 ? { notes } : {}),
      manifest: m,
    },
    () => baseSummary(m, notes),
  );
  return m;
}

interface PitrOptions extends GlobalOptions {
  readonly targetTime?: string;
  readonly targetLsn?: string;
  readonly targetXid?: string;
  readonly targetName?: string;
  readonly immediate?: boolean;
  readonly pgdata?: string;
  readonly force?: boolean;
  /** With --pgdata: keep archiving, into the copy's own lineage. */
  readonly archive?: boolean;
  /** With --pgdata: the copy replaces the original server; it keeps its port, archiving and CLUSTER_NAME. */
  readonly asOriginal?: boolean;
  /** Database inside the recovered cluster, when it differs from the name to create. */
  readonly from?: string;
}

/**
 * `restore pitr <backup|latest|auto> [time] [database]`. With a --target-* option the time
 * argument is left out, so the word after the backup is the database.
 */
export async function restorePitrCommand(
  backup: string,
  time: string | undefined,
  db: string | undefined,
  opts: PitrOptions,
) {
  let timeArg = time;
  let database = db;
  const optionTarget =
    opts.targetTime !== undefined ||
    opts.targetLsn !== undefined ||
    opts.targetXid !== undefined ||
    opts.targetName !== undefined ||
    opts.immediate === true;
  if (optionTarget && timeArg !== undefined) {
    if (database !== undefined) {
      throw new UsageError(
        `"${timeArg}" and a --target option both name a target; use one, with the database after the backup: restore pitr ${backup} <database> --target-...`,
      );
    }
    database = timeArg;
    timeArg = undefined;
  }
  const target = parseRecoveryTarget({
    time: timeArg ?? opts.targetTime,
    lsn: opts.targetLsn,
    xid: opts.targetXid,
    name: opts.targetName,
    immediate: opts.immediate,
  });
  if (opts.pgdata !== undefined && database !== undefined) {
    throw new UsageError(
      `--pgdata lays down a whole data directory, a database name copies one database; give one of them, not both`,
    );
  }
  if (opts.pgdata === undefined && (opts.archive === true || opts.asOriginal === true)) {
    throw new UsageError(
      `${opts.archive ? '--archive' : '--as-original'} goes with --pgdata DIR (a data directory laid down to be started); a database copied through the sandbox archives nothing; nothing was restored`,
    );
  }
  const vault = vaultFor(opts);
  // The moment recovery stops at, in UTC and local time, before anything is restored.
  const targetTime = targetTimeOf(target);
  const timeLine = targetTimeLine(target);
  if (timeLine !== undefined) vault.reporter.info(timeLine);
  const timeLines = timeLine !== undefined ? [`  ${timeLine}`] : [];
  if (opts.pgdata !== undefined) {
    const r = await restorePitrToDataDirectory(vault, backup, target, {
      pgdata: opts.pgdata,
      force: opts.force,
      archive: opts.archive,
      asOriginal: opts.asOriginal,
    });
    emit(opts, { ok: true, ...r, ...(targetTime ? { targetTime } : {}) }, () =>
      [
        `laid down ${r.backupId} in ${r.pgdata} for recovery to ${r.target} (${formatDuration(r.durationMs)})`,
        ...timeLines,
        `  base backup: ${r.choice}`,
        ...(r.combinedChain ? [`  combined chain: ${r.combinedChain}`] : []),
        `  restore_command = '${r.restoreCommand}' (config ${r.configFile})`,
        `  start it on this host: ${r.startCommand}; it replays the archived WAL to the target, then promotes`,
        ...(r.copyOf === undefined
          ? [
              `  --as-original: it keeps the original's port and archive_command and archives into CLUSTER_NAME=${r.lineage}; start it only once the original server is stopped for good`,
            ]
          : [
              `  port ${r.port} (free now; to change it, edit port in ${r.pgdata}/postgresql.auto.conf, or add -o '-p PORT' to pg_ctl)`,
              r.archiveMode === 'off'
                ? `  archive_mode = off: the copy archives nothing (restore again with --archive to archive it under CLUSTER_NAME=${r.lineage})`
                : `  archive_mode = on, into its own lineage: archive_command stores its WAL under CLUSTER_NAME=${r.lineage}, never ${r.copyOf}`,
              `  marked as a copy of ${r.copyOf} (pgvault.copy_of): back it up under CLUSTER_NAME=${r.lineage} or another name; ${r.copyOf} is refused`,
            ]),
        ...(r.keyFileWritten
          ? [
              `  ${r.keyFile} holds the encryption key for restore_command: delete it once recovery has finished`,
            ]
          : []),
        ...(r.credentialsWritten
          ? [
              `  ${r.configFile} holds the cloud credentials of your config for restore_command (0600): delete it once recovery has finished`,
            ]
          : []),
        ...r.warnings.map((w) => `  warning: ${w}`),
      ].join('\n'),
    );
    return r;
  }
  if (database === undefined) {
    throw new UsageError(
      'name the database to copy into the configured server (restore pitr <backup> "<time>" <database>), or lay down a whole data directory with --pgdata DIR',
    );
  }
  const r = await restorePitrDatabase(vault, backup, target, { database, from: opts.from });
  const point = r.recovered;
  emit(opts, { ok: true, ...r, ...(targetTime ? { targetTime } : {}) }, () =>
    [
      `recovered "${r.source}" from ${r.backupId} to ${r.target} into "${r.database}" in ${formatDuration(r.durationMs)} (recovery ${formatDuration(r.recoveryMs)}, copy ${formatDuration(r.copyMs)})`,
      ...timeLines,
      `  base backup: ${r.choice}`,
      ...(r.combinedChain ? [`  combined chain: ${r.combinedChain}`] : []),
      `  recovered point: last transaction ${point.lastTransactionTime ?? 'none after the backup'}, LSN ${point.lsn ?? 'unknown'}${point.timeline ? `, new timeline ${point.timeline}` : ''}${point.stopReason ? ` (recovery stopping ${point.stopReason})` : ''}`,
      `  ${point.segmentsRestored} WAL segment(s) restored from the archive`,
      ...r.warnings.map((w) => `  warning: ${w}`),
    ].join('\n'),
  );
  return r;
}
