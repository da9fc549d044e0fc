import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CliRun } from '../helpers/cli';
import {
  PatroniCluster,
  SUPERUSER,
  SUPERUSER_PASSWORD,
  type VaultConfig,
  vaultEnv,
  vaultFiles,
  waitFor,
} from '../helpers/patroni';

/*
 * Backups from a replica that fails mid-backup, and the other replica faults, on a real Patroni
 * cluster (Debian's patroni and etcd, two PostgreSQL nodes): node1 leads throughout, node2 is the
 * replica BACKUP_FROM=replica reads from. Each test uses a CLUSTER_NAME of its own, so what a test
 * finds in the vault is its own.
 */

interface ManifestJson {
  id: string;
  node: { host: string; port: number; name?: string; role?: string; scope?: string; timeline?: number };
  objects: { key: string }[];
}

let cluster: PatroniCluster;
let work: string;
let vault: VaultConfig;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'pgvault-patroni-retry-'));
  vault = vaultEnv(work, 'app');
  cluster = await PatroniCluster.start({ scope: 'retry-cluster' });
  console.log(`Patroni cluster (etcd + 2 nodes) up in ${cluster.startupMs} ms`);
  await cluster.query('CREATE DATABASE app');
  await cluster.query(
    `CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint);
     INSERT INTO accounts SELECT g, 'owner ' || g, g * 7 FROM generate_series(1, 2000) g;
     CREATE TABLE marker (id serial PRIMARY KEY)`,
    { database: 'app' },
  );
  await cluster.waitReplayed();
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

function pgvault(args: string[], extra: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return cluster.pgvault(vault, args, extra);
}

function manifestOf(run: CliRun): ManifestJson {
  return (JSON.parse(run.stdout) as { manifest: ManifestJson }).manifest;
}

async function accounts(database: string): Promise<string> {
  const [row] = await cluster.query<{ r: string }>(
    "SELECT count(*) || ':' || sum(balance) || ':' || md5(string_agg(id || owner || balance, ',' ORDER BY id)) AS r FROM accounts",
    { database, node: 'node1' },
  );
  return row!.r;
}

/** Every file under a cluster's folder in the vault, relative to BACKUP_DIR. */
function filesOf(clusterName: string): string[] {
  return vaultFiles(vault, clusterName);
}

function leaderClient(database: string): Client {
  const c = new Client({
    host: '127.0.0.1',
    port: cluster.node('node1').pgPort,
    user: SUPERUSER,
    password: SUPERUSER_PASSWORD,
    database,
  });
  c.on('error', () => {});
  return c;
}

describe('backup full retries once on the next candidate when the replica fails mid-backup', () => {
  it("the replica's PostgreSQL restarted while pg_dump runs on it: the backup comes from the leader, says why, names it, restores equal", async () => {
    // Prepare: the leader holds an ACCESS EXCLUSIVE lock on accounts in an open transaction; node2
    // replays it and holds it too, so pg_dump on node2 waits there, mid-backup.
    const holder = leaderClient('app');
    await holder.connect();
    let backup: Promise<CliRun> | undefined;
    try {
      await holder.query('BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE');
      // A commit elsewhere flushes the lock's WAL record to the replica.
      await cluster.query('INSERT INTO marker DEFAULT VALUES', { database: 'app' });
      await waitFor('node2 to hold the replayed lock', async () => {
        const [r] = await cluster.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_locks WHERE relation = 'accounts'::regclass AND mode = 'AccessExclusiveLock'",
          { node: 'node2', database: 'app' },
        );
        return r!.n > 0;
      });
      backup = pgvault(['--json', 'backup', 'full', '--database', 'app'], { CLUSTER_NAME: 'restarted' });
      await waitFor('pg_dump waiting on node2', async () => {
        const [r] = await cluster.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'",
          { node: 'node2' },
        );
        return r!.n > 0;
      });

      // Act: Patroni restarts node2's PostgreSQL (fast shutdown ends pg_dump's session); then the
      // leader's lock goes, so the retry's pg_dump there can read.
      const restart = await cluster.api(`${cluster.node('node2').apiUrl}/restart`, 'POST', {}, 60_000);
      expect(restart.status, restart.body).toBe(200);
      await holder.query('ROLLBACK');
    } finally {
      await holder.end().catch(() => {});
    }
    const run = await backup!;
    expect(run.code, run.stderr).toBe(0);
    const manifest = manifestOf(run);
    const restore = await pgvault(['restore', 'full', manifest.id, 'app_retried', '--from', 'app'], {
      CLUSTER_NAME: 'restarted',
    });

    // Assess: the warning says why it moved and where.
    expect(run.stderr).toMatch(
      new RegExp(
        `pgvault: warning: node2 \\(127\\.0\\.0\\.1:${cluster.node('node2').pgPort}, replica\\) failed mid-backup \\((its server was shut down or restarted|the connection to it was lost)\\); retrying once on node1 \\(127\\.0\\.0\\.1:${cluster.node('node1').pgPort}, leader\\)`,
      ),
    );
    // The manifest names the node actually read.
    expect(manifest.node).toEqual({
      host: '127.0.0.1',
      port: cluster.node('node1').pgPort,
      name: 'node1',
      role: 'leader',
      scope: 'retry-cluster',
      timeline: 1,
    });
    // The failed attempt left nothing: every file in the vault is the one backup's (or the archive's
    // key registry).
    const files = filesOf('restarted');
    const own = new Set(manifest.objects.map((o) => o.key));
    expect(
      files.filter((f) => !own.has(f) && !/\.manifest(\.json)?$/.test(f) && f !== 'restarted/keys.json'),
    ).toEqual([]);
    expect(files.filter((f) => /manifest/.test(f))).toHaveLength(1);
    // Restored data equals the leader's.
    expect(restore.code, restore.stderr).toBe(0);
    expect(await accounts('app_retried')).toBe(await accounts('app'));
  }, 180_000);
});

