import { chmod, chown, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serverOsUser } from '../../core/pg/cluster';
import type { CliRun } from '../helpers/cli';
import { PatroniCluster, vaultEnv } from '../helpers/patroni';
import { testPort } from '../helpers/ports';

/*
 * Config, base and index backups of a real Patroni cluster (Debian's patroni and etcd, two
 * PostgreSQL nodes, test/helpers/patroni.ts): one cluster for the file, node1 the leader throughout.
 */

interface ManifestJson {
  id: string;
  type: string;
  node: { host: string; port: number; name?: string; role?: string; scope?: string; timeline?: number };
  objects: { key: string; kind: string; format: string }[];
  physical?: { timeline: number };
}

interface MemberJson {
  name: string;
  role: string;
  state: string;
  host: string;
  port: number;
  timeline?: number;
}

let cluster: PatroniCluster;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'pgvault-patroni-backups-'));
  // A base backup's verify restore runs a sandbox server (and its restore_command) as postgres.
  await chmod(work, 0o755);
  const vaultDir = join(work, 'vault', 'pay');
  await mkdir(vaultDir, { recursive: true, mode: 0o700 });
  const user = serverOsUser();
  if (user) {
    await chown(join(work, 'vault'), user.uid, user.gid);
    await chown(vaultDir, user.uid, user.gid);
  }
  cluster = await PatroniCluster.start({ scope: 'pay-cluster' });
  console.log(`Patroni cluster (etcd + 2 nodes) up in ${cluster.startupMs} ms`);
  await cluster.query('CREATE DATABASE pay');
  await cluster.query(
    'CREATE TABLE invoices (id int PRIMARY KEY, amount int); CREATE INDEX invoices_amount ON invoices (amount); INSERT INTO invoices SELECT g, g * 10 FROM generate_series(1, 300) g',
    { database: 'pay' },
  );
  await cluster.waitReplayed();
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
  await rm(work, { recursive: true, force: true });
});

function pgvault(args: string[], extra: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return cluster.pgvault(vaultEnv(work, 'pay'), args, extra);
}

function manifestOf(run: CliRun): ManifestJson {
  return (JSON.parse(run.stdout) as { manifest: ManifestJson }).manifest;
}

function replicaNode() {
  return {
    host: '127.0.0.1',
    port: cluster.node('node2').pgPort,
    name: 'node2',
    role: 'replica',
    scope: 'pay-cluster',
    timeline: 1,
  };
}

