import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asServerUser } from '../../core/pg/cluster';
import { findPgBinary, withClient } from '../../core/pg/tools';
import { type CliRun, runPgvault } from '../helpers/cli';
import {
  archiveCommand,
  PatroniCluster,
  SUPERUSER,
  SUPERUSER_PASSWORD,
  type VaultConfig,
  vaultConfigFile,
} from '../helpers/patroni';
import { killProcessesNaming } from './wal-fixture';

/*
 * WAL across failover, the gap: the leader (node1) holds segments it never archived (its
 * archive_command fails while a flag file is in its data directory), the replica (node2) has
 * received them, and the leader is killed with kill -9. Patroni promotes node2; when node2 archives
 * the new timeline's history file, pgvault pushes the old timeline's segments from node2's pg_wal
 * (core/wal/backfill.ts), so the archive has no hole at the failover, `verify wal` shows the switch
 * and a PITR to the latest point has every row the old leader acknowledged. Then a hole that no
 * node can fill: verify wal fails and says so.
 */

const CLUSTER = 'ha';
/** In a node's data directory (archive_command's working directory): archiving fails while it exists. */
const HOLD = 'hold-archive';

let cluster: PatroniCluster;
let work: string;
let vault: VaultConfig;
let vaultDir: string;
let configFile: string;
const copies: string[] = [];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'pgvault-failover-gap-'));
  vault = vaultConfigFile(work, { CLUSTER_NAME: CLUSTER, COMPRESSION: 'zstd' }, { PGDATABASE: 'postgres' });
  vaultDir = vault.vaultDir;
  configFile = vault.configFile!;
  cluster = await PatroniCluster.start({
    scope: 'failover-gap',
    parameters: {
      archive_mode: 'on',
      // The same command on every node; it fails on a node whose data directory holds the flag.
      archive_command: `test ! -f ${HOLD} && ${archiveCommand(vault)}`,
      archive_timeout: 0,
    },
  });
}, 180_000);

