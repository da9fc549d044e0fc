/**
 * The main cluster as an archiving server, for the physical and WAL parts of the benchmark:
 * archive_mode switched on (one restart), archive_command set and reloaded, WAL made on demand from
 * the generated data, and the archiver's progress read from pg_stat_archiver and archive_status.
 */
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { asServerUser, type TempCluster } from '../core/pg/cluster';
import { findPgBinary, withClient } from '../core/pg/tools';
import { type Context, cleanEnv } from './steps';

/** Table the WAL load goes into (database bench); dropped when the part that made it ends. */
export const WAL_LOAD_TABLE = 'bench_wal_load';

const WAL_SEGMENT_NAME = /^[0-9A-F]{24}$/;

function run(file: string, args: readonly string[], env?: NodeJS.ProcessEnv, timeoutMs = 180_000) {
  return new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
    execFile(
      file,
      [...args],
      { env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${stderr.trim() || err.message}`));
        else resolve({ stdout, stderr });
      },
    );
  });
}

export function readPostmasterPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * archive_mode needs a restart. The server keeps the command-line settings it was started with
 * (pg_ctl restart reuses postmaster.opts); archive_command starts empty (segments wait, .ready,
 * without failures) and is changed with ALTER SYSTEM, which a reload applies. The server's
 * environment is the clean one, so archive commands see no PG* or pgvault settings of the caller.
 */
export async function enableArchiving(ctx: Context): Promise<void> {
  const { cluster } = ctx;
  const [row] = await cluster.query<{ mode: string }>("SELECT current_setting('archive_mode') AS mode");
  if (row?.mode !== 'on') {
    await cluster.query("ALTER SYSTEM SET archive_mode = 'on'");
    await cluster.query("ALTER SYSTEM SET archive_command = ''");
    const ctl = asServerUser(findPgBinary('pg_ctl'), [
      'restart',
      '-D',
      cluster.dataDir,
      '-m',
      'fast',
      '-w',
      '-t',
      '120',
      '-l',
      cluster.logFile,
    ]);
    await run(ctl.file, ctl.args, cleanEnv());
  }
  ctx.postmasterPid = readPostmasterPid(cluster.dataDir);
}

export async function setArchiveCommand(cluster: TempCluster, command: string): Promise<void> {
  await cluster.query(`ALTER SYSTEM SET archive_command = '${command.replaceAll("'", "''")}'`);
  await cluster.query('SELECT pg_reload_conf()');
}

export async function archiverPid(cluster: TempCluster): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const [row] = await cluster.query<{ pid: number }>(
      "SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'",
    );
    if (row) return row.pid;
    await sleep(100);
  }
  throw new Error('the server has no archiver process (archive_mode is not on?)');
}

export async function walSegmentBytes(cluster: TempCluster): Promise<number> {
  const [row] = await cluster.query<{ bytes: string }>(
    "SELECT pg_size_bytes(current_setting('wal_segment_size'))::text AS bytes",
  );
  return Number(row?.bytes ?? 16 * 1024 * 1024);
}

export interface ArchiverState {
  readonly archived: number;
  readonly failed: number;
  readonly lastArchived: string | null;
  readonly lastFailed: string | null;
}

export async function archiverState(cluster: TempCluster): Promise<ArchiverState> {
  const [row] = await cluster.query<{
    archived: string;
    failed: string;
    last: string | null;
    lastfailed: string | null;
  }>(
    'SELECT archived_count::text AS archived, failed_count::text AS failed, last_archived_wal AS last, last_failed_wal AS lastfailed FROM pg_stat_archiver',
  );
  return {
    archived: Number(row?.archived ?? 0),
    failed: Number(row?.failed ?? 0),
    lastArchived: row?.last ?? null,
    lastFailed: row?.lastfailed ?? null,
  };
}

/** WAL segments PostgreSQL has marked for archiving (archive_status/*.ready), oldest first. */
export function readySegments(dataDir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(join(dataDir, 'pg_wal', 'archive_status'));
  } catch {
    return [];
  }
  return names
    .filter((n) => n.endsWith('.ready'))
    .map((n) => n.slice(0, -'.ready'.length))
    .filter((n) => WAL_SEGMENT_NAME.test(n))
    .sort();
}

/** Completes the current segment; returns its name. */
export async function switchWal(cluster: TempCluster): Promise<string> {
  const [row] = await cluster.query<{ name: string }>(
    'SELECT pg_walfile_name(pg_switch_wal() - 1) AS name',
    [],
    'bench',
  );
  return row!.name;
}

