import { readFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { UsageError } from '../errors';

/*
 * A copy laid down by `restore pitr --pgdata` has the same system identifier as the server it was
 * backed up from, so WAL and backups from it are indistinguishable from the original's by system id.
 * It is marked instead, in its postgresql.auto.conf (a custom setting, which PostgreSQL accepts):
 *
 *   pgvault.copy_of = '<the original's CLUSTER_NAME>'
 *   pgvault.lineage = '<the copy's own CLUSTER_NAME>'
 *
 * Every writer refuses to store a copy's WAL or backups under the original's CLUSTER_NAME: `backup
 * wal` and the uploader read the mark from the data directory the WAL file is in (%p is
 * pg_wal/<name>, relative to it), backups over libpq ask the server (current_setting). The copy
 * archives nothing by default (archive_mode = off); with --archive its archive_command carries its
 * own lineage as CLUSTER_NAME, so its WAL lands in a cluster folder of its own.
 */

export const COPY_OF_SETTING = 'pgvault.copy_of';
export const LINEAGE_SETTING = 'pgvault.lineage';

/** What marks a data directory or server as a copy. */
export interface CopyMarks {
  /** The CLUSTER_NAME of the server the copy was restored from. */
  readonly copyOf?: string;
  /** The CLUSTER_NAME the copy archives and backs up under (its own lineage). */
  readonly lineage?: string;
}

/** `<cluster>-copy-<UTC yyyymmddhhmmss>`, a valid CLUSTER_NAME (at most 63 characters). */
export function copyLineageName(sourceCluster: string, now: Date = new Date()): string {
  const stamp = now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  const suffix = `-copy-${stamp}`;
  return `${sourceCluster.slice(0, 63 - suffix.length)}${suffix}`;
}

/** The settings that make a laid-down copy its own server: appended last to postgresql.auto.conf. */
export function copySettings(options: {
  readonly sourceCluster: string;
  readonly lineage: string;
  readonly port: number;
  /** archive_command into the copy's own lineage (--archive); archiving is off without it. */
  readonly archiveCommand?: string;
}): Record<string, string> {
  return {
    port: String(options.port),
    archive_mode: options.archiveCommand === undefined ? 'off' : 'on',
    archive_command: options.archiveCommand ?? '',
    // The original's clean-up command would delete from its archive at the copy's restartpoints,
    // and a configured pid file names the original's on this host.
    archive_cleanup_command: '',
    external_pid_file: '',
    [COPY_OF_SETTING]: options.sourceCluster,
    [LINEAGE_SETTING]: options.lineage,
  };
}

/** The last value of a custom setting in a postgresql.auto.conf text, as ALTER SYSTEM writes it. */
function settingIn(text: string, name: string): string | undefined {
  const pattern = new RegExp(`^\\s*${name.replace('.', '\\.')}\\s*=?\\s*'((?:[^']|'')*)'`, 'gm');
  let value: string | undefined;
  for (const m of text.matchAll(pattern)) value = m[1]!.replace(/''/g, "'").replace(/\\\\/g, '\\');
  return value === '' ? undefined : value;
}

/** The marks in a data directory's postgresql.auto.conf; none when it has no such file. */
export async function copyMarksOfDataDirectory(dataDir: string): Promise<CopyMarks> {
  let text: string;
  try {
    text = await readFile(join(dataDir, 'postgresql.auto.conf'), 'utf8');
  } catch {
    return {};
  }
  return { copyOf: settingIn(text, COPY_OF_SETTING), lineage: settingIn(text, LINEAGE_SETTING) };
}

/**
 * Refuses to store a copy's WAL or backup under the CLUSTER_NAME of the server it was copied from,
 * in one line that says what to do.
 */
export function refuseCopyIntoSource(clusterName: string, marks: CopyMarks, what: string): void {
  if (marks.copyOf === undefined || marks.copyOf !== clusterName) return;
  const own =
    marks.lineage !== undefined && marks.lineage !== clusterName ? marks.lineage : `${clusterName}-copy`;
  throw new UsageError(
    `${what} comes from a copy of cluster ${marks.copyOf} laid down by pgvault restore pitr (${COPY_OF_SETTING} = '${marks.copyOf}'): storing it under CLUSTER_NAME=${clusterName} would mix the copy's timelines with the original's; set CLUSTER_NAME=${own} (the copy's own lineage) or another name; nothing was stored (if this copy now replaces the original server, ALTER SYSTEM RESET ${COPY_OF_SETTING} and reload it first)`,
  );
}

/**
 * What `backup init` and `pgvault check` say (in one line: `${summary}; ${nextStep}`) when the server
 * they reach is a copy marked with this very CLUSTER_NAME, whose WAL and backups every writer
 * refuses; undefined otherwise.
 */
export function copyNotice(
  clusterName: string,
  marks: CopyMarks,
): { readonly summary: string; readonly nextStep: string } | undefined {
  if (marks.copyOf === undefined || marks.copyOf !== clusterName) return undefined;
  const own =
    marks.lineage !== undefined && marks.lineage !== clusterName ? marks.lineage : `${clusterName}-copy`;
  return {
    summary: `this server is a copy of cluster ${clusterName} laid down by pgvault restore pitr (${COPY_OF_SETTING} = '${clusterName}'): its WAL and backups are refused under CLUSTER_NAME=${clusterName}`,
    nextStep: `set CLUSTER_NAME=${own} (its own lineage) for it, or, if it now replaces the original server, ALTER SYSTEM RESET ${COPY_OF_SETTING} and reload it`,
  };
}

/**
 * Refuses a WAL file of a copy's data directory bound for the original's cluster folder. Only a
 * file in a pg_wal directory is looked at (archive_command's %p); `wal receive`'s own folder is not
 * a data directory.
 */
export async function refuseCopyWal(clusterName: string, walPath: string): Promise<void> {
  const walDir = dirname(resolve(walPath));
  if (basename(walDir) !== 'pg_wal') return;
  const marks = await copyMarksOfDataDirectory(dirname(walDir));
  refuseCopyIntoSource(clusterName, marks, `WAL file ${basename(walPath)}`);
}