afterAll(async () => {
  for (const pgdata of copies) stopCopy(pgdata);
  await cluster?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

function pgvault(args: string[]): Promise<CliRun> {
  return cluster.pgvault(vault, args);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** WAL segment names of a timeline stored in the vault (whatever the extension). */
function archivedSegments(timeline: number): string[] {
  const dir = join(vaultDir, CLUSTER, 'wal', timeline.toString(16).toUpperCase().padStart(8, '0'));
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const log of readdirSync(dir, { withFileTypes: true })) {
    if (!log.isDirectory()) continue;
    for (const f of readdirSync(join(dir, log.name))) {
      const m = /^([0-9A-F]{24})\./.exec(f);
      if (m && !f.includes('.partial') && !f.includes('.backup')) out.push(m[1]!);
    }
  }
  return out.sort();
}

function archivedPath(segment: string): string {
  const dir = join(vaultDir, CLUSTER, 'wal', segment.slice(0, 8), segment.slice(0, 16));
  const f = readdirSync(dir).find((x) => x.startsWith(`${segment}.`) && !x.includes('.partial'));
  if (f === undefined) throw new Error(`${segment} is not archived`);
  return join(dir, f);
}

async function waitFor(
  what: string,
  test: () => boolean | Promise<boolean>,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

function stopCopy(pgdata: string): void {
  if (existsSync(join(pgdata, 'postmaster.pid'))) {
    const stop = asServerUser(findPgBinary('pg_ctl'), ['-D', pgdata, 'stop', '-m', 'immediate', '-w']);
    spawnSync(stop.file, stop.args, { cwd: work, timeout: 60_000 });
  }
  // The WAL prefetcher restore_command started outlives the server; it names pgdata.
  killProcessesNaming(pgdata);
}

function copyLog(pgdata: string): string {
  for (const dir of [join(pgdata, 'log'), pgdata]) {
    if (!existsSync(dir)) continue;
    const f = readdirSync(dir)
      .filter((x) => x.endsWith('.log'))
      .sort()
      .pop();
    if (f) return readFileSync(join(dir, f), 'utf8').split('\n').slice(-15).join(' / ');
  }
  return '(no log)';
}

/** Segment names PostgreSQL on `node` lists in its pg_wal. */
async function inPgWal(node: string, names: readonly string[]): Promise<string[]> {
  const rows = await cluster.query<{ name: string }>(
    `SELECT name FROM pg_ls_waldir() WHERE name IN (${names.map((n) => `'${n}'`).join(',')}) ORDER BY name`,
    { node },
  );
  return rows.map((r) => r.name);
}

/** The segments the old leader never archived: found by the first test, used by the second. */
let hole: string[] = [];
/** Every row the old leader acknowledged (committed) before it was killed. */
let acknowledged = 0;

describe('failover by kill -9 with the old leader holding unarchived segments', () => {
  it('the promoted replica backfills the old timeline: no hole, verify wal shows the switch, PITR to the latest point has every acknowledged row', async () => {
    // Prepare: a base backup and archiving that works, on timeline 1.
    expect((await cluster.leader()).name).toBe('node1');
    await cluster.query('CREATE TABLE ledger (id int PRIMARY KEY, note text)');
    await cluster.query("INSERT INTO ledger SELECT g, 'before' FROM generate_series(1, 100) g");
    const base = await pgvault(['--json', 'backup', 'base']);
    expect(base.code, base.stderr).toBe(0);
    const [{ archived }] = (await cluster.query<{ archived: string }>(
      'SELECT pg_walfile_name(pg_switch_wal()) AS archived',
    )) as [{ archived: string }];
    await waitFor(`${archived} archived`, () => archivedSegments(1).includes(archived));
    // The leader's archiving now fails; writes go on and end three segments it cannot archive.
    const node1 = cluster.node('node1');
    writeFileSync(join(node1.dataDir, HOLD), '');
    acknowledged = 100;
    const unarchived: string[] = [];
    for (let batch = 1; batch <= 3; batch++) {
      await cluster.query(
        `INSERT INTO ledger SELECT g, repeat('x', 500) FROM generate_series(${acknowledged + 1}, ${acknowledged + 2000}) g`,
        { node: 'node1' },
      );
      acknowledged += 2000;
      const [row] = await cluster.query<{ name: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS name', {
        node: 'node1',
      });
      unarchived.push(row!.name);
    }
    // Rows after the last switch: in the segment the failover cuts (the new timeline's first).
    await cluster.query(
      `INSERT INTO ledger SELECT g, 'last' FROM generate_series(${acknowledged + 1}, ${acknowledged + 50}) g`,
      { node: 'node1' },
    );
    acknowledged += 50;
    await cluster.waitReplayed();
    hole = unarchived;
    // Preconditions: the segments are not in the archive, node2's pg_wal has them.
    expect(archivedSegments(1).filter((s) => hole.includes(s))).toEqual([]);
    expect(await inPgWal('node2', hole)).toEqual(hole);
    const [failing] = await cluster.query<{ failed: string }>(
      'SELECT failed_count::text AS failed FROM pg_stat_archiver',
      { node: 'node1' },
    );
    expect(Number(failing!.failed)).toBeGreaterThan(0);

    // Act: the leader crashes; Patroni promotes node2.
    await cluster.killNode('node1');
    await cluster.waitHealthy({ leader: 'node2', replicas: 0, timeoutMs: 90_000 });
    // Patroni names the leader as it promotes: wait for PostgreSQL to leave recovery.
    await waitFor('node2 out of recovery', async () => {
      const [row] = await cluster.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r', { node: 'node2' });
      return row?.r === false;
    });
    // Rows on the new timeline, then a switch so its segment is archived too.
    await cluster.query("INSERT INTO ledger SELECT g, 'after' FROM generate_series(100001, 100010) g", {
      node: 'node2',
    });
    const [{ name: newSegment }] = (await cluster.query<{ name: string }>(
      'SELECT pg_walfile_name(pg_switch_wal()) AS name',
      { node: 'node2' },
    )) as [{ name: string }];
    await waitFor(`${newSegment} archived`, () => archivedSegments(2).includes(newSegment), 90_000);
    await waitFor(
      'the old timeline backfilled',
      () => hole.every((s) => archivedSegments(1).includes(s)),
      30_000,
    );
    const verify = await pgvault(['verify', 'wal']);
    const verifyJson = await pgvault(['--json', 'verify', 'wal']);

    // Assess: no hole in timeline 1 up to the switch.
    expect(newSegment.slice(0, 8)).toBe('00000002');
    expect(archivedSegments(1)).toEqual(expect.arrayContaining(hole));
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    expect(verify.stdout).toMatch(
      /timeline switch \(failover\/switchover\): 1 → 2 at [0-9A-F]+\/[0-9A-F]+ \(00000002\.history\)/,
    );
    expect(verify.stdout).toMatch(/timeline 1 archived through [0-9A-F]{24}, no hole/);
    expect(verifyJson.code, verifyJson.stderr).toBe(0);
    const report = JSON.parse(verifyJson.stdout) as {
      ok: boolean;
      gaps: unknown[];
      switches: { from: number; to: number; switchLsn: string; hole?: unknown }[];
    };
    expect(report.ok).toBe(true);
    expect(report.gaps).toEqual([]);
    expect(report.switches).toEqual([
      expect.objectContaining({ from: 1, to: 2, history: '00000002.history' }),
    ]);
    expect(report.switches[0]!.hole).toBeUndefined();

    // Act: PITR to the latest point, into a data directory of its own.
    const pgdata = join(work, 'pitr-latest');
    copies.push(pgdata);
    const pitr = await pgvault(['--json', 'restore', 'pitr', 'latest', '--pgdata', pgdata]);
    expect(pitr.code, pitr.stderr).toBe(0);
    const laid = JSON.parse(pitr.stdout) as { port: number; startCommand: string };
    const start = spawnSync('sh', ['-c', laid.startCommand], {
      encoding: 'utf8',
      cwd: work,
      timeout: 120_000,
    });
    expect(start.status, start.stderr + start.stdout).toBe(0);
    let rows: { n: string; before: string; after: string }[] = [];
    let lastError = '';
    await waitFor(
      'the PITR copy to finish recovery',
      async () => {
        try {
          rows = await withClient(
            {
              host: '127.0.0.1',
              port: laid.port,
              user: SUPERUSER,
              password: SUPERUSER_PASSWORD,
              database: 'postgres',
            },
            'postgres',
            async (c) =>
              (
                await c.query(
                  'SELECT pg_is_in_recovery()::text AS r, count(*) FILTER (WHERE id <= 100000)::text AS before, count(*) FILTER (WHERE id > 100000)::text AS after, count(*)::text AS n FROM ledger',
                )
              ).rows,
          );
          return (rows[0] as unknown as { r: string }).r === 'false';
        } catch (err) {
          lastError = String(err);
          return false;
        }
      },
      120_000,
    ).catch((err: unknown) => {
      throw new Error(`${String(err)}; last: ${lastError}; log: ${copyLog(pgdata)}`);
    });

    // Assess: every row the old leader acknowledged, and the new timeline's.
    expect(Number(rows[0]!.before)).toBe(acknowledged);
    expect(Number(rows[0]!.after)).toBe(10);
  }, 600_000);

  it('a hole: verify wal fails naming it and node2, which has it; wal backfill there fills it; gone from node2 too, verify wal says no node has it', async () => {
    // Prepare: one backfilled segment removed from the archive; node2's pg_wal still has it.
    expect(hole.length).toBe(3);
    const lost = hole[1]!;
    unlinkSync(archivedPath(lost));

    // Act
    const fillable = await pgvault(['verify', 'wal']);
    const fillableJson = await pgvault(['--json', 'verify', 'wal']);

    // Assess: the hole, and node2 can fill it.
    expect(fillable.code).toBe(3);
    expect(fillable.stdout).toContain(`GAP on timeline 1: ${lost} missing`);
    expect(fillable.stdout).toMatch(
      /can be filled: node2 \(127\.0\.0\.1:\d+, leader\) has all of 1 in pg_wal/,
    );
    expect(fillable.stderr).toContain(`${lost} is still in the pg_wal of node2`);
    const fillableReport = JSON.parse(fillableJson.stdout) as {
      gaps: unknown[];
      holes: { from: string; holders: { node: string }[] }[];
    };
    expect(fillableReport.gaps).toEqual([{ timeline: 1, from: lost, to: lost, count: 1 }]);
    expect(fillableReport.holes.map((g) => [g.from, g.holders.map((h) => h.node)])).toEqual([
      [lost, ['node2']],
    ]);

    // Act: the fix verify wal names, from node2's data directory.
    const backfill = await runPgvault(
      ['--config', configFile, '--json', 'wal', 'backfill'],
      cluster.env({ PGDATABASE: 'postgres', SPOOL_DIR: join(work, 'spool') }),
      cluster.node('node2').dataDir,
    );
    const afterBackfill = await pgvault(['verify', 'wal']);

    // Assess: it pushed exactly the lost segment; the archive is whole again.
    expect(backfill.code, backfill.stderr).toBe(0);
    expect(JSON.parse(backfill.stdout)).toMatchObject({
      ok: true,
      history: '00000002.history',
      switches: [{ parent: 1, timeline: 2 }],
      pushed: [lost],
      failed: [],
    });
    expect(afterBackfill.code, afterBackfill.stdout + afterBackfill.stderr).toBe(0);
    unlinkSync(archivedPath(lost));

    // Prepare: gone from node2's pg_wal too (node1, the old leader, is down).
    if ((await inPgWal('node2', [lost])).length > 0)
      unlinkSync(join(cluster.node('node2').dataDir, 'pg_wal', lost));

    // Act
    const lostFor = await pgvault(['verify', 'wal']);
    const lostJson = await pgvault(['--json', 'verify', 'wal']);

    // Assess
    expect(lostFor.code).toBe(3);
    expect(lostFor.stdout).toContain(`GAP on timeline 1: ${lost} missing`);
    expect(lostFor.stdout).toMatch(
      /no node has it in pg_wal \(asked node2[^)]*\): the hole cannot be backfilled/,
    );
    expect(lostFor.stderr).toMatch(/no node has them in its pg_wal \(asked node2/);
    const lostHoles = (
      JSON.parse(lostJson.stdout) as { holes: { from: string; holders: unknown[]; asked: string[] }[] }
    ).holes;
    expect(lostHoles).toEqual([expect.objectContaining({ from: lost, holders: [], asked: ['node2'] })]);
  }, 300_000);
});
