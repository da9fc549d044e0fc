import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asServerUser } from '../../core/pg/cluster';
import { findPgBinary } from '../../core/pg/tools';
import type { CliRun } from '../helpers/cli';
import {
  archiveCommand,
  PatroniCluster,
  SUPERUSER,
  SUPERUSER_PASSWORD,
  type VaultConfig,
  vaultConfigFile,
} from '../helpers/patroni';
import { giveToServer, killProcessesNaming } from './wal-fixture';

/*
 * A planned switchover in the middle of continuous writes, on a real Patroni cluster (Debian's
 * patroni and etcd, two PostgreSQL nodes) whose nodes all archive with pgvault's archive_command
 * (Patroni's postgresql.parameters, archive_mode=on: whichever node leads archives):
 *
 *   node1 leads, timeline 1:  base backup · rows 1..a · switchover ──┐
 *   node2 leads, timeline 2:                                         └ rows a+1..n
 *
 * Every row is one transaction; its commit time is PostgreSQL's own (track_commit_timestamp), the
 * time recovery stops at. The archive must have no hole across the switch, and a PITR from the
 * timeline-1 base backup to a time before the switchover and to one after must bring exactly the
 * rows committed up to that time.
 */

const CLUSTER_NAME = 'ledger';

let cluster: PatroniCluster;
let work: string;
let vault: VaultConfig;

interface Row {
  readonly n: number;
  /** The commit time, ISO with microseconds, UTC. */
  readonly committed: string;
  readonly epochMicros: bigint;
}

let rows: Row[] = [];
let switchStartedMicros = 0n;
let switchDoneMicros = 0n;
let baseId = '';
let lostOnSwitch: number[] = [];
/** Data directories laid down by `restore pitr --pgdata`, stopped in afterAll. */
const copies: string[] = [];

function pgvault(args: string[], extra: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return cluster.pgvault(vault, args, extra);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function nowMicros(): bigint {
  return BigInt(Date.now()) * 1000n;
}

/**
 * One row per transaction, numbered from 1, on whichever node leads: a connection that breaks (the
 * switchover stops the old leader) is opened again to the leader Patroni names; a row whose commit
 * was not acknowledged is written again unless it is there. Returns the numbers acknowledged.
 */
function startWriter(): { stop: () => Promise<number[]>; written: () => number } {
  let stopping = false;
  const acked: number[] = [];
  const loop = (async () => {
    let client: Client | undefined;
    let n = 1;
    while (!stopping) {
      try {
        if (client === undefined) {
          const leader = await cluster.leader();
          if (leader.state !== 'running') throw new Error('leader not running yet');
          const c = new Client({
            host: '127.0.0.1',
            port: leader.port,
            user: SUPERUSER,
            password: SUPERUSER_PASSWORD,
            database: 'app',
            connectionTimeoutMillis: 3_000,
          });
          c.on('error', () => {});
          await c.connect();
          const [ro] = (await c.query<{ ro: boolean }>('SELECT pg_is_in_recovery() AS ro')).rows;
          if (ro?.ro) {
            await c.end().catch(() => {});
            throw new Error('connected to a replica');
          }
          client = c;
        }
        await client.query('INSERT INTO ticks (n) VALUES ($1) ON CONFLICT (n) DO NOTHING', [n]);
        acked.push(n);
        n++;
        await sleep(25);
      } catch {
        await client?.end().catch(() => {});
        client = undefined;
        await sleep(100);
      }
    }
    await client?.end().catch(() => {});
  })();
  return {
    written: () => acked.length,
    stop: async () => {
      stopping = true;
      await loop;
      return acked;
    },
  };
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Forces a segment switch on the leader and waits until its archiver has stored that segment. */
async function switchAndWaitArchived(): Promise<string> {
  const leader = (await cluster.leader()).name;
  const [row] = await cluster.query<{ name: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS name', {
    node: leader,
  });
  const name = row!.name;
  await waitFor(`${name} archived by ${leader}`, async () => {
    const [s] = await cluster.query<{ last: string | null }>(
      'SELECT last_archived_wal AS last FROM pg_stat_archiver',
      { node: leader },
    );
    return (s?.last ?? '') >= name;
  });
  return name;
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'pgvault-switchover-'));
  // The sandbox of a PITR runs as postgres: it reaches its config through here (vaultConfigFile opens work to it).
  vault = vaultConfigFile(
    work,
    { CLUSTER_NAME, COMPRESSION: 'zstd' },
    { PGDATABASE: 'postgres', PARALLEL_JOBS: '2' },
  );
  mkdirSync(join(vault.vaultDir, CLUSTER_NAME), { mode: 0o700 });
  giveToServer(join(vault.vaultDir, CLUSTER_NAME));
  cluster = await PatroniCluster.start({
    scope: 'ledger-cluster',
    parameters: {
      archive_mode: 'on',
      archive_command: archiveCommand(vault),
      track_commit_timestamp: 'on',
    },
  });
  console.log(`Patroni cluster (etcd + 2 nodes) up in ${cluster.startupMs} ms`);
  await cluster.query('CREATE DATABASE app');
  await cluster.query('CREATE TABLE ticks (n int PRIMARY KEY)', { database: 'app' });
  await switchAndWaitArchived();

  // The base backup, on timeline 1 (the leader, node1).
  const base = await pgvault(['--json', 'backup', 'base']);
  expect(base.code, base.stderr).toBe(0);
  baseId = (JSON.parse(base.stdout) as { manifest: { id: string } }).manifest.id;

  const writer = startWriter();
  await waitFor('rows before the switchover', () => writer.written() >= 40);
  switchStartedMicros = nowMicros();
  await cluster.switchover('node2');
  switchDoneMicros = nowMicros();
  const atSwitch = writer.written();
  await waitFor('rows after the switchover', () => writer.written() >= atSwitch + 40);
  const acked = await writer.stop();
  await switchAndWaitArchived();

  const committed = await cluster.query<{ n: number; at: string; us: string }>(
    `SELECT n, to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at,
            (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint::text AS us
       FROM ticks ORDER BY n`,
    { database: 'app' },
  );
  rows = committed.map((r) => ({ n: r.n, committed: r.at, epochMicros: BigInt(r.us) }));
  const present = new Set(rows.map((r) => r.n));
  lostOnSwitch = acked.filter((n) => !present.has(n));
}, 300_000);

