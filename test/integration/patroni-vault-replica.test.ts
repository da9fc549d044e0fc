import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPgvault } from '../helpers/cli';
import {
  archiveCommand,
  giveToServer,
  onThisMachine,
  PatroniCluster,
  readmeSnippet,
  type VaultConfig,
  vaultConfigFile,
} from '../helpers/patroni';
import { startCluster } from '../helpers/pg';

/*
 * Patroni integration, with the patroni.yml snippets exactly as README.md gives them (read from
 * between their marker comments, only the pgvault path and config file made this machine's):
 * a member created through create_replica_methods [pgvault, basebackup] is built from the vault
 * and streams; with a vault that cannot, Patroni falls back to basebackup; a new cluster
 * bootstrapped with bootstrap.method pgvault to a PITR target time holds exactly the rows before it.
 * Real etcd and Patroni (test/helpers/patroni.ts), encrypted zstd vault in a directory.
 */

let cluster: PatroniCluster;
let work: string;
let vault: VaultConfig;
let vaultDir: string;
let configFile: string;
let baseStartWal: string;
let baseObjectKey: string;

function pgvault(args: string[]) {
  return cluster.pgvault(vault, args);
}

/** Waits until the leader streams to member `name` (its own pg_stat_replication row). */
async function waitStreamingTo(name: string, timeoutMs = 180_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let seen = '';
  for (;;) {
    try {
      const rows = await cluster.query<{ state: string }>(
        `SELECT state FROM pg_stat_replication WHERE application_name = '${name}'`,
      );
      if (rows.some((r) => r.state === 'streaming')) return;
      seen = JSON.stringify(rows);
    } catch (err) {
      seen = String(err);
    }
    if (Date.now() > deadline) {
      throw new Error(
        `the leader does not stream to ${name}: ${seen}; its log ends: ${readFileSync(cluster.node(name).logFile, 'utf8').slice(-2000)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function count(node: string, where = 'true'): Promise<number> {
  const [row] = await cluster.query<{ n: string }>(`SELECT count(*) AS n FROM orders WHERE ${where}`, {
    node,
  });
  return Number(row!.n);
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'pgvault-patroni-vault-'));
  vault = vaultConfigFile(work, {
    CLUSTER_NAME: 'orders',
    COMPRESSION: 'zstd',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: "'patroni vault replica test passphrase 7f3a'",
  });
  vaultDir = vault.vaultDir;
  configFile = vault.configFile!;
  cluster = await PatroniCluster.start({
    scope: 'vault-replica',
    parameters: {
      archive_mode: 'on',
      archive_command: archiveCommand(vault),
      archive_timeout: 0,
      // As little WAL kept for replicas beyond their slots as Patroni allows (16MB): a member built from an older base backup can
      // only catch up through the archive.
      wal_keep_size: '16MB',
    },
  });
  console.log(`Patroni cluster (etcd + 2 nodes) up in ${cluster.startupMs} ms`);
  await cluster.query(
    "CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, 'before the base backup' FROM generate_series(1, 100) g",
  );
  const base = await pgvault(['--json', 'backup', 'base']);
  expect(base.code, base.stderr).toBe(0);
  const manifest = (
    JSON.parse(base.stdout) as { manifest: { physical: { startWal: string }; objects: { key: string }[] } }
  ).manifest;
  baseStartWal = manifest.physical.startWal;
  baseObjectKey = manifest.objects[0]!.key;
  // The base backup was written by this (root) process: Patroni's user must read it.
  giveToServer(vaultDir);
  // Rows after the backup, then enough segment switches and checkpoints that the leader has
  // recycled the WAL the backup starts from.
  for (let i = 0; i < 4; i++) {
    await cluster.query(
      `INSERT INTO orders SELECT g, 'after the base backup' FROM generate_series(${101 + i * 25}, ${125 + i * 25}) g`,
    );
    await cluster.switchAndWaitArchived();
    await cluster.query('CHECKPOINT');
  }
  await cluster.waitReplayed();
}, 240_000);

afterAll(async () => {
  await cluster?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('create_replica_methods [pgvault, basebackup] (README snippet)', () => {
  it('builds a new member from the vault (not from the leader), which catches up through the archive, streams and is in sync', async () => {
    // Prepare: the leader no longer holds the WAL the base backup starts from.
    const leader = (await cluster.leader()).name;
    const [held] = await cluster.query<{ n: string }>(
      `SELECT count(*) AS n FROM pg_ls_waldir() WHERE name = '${baseStartWal}'`,
    );
    const why = await cluster.query(
      "SELECT (SELECT string_agg(name, ',' ORDER BY name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$') AS wal, (SELECT string_agg(slot_name || ':' || coalesce(restart_lsn::text, '-'), ',') FROM pg_replication_slots) AS slots, current_setting('wal_keep_size') AS keep, pg_current_wal_lsn()::text AS lsn",
    );
    expect(Number(held!.n), `${baseStartWal} still in the leader's pg_wal: ${JSON.stringify(why)}`).toBe(0);
    const yaml = onThisMachine(readmeSnippet('patroni-replica-snippet', 'postgresql:'), configFile);

    // Act
    const node = await cluster.addNode({ postgresqlYaml: yaml, logLevel: 'INFO' });
    await waitStreamingTo(node.name);
    await cluster.query(
      "INSERT INTO orders SELECT g, 'after the new member' FROM generate_series(201, 210) g",
    );
    await cluster.waitReplayed();

    // Assess: Patroni used the pgvault method, and the leader streams to the new member.
    const log = readFileSync(node.logFile, 'utf8');
    expect(log).toContain('replica has been created using pgvault');
    expect(log).not.toContain('replica has been created using basebackup');
    expect(log).not.toContain('Error creating replica');
    // Its server replayed segments from the vault (restore_command from the snippet's recovery_conf).
    expect(log).toMatch(/restored log file "[0-9A-F]{24}" from archive/);
    // The system identifier was compared with the leader's (Patroni's --connstring, its pgpass).
    expect(log).not.toContain('could not ask the member to clone from');
    const streaming = await cluster.query<{ state: string }>(
      `SELECT state FROM pg_stat_replication WHERE application_name = '${node.name}'`,
      { node: leader },
    );
    expect(streaming.map((r) => r.state)).toEqual(['streaming']);
    // Every row: before the backup, after it (through the archive), and after the member came up.
    expect(await count(node.name)).toBe(210);
    expect(await count(node.name, "note = 'after the new member'")).toBe(10);
    const [recovering] = await cluster.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r', {
      node: node.name,
    });
    expect(recovering!.r).toBe(true);
  }, 300_000);

  it('falls back to basebackup when the vault cannot build the replica: one line from pgvault, and the member still comes up', async () => {
    // Prepare: a config naming a cluster with nothing in the vault; the member built before is stopped.
    await cluster.stopNode(cluster.nodes[2]!.name);
    const emptyConfig = join(work, 'pgvault-empty.env');
    writeFileSync(emptyConfig, `BACKUP_DIR=${vaultDir}\nCLUSTER_NAME=nothing-here\n`, { mode: 0o600 });
    giveToServer(emptyConfig);
    const yaml = onThisMachine(readmeSnippet('patroni-replica-snippet', 'postgresql:'), emptyConfig);

    // Act
    const node = await cluster.addNode({ postgresqlYaml: yaml, logLevel: 'INFO' });
    await waitStreamingTo(node.name);
    await cluster.query(
      "INSERT INTO orders SELECT g, 'after the fallback member' FROM generate_series(301, 305) g",
    );
    await cluster.waitReplayed();

    // Assess
    const log = readFileSync(node.logFile, 'utf8');
    // restore_command's own lines (WAL the empty vault lacks) are in this log too: these are restore replica's.
    const ours = log.split('\n').filter((l) => l.startsWith('pgvault: ') && l.includes('base backup'));
    expect(ours).toEqual([
      `pgvault: no complete base backup of cluster nothing-here in file://${vaultDir}; take one with \`pgvault backup base\``,
    ]);
    expect(log).toContain('Error creating replica using method pgvault');
    expect(log).toContain('replica has been created using basebackup');
    expect(await count(node.name)).toBe(215);
  }, 300_000);
});

