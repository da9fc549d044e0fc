import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { asServerUser } from '../../core/pg/cluster';
import { findPgBinary, withClient } from '../../core/pg/tools';
import { copyMarksOfDataDirectory } from '../../core/restore/copy';
import {
  type ArchivingCluster,
  commitBatch,
  PGVAULT_BIN,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';
import { killProcessesNaming } from './wal-fixture';

/**
 * A copy laid down by `restore pitr --pgdata` on the host where its original still runs, started
 * with the command pgvault prints: it must come up (no port or socket clash), archive nothing into
 * the original's archive (or, with --archive, only into its own lineage), and be refused as a
 * source of WAL or backups under the original's CLUSTER_NAME.
 *
 * The original's port, listen address, socket directory and archive_command are in its
 * postgresql.auto.conf (ALTER SYSTEM), as on a real server, so the base backup carries them.
 */
let a: ArchivingCluster;
const copies: string[] = [];

beforeAll(async () => {
  a = await startAppCluster();
  for (const [name, value] of [
    ['port', String(a.cluster.port)],
    ['listen_addresses', '127.0.0.1'],
    ['unix_socket_directories', a.cluster.socketDir],
    ['archive_mode', 'on'],
    ['archive_command', a.archiveCommand],
  ]) {
    await a.cluster.query(`ALTER SYSTEM SET ${name} = '${value!.replace(/'/g, "''")}'`);
  }
  await commitBatch(a.cluster, 0);
  await backupBase(a.vault(), { schedule: 'daily' });
  await commitBatch(a.cluster, 1);
  await switchAndWaitArchived(a.cluster);
}, 180_000);

afterAll(async () => {
  for (const pgdata of copies) stopCopy(pgdata);
  await a?.stop();
});

interface CliResult {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function pgvault(args: string[], env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, [PGVAULT_BIN, '--config', a.configFile, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    cwd: a.work,
    timeout: 300_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface LaidDown {
  readonly pgdata: string;
  readonly port: number;
  readonly archiveMode: string;
  readonly lineage: string;
  readonly copyOf: string;
  readonly startCommand: string;
}

function layDown(name: string, extra: string[] = []): LaidDown {
  const pgdata = join(a.work, name);
  const r = pgvault(['restore', 'pitr', 'latest', '--pgdata', pgdata, '--json', ...extra]);
  expect(r.stderr).not.toMatch(/error/i);
  expect(r.status).toBe(0);
  copies.push(pgdata);
  return JSON.parse(r.stdout) as LaidDown;
}

/** Runs the start command exactly as printed, through the shell. */
function startAsPrinted(copy: LaidDown): CliResult {
  const r = spawnSync('sh', ['-c', copy.startCommand], { encoding: 'utf8', cwd: a.work, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function stopCopy(pgdata: string): void {
  if (existsSync(join(pgdata, 'postmaster.pid'))) {
    const stop = asServerUser(findPgBinary('pg_ctl'), ['-D', pgdata, 'stop', '-m', 'fast', '-w']);
    spawnSync(stop.file, stop.args, { cwd: a.work, timeout: 60_000 });
  }
  // The WAL prefetcher restore_command started outlives the server; it names pgdata.
  killProcessesNaming(pgdata);
}

async function query<R>(port: number, sql: string, database = 'postgres'): Promise<R[]> {
  return withClient({ host: '127.0.0.1', port, user: 'postgres', database }, database, async (c) => {
    const r = await c.query(sql);
    return r.rows as R[];
  });
}

async function waitForPromotion(port: number): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const [row] = await query<{ r: boolean }>(port, 'SELECT pg_is_in_recovery() AS r').catch(() => [
      { r: true },
    ]);
    if (row?.r === false) return;
    await sleep(100);
  }
  throw new Error(`the copy on port ${port} did not promote`);
}

/** Every file under a folder, relative to it, with its size: what a listing of the vault shows. */
function listing(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(`${relative(dir, p)} ${statSync(p).size}`);
    }
  };
  walk(dir);
  return out.sort();
}

const walFolder = () => join(a.backupDir, 'pitr', 'wal');

/** Writes in the copy and ends several of its segments, so an archiver would have files to store. */
async function writeAndSwitch(port: number): Promise<void> {
  await query(
    port,
    "INSERT INTO t (batch, note) SELECT 99, 'copy ' || g FROM generate_series(1, 100) g",
    'app',
  );
  for (let i = 0; i < 3; i++) await query(port, 'SELECT pg_switch_wal()');
  await query(port, 'CHECKPOINT');
}

describe('restore pitr --pgdata on the host where the original runs', () => {
  let copy: LaidDown;

  it('prints a start command that works here: another port, the copy recovers and promotes', async () => {
    // Act
    copy = layDown('copy');
    const walBefore = listing(walFolder());
    const started = startAsPrinted(copy);
    // Assert: it came up on its own port while the original still runs on its own
    expect(started.stderr + started.stdout).not.toMatch(/could not|failed|lock file/i);
    expect(started.status).toBe(0);
    expect(copy.port).not.toBe(a.cluster.port);
    await waitForPromotion(copy.port);
    const rows = await query<{ batch: number; n: string }>(
      copy.port,
      'SELECT batch, count(*)::text AS n FROM t GROUP BY batch ORDER BY batch',
      'app',
    );
    expect(rows.map((r) => [r.batch, Number(r.n)])).toEqual([
      [0, 50],
      [1, 50],
    ]);
    const [original] = await a.cluster.query<{ n: string }>('SELECT count(*)::text AS n FROM t', [], 'app');
    expect(original!.n).toBe('100');

    // Assert: archiving is off, and after promotion and new segments nothing new is in the vault
    const [mode] = await query<{ archive_mode: string }>(copy.port, 'SHOW archive_mode');
    expect(mode!.archive_mode).toBe('off');
    expect(copy.archiveMode).toBe('off');
    await writeAndSwitch(copy.port);
    await sleep(3_000);
    expect(listing(walFolder())).toEqual(walBefore);
  });

  it('says in its output that archiving is off, which port it took and how to change it', () => {
    // Act
    const pgdata = join(a.work, 'copy-text');
    const r = pgvault(['restore', 'pitr', 'latest', '--pgdata', pgdata]);
    copies.push(pgdata);
    // Assert
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/archive_mode = off/);
    expect(r.stdout).toMatch(/--archive/);
    expect(r.stdout).toMatch(/port \d+ .*postgresql\.auto\.conf/);
    expect(r.stdout).toMatch(/pg_ctl -D \S+ -l \S+ start/);
  });

  it('refuses --archive without --pgdata in one line, restoring nothing', () => {
    // Act
    const r = pgvault(['restore', 'pitr', 'latest', 'archived_copy', '--immediate', '--archive']);
    // Assert
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/--archive goes with --pgdata/);
  });

  it("refuses the copy's WAL under the original's CLUSTER_NAME, segment and timeline history alike", () => {
    // Prepare: the copy promoted to a new timeline; its history file and newest segments are in pg_wal
    const pgWal = join(copy.pgdata, 'pg_wal');
    const names = readdirSync(pgWal);
    const history = names
      .filter((n) => n.endsWith('.history'))
      .sort()
      .at(-1)!;
    const segment = names.filter((n) => /^[0-9A-F]{24}$/.test(n) && n.slice(0, 8) !== '00000001').sort()[0]!;
    expect(history).toBeDefined();
    expect(segment).toBeDefined();
    const before = listing(walFolder());
    // Act: what the original's archive_command would do if it ran in the copy
    const results = [history, segment].map((name) => pgvault(['backup', 'wal', join(pgWal, name)]));
    // Assert
    for (const r of results) {
      expect(r.status).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/copy of cluster pitr .*set CLUSTER_NAME=pitr-copy-/);
    }
    expect(listing(walFolder())).toEqual(before);
  });

  it("refuses the copy's WAL in asynchronous mode too (the uploader), through the sh launcher", () => {
    // Prepare: archive_command's own form, run in the copy's data directory with ARCHIVE_ASYNC on
    const pgWal = join(copy.pgdata, 'pg_wal');
    const segment = readdirSync(pgWal)
      .filter((n) => /^[0-9A-F]{24}$/.test(n) && n.slice(0, 8) !== '00000001')
      .sort()[0]!;
    const before = listing(walFolder());
    // Act
    const r = spawnSync(
      join(PGVAULT_BIN, '..', 'pgvault'),
      ['--config', a.configFile, 'backup', 'wal', `pg_wal/${segment}`],
      {
        encoding: 'utf8',
        cwd: copy.pgdata,
        env: { ...process.env, ARCHIVE_ASYNC: 'true', PGVAULT_NODE: process.execPath },
        timeout: 120_000,
      },
    );
    // Assert
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/copy of cluster pitr .*set CLUSTER_NAME=pitr-copy-/);
    expect(listing(walFolder())).toEqual(before);
  });

  it("refuses to stream the copy's WAL (wal receive) under the original's CLUSTER_NAME, creating no slot", async () => {
    // Prepare
    const before = listing(walFolder());
    const receiveDir = join(a.work, 'receive-from-copy');
    // Act: runs until stopped when it is not refused; the timeout ends it then
    const r = spawnSync(
      process.execPath,
      [PGVAULT_BIN, '--config', a.configFile, 'wal', 'receive', '--slot', 'copy_slot'],
      {
        encoding: 'utf8',
        cwd: a.work,
        env: { ...process.env, PGPORT: String(copy.port), WAL_RECEIVE_DIR: receiveDir },
        timeout: 20_000,
      },
    );
    // Assert
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/copy of cluster pitr .*set CLUSTER_NAME=pitr-copy-/);
    const slots = await query<{ slot_name: string }>(copy.port, 'SELECT slot_name FROM pg_replication_slots');
    expect(slots).toEqual([]);
    expect(listing(walFolder())).toEqual(before);
  });

  it("refuses backup full and backup base of the copy under the original's CLUSTER_NAME; the catalog is unchanged", () => {
    // Prepare
    const clusterFolder = join(a.backupDir, 'pitr');
    const before = listing(clusterFolder);
    const catalog = () => JSON.parse(pgvault(['restore', 'list', '--json']).stdout).backups;
    const catalogBefore = catalog();
    // Act
    const full = pgvault(['backup', 'full'], { PGPORT: String(copy.port) });
    const base = pgvault(['backup', 'base'], { PGPORT: String(copy.port) });
    // Assert
    for (const r of [full, base]) {
      expect(r.status).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/copy of cluster pitr .*set CLUSTER_NAME=pitr-copy-/);
    }
    expect(listing(clusterFolder)).toEqual(before);
    expect(catalog()).toEqual(catalogBefore);
  });

  it("backs the copy up under its own lineage, apart from the original's catalog", () => {
    // Prepare
    const before = listing(join(a.backupDir, 'pitr'));
    // Act
    const r = pgvault(['backup', 'full', '--json'], {
      PGPORT: String(copy.port),
      CLUSTER_NAME: copy.lineage,
    });
    // Assert
    expect(r.stderr).not.toMatch(/error|refus/i);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).manifest.cluster).toBe(copy.lineage);
    expect(listing(join(a.backupDir, copy.lineage)).some((f) => f.startsWith('full/'))).toBe(true);
    expect(listing(join(a.backupDir, 'pitr'))).toEqual(before);
  });

  it('drops the marks as the refusal says, for a copy that replaces the original', async () => {
    // Act: what the one-line refusal tells the operator to do
    await query(copy.port, 'ALTER SYSTEM RESET pgvault.copy_of');
    await query(copy.port, 'SELECT pg_reload_conf()');
    await sleep(500);
    // Assert: neither the server nor its data directory is marked any more
    const [row] = await query<{ v: string | null }>(
      copy.port,
      "SELECT current_setting('pgvault.copy_of', true) AS v",
    );
    expect(row!.v ?? '').toBe('');
    expect(await copyMarksOfDataDirectory(copy.pgdata)).toEqual({
      copyOf: undefined,
      lineage: copy.lineage,
    });
    stopCopy(copy.pgdata);
  });
});

