import { accessSync, constants } from 'node:fs';
import { dirname, join } from 'node:path';
import type { DrillPlace } from '../catalog/records';
import type { Config, PgConnection } from '../config';
import { errorMessage, MissingToolError, PostgresError } from '../errors';
import { TempCluster } from '../pg/cluster';
import { describeServer, findPgBinary, installedMajors, toolMajorVersion } from '../pg/tools';
import type { Reporter, Vault } from '../vault';
import { sandboxServerEnv } from './sandbox';

/*
 * The scratch server: an empty PostgreSQL cluster this process starts for itself (TempCluster:
 * initdb in TMPDIR as the server's OS user, listening on its own socket only, trust there), into
 * which `restore test`, `verify restore` and `drill` restore full backups, so they never touch the
 * configured server (RESTORE_TEST_TARGET=sandbox, the default). Removed by remove(), and by
 * TempCluster's exit hook should the process end first (SIGINT and SIGTERM included).
 */

/** Where restore tests, drills and `verify indexes` restore: RESTORE_TEST_TARGET, or --on-server. */
export type RestoreTestTarget = 'sandbox' | 'server';

/** Where a restore test, drill or index check restored, for the output and --json. */
export interface RestoredOn {
  readonly kind: RestoreTestTarget;
  /** "a sandbox server (PostgreSQL 15.10) in /tmp/pgvault-pg-…", "the configured server db1:5432". */
  readonly description: string;
  /** The sandbox's server_version. */
  readonly serverVersion?: string;
}

/** How to say "restore on the configured server instead" in a message. */
export const ON_SERVER_HINT =
  'restore on the configured server instead (--on-server, or RESTORE_TEST_TARGET=server)';

export interface ServerBinaries {
  /** The directory holding initdb, pg_ctl and postgres. */
  readonly binDir: string;
  readonly major: number;
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function hasServer(binDir: string): boolean {
  return ['initdb', 'pg_ctl', 'postgres'].every((p) => executable(join(binDir, p)));
}

/** Every set of server binaries here: PG_BIN_DIR's, each /usr/lib/postgresql/N/bin, else PATH's. */
async function installedServers(pgBinDir: string | undefined): Promise<ServerBinaries[]> {
  const found: ServerBinaries[] = [];
  if (pgBinDir && hasServer(pgBinDir)) {
    found.push({ binDir: pgBinDir, major: await toolMajorVersion(join(pgBinDir, 'initdb')) });
  }
  for (const major of installedMajors()) {
    const binDir = join('/usr/lib/postgresql', major, 'bin');
    if (binDir !== pgBinDir && hasServer(binDir)) found.push({ binDir, major: Number(major) });
  }
  if (found.length === 0) {
    try {
      const binDir = dirname(findPgBinary('initdb'));
      if (hasServer(binDir)) found.push({ binDir, major: await toolMajorVersion(join(binDir, 'initdb')) });
    } catch {
      // None on PATH either: the caller says what to install.
    }
  }
  return found;
}

/**
 * The server binaries a dump from a `sourceMajor` server restores into: that major's when installed
 * (the most faithful test), else the newest installed that is not older (a dump loads into the same
 * or a newer major, not an older one). Otherwise one line saying what is missing.
 */
export async function pickServerBinaries(
  pgBinDir: string | undefined,
  sourceMajor: number | undefined,
): Promise<ServerBinaries> {
  const all = await installedServers(pgBinDir);
  const wanted = sourceMajor === undefined ? '' : `-${sourceMajor}`;
  if (all.length === 0) {
    throw new MissingToolError(
      `no PostgreSQL server binaries (initdb, pg_ctl, postgres) here for the restore-test sandbox; install them (apt-get install postgresql${wanted}, or PG_BIN_DIR), or ${ON_SERVER_HINT}`,
    );
  }
  const exact = all.find((s) => s.major === sourceMajor);
  if (exact) return exact;
  const newest = [...all].sort((a, b) => b.major - a.major)[0]!;
  if (sourceMajor === undefined || newest.major >= sourceMajor) return newest;
  throw new MissingToolError(
    `the backup comes from PostgreSQL ${sourceMajor}, but the newest server binaries here are ${newest.major} (${newest.binDir}), which cannot load its dump; install postgresql${wanted} for the sandbox (the task image: PG_SERVER_VERSIONS), or ${ON_SERVER_HINT}`,
  );
}

/**
 * Settings of a server that only takes a restore and is read once: no durability, no WAL beyond
 * what crash safety needs, no archiving, no autovacuum, messages in English.
 */
const SCRATCH_SETTINGS: Readonly<Record<string, string>> = {
  fsync: 'off',
  synchronous_commit: 'off',
  full_page_writes: 'off',
  wal_level: 'minimal',
  max_wal_senders: '0',
  archive_mode: 'off',
  autovacuum: 'off',
  maintenance_work_mem: '256MB',
  lc_messages: 'C',
  logging_collector: 'off',
  ssl: 'off',
};

export class ScratchServer {
  private constructor(
    private readonly cluster: TempCluster,
    readonly binaries: ServerBinaries,
    /** server_version, e.g. "15.10 (Debian 15.10-0+deb12u1)". */
    readonly version: string,
  ) {}