describe('bootstrap.method pgvault (README snippet): a new cluster at a PITR target time', () => {
  let clone: PatroniCluster | undefined;

  afterAll(async () => {
    await clone?.stop();
  });

  it('has exactly the rows committed before the target and is a working leader of its own scope', async () => {
    // Prepare: row 1001 committed, the target time, row 1002 committed after it, both archived.
    await cluster.query("INSERT INTO orders VALUES (1001, 'before the target')");
    const [t] = await cluster.query<{ t: Date }>('SELECT clock_timestamp() AS t');
    await new Promise((r) => setTimeout(r, 1_500));
    await cluster.query("INSERT INTO orders VALUES (1002, 'after the target')");
    await cluster.switchAndWaitArchived();
    const expected = await count((await cluster.leader()).name, 'id <= 1001');
    const snippet = readmeSnippet('patroni-bootstrap-snippet', 'bootstrap:');
    const withTarget = snippet.replace(/--target-time "[^"]*"/, `--target-time "${t!.t.toISOString()}"`);
    expect(withTarget).not.toBe(snippet);

    // Act
    clone = await PatroniCluster.start({
      scope: 'vault-clone',
      nodes: 1,
      bootstrapYaml: onThisMachine(withTarget, configFile),
      logLevel: 'INFO',
    });

    // Assess: the rows up to the target, none after it; a leader that takes writes.
    const leader = await clone.leader();
    expect(leader.name).toBe('node1');
    const rows = await clone.query<{ id: number }>('SELECT id FROM orders WHERE id > 1000 ORDER BY id');
    expect(rows.map((r) => r.id)).toEqual([1001]);
    const [all] = await clone.query<{ n: string }>('SELECT count(*) AS n FROM orders');
    expect(Number(all!.n)).toBe(expected);
    await clone.query("INSERT INTO orders VALUES (2001, 'written on the clone')");
    const [mine] = await clone.query<{ r: boolean; n: string }>(
      'SELECT pg_is_in_recovery() AS r, (SELECT count(*) FROM orders WHERE id = 2001) AS n',
    );
    expect(mine).toEqual({ r: false, n: '1' });
    // Marked as a copy of the original's CLUSTER_NAME: its WAL and backups are refused there.
    const [mark] = await clone.query<{ copy: string | null }>(
      "SELECT current_setting('pgvault.copy_of', true) AS copy",
    );
    expect(mark!.copy).toBe('orders');
    const log = readFileSync(clone.node('node1').logFile, 'utf8');
    expect(log).toContain('Running custom bootstrap script');
    // Its own scope in its own etcd; the original cluster is untouched.
    const members = await clone.members();
    expect(members.map((m) => m.name)).toEqual(['node1']);
    expect(await count((await cluster.leader()).name, 'id = 2001')).toBe(0);
  }, 300_000);
});

