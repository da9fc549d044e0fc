import { chmod, chown, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfig } from '../../core/config';
import { serverOsUser, TempCluster } from '../../core/pg/cluster';
import { openVault, type Vault } from '../../core/vault';
import { startCluster } from '../helpers/pg';
import { recordingReporter, tempDir } from '../helpers/vault';
import { killProcessesNaming } from './wal-fixture';

/**
 * A cluster whose archive_command is pgvault's own `backup wal`, run by PostgreSQL as its OS user,
 * with 1 MB WAL segments (archiving and recovery stay quick) and commit timestamps on, so tests
 * can read back exactly when each batch committed. Shared by the pitr-*.test.ts files.
 */
export const PGVAULT_BIN = join(__dirname, '..', '..', 'bin', 'pgvault.js');

export interface ArchivingCluster {
  readonly cluster: TempCluster;
  readonly work: string;
  readonly backupDir: string;
  /** The config file archive_command uses (and the CLI in tests). */
  readonly configFile: string;
  /** The settings in configFile, as KEY=VALUE. */
  readonly settings: Readonly<Record<string, string>>;
  /** archive_command, for a second server writing into the same archive. */
  readonly archiveCommand: string;
  vault(extra?: Record<string, string>): Vault;
  stop(): Promise<void>;
}

/** Makes a path the server's OS user's (we are root in CI; the server and its commands are not). */
export async function giveToServerUser(path: string): Promise<void> {
  const user = serverOsUser();
  if (user) await chown(path, user.uid, user.gid);
}

