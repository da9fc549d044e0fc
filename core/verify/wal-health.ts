import { errorMessage, PgVaultError } from '../errors';
import { type ArchiverState, archives, lastAttemptFailed, readArchiverState } from '../pg/archiving';
import { serverLabel } from '../topology';
import type { Vault } from '../vault';

/**
 * `verify wal` looks at the archive; this looks at the server feeding it, when one is reachable, so
 * that "OK" is never said of an archive that stopped receiving WAL: a server that archives into an
 * empty archive, segments waiting in pg_wal (.ready) for longer than the RPO target, or an archiver
 * whose last attempt failed.
 */
export interface WalServerHealth {
  /** Whether a server was reached and judged. */
  readonly checked: boolean;
  readonly server: string;
  /** Why it was not judged. */
  readonly skipped?: string;
  readonly archiveMode?: string;
  readonly archiveCommand?: string;
  readonly lastArchivedWal?: string | null;
  readonly lastFailedWal?: string | null;
  readonly lastFailedTime?: string | null;
  readonly waiting?: ArchiverState['ready'];
  /** Each one makes verify wal not OK. */
  readonly problems: readonly string[];
}

export async function walServerHealth(
  vault: Vault,
  /** What the archive holds; undefined when it could not be read (its own checks are then skipped). */
  archive: { readonly timelines: readonly unknown[]; readonly systemIdentifier?: string } | undefined,
): Promise<WalServerHealth> {
  const { config } = vault;
  let state: ArchiverState;
  try {
    state = await readArchiverState(config.pg);
  } catch (err) {
    return {
      checked: false,
      server: serverLabel(config.pg),
      skipped: `no server reachable (${errorMessage(err)})`,
      problems: [],
    };
  }
  // After the connection: with Patroni, the leader it went to (core/topology).
  const server = serverLabel(config.pg);
  if (
    archive?.systemIdentifier !== undefined &&
    state.systemIdentifier !== undefined &&
    archive.systemIdentifier !== state.systemIdentifier
  ) {
    return {
      checked: false,
      server,
      skipped: `the server at ${server} is another cluster (system identifier ${state.systemIdentifier}, the archive's is ${archive.systemIdentifier})`,
      problems: [],
    };
  }
  const problems: string[] = [];
  const rpoSeconds = config.alerts.rpoTargetMinutes * 60;
  if (!archives(state)) {
    if (archive !== undefined && archive.timelines.length > 0)
      problems.push(
        `archive_mode is ${state.archiveMode} on ${server}, whose WAL this archive holds: no new WAL arrives; set archive_mode = on and restart PostgreSQL`,
      );
  } else {
    if (archive?.timelines.length === 0)
      problems.push(
        `${server} archives (archive_mode=${state.archiveMode}, archive_command '${state.archiveCommand}') but the archive holds no WAL; run pgvault check to see why`,
      );
    if (lastAttemptFailed(state))
      problems.push(
        `the archiver's last attempt failed (${state.lastFailedWal} at ${state.lastFailedTime}, ${state.failedCount} failure(s)); run pgvault check`,
      );
    const oldestAge = state.ready?.oldestAgeSeconds;
    if (oldestAge !== undefined && oldestAge > rpoSeconds)
      problems.push(
        `${state.ready!.count} WAL file(s) wait in pg_wal for archive_command, the oldest (${state.ready!.oldest}) for ${Math.round(oldestAge / 60)} min, longer than the RPO target (${config.alerts.rpoTargetMinutes} min); run pgvault check`,
      );
  }
  return {
    checked: true,
    server,
    archiveMode: state.archiveMode,
    archiveCommand: state.archiveCommand,
    lastArchivedWal: state.lastArchivedWal,
    lastFailedWal: state.lastFailedWal,
    lastFailedTime: state.lastFailedTime,
    waiting: state.ready,
    problems,
  };
}

/**
 * The failure `verify wal` and `verify all` report for an unhealthy server: exit 1, not 3, since
 * nothing stored is wrong (the archive is intact as far as it goes; it stopped growing).
 * undefined when the server is healthy or was not checked.
 */
export function walServerFailure(server: WalServerHealth): PgVaultError | undefined {
  if (server.problems.length === 0) return undefined;
  return new PgVaultError(`WAL archiving is not healthy: ${server.problems.join('; ')}`);
}

/** The server's lines in the text output of `verify wal` and `verify all`. */
export function describeWalServerHealth(server: WalServerHealth): string[] {
  if (!server.checked) return [`server: not checked, ${server.skipped}`];
  const waiting = server.waiting
    ? `, ${server.waiting.count} file(s) waiting in pg_wal${server.waiting.oldest ? ` (oldest ${server.waiting.oldest}, ${server.waiting.oldestAgeSeconds} s)` : ''}`
    : '';
  return [
    `server ${server.server}: archive_mode ${server.archiveMode}, last archived ${server.lastArchivedWal ?? 'none'}${waiting}`,
    ...server.problems.map((p) => `PROBLEM: ${p}`),
  ];
}