afterAll(async () => {
  for (const pgdata of copies) {
    if (existsSync(join(pgdata, 'postmaster.pid'))) {
      const stop = asServerUser(findPgBinary('pg_ctl'), ['-D', pgdata, 'stop', '-m', 'immediate', '-w']);
      spawnSync(stop.file, stop.args, { timeout: 60_000 });
    }
    // The WAL prefetcher restore_command started outlives the server; it names pgdata.
    killProcessesNaming(pgdata);
  }
  await cluster?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** The rows of a database restored on the leader: their numbers, in order. */
async function restoredNumbers(database: string): Promise<number[]> {
  const r = await cluster.query<{ n: number }>('SELECT n FROM ticks ORDER BY n', { database });
  return r.map((x) => x.n);
}

describe('switchover during continuous writes, archive_command on every node', () => {
  it('the switchover happened mid-stream: node2 leads on timeline 2, no acknowledged row is lost, rows on both sides', async () => {
    // Assess
    const leader = await cluster.leader();
    expect(leader).toMatchObject({ name: 'node2', timeline: 2 });
    expect(lostOnSwitch).toEqual([]);
    expect(rows.map((r) => r.n)).toEqual(rows.map((_, i) => i + 1));
    expect(rows.filter((r) => r.epochMicros < switchStartedMicros).length).toBeGreaterThanOrEqual(40);
    expect(rows.filter((r) => r.epochMicros > switchDoneMicros).length).toBeGreaterThanOrEqual(30);
  });

  it('verify wal: both timelines, the history file, no gap across the switch', async () => {
    // Act
    const r = await pgvault(['--json', 'verify', 'wal']);

    // Assess
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const report = JSON.parse(r.stdout) as {
      ok: boolean;
      gaps: unknown[];
      timelines: { timeline: number; parent?: number; gaps: unknown[]; partial?: string }[];
      backups: { id: string; timelinePath: number[] }[];
    };
    expect(report.ok).toBe(true);
    expect(report.gaps).toEqual([]);
    const byTimeline = Object.fromEntries(report.timelines.map((t) => [t.timeline, t]));
    expect(byTimeline[1]?.gaps).toEqual([]);
    expect(byTimeline[2]).toMatchObject({ timeline: 2, parent: 1, gaps: [] });
    // Timeline 1's last segment, cut short by the promotion, archived by node2 as .partial.
    expect(byTimeline[1]?.partial).toMatch(/^00000001[0-9A-F]{16}/);
    // The timeline-1 base backup recovers across the switch.
    expect(report.backups.find((b) => b.id === baseId)?.timelinePath).toEqual([1, 2]);
  }, 120_000);

  it('PITR from the timeline-1 base backup to the last commit before the switchover: exactly the rows up to it', async () => {
    // Prepare: the last row committed well before the switchover began (a second of margin).
    const before = rows.filter((r) => r.epochMicros < switchStartedMicros - 1_000_000n);
    const target = before[before.length - 1]!;

    // Act
    const r = await pgvault([
      '--json',
      'restore',
      'pitr',
      baseId,
      target.committed,
      'app_before',
      '--from',
      'app',
    ]);

    // Assess
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(await restoredNumbers('app_before')).toEqual(rows.filter((x) => x.n <= target.n).map((x) => x.n));
  }, 240_000);

  it('PITR from the same base backup to a commit on timeline 2, after the switchover: exactly the rows up to it', async () => {
    // Prepare: a row in the middle of those written after the switchover completed.
    const after = rows.filter((r) => r.epochMicros > switchDoneMicros);
    const target = after[Math.floor(after.length / 2)]!;

    // Act
    const r = await pgvault([
      '--json',
      'restore',
      'pitr',
      baseId,
      target.committed,
      'app_after',
      '--from',
      'app',
    ]);

    // Assess
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const restored = await restoredNumbers('app_after');
    expect(restored).toEqual(rows.filter((x) => x.n <= target.n).map((x) => x.n));
    expect(restored).not.toContain(target.n + 1);
  }, 240_000);

  it('restore pitr --pgdata to a commit on timeline 2: the data directory, started, recovers to exactly the rows up to it', async () => {
    // Prepare: the row a quarter into those written after the switchover.
    const after = rows.filter((r) => r.epochMicros > switchDoneMicros);
    const target = after[Math.floor(after.length / 4)]!;
    const pgdata = join(work, 'recovered');
    copies.push(pgdata);

    // Act
    const r = await pgvault(['--json', 'restore', 'pitr', baseId, target.committed, '--pgdata', pgdata]);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const laid = JSON.parse(r.stdout) as { port: number; startCommand: string };
    const start = spawnSync('sh', ['-c', laid.startCommand], {
      encoding: 'utf8',
      cwd: work,
      timeout: 120_000,
    });
    expect(start.status, `${start.stdout}\n${start.stderr}`).toBe(0);
    const client = new Client({
      host: '127.0.0.1',
      port: laid.port,
      user: SUPERUSER,
      password: SUPERUSER_PASSWORD,
      database: 'app',
    });
    let numbers: number[] = [];
    await waitFor(
      'the recovered server to finish recovery',
      async () => {
        const c = new Client({
          host: '127.0.0.1',
          port: laid.port,
          user: SUPERUSER,
          password: SUPERUSER_PASSWORD,
          database: 'app',
        });
        c.on('error', () => {});
        try {
          await c.connect();
          const [row] = (await c.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows;
          return row?.r === false;
        } catch {
          return false;
        } finally {
          await c.end().catch(() => {});
        }
      },
      120_000,
    );
    await client.connect();
    try {
      numbers = (await client.query<{ n: number }>('SELECT n FROM ticks ORDER BY n')).rows.map((x) => x.n);
    } finally {
      await client.end();
    }

    // Assess
    expect(numbers).toEqual(rows.filter((x) => x.n <= target.n).map((x) => x.n));
  }, 240_000);
});