export async function startArchivingCluster(
  options: { readonly extra?: Record<string, string>; readonly cluster?: string } = {},
): Promise<ArchivingCluster> {
  const work = await tempDir('pgvault-pitr-test-');
  // The server's user must reach the config, key and archive inside (tempDir makes 0700 dirs).
  await chmod(work.path, 0o755);
  const backupDir = join(work.path, 'backups');
  const clusterName = options.cluster ?? 'pitr';
  await mkdir(join(backupDir, clusterName), { recursive: true, mode: 0o700 });
  await giveToServerUser(backupDir);
  await giveToServerUser(join(backupDir, clusterName));
  const keyFile = join(work.path, 'encryption-key');
  await writeFile(keyFile, 'pitr test key, long enough\n', { mode: 0o600 });
  await giveToServerUser(keyFile);
  const configFile = join(work.path, 'pgvault.conf');
  const archiveCommand = `${process.execPath} ${PGVAULT_BIN} --config ${configFile} backup wal %p`;
  const cluster = await startCluster({
    initdbArgs: ['--wal-segsize=1'],
    settings: {
      wal_level: 'replica',
      archive_mode: 'on',
      archive_command: archiveCommand,
      track_commit_timestamp: 'on',
    },
  });
  const settings: Record<string, string> = {
    BACKUP_DIR: backupDir,
    CLUSTER_NAME: clusterName,
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: 'postgres',
    PARALLEL_JOBS: '2',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY_FILE: keyFile,
    ENCRYPTION_ITERATIONS: '1000',
    ...options.extra,
  };
  await writeFile(
    configFile,
    `${Object.entries(settings)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    { mode: 0o600 },
  );
  await giveToServerUser(configFile);
  return {
    cluster,
    work: work.path,
    backupDir,
    configFile,
    settings,
    archiveCommand,
    vault: (extra = {}) => openVault(parseConfig({ ...settings, ...extra }), recordingReporter()),
    stop: async () => {
      await cluster.stop();
      await work.remove();
    },
  };
}

/** startArchivingCluster, then the database app with the table t that commitBatch fills. */
export async function startAppCluster(
  options: Parameters<typeof startArchivingCluster>[0] = {},
): Promise<ArchivingCluster> {
  const a = await startArchivingCluster(options);
  await createAppTable(a.cluster);
  return a;
}

/**
 * Completes the current WAL segment and waits until archive_command stored it, so everything
 * committed so far is in the archive.
 */
export async function switchAndWaitArchived(cluster: TempCluster, timeoutMs = 30_000): Promise<string> {
  // A record first, so the switch always completes a segment: with nothing written since the last
  // switch, pg_switch_wal does nothing, and PostgreSQL 17 then names the segment in use (never
  // archived while nothing is written), where 15 named the one just completed.
  await cluster.query("SELECT pg_logical_emit_message(false, 'pgvault-test', 'switch')");
  const [row] = await cluster.query<{ name: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS name');
  const wanted = row!.name;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [s] = await cluster.query<{ last: string | null; failed: string | null }>(
      'SELECT last_archived_wal AS last, last_failed_wal AS failed FROM pg_stat_archiver',
    );
    // Segment names sort by position within a timeline; a newer timeline sorts after.
    if (s?.last && s.last.length === 24 && s.last >= wanted) return wanted;
    if (Date.now() > deadline) {
      const log = cluster.readLog().split('\n').slice(-15).join('\n');
      throw new Error(
        `${wanted} was not archived within ${timeoutMs} ms (last failed: ${s?.failed}); log:\n${log}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One committed batch: its rows, the commit time the server recorded, its transaction id. */
export interface Batch {
  readonly batch: number;
  readonly commitTime: Date;
  /** As PostgreSQL prints it, with microseconds. */
  readonly commitTimeText: string;
  readonly xid: string;
}

/** Inserts `rows` rows of batch `n` into app.t in one transaction and reads its commit back. */
export async function commitBatch(cluster: TempCluster, n: number, rows = 50): Promise<Batch> {
  await cluster.query(
    `INSERT INTO t (batch, note) SELECT $1::int, 'batch ' || $1::int || ' row ' || g FROM generate_series(1, $2::int) g`,
    [n, rows],
    'app',
  );
  const [r] = await cluster.query<{ ts: Date; tstext: string; xid: string }>(
    `SELECT pg_xact_commit_timestamp(xmin) AS ts, pg_xact_commit_timestamp(xmin)::text AS tstext, xmin::text AS xid
       FROM t WHERE batch = $1::int LIMIT 1`,
    [n],
    'app',
  );
  return { batch: n, commitTime: r!.ts, commitTimeText: r!.tstext, xid: r!.xid };
}

/** Rows per batch in a database's copy of t. */
export async function batchesIn(cluster: TempCluster, database: string): Promise<Record<number, number>> {
  const rows = await cluster.query<{ batch: number; n: string }>(
    'SELECT batch, count(*)::text AS n FROM t GROUP BY batch ORDER BY batch',
    [],
    database,
  );
  return Object.fromEntries(rows.map((r) => [r.batch, Number(r.n)]));
}

/** A time halfway between two commits, as ISO 8601 with milliseconds. */
export function between(a: Date, b: Date): string {
  return new Date((a.getTime() + b.getTime()) / 2).toISOString();
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function createAppTable(cluster: TempCluster): Promise<void> {
  // FILE_COPY: WAL_LOG (the default) would write the whole template into WAL, segments to archive and replay.
  await cluster.query('CREATE DATABASE app STRATEGY FILE_COPY');
  await cluster.query(
    'CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, batch int NOT NULL, note text)',
    [],
    'app',
  );
}

/**
 * Waits until a server started on a recovered data directory has reached its target and promoted
 * (pg_is_in_recovery() false), polling every 100 ms at most `attempts` times; then returns either way.
 */
export async function waitForPromotion(server: TempCluster, attempts = 200): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    const [row] = await server.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
    if (row?.r === false) break;
    await sleep(100);
  }
}

/**
 * Starts the data directory `restore pitr --pgdata` laid down, waits until it promoted, reads the
 * batches of its app database, and stops it again.
 */
export async function batchesAfterRecovery(pgdata: string): Promise<Record<number, number>> {
  const server = await TempCluster.startOn({ dataDir: pgdata });
  try {
    await waitForPromotion(server);
    return await batchesIn(server, 'app');
  } finally {
    await server.stop();
    // The WAL prefetcher restore_command started outlives the server; it names pgdata.
    killProcessesNaming(pgdata);
  }
}