/** Waits until the archiver has stored `segment` (and, in order, everything before it). */
export async function waitArchived(cluster: TempCluster, segment: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await archiverState(cluster);
    if (s.lastArchived && s.lastArchived.length === 24 && s.lastArchived >= segment) return;
    if (Date.now() > deadline) {
      throw new Error(
        `${segment} was not archived within ${Math.round(timeoutMs / 1000)} s (last archived ${s.lastArchived}, last failed ${s.lastFailed}, ${s.failed} failures); server log:\n    ${logTail(cluster, 8)}`,
      );
    }
    await sleep(200);
  }
}

export function logTail(cluster: TempCluster, lines: number): string {
  return cluster.readLog().trimEnd().split('\n').slice(-lines).join('\n    ');
}

/**
 * Writes WAL with real data: batches of rows copied from the generated reviews (prose, as the
 * dataset makes it, so the WAL compresses like a real server's) into WAL_LOAD_TABLE. Each batch is a
 * few MB, less than a segment, so `done` is asked at least once per segment.
 */
export async function writeWal(
  cluster: TempCluster,
  done: (writtenBytes: number) => boolean,
  maxBytes: number,
): Promise<number> {
  return withClient(cluster.connection('bench'), 'bench', async (client) => {
    await client.query('SET synchronous_commit = off');
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${WAL_LOAD_TABLE} (id bigint, title text NOT NULL, body text NOT NULL)`,
    );
    const range = await client.query<{ lo: string; hi: string }>(
      'SELECT min(id)::text AS lo, max(id)::text AS hi FROM reviews',
    );
    const lo = Number(range.rows[0]?.lo ?? 1);
    const hi = Number(range.rows[0]?.hi ?? 1);
    const start = await client.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
    const startLsn = start.rows[0]!.lsn;
    const batch = 3000;
    let next = lo;
    let written = 0;
    while (!done(written)) {
      if (written > maxBytes) {
        throw new Error(`wrote ${Math.round(written / 1048576)} MiB of WAL without reaching the goal`);
      }
      await client.query(
        `INSERT INTO ${WAL_LOAD_TABLE} SELECT id, title, body FROM reviews WHERE id >= $1 AND id < $2`,
        [next, next + batch],
      );
      next = next + batch > hi ? lo : next + batch;
      const r = await client.query<{ bytes: string }>(
        'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint::text AS bytes',
        [startLsn],
      );
      written = Number(r.rows[0]!.bytes);
    }
    return written;
  });
}

/** Writes at least `bytes` of WAL; returns how much it wrote. */
export function writeWalBytes(cluster: TempCluster, bytes: number): Promise<number> {
  return writeWal(cluster, (written) => written >= bytes, bytes * 2 + 64 * 1024 * 1024);
}

/** Writes WAL until at least `count` segments wait for archiving; returns their names. */
export async function makeBacklog(
  cluster: TempCluster,
  count: number,
  segmentBytes: number,
): Promise<string[]> {
  await writeWal(
    cluster,
    () => readySegments(cluster.dataDir).length >= count,
    (count + 4) * segmentBytes * 2,
  );
  return readySegments(cluster.dataDir);
}

export async function dropWalLoad(cluster: TempCluster): Promise<void> {
  await cluster.query(`DROP TABLE IF EXISTS ${WAL_LOAD_TABLE}`, [], 'bench');
}

/**
 * Stops every process whose command line contains `text` (a path under this run's own temporary
 * directory, so only programs this run started): uploaders and prefetchers that outlive the commands
 * that started them. SIGTERM, then SIGKILL after 2 s. Returns the pids it signalled.
 */
export async function stopProcessesNaming(text: string): Promise<number[]> {
  const found = (): number[] => {
    const pids: number[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const pid = Number(entry);
      if (pid === process.pid) continue;
      try {
        if (readFileSync(`/proc/${entry}/cmdline`, 'latin1').replaceAll('\0', ' ').includes(text)) {
          pids.push(pid);
        }
      } catch {
        // Gone meanwhile.
      }
    }
    return pids;
  };
  const first = found();
  for (const pid of first) signal(pid, 'SIGTERM');
  for (let i = 0; i < 20 && found().length > 0; i++) await sleep(100);
  for (const pid of found()) signal(pid, 'SIGKILL');
  return first;
}

/** The same, at once and synchronously (SIGKILL), for an interrupted run's exit. */
export function killProcessesNamingSync(text: string): void {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'latin1').replaceAll('\0', ' ').includes(text)) {
        signal(Number(entry), 'SIGKILL');
      }
    } catch {
      // Gone meanwhile.
    }
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone.
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
