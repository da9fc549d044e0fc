import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
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
 * Failover mid-backup with BACKUP_FROM=leader, on a real Patroni cluster (Debian's patroni and etcd,
 * two PostgreSQL nodes, ttl 10 s, loop_wait 1 s): node1 leads and `backup full` dumps from it; node1
 * is killed (kill -9 of Patroni and of its postmaster); Patroni promotes node2 once the leader key
 * expires; the backup waits for that, bounded by Patroni's own timings, and retries once on node2.
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
  work = mkdtempSync(join(tmpdir(), 'pgvault-patroni-failover-backup-'));
  vault = vaultEnv(work, 'failover', { BACKUP_FROM: 'leader' });
  cluster = await PatroniCluster.start({ scope: 'failover-backup' });
  console.log(`Patroni cluster (etcd + 2 nodes) up in ${cluster.startupMs} ms`);
  await cluster.query('CREATE DATABASE app');
  await cluster.query(
    `CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint);
     INSERT INTO accounts SELECT g, 'owner ' || g, g * 11 FROM generate_series(1, 3000) g;
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

async function accounts(database: string, node: string): Promise<string> {
  const [row] = await cluster.query<{ r: string }>(
    "SELECT count(*) || ':' || sum(balance) || ':' || md5(string_agg(id || owner || balance, ',' ORDER BY id)) AS r FROM accounts",
    { database, node },
  );
  return row!.r;
}

function filesOf(clusterName: string): string[] {
  return vaultFiles(vault, clusterName);
}

describe('BACKUP_FROM=leader: the leader dies while backup full dumps from it', () => {
  it('waits for Patroni to promote the replica (bounded by ttl, and says so), retries once there: the manifest names the new leader, restored data equals its data, nothing of the failed attempt is left', async () => {
    // Prepare: an open transaction on node1 holds an ACCESS EXCLUSIVE lock on accounts, so the
    // backup's pg_dump on node1 waits there, mid-backup. Its uncommitted rows never reach node2.
    const holder = new Client({
      host: '127.0.0.1',
      port: cluster.node('node1').pgPort,
      user: SUPERUSER,
      password: SUPERUSER_PASSWORD,
      database: 'app',
    });
    holder.on('error', () => {});
    await holder.connect();
    await holder.query(
      "BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE; UPDATE accounts SET owner = 'lost' WHERE id <= 10",
    );
    const backup = pgvault(['--json', 'backup', 'full', '--database', 'app']);
    await waitFor('pg_dump waiting on node1', async () => {
      const [r] = await cluster.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'",
        { node: 'node1' },
      );
      return r!.n > 0;
    });

    // Act: kill -9 the leader (Patroni and PostgreSQL), mid-dump.
    await cluster.killNode('node1');
    await holder.end().catch(() => {});
    const run = await backup;

    // Assess
    expect(run.code, run.stderr).toBe(0);
    const newLeader = await cluster.waitHealthy({ leader: 'node2', replicas: 0 });
    expect(newLeader.name).toBe('node2');
    const node1 = cluster.node('node1');
    const node2 = cluster.node('node2');
    // It said why it waited, how long at most, and where it moved.
    expect(run.stderr).toMatch(
      new RegExp(
        `pgvault: warning: node1 \\(127\\.0\\.0\\.1:${node1.pgPort}, leader\\) failed mid-backup \\([^)]*\\); no other node leads yet; waiting up to 26 s for Patroni to promote one \\(ttl 10 s \\+ loop_wait 1 s \\+ 15 s to promote\\)`,
      ),
    );
    expect(run.stderr).toMatch(
      new RegExp(
        `pgvault: warning: node1 \\(127\\.0\\.0\\.1:${node1.pgPort}, leader\\) failed mid-backup \\([^)]*\\); retrying once on node2 \\(127\\.0\\.0\\.1:${node2.pgPort}, leader\\)`,
      ),
    );
    const manifest = (JSON.parse(run.stdout) as { manifest: ManifestJson }).manifest;
    expect(manifest.node).toEqual({
      host: '127.0.0.1',
      port: node2.pgPort,
      name: 'node2',
      role: 'leader',
      scope: 'failover-backup',
      timeline: 2,
    });
    // Nothing from the failed attempt: every file is the one backup's (its objects, its manifest) or the key registry.
    const files = filesOf('failover');
    const own = new Set(manifest.objects.map((o) => o.key));
    expect(
      files.filter((f) => !own.has(f) && !/\.manifest(\.json)?$/.test(f) && f !== 'failover/keys.json'),
    ).toEqual([]);
    expect(files.filter((f) => /manifest/.test(f))).toHaveLength(1);
    // Restored data equals the new leader's (the uncommitted update of the dead leader is in neither).
    const restore = await pgvault(['restore', 'full', manifest.id, 'app_restored', '--from', 'app']);
    expect(restore.code, restore.stderr).toBe(0);
    const restored = await accounts('app_restored', 'node2');
    expect(restored).toBe(await accounts('app', 'node2'));
    expect(restored.startsWith('3000:')).toBe(true);
    const [lost] = await cluster.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM accounts WHERE owner = 'lost'",
      {
        database: 'app_restored',
        node: 'node2',
      },
    );
    expect(lost!.n).toBe(0);
  }, 240_000);
});