describe('config, base and index backups of a real Patroni cluster', () => {
  it("backup config stores Patroni's dynamic configuration exactly as GET /config returns it, and each member's role", async () => {
    // Prepare: a value of our own in the dynamic configuration (PATCH /config, as patronictl edit-config does).
    const api = cluster.node('node1').apiUrl;
    const patched = await cluster.api(`${api}/config`, 'PATCH', { maximum_lag_on_failover: 7340033 });
    expect(patched.status, patched.body).toBe(200);
    // GET /config answers from each member's cached view of the DCS: wait until every member shows it.
    let expected: Record<string, unknown> = {};
    for (const deadline = Date.now() + 20_000; Date.now() < deadline; ) {
      const answers = await Promise.all(
        ['node1', 'node2'].map(async (n) => (await cluster.api(`${cluster.node(n).apiUrl}/config`)).body),
      );
      expected = JSON.parse(answers[0]!) as Record<string, unknown>;
      if (answers.every((a) => a === answers[0]) && expected.maximum_lag_on_failover === 7340033) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(expected.maximum_lag_on_failover).toBe(7340033);

    // Act
    const backup = await pgvault(['--json', 'backup', 'config']);
    const id = manifestOf(backup).id;
    const listed = await pgvault(['--json', 'restore', 'list', id]);
    const text = await pgvault(['restore', 'list', id]);

    // Assess: the manifest lists the two objects.
    expect(backup.code, backup.stderr).toBe(0);
    const kinds = manifestOf(backup).objects.map((o) => [o.kind, o.format]);
    expect(kinds).toEqual([
      ['config', 'tar'],
      ['patroni-config', 'json'],
      ['patroni-members', 'json'],
    ]);
    // Read back from the vault: GET /config unchanged, and the roles at backup time.
    expect(listed.code, listed.stderr).toBe(0);
    const record = (
      JSON.parse(listed.stdout) as {
        patroni: { config: Record<string, unknown>; members: { scope: string; members: MemberJson[] } };
      }
    ).patroni;
    expect(record.config).toEqual(expected);
    expect(record.config.ttl).toBe(10);
    expect(record.config.loop_wait).toBe(1);
    expect(record.members.scope).toBe('pay-cluster');
    expect(record.members.members.map((m) => [m.name, m.role, m.state, m.port, m.timeline]).sort()).toEqual([
      ['node1', 'leader', 'running', cluster.node('node1').pgPort, 1],
      ['node2', 'replica', expect.stringMatching(/^(running|streaming)$/), cluster.node('node2').pgPort, 1],
    ]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain('Patroni cluster pay-cluster members:');
    expect(text.stdout).toMatch(/node1 {2}leader {2}running {2}127\.0\.0\.1:\d+ {2}timeline 1/);
    expect(text.stdout).toMatch(/node2 {2}replica /);
    expect(text.stdout).toContain('"maximum_lag_on_failover":7340033');
  });

  it('backup config with the first PATRONI_URL down (a password in it): GET /config comes from the next, no password stored or printed', async () => {
    // Prepare
    const dead = `http://watcher:hunter2-secret@127.0.0.1:${await testPort()}`;
    const expected = JSON.parse(
      (await cluster.api(`${cluster.node('node2').apiUrl}/config`)).body,
    ) as unknown;

    // Act
    const backup = await pgvault(['--json', 'backup', 'config'], {
      PATRONI_URL: `${dead},${cluster.node('node2').apiUrl}`,
    });
    const id = manifestOf(backup).id;
    const listed = await pgvault(['--json', 'restore', 'list', id]);

    // Assess
    expect(backup.code, backup.stderr).toBe(0);
    const record = (
      JSON.parse(listed.stdout) as { patroni: { config: unknown; members: { source: string } } }
    ).patroni;
    expect(record.config).toEqual(expected);
    expect(record.members.source).toBe(cluster.node('node2').apiUrl);
    expect(backup.stdout + backup.stderr + listed.stdout + listed.stderr).not.toContain('hunter2-secret');
  });

  it('backup base reads from the leader even with BACKUP_FROM=replica, and recovers with its rows', async () => {
    // Act
    const backup = await pgvault(['--json', 'backup', 'base']);
    const manifest = manifestOf(backup);
    const verify = await pgvault(['--json', 'verify', 'restore', manifest.id]);

    // Assess: the leader (a standby's backup has no WAL record after its stop: see core/backup/base.ts).
    expect(backup.code, backup.stderr).toBe(0);
    expect(backup.stderr).not.toContain('warning');
    expect(manifest.node).toMatchObject({ name: 'node1', role: 'leader', scope: 'pay-cluster', timeline: 1 });
    expect(manifest.physical?.timeline).toBe(1);
    // Recovered in a sandbox (its restore_command's config must parse without PATRONI_URL).
    expect(verify.code, verify.stderr).toBe(0);
    const restored = JSON.parse(verify.stdout) as {
      databases: { database: string; tables: number; rows: number }[];
    };
    expect(restored.databases.find((d) => d.database === 'pay')).toMatchObject({ tables: 1, rows: 300 });
  });

  it('backup indexes reads from the replica (the manifest names it); BACKUP_FROM=leader sends it to the leader', async () => {
    // Act
    const fromReplica = await pgvault(['--json', 'backup', 'indexes']);
    const indexesOnLeader = await pgvault(['--json', 'backup', 'indexes'], { BACKUP_FROM: 'leader' });

    // Assess
    expect(fromReplica.code, fromReplica.stderr).toBe(0);
    expect(manifestOf(fromReplica).node).toEqual(replicaNode());
    expect(indexesOnLeader.code, indexesOnLeader.stderr).toBe(0);
    expect(manifestOf(indexesOnLeader).node).toMatchObject({ name: 'node1', role: 'leader' });
  });
});
