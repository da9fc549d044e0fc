import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CliRun } from '../helpers/cli';
import { PatroniCluster, SUPERUSER, SUPERUSER_PASSWORD, vaultEnv } from '../helpers/patroni';
import { testPort } from '../helpers/ports';

/*
 * The topology module against a real Patroni cluster (Debian's patroni and etcd, two PostgreSQL
 * nodes, test/helpers/patroni.ts): one cluster for the file; the tests run in order, the switchover
 * and the stopped replica last.
 */

interface PlanJson {
  ok: boolean;
  mode: string;
  scope?: string;
  source?: string;
  nodes: {
    name: string;
    role: string;
    state: string;
    host: string;
    port: number;
    timeline?: number;
    lagBytes?: number;
    lagSeconds?: number;
    uses: string[];
  }[];
}

interface ManifestJson {
  id: string;
  node: { host: string; port: number; name?: string; role?: string; scope?: string; timeline?: number };
}

let cluster: PatroniCluster;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'pgvault-topology-'));
  cluster = await PatroniCluster.start({ scope: 'shop-cluster', tls: true });
  // For the report: how long a two-node Patroni cluster takes to come up here.
  console.log(`Patroni cluster (etcd + 2 nodes) up in ${cluster.startupMs} ms`);
  await cluster.query('CREATE DATABASE shop');
  await cluster.query(
    'CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders SELECT g, $$item $$ || g FROM generate_series(1, 250) g',
    { database: 'shop' },
  );
  await cluster.waitReplayed();
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
  await rm(work, { recursive: true, force: true });
});

function pgvault(args: string[], extra: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return cluster.pgvault(vaultEnv(work, 'shop'), args, extra);
}

/** The manifest `backup full --json` printed. */
function manifestOf(run: CliRun): ManifestJson {
  return (JSON.parse(run.stdout) as { manifest: ManifestJson }).manifest;
}

async function orders(database: string, node?: string): Promise<string> {
  const rows = await cluster.query<{ r: string }>(
    'SELECT string_agg(id || $$:$$ || item, $$,$$ ORDER BY id) AS r FROM orders',
    {
      database,
      node,
    },
  );
  return rows[0]!.r;
}