  /** Starts an empty server for a dump taken from a `sourceMajor` server (see pickServerBinaries). */
  static async start(
    config: Config,
    reporter: Reporter,
    sourceMajor: number | undefined,
  ): Promise<ScratchServer> {
    const binaries = await pickServerBinaries(config.pgBinDir, sourceMajor);
    let cluster: TempCluster;
    try {
      cluster = await TempCluster.start({
        binDir: binaries.binDir,
        socketOnly: true,
        // pg_restore --jobs=PARALLEL_JOBS and the row counts' connections must fit.
        settings: {
          ...SCRATCH_SETTINGS,
          max_connections: String(Math.max(100, config.parallelJobs * 2 + 10)),
        },
        env: sandboxServerEnv(),
      });
    } catch (err) {
      // initdb's failure is one line; a server that did not start adds its log's lines: the last says why.
      const lines = errorMessage(err)
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l !== '');
      const why = lines.length > 1 ? `${lines[0]} … ${lines.at(-1)}` : (lines[0] ?? 'unknown error');
      throw new PostgresError(
        `cannot start the restore-test sandbox (PostgreSQL ${binaries.major} in TMPDIR): ${why}; free space in TMPDIR or point TMPDIR elsewhere, or ${ON_SERVER_HINT}`,
        { cause: err },
      );
    }
    try {
      const [row] = await cluster.query<{ v: string }>("SELECT current_setting('server_version') AS v");
      const server = new ScratchServer(cluster, binaries, row?.v ?? String(binaries.major));
      reporter.info(`started ${server.describe()}`);
      return server;
    } catch (err) {
      await cluster.stop();
      throw err;
    }
  }

  /** A connection to the sandbox over its socket, as its bootstrap superuser. */
  connection(): PgConnection {
    return { ...this.cluster.connection('postgres'), isolated: true };
  }

  /**
   * The configuration with the sandbox as its server: everything else (storage, keys, PG_BIN_DIR
   * for pg_restore, PARALLEL_JOBS) as configured.
   */
  configFor(config: Config): Config {
    return { ...config, pg: this.connection() };
  }

  describe(): string {
    return `a sandbox server (PostgreSQL ${this.version.split(' ')[0]}) in ${this.cluster.baseDir}`;
  }

  /** Stops the server and removes its directory. Never throws. */
  async remove(): Promise<void> {
    await this.cluster.stop();
  }
}

/**
 * Where a run that restores full-backup dumps into temporary databases does so: a ScratchServer
 * started for it (target 'sandbox', the default), or the configured server ('server'). `config` is
 * the configuration to restore with; remove() stops the sandbox (nothing on the server).
 */
export interface RestorePlace {
  readonly restoredOn: RestoredOn;
  readonly config: Config;
  /** Set when restoring into a sandbox (no owners nor grants there: none of the backup's roles). */
  readonly scratch?: ScratchServer;
  remove(): Promise<void>;
}

/** Opens the place for `target` (default RESTORE_TEST_TARGET), for dumps from a `sourceMajor` server. */
export async function openRestorePlace(
  vault: Vault,
  target: RestoreTestTarget | undefined,
  sourceMajor: number | undefined,
): Promise<RestorePlace> {
  if ((target ?? vault.config.restoreTestTarget) === 'server') {
    return {
      restoredOn: { kind: 'server', description: `the configured server ${describeServer(vault.config.pg)}` },
      config: vault.config,
      remove: async () => {},
    };
  }
  const scratch = await ScratchServer.start(vault.config, vault.reporter, sourceMajor);
  return {
    restoredOn: { kind: 'sandbox', description: scratch.describe(), serverVersion: scratch.version },
    config: scratch.configFor(vault.config),
    scratch,
    remove: () => scratch.remove(),
  };
}

/** What a drill record keeps of where it restored (DrillRecord.restoredOn): no temporary path. */
export function drillPlace(config: Config, kind: RestoreTestTarget, restoredOn?: RestoredOn): DrillPlace {
  if (kind === 'server') return { kind, server: describeServer(config.pg) };
  return { kind, ...(restoredOn?.serverVersion ? { serverVersion: restoredOn.serverVersion } : {}) };
}
