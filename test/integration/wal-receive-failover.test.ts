import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PGVAULT_CLI, runPgvault } from '../helpers/cli';
import { PatroniCluster } from '../helpers/patroni';

/*
 * Issue 13: `wal receive` follows the Patroni leader across a switchover. A real Patroni cluster (etcd
 * + 2 PostgreSQL 15 nodes) with pgvault's slot configured as a permanent slot (PATCH /config), the
 * built CLI kept running, WAL written and switched on each timeline: everything up to the last switch
 * is stored, with the new timeline's history file, and `verify wal` finds no hole.
 */

const SLOT = 'pgvault_failover';
let cluster: PatroniCluster;
let work: string;
let receiver: ChildProcess | undefined;

function env(): NodeJS.ProcessEnv {
  return cluster.env({ BACKUP_DIR: join(work, 'vault'), CLUSTER_NAME: 'ha', PGDATABASE: 'postgres' });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The WAL file names stored in the vault (segments and history files). */
function stored(): string[] {
  let files: string[];
  try {
    files = readdirSync(join(work, 'vault', 'ha', 'wal'), { recursive: true }).map(String);
  } catch {
    return [];
  }
  return files
    .map((f) => /([0-9A-F]{24}|[0-9A-F]{8}\.history)(\.[a-z.]+)?$/.exec(f)?.[1])
    .filter((n): n is string => n !== undefined)
    .sort();
}

/** Writes rows and switches WAL on the leader; the name of the segment the switch completed. */
async function writeAndSwitch(table: string): Promise<string> {
  await cluster.query(
    `CREATE TABLE IF NOT EXISTS ${table} (v int); INSERT INTO ${table} SELECT generate_series(1, 5000)`,
  );
  const [row] = await cluster.query<{ name: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS name');
  return row!.name;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'pgvault-walrecv-'));
  cluster = await PatroniCluster.start({ scope: 'walrecv' });
  const leader = await cluster.leader();
  const r = await cluster.api(`${cluster.node(leader.name).apiUrl}/config`, 'PATCH', {
    slots: { [SLOT]: { type: 'physical' } },
  });
  if (r.status !== 200) throw new Error(`PATCH /config: ${r.status} ${r.body}`);
  // Patroni creates the permanent slot on the leader within a loop.
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const rows = await cluster.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = '${SLOT}'`);
    if (rows.length > 0) break;
    await sleep(200);
  }
}, 180_000);

afterAll(async () => {
  receiver?.kill('SIGKILL');
  await cluster?.stop();
  await rm(work, { recursive: true, force: true });
});

describe('wal receive with DEPLOYMENT_MODE=patroni', () => {
  it('refuses, in one line, a slot that is not a Patroni permanent slot', async () => {
    // Act
    const r = await runPgvault(['wal', 'receive', '--slot', 'not_permanent'], env(), work);

    // Assert
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('not_permanent is not a Patroni permanent slot');
    expect(lines[0]).toContain('slots.not_permanent.type=physical');
    // Nothing created behind Patroni's back (Patroni would drop it anyway).
    const slots = await cluster.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = 'not_permanent'`);
    expect(slots).toEqual([]);
  });

  it('follows the leader across a switchover: both timelines stored up to the last switch, no hole', async () => {
    // Prepare: the receiver, kept running.
    receiver = spawn(process.execPath, [PGVAULT_CLI, '--json', 'wal', 'receive', '--slot', SLOT], {
      env: env(),
      cwd: work,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    receiver.stderr!.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    let stdout = '';
    receiver.stdout!.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    const exited = new Promise<number | null>((resolve) => receiver!.once('exit', (code) => resolve(code)));
    await sleep(3_000);

    // Act: WAL on timeline 1, a switchover, WAL on timeline 2, then SIGTERM once it is all stored.
    const firstLeader = (await cluster.leader()).name;
    await writeAndSwitch('before_a');
    const lastOld = await writeAndSwitch('before_b');
    const newLeader = await cluster.switchover();
    const lastNew = await writeAndSwitch('after_a');
    const deadline = Date.now() + 120_000;
    const history = `${lastNew.slice(0, 8)}.history`;
    while (Date.now() < deadline && !(stored().includes(lastNew) && stored().includes(history))) {
      await sleep(250);
    }
    // Where pg_receivewal streams from now: the new leader's own view (not a demoted node's).
    let onNewLeader = false;
    while (Date.now() < deadline && !onNewLeader) {
      const rows = await cluster.query(
        `SELECT 1 FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
          WHERE s.slot_name = '${SLOT}' AND NOT pg_is_in_recovery()`,
        { node: newLeader.name },
      );
      onNewLeader = rows.length > 0;
      if (!onNewLeader) await sleep(250);
    }
    receiver.kill('SIGTERM');
    const code = await exited;
    const verify = await runPgvault(['--json', 'verify', 'wal'], env(), work);

    // Assert
    expect(newLeader.name).not.toBe(firstLeader);
    expect(
      onNewLeader,
      `pg_receivewal is not streaming from ${newLeader.name} through ${SLOT}\n${stderr}`,
    ).toBe(true);
    expect(lastOld.slice(0, 8)).toBe('00000001');
    expect(lastNew.slice(0, 8)).toBe('00000002');
    const names = stored();
    expect(names, stderr).toContain(lastOld);
    expect(names, stderr).toContain(lastNew);
    expect(names, stderr).toContain(history);
    // Every segment of each timeline is there, and timeline 2 starts where timeline 1's complete ones end.
    const segs = (tl: string) =>
      names.filter((n) => n.length === 24 && n.startsWith(tl)).map((n) => BigInt(`0x${n.slice(8)}`));
    for (const tl of ['00000001', '00000002']) {
      const s = segs(tl);
      expect(s.length, `${tl}: ${names.join(' ')}`).toBeGreaterThan(0);
      expect(Number(s[s.length - 1]! - s[0]!) + 1, `${tl}: ${names.join(' ')}`).toBe(s.length);
    }
    const lastOfOld = segs('00000001').pop()!;
    expect(segs('00000002')[0]! <= lastOfOld + 1n, names.join(' ')).toBe(true);
    expect(BigInt(`0x${lastOld.slice(8)}`) <= lastOfOld).toBe(true);
    const report = JSON.parse(verify.stdout) as { gaps: unknown[]; timelines: { timeline: number }[] };
    expect(report.gaps, verify.stdout).toEqual([]);
    expect(report.timelines.map((t) => t.timeline)).toEqual(expect.arrayContaining([1, 2]));
    // The receiver said where it streams from and how far behind the leader it is.
    const statuses = stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { server?: string; leaderChanges?: number; lagBytes?: number });
    const last = statuses[statuses.length - 1]!;
    expect(last.server, stderr).toContain(newLeader.name);
    expect(last.leaderChanges).toBeGreaterThanOrEqual(1);
    expect(typeof last.lagBytes).toBe('number');
    expect(stderr).toContain(`streaming from ${newLeader.name}`);
    expect(`exit ${code}`, stderr).toBe('exit 0');
  }, 240_000);
});