describe('restore replica by hand: what it never does to a data directory', () => {
  const run = (args: string[], config = configFile) =>
    runPgvault(
      ['--config', config, 'restore', 'replica', ...args],
      { PATH: process.env.PATH, HOME: '/root' },
      work,
    );
  const leftovers = (dir: string) =>
    readdirSync(dir).filter((f) => f.includes('.pgvault-building-') || f.includes('.pgvault-replaced-'));

  it('refuses a data directory that is not empty, leaving it as it was; --replace swaps in the restored one', async () => {
    // Prepare
    const parent = mkdtempSync(join(work, 'by-hand-'));
    giveToServer(parent);
    const datadir = join(parent, 'data');
    mkdirSync(datadir);
    writeFileSync(join(datadir, 'keep-me'), 'the old data directory');

    // Act
    const refused = await run([`--datadir=${datadir}`, '--scope=vault-replica', '--role=replica']);

    // Assess
    expect(refused.code).toBe(2);
    expect(refused.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(
        new RegExp(
          `^pgvault: --datadir ${datadir} is not empty \\(1 entries\\) and was not given to replace`,
        ),
      ),
    ]);
    expect(readdirSync(datadir)).toEqual(['keep-me']);
    expect(leftovers(parent)).toEqual([]);

    // Act: as Patroni passes a YAML `replace: true`.
    const replaced = await run([
      `--datadir=${datadir}`,
      '--scope=vault-replica',
      '--replace=True',
      '--keep_data=True',
    ]);

    // Assess
    expect(replaced.code, replaced.stderr).toBe(0);
    expect(existsSync(join(datadir, 'keep-me'))).toBe(false);
    expect(existsSync(join(datadir, 'global', 'pg_control'))).toBe(true);
    expect(readFileSync(join(datadir, 'PG_VERSION'), 'utf8').trim()).toMatch(/^\d+$/);
    expect(leftovers(parent)).toEqual([]);
  }, 120_000);

  it('refuses a base backup of another Patroni scope, and leaves nothing when the backup turns out corrupt', async () => {
    // Prepare: a copy of the vault whose base backup object has one byte flipped.
    const parent = mkdtempSync(join(work, 'corrupt-'));
    giveToServer(parent);
    const copy = join(parent, 'vault');
    cpSync(vaultDir, copy, { recursive: true });
    giveToServer(copy);
    const object = join(copy, baseObjectKey);
    const bytes = readFileSync(object);
    const at = Math.floor(bytes.length / 2);
    bytes[at] = bytes[at]! ^ 0xff;
    writeFileSync(object, bytes);
    const corruptConfig = join(parent, 'pgvault.env');
    writeFileSync(
      corruptConfig,
      readFileSync(configFile, 'utf8').replace(`BACKUP_DIR=${vaultDir}`, `BACKUP_DIR=${copy}`),
    );
    const datadir = join(parent, 'data');

    // Act
    const otherScope = await run([`--datadir=${datadir}`, '--scope=another-cluster']);
    const corrupt = await run([`--datadir=${datadir}`, '--scope=vault-replica'], corruptConfig);

    // Assess
    expect(otherScope.code, otherScope.stderr).toBe(2);
    expect(otherScope.stderr).toContain('was taken from Patroni cluster vault-replica, not another-cluster');
    expect(corrupt.code, corrupt.stderr).toBe(3);
    // Progress lines go to stderr too; the failure is one line.
    const failure = corrupt.stderr.split('\n').filter((l) => l.startsWith('pgvault: '));
    expect(failure).toEqual([expect.stringContaining(`${baseObjectKey} in file://${copy} is corrupt`)]);
    expect(existsSync(datadir)).toBe(false);
    expect(leftovers(parent)).toEqual([]);
  }, 120_000);

  it('refuses when the member Patroni clones from (--connstring) is another database system than the backup', async () => {
    // Prepare: a server of another system (its own initdb).
    const other = await startCluster();
    try {
      const parent = mkdtempSync(join(work, 'other-system-'));
      giveToServer(parent);
      const datadir = join(parent, 'data');
      const c = other.connection();
      const [{ id }] = (await other.query(
        'SELECT system_identifier::text AS id FROM pg_control_system()',
      )) as [{ id: string }];

      // Act
      const r = await run([
        `--datadir=${datadir}`,
        '--scope=vault-replica',
        `--connstring=host=${c.host} port=${c.port} user=${c.user} dbname=postgres`,
      ]);

      // Assess
      expect(r.code, r.stderr).toBe(2);
      const failure = r.stderr.split('\n').filter((l) => l.startsWith('pgvault: '));
      expect(failure).toEqual([
        expect.stringContaining(`but the member Patroni clones from reports system ${id}`),
      ]);
      expect(existsSync(datadir)).toBe(false);
      expect(leftovers(parent)).toEqual([]);
    } finally {
      await other.stop();
    }
  }, 120_000);

  it('restore bootstrap refuses a target the archive cannot reach before writing anything', async () => {
    // Prepare
    const parent = mkdtempSync(join(work, 'bootstrap-refused-'));
    giveToServer(parent);
    const datadir = join(parent, 'data');
    const later = new Date(Date.now() + 3_600_000).toISOString();

    // Act: as Patroni runs the README command, with its --scope and --datadir.
    const r = await runPgvault(
      [
        '--config',
        configFile,
        'restore',
        'bootstrap',
        'auto',
        '--target-time',
        later,
        '--scope=clone',
        `--datadir=${datadir}`,
      ],
      { PATH: process.env.PATH, HOME: '/root' },
      work,
    );

    // Assess: one line, exit 2, nothing beside or at data_dir (no restore_command config either).
    expect(r.code, r.stderr).toBe(2);
    const failure = r.stderr.split('\n').filter((l) => l.startsWith('pgvault: '));
    expect(failure).toEqual([expect.stringContaining('is after the last archived WAL')]);
    expect(readdirSync(parent)).toEqual([]);
  }, 120_000);
});