describe('replay on the replica cancels pg_dump (a deadlock with the startup process)', () => {
  it('retried on the leader: the warning says so, the manifest names the leader, restores equal', async () => {
    // Prepare: the leader locks marker (node2 replays the lock), so pg_dump on node2 holds accounts
    // (locked first, lower oid) and waits for marker; then the leader locks accounts too: node2's
    // replay waits for pg_dump, which waits for replay: PostgreSQL 15 cancels pg_dump as "deadlock
    // detected" after deadlock_timeout (a conflict with recovery that does not say so).
    await cluster.waitHealthy();
    // Replay waits 2 s, not 30, before it cancels what holds it up (Patroni's dynamic configuration).
    const patched = await cluster.api(`${cluster.node('node1').apiUrl}/config`, 'PATCH', {
      postgresql: { parameters: { max_standby_streaming_delay: '2s' } },
    });
    expect(patched.status, patched.body).toBe(200);
    await waitFor('node2 to apply max_standby_streaming_delay', async () => {
      const [r] = await cluster.query<{ v: string }>('SHOW max_standby_streaming_delay', { node: 'node2' });
      return (r as unknown as Record<string, string>).max_standby_streaming_delay === '2s';
    });
    await cluster.query('CREATE TABLE IF NOT EXISTS flush (x int)');
    const flush = () => cluster.query('INSERT INTO flush VALUES (1)');
    const first = leaderClient('app');
    const second = leaderClient('app');
    await first.connect();
    await second.connect();
    let backup: Promise<CliRun> | undefined;
    try {
      await first.query('BEGIN; LOCK TABLE marker IN ACCESS EXCLUSIVE MODE');
      await flush();
      await waitFor('node2 to hold the replayed lock on marker', async () => {
        const [r] = await cluster.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_locks WHERE relation = 'marker'::regclass AND mode = 'AccessExclusiveLock'",
          { node: 'node2', database: 'app' },
        );
        return r!.n > 0;
      });
      backup = pgvault(['--json', 'backup', 'full', '--database', 'app'], { CLUSTER_NAME: 'conflict-retry' });
      await waitFor('pg_dump waiting on node2', async () => {
        const [r] = await cluster.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'",
          { node: 'node2' },
        );
        return r!.n > 0;
      });

      // Act: the conflicting lock; once node2 has cancelled pg_dump, the leader's locks go.
      await second.query('BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE');
      await flush();
      // Replay got the lock on accounts: pg_dump, which held it, was cancelled.
      await waitFor('node2 to cancel pg_dump and replay the lock on accounts', async () => {
        const [r] = await cluster.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_locks WHERE relation = 'accounts'::regclass AND mode = 'AccessExclusiveLock' AND granted",
          { node: 'node2', database: 'app' },
        );
        return r!.n > 0;
      });
      await second.query('ROLLBACK');
      await first.query('ROLLBACK');
    } finally {
      await first.end().catch(() => {});
      await second.end().catch(() => {});
    }
    const run = await backup!;
    expect(run.code, run.stderr).toBe(0);
    const manifest = manifestOf(run);
    const restore = await pgvault(['restore', 'full', manifest.id, 'app_after_conflict', '--from', 'app'], {
      CLUSTER_NAME: 'conflict-retry',
    });

    // Assess
    expect(run.stderr).toMatch(
      /pgvault: warning: node2 \(127\.0\.0\.1:\d+, replica\) failed mid-backup \(a deadlock cancelled its query\); retrying once on node1 \(127\.0\.0\.1:\d+, leader\)/,
    );
    expect(manifest.node).toMatchObject({ name: 'node1', role: 'leader', scope: 'retry-cluster' });
    expect(restore.code, restore.stderr).toBe(0);
    expect(await accounts('app_after_conflict')).toBe(await accounts('app'));
  }, 180_000);

  it('no candidate left (BACKUP_FROM=leader, its pg_dump ended): the first failure is the error, nothing stored', async () => {
    // Prepare: the leader holds marker, so pg_dump there waits; then its session is terminated.
    const holder = leaderClient('app');
    await holder.connect();
    let backup: Promise<CliRun> | undefined;
    try {
      await holder.query('BEGIN; LOCK TABLE marker IN ACCESS EXCLUSIVE MODE');
      backup = pgvault(['--json', 'backup', 'full', '--database', 'app'], {
        CLUSTER_NAME: 'no-candidate',
        BACKUP_FROM: 'leader',
      });
      await waitFor('pg_dump waiting on node1', async () => {
        const [r] = await cluster.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'",
          { node: 'node1' },
        );
        return r!.n > 0;
      });

      // Act
      await cluster.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'",
        { node: 'node1' },
      );
    } finally {
      await holder.query('ROLLBACK').catch(() => {});
      await holder.end().catch(() => {});
    }
    const run = await backup!;

    // Assess: pg_dump's own line, no move, and no manifest in the vault.
    expect(run.code).toBe(1);
    const lines = run.stderr.trimEnd().split('\n');
    expect(lines.at(-1)).toMatch(/^pgvault: pg_dump of app failed with exit code 1: /);
    expect(run.stderr).not.toContain('retrying');
    expect(filesOf('no-candidate').filter((f) => /manifest/.test(f))).toEqual([]);
  }, 120_000);
});