describe('pgvault topology with a real Patroni cluster', () => {
  it('lists the leader and the replica with their roles, states, timeline and what pgvault does with each', async () => {
    // Act
    const r = await pgvault(['--json', 'topology']);
    const text = await pgvault(['topology']);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as PlanJson;
    expect(plan.mode).toBe('patroni');
    expect(plan.scope).toBe('shop-cluster');
    const byName = Object.fromEntries(plan.nodes.map((n) => [n.name, n]));
    expect(byName.node1).toMatchObject({
      role: 'leader',
      state: 'running',
      host: '127.0.0.1',
      port: cluster.node('node1').pgPort,
      timeline: 1,
      uses: ['connections', 'WAL archiving'],
    });
    expect(byName.node2).toMatchObject({
      role: 'replica',
      host: '127.0.0.1',
      port: cluster.node('node2').pgPort,
      timeline: 1,
      lagBytes: 0,
      uses: ['full backups'],
    });
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('Patroni cluster shop-cluster');
    expect(text.stdout).toMatch(/node1\s+leader\s+running/);
  });

  it('asks the next PATRONI_URL when the first one is down, and never prints its password', async () => {
    // Prepare
    const dead = `http://watcher:hunter2-secret@127.0.0.1:${await testPort()}`;

    // Act
    const r = await pgvault(['--json', 'topology'], {
      PATRONI_URL: `${dead},${cluster.node('node2').apiUrl}`,
    });

    // Assess
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as PlanJson;
    expect(plan.source).toBe(cluster.node('node2').apiUrl);
    expect(plan.nodes.find((n) => n.role === 'leader')?.name).toBe('node1');
    expect(r.stdout + r.stderr).not.toContain('hunter2-secret');
  });

  it('every PATRONI_URL down: exit 1, one line naming each URL and why, no password', async () => {
    // Prepare
    const ports = [await testPort(), await testPort()];

    // Act
    const r = await pgvault(['backup', 'full'], {
      PATRONI_URL: `http://watcher:hunter2-secret@127.0.0.1:${ports[0]},http://127.0.0.1:${ports[1]}`,
    });

    // Assess
    expect(r.code).toBe(1);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toBe(
      `pgvault: no Patroni REST API answered (PATRONI_URL): http://127.0.0.1:${ports[0]}: connection refused; http://127.0.0.1:${ports[1]}: connection refused; check that Patroni runs and that PATRONI_URL names each node's restapi address`,
    );
    expect(r.stderr).not.toContain('hunter2-secret');
  });

  it('an https API whose CA is not given (no PATRONI_CACERT): one line that says to set it', async () => {
    // Act
    const r = await pgvault(['topology'], { PATRONI_URL: cluster.node('node1').apiUrl, PATRONI_CACERT: '' });

    // Assess
    expect(r.code).toBe(1);
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      expect.stringMatching(
        /^pgvault: no Patroni REST API answered \(PATRONI_URL\): https:\/\/127\.0\.0\.1:\d+: TLS certificate not trusted \([A-Z_]+\); set PATRONI_CACERT to the CA file that signed it; /,
      ),
    ]);
  });

  it('DEPLOYMENT_MODE=patroni without PATRONI_URL: exit 2, one line', async () => {
    // Act
    const r = await pgvault(['topology'], { PATRONI_URL: '' });

    // Assess
    expect(r.code).toBe(2);
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      'pgvault: DEPLOYMENT_MODE=patroni needs PATRONI_URL; set it to the REST API of every Patroni node, comma-separated (like http://10.0.0.1:8008,http://10.0.0.2:8008)',
    ]);
  });

  it('backup full reads from the replica (the manifest names it) and restores equal to the leader', async () => {
    // Act
    const backup = await pgvault(['--json', 'backup', 'full']);
    const id = manifestOf(backup).id;
    const restore = await pgvault(['restore', 'full', id, 'shop_from_replica', '--from', 'shop']);

    // Assess
    expect(backup.code, backup.stderr).toBe(0);
    expect(backup.stderr).not.toContain('warning');
    expect(manifestOf(backup).node).toEqual({
      host: '127.0.0.1',
      port: cluster.node('node2').pgPort,
      name: 'node2',
      role: 'replica',
      scope: 'shop-cluster',
      timeline: 1,
    });
    expect(restore.code, restore.stderr).toBe(0);
    expect(await orders('shop_from_replica', 'node1')).toBe(await orders('shop', 'node1'));
  });

  it('pgvault check names the Patroni leader it checked', async () => {
    // Act: archiving is not set up on this cluster, so the check says broken; the server is the point.
    const r = await pgvault(['--json', 'check'], { PGHOST: '127.0.0.1', PGPORT: '1' });

    // Assess
    const report = JSON.parse(r.stdout) as { server: string };
    expect(report.server).toBe(`node1 (127.0.0.1:${cluster.node('node1').pgPort}, Patroni leader)`);
  });

  it('commands that do not connect ask Patroni nothing: restore list works with every PATRONI_URL down', async () => {
    // Act
    const r = await pgvault(['--json', 'restore', 'list'], {
      PATRONI_URL: `http://127.0.0.1:${await testPort()}`,
    });

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
  });

  it('single-node: topology is the configured server, without connecting to it', async () => {
    // Prepare: nothing listens on this port.
    const port = await testPort();

    // Act
    const r = await pgvault(['--json', 'topology'], {
      DEPLOYMENT_MODE: 'single-node',
      PGHOST: '127.0.0.1',
      PGPORT: String(port),
    });

    // Assess
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as PlanJson;
    expect(plan.mode).toBe('single-node');
    expect(plan.nodes).toEqual([
      {
        name: `127.0.0.1:${port}`,
        role: 'leader',
        state: 'configured',
        host: '127.0.0.1',
        port,
        uses: ['connections', 'full backups', 'WAL archiving'],
      },
    ]);
  });

  it('backup base connects to the leader, and its manifest names it', async () => {
    // Act
    const base = await pgvault(['--json', 'backup', 'base']);

    // Assess
    expect(base.code, base.stderr).toBe(0);
    expect(manifestOf(base).node).toEqual({
      host: '127.0.0.1',
      port: cluster.node('node1').pgPort,
      name: 'node1',
      role: 'leader',
      scope: 'shop-cluster',
      timeline: 1,
    });
  });

  it('REPLICA_MAX_LAG in seconds: a replica whose replay is held up is asked its delay, and skipped once over it', async () => {
    // Prepare: a query on node2 holds a lock that the leader's ALTER TABLE needs there too, so node2
    // receives WAL but cannot replay it (max_standby_streaming_delay, 30 s by default).
    const holder = new Client({
      host: '127.0.0.1',
      port: cluster.node('node2').pgPort,
      user: SUPERUSER,
      password: SUPERUSER_PASSWORD,
      database: 'shop',
    });
    holder.on('error', () => {});
    await holder.connect();
    try {
      await holder.query('BEGIN; LOCK TABLE orders IN ACCESS SHARE MODE');
      await cluster.query(
        'ALTER TABLE orders ADD COLUMN note text; INSERT INTO orders VALUES (500, $$held$$)',
        {
          database: 'shop',
        },
      );
      for (let i = 0; ; i++) {
        const [row] = await cluster.query<{ behind: boolean }>(
          'SELECT pg_last_wal_receive_lsn() <> pg_last_wal_replay_lsn() AS behind',
          { node: 'node2' },
        );
        if (row?.behind) break;
        if (i > 100) throw new Error('node2 never fell behind in replay');
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 2_000));

      // Act
      const strict = await pgvault(['--json', 'backup', 'full', '--database', 'shop'], {
        REPLICA_MAX_LAG: '1s',
      });
      const lenient = await pgvault(['--json', 'topology'], { REPLICA_MAX_LAG: '1h' });

      // Assess
      expect(strict.code, strict.stderr).toBe(0);
      expect(strict.stderr.split('\n')[0]).toMatch(
        /^pgvault: warning: backing up from the leader node1 \(127\.0\.0\.1:\d+\), not a replica: node2: it lags \d+ s, over REPLICA_MAX_LAG \(1 s\)$/,
      );
      expect(manifestOf(strict).node).toMatchObject({ name: 'node1', role: 'leader' });
      const plan = JSON.parse(lenient.stdout) as PlanJson;
      const node2 = plan.nodes.find((n) => n.name === 'node2');
      expect(node2?.uses).toEqual(['full backups']);
      expect(node2?.lagSeconds).toBeGreaterThanOrEqual(2);
    } finally {
      await holder.end().catch(() => {});
    }
  });

  it('after a switchover: topology shows the new leader; backup full and its restore work with no config change (PGHOST still names the old leader)', async () => {
    // Prepare: PGHOST/PGPORT name node1, the leader now and a replica after the switchover.
    const pinned = { PGHOST: '127.0.0.1', PGPORT: String(cluster.node('node1').pgPort) };
    await cluster.switchover('node2');
    await cluster.query('INSERT INTO orders VALUES (251, $$after the switchover$$)', { database: 'shop' });

    // Act
    const topo = await pgvault(['--json', 'topology'], pinned);
    const backup = await pgvault(['--json', 'backup', 'full', '--database', 'shop'], pinned);
    const id = manifestOf(backup).id;
    // A restore writes: on node1, now a read-only replica, it would fail.
    const restore = await pgvault(['restore', 'full', id, 'shop_after_switchover', '--from', 'shop'], pinned);

    // Assess
    expect(topo.code, topo.stderr).toBe(0);
    const plan = JSON.parse(topo.stdout) as PlanJson;
    const leader = plan.nodes.find((n) => n.role === 'leader');
    expect(leader).toMatchObject({ name: 'node2', port: cluster.node('node2').pgPort, timeline: 2 });
    expect(backup.code, backup.stderr).toBe(0);
    expect(manifestOf(backup).node).toMatchObject({ name: 'node1', role: 'replica', timeline: 2 });
    expect(restore.code, restore.stderr).toBe(0);
    const restored = await orders('shop_after_switchover', 'node2');
    expect(restored).toBe(await orders('shop', 'node2'));
    expect(restored).toContain('251:after the switchover');
  });

  it('the replica stopped: backup full comes from the leader, with a warning that says why', async () => {
    // Prepare
    await cluster.stopNode('node1');

    // Act
    const backup = await pgvault(['--json', 'backup', 'full', '--database', 'shop']);

    // Assess
    expect(backup.code, backup.stderr).toBe(0);
    // Patroni may still list it as running for a moment (its member key lives until the TTL): then
    // the connection that fails is the reason.
    expect(backup.stderr.split('\n')[0]).toMatch(
      /^pgvault: warning: backing up from the leader node2 \(127\.0\.0\.1:\d+\), not a replica: node1: (it is stopped|cannot connect to PostgreSQL at 127\.0\.0\.1:\d+ \(ECONNREFUSED\).*)$/,
    );
    expect(backup.stderr.match(/warning/g)).toHaveLength(1);
    expect(manifestOf(backup).node).toMatchObject({ name: 'node2', role: 'leader', scope: 'shop-cluster' });
  });
});