describe('restore pitr --pgdata --archive', () => {
  it("archives the promoted copy's WAL into its own lineage, never the original's WAL folder", async () => {
    // Prepare
    const walBefore = listing(walFolder());
    // Act
    const copy = layDown('copy-archiving', ['--archive']);
    const started = startAsPrinted(copy);
    expect(started.status).toBe(0);
    await waitForPromotion(copy.port);
    await writeAndSwitch(copy.port);
    let archived: string | null = null;
    for (let i = 0; i < 300 && archived === null; i++) {
      const [s] = await query<{ last: string | null; failed: string | null }>(
        copy.port,
        'SELECT last_archived_wal AS last, last_failed_wal AS failed FROM pg_stat_archiver',
      );
      archived = s?.last && s.last.length === 24 ? s.last : null;
      if (archived === null) await sleep(100);
    }
    // Assert
    expect(copy.archiveMode).toBe('on');
    const [mode] = await query<{ archive_mode: string }>(copy.port, 'SHOW archive_mode');
    expect(mode!.archive_mode).toBe('on');
    expect(archived).not.toBeNull();
    const own = listing(join(a.backupDir, copy.lineage, 'wal'));
    expect(own.some((f) => f.includes(archived!))).toBe(true);
    expect(own.some((f) => /\.history/.test(f))).toBe(true);
    expect(listing(walFolder())).toEqual(walBefore);
    stopCopy(copy.pgdata);
  });
});

describe('a timeline history file that differs from the archived one', () => {
  it('is refused and the archived one is kept', () => {
    // Prepare: a history file for a timeline the archive already holds, then another with other content
    const dir = join(a.work, 'other-history', 'pg_wal');
    spawnSync('mkdir', ['-p', dir]);
    const name = '0000000A.history';
    const original = '1\t0/3000000\tno recovery target specified\n';
    writeFileSync(join(dir, name), original);
    expect(pgvault(['backup', 'wal', join(dir, name)]).status).toBe(0);
    writeFileSync(join(dir, name), '1\t0/5000000\tno recovery target specified\n');
    // Act
    const r = pgvault(['backup', 'wal', join(dir, name)]);
    // Assert
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/already archived with different content/);
    const restored = pgvault(['restore', 'wal', name, join(a.work, 'other-history', 'RESTORED')]);
    expect(restored.status).toBe(0);
    expect(readFileSync(join(a.work, 'other-history', 'RESTORED'), 'utf8')).toBe(original);
  });
});