describe('PATRONI_NAME: the member this host runs', () => {
  it('pgvault topology marks it; a name that is no member is said', async () => {
    // Act
    const r = await pgvault(['--json', 'topology'], { PATRONI_NAME: 'node2' });
    const text = await pgvault(['topology'], { PATRONI_NAME: 'node2' });
    const wrong = await pgvault(['topology'], { PATRONI_NAME: 'node9' });

    // Assess
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as { self?: string; nodes: { name: string; self?: boolean }[] };
    expect(plan.self).toBe('node2');
    expect(plan.nodes.map((n) => [n.name, n.self ?? false]).sort()).toEqual([
      ['node1', false],
      ['node2', true],
    ]);
    expect(text.stdout).toMatch(/node2 \(this host\)\s+replica/);
    expect(wrong.code, wrong.stderr).toBe(0);
    expect(wrong.stdout).toContain(
      "PATRONI_NAME=node9 names no member of this cluster; set it to this node's patroni.yml `name`",
    );
  });

  it('a backup of the node as single-node (PGHOST its own server): the manifest names the member', async () => {
    // Act
    const r = await pgvault(['--json', 'backup', 'indexes'], {
      DEPLOYMENT_MODE: 'single-node',
      PGHOST: '127.0.0.1',
      PGPORT: String(cluster.node('node2').pgPort),
      PATRONI_NAME: 'node2',
      CLUSTER_NAME: 'named',
    });

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(manifestOf(r).node).toEqual({
      host: '127.0.0.1',
      port: cluster.node('node2').pgPort,
      name: 'node2',
    });
  });

  it('the WAL conflict line (two nodes archiving one segment with different bytes) names the member', async () => {
    // Prepare: a real segment of the leader, archived from node1's copy; node2's copy differs.
    const [row] = await cluster.query<{ name: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS name');
    const name = row!.name;
    const copyOf = (node: string) => {
      const walDir = join(work, `${node}-data`, 'pg_wal');
      mkdirSync(join(walDir, 'archive_status'), { recursive: true });
      copyFileSync(join(cluster.node('node1').dataDir, 'pg_wal', name), join(walDir, name));
      writeFileSync(join(walDir, 'archive_status', `${name}.ready`), '');
      return join(walDir, name);
    };
    const first = copyOf('node1');
    const second = copyOf('node2');
    const bytes = readFileSync(second);
    bytes[9000] = bytes[9000]! ^ 0xff;
    writeFileSync(second, bytes);
    const stored = await pgvault(['backup', 'wal', first], {
      PATRONI_NAME: 'node1',
      CLUSTER_NAME: 'conflict',
    });

    // Act
    const r = await pgvault(['backup', 'wal', second], { PATRONI_NAME: 'node2', CLUSTER_NAME: 'conflict' });

    // Assess
    expect(stored.code, stored.stderr).toBe(0);
    expect(r.code).toBe(3);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(
      `this copy comes from node node2 (${hostname()}, data directory ${join(work, 'node2-data')}), timeline 1`,
    );
  });
});

describe("the replica's REST API down", () => {
  it("node2's Patroni frozen (its API hangs, its member key expires): PATRONI_URL falls through to node1, the backup comes from the leader with a warning", async () => {
    // Prepare: node2's API first in PATRONI_URL, so the first answer must come from the next.
    cluster.pauseNode('node2');
    try {
      await waitFor(
        "node2's member key to expire",
        async () => {
          const r = await cluster.api(`${cluster.node('node1').apiUrl}/cluster`);
          const members = (JSON.parse(r.body) as { members: { name: string }[] }).members;
          return !members.some((m) => m.name === 'node2');
        },
        40_000,
      );

      // Act
      const backup = await pgvault(['--json', 'backup', 'full', '--database', 'app'], {
        CLUSTER_NAME: 'api-down',
        PATRONI_URL: `${cluster.node('node2').apiUrl},${cluster.node('node1').apiUrl}`,
        PATRONI_TIMEOUT: '2',
      });
      const id = manifestOf(backup).id;
      const restore = await pgvault(['restore', 'full', id, 'app_api_down', '--from', 'app'], {
        CLUSTER_NAME: 'api-down',
        PATRONI_URL: cluster.node('node1').apiUrl,
      });

      // Assess
      expect(backup.code, backup.stderr).toBe(0);
      expect(backup.stderr.split('\n')[0]).toMatch(
        /^pgvault: warning: backing up from the leader node1 \(127\.0\.0\.1:\d+\), not a replica: the cluster has no replica$/,
      );
      expect(manifestOf(backup).node).toMatchObject({
        name: 'node1',
        role: 'leader',
        scope: 'retry-cluster',
      });
      expect(restore.code, restore.stderr).toBe(0);
      expect(await accounts('app_api_down')).toBe(await accounts('app'));
    } finally {
      cluster.resumeNode('node2');
    }
  }, 120_000);
});

describe('the replica lagging over REPLICA_MAX_LAG in bytes', () => {
  it("node2's WAL receiver frozen while the leader writes: Patroni reports its byte lag, the backup comes from the leader with a warning naming it", async () => {
    // Prepare: node2 receives nothing while its walreceiver is stopped (SIGSTOP), so the byte lag
    // Patroni reports for it grows with what the leader writes.
    await cluster.waitHealthy({ timeoutMs: 60_000 });
    const [receiver] = await cluster.query<{ pid: number }>('SELECT pid FROM pg_stat_wal_receiver', {
      node: 'node2',
    });
    const pid = receiver!.pid;
    process.kill(pid, 'SIGSTOP');
    try {
      await cluster.query(
        "CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler SELECT repeat('x', 500) FROM generate_series(1, 4000)",
        { database: 'app' },
      );
      await waitFor(
        'Patroni to report node2 over 256 kB behind',
        async () => {
          const r = await cluster.api(`${cluster.node('node1').apiUrl}/cluster`);
          const members = (JSON.parse(r.body) as { members: { name: string; lag?: number | string }[] })
            .members;
          const lag = members.find((m) => m.name === 'node2')?.lag;
          return typeof lag === 'number' && lag > 256 * 1024;
        },
        30_000,
      );

      // Act
      const backup = await pgvault(['--json', 'backup', 'full', '--database', 'app'], {
        CLUSTER_NAME: 'lagging',
        REPLICA_MAX_LAG: '256kB',
      });

      // Assess
      expect(backup.code, backup.stderr).toBe(0);
      expect(backup.stderr.split('\n')[0]).toMatch(
        /^pgvault: warning: backing up from the leader node1 \(127\.0\.0\.1:\d+\), not a replica: node2: it lags [\d.]+ (KiB|MiB|GiB), over REPLICA_MAX_LAG \(256\.0 KiB\)$/,
      );
      expect(manifestOf(backup).node).toMatchObject({
        name: 'node1',
        role: 'leader',
        scope: 'retry-cluster',
      });
    } finally {
      process.kill(pid, 'SIGCONT');
    }
  }, 120_000);
});
