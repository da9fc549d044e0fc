import type { Client } from 'pg';
import type { PgConnection } from '../config';
import { errorMessage, PostgresError } from '../errors';
import { withClient } from './tools';

/**
 * What a server says about its own WAL archiving: the settings that decide whether it archives,
 * and pg_stat_archiver, which tells a broken archive_command (failures more recent than the last
 * success) from a slow one (no failures, segments waiting with a `.ready` status file).
 */
export interface ArchiverState {
  readonly walLevel: string;
  readonly archiveMode: string;
  readonly archiveCommand: string;
  /** archive_library (PostgreSQL 15+): when set, archive_command is not used. */
  readonly archiveLibrary: string;
  readonly inRecovery: boolean;
  readonly systemIdentifier?: string;
  /** pgvault.copy_of and pgvault.lineage: set on a copy laid down by restore pitr --pgdata (core/restore/copy.ts). */
  readonly copyOf?: string;
  readonly lineage?: string;
  readonly archivedCount: number;
  readonly lastArchivedWal: string | null;
  readonly lastArchivedTime: string | null;
  readonly failedCount: number;
  readonly lastFailedWal: string | null;
  readonly lastFailedTime: string | null;
  /**
   * The segment being written now (undefined on a standby). pg_walfile_name() of an LSN at a
   * segment's very start names the previous segment, hence + 1.
   */
  readonly currentWal?: string;
  /**
   * Files waiting for archive_command (`archive_status/*.ready`, pg_ls_archive_statusdir()):
   * undefined when this role may not list them (it needs pg_monitor or superuser).
   */
  readonly ready?: {
    readonly count: number;
    readonly oldest?: string;
    /** Seconds since the oldest waiting file was completed. */
    readonly oldestAgeSeconds?: number;
  };
  /** The server's clock when this was read (ages are measured on it). */
  readonly now: string;
}

/** Whether the server archives at all (archive_mode on or always). */
export function archives(state: Pick<ArchiverState, 'archiveMode'>): boolean {
  return state.archiveMode === 'on' || state.archiveMode === 'always';
}

/** Whether the archiver's latest attempt failed (a failure more recent than the last success). */
export function lastAttemptFailed(state: ArchiverState): boolean {
  if (state.lastFailedTime === null) return false;
  return (
    state.lastArchivedTime === null || Date.parse(state.lastFailedTime) > Date.parse(state.lastArchivedTime)
  );
}

export async function readArchiverState(conn: PgConnection): Promise<ArchiverState> {
  return withClient(conn, conn.database ?? 'postgres', (c) => archiverStateOf(c));
}

export async function archiverStateOf(c: Client): Promise<ArchiverState> {
  const s = await c.query<{
    wal_level: string;
    archive_mode: string;
    archive_command: string;
    archive_library: string | null;
    in_recovery: boolean;
    archived_count: string;
    last_archived_wal: string | null;
    last_archived_time: Date | null;
    failed_count: string;
    last_failed_wal: string | null;
    last_failed_time: Date | null;
    now: Date;
    copy_of: string | null;
    lineage: string | null;
  }>(
    `SELECT current_setting('wal_level') AS wal_level, current_setting('archive_mode') AS archive_mode,
            current_setting('archive_command') AS archive_command,
            current_setting('archive_library', true) AS archive_library,
            pg_is_in_recovery() AS in_recovery, a.archived_count::text AS archived_count,
            a.last_archived_wal, a.last_archived_time, a.failed_count::text AS failed_count,
            a.last_failed_wal, a.last_failed_time, clock_timestamp() AS now,
            current_setting('pgvault.copy_of', true) AS copy_of, current_setting('pgvault.lineage', true) AS lineage
       FROM pg_stat_archiver a`,
  );
  const row = s.rows[0]!;
  const optional = async <T>(
    sql: string,
    pick: (r: Record<string, unknown>) => T,
  ): Promise<T | undefined> => {
    try {
      const r = await c.query(sql);
      return r.rows[0] === undefined ? undefined : pick(r.rows[0] as Record<string, unknown>);
    } catch {
      // Not allowed for this role, or not on a standby: the answer is "unknown", not a failure.
      return undefined;
    }
  };
  const systemIdentifier = await optional(
    'SELECT system_identifier::text AS id FROM pg_control_system()',
    (r) => String(r.id),
  );
  const currentWal = row.in_recovery
    ? undefined
    : await optional('SELECT pg_walfile_name(pg_current_wal_lsn() + 1) AS name', (r) => String(r.name));
  const ready = await optional(
    `SELECT count(*)::int AS count, min(substr(name, 1, length(name) - 6)) AS oldest,
            extract(epoch FROM clock_timestamp() - min(modification))::float8 AS age
       FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'`,
    (r) => ({
      count: Number(r.count),
      oldest: (r.oldest as string | null) ?? undefined,
      oldestAgeSeconds: r.age === null ? undefined : Math.max(0, Math.round(Number(r.age))),
    }),
  );
  const iso = (d: Date | null) => (d === null ? null : d.toISOString());
  return {
    walLevel: row.wal_level,
    archiveMode: row.archive_mode,
    archiveCommand: row.archive_command,
    archiveLibrary: row.archive_library ?? '',
    inRecovery: row.in_recovery,
    systemIdentifier,
    archivedCount: Number(row.archived_count),
    lastArchivedWal: row.last_archived_wal,
    lastArchivedTime: iso(row.last_archived_time),
    failedCount: Number(row.failed_count),
    lastFailedWal: row.last_failed_wal,
    lastFailedTime: iso(row.last_failed_time),
    currentWal,
    ready,
    now: row.now.toISOString(),
    copyOf: row.copy_of || undefined,
    lineage: row.lineage || undefined,
  };
}

/**
 * Completes the segment being written so that the archiver gets it: a transaction id first (its
 * commit record gives the segment content; pg_switch_wal() on a segment with nothing written since
 * the last switch does nothing), then the switch. Returns the segment completed.
 */
export async function forceWalSwitch(c: Client): Promise<string> {
  await c.query('SELECT txid_current()');
  try {
    const r = await c.query<{ name: string }>('SELECT pg_walfile_name(pg_switch_wal() - 1) AS name');
    return r.rows[0]!.name;
  } catch (err) {
    if ((err as { code?: string }).code === '42501') {
      throw new PostgresError(
        `this role may not switch WAL (${errorMessage(err)}); run the check as a superuser, or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO the role in PGUSER`,
        { cause: err },
      );
    }
    throw err;
  }
}
