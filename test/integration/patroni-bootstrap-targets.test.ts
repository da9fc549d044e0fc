import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  archiveCommand,
  giveToServer,
  onThisMachine,
  PatroniCluster,
  readmeSnippet,
  type VaultConfig,
  vaultConfigFile,
} from '../helpers/patroni';

/*
 * bootstrap.method pgvault (README's patroni-bootstrap-snippet, read as patroni-vault-replica.test.ts
 * reads it: only the pgvault path, the config file and the target made this machine's) to a restore
 * point name and to an LSN, through a real Patroni bootstrap of a new cluster: exactly the rows up
 * to the target. The snippet's post_bootstrap (`restore bootstrap --finish`) removes the
 * restore_command config and key files written beside data_dir once the cluster has promoted.
 *
 *   rows 1-100 · base backup · row 1001 · restore point before_1002 · row 1002 · (LSN) · row 1003
 */

let cluster: PatroniCluster;
let work: string;
let vault: VaultConfig;
let vaultDir: string;
let configFile: string;
let lsnAfter1002: string;

function pgvault(args: string[]) {
  return cluster.pgvault(vault, args);
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'pgvault-patroni-bootstrap-'));
  vault = vaultConfigFile(work, {
    CLUSTER_NAME: 'orders',
    COMPRESSION: 'zstd',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: "'patroni bootstrap targets passphrase 51c2'",
  });
  vaultDir = vault.vaultDir;
  configFile = vault.configFile!;
  cluster = await PatroniCluster.start({
    scope: 'bootstrap-source',
    nodes: 1,
    parameters: {
      archive_mode: 'on',
      archive_command: archiveCommand(vault),
      archive_timeout: 0,
    },
  });
  console.log(`Patroni cluster (etcd + 1 node) up in ${cluster.startupMs} ms`);
  await cluster.query(
    "CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, 'before the base backup' FROM generate_series(1, 100) g",
  );
  const base = await pgvault(['--json', 'backup', 'base']);
  expect(base.code, base.stderr).toBe(0);
  giveToServer(vaultDir);
  await cluster.query("INSERT INTO orders VALUES (1001, 'before the restore point')");
  await cluster.query("SELECT pg_create_restore_point('before_1002')");
  await cluster.query("INSERT INTO orders VALUES (1002, 'after the restore point, before the LSN')");
  const [lsn] = await cluster.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn');
  lsnAfter1002 = lsn!.lsn;
  await cluster.query("INSERT INTO orders VALUES (1003, 'after the LSN')");
  await cluster.switchAndWaitArchived();
}, 240_000);

afterAll(async () => {
  await cluster?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** A new one-member Patroni cluster bootstrapped by the README snippet with `target` for its --target-time. */
async function bootstrapWith(scope: string, target: string): Promise<PatroniCluster> {
  const snippet = readmeSnippet('patroni-bootstrap-snippet', 'bootstrap:');
  expect(snippet).toContain('post_bootstrap:');
  const withTarget = snippet.replace(/--target-time "[^"]*"/, target);
  expect(withTarget).not.toBe(snippet);
  return PatroniCluster.start({
    scope,
    nodes: 1,
    bootstrapYaml: onThisMachine(withTarget, configFile),
    logLevel: 'INFO',
  });
}

/** The restore_command files restore bootstrap writes beside a data directory. */
function recoveryFiles(dataDir: string): string[] {
  const stem = join(dirname(dataDir), `${basename(dataDir)}.pgvault-recovery`);
  return [`${stem}.conf`, `${stem}.key`];
}

async function expectFinished(clone: PatroniCluster): Promise<void> {
  const node = clone.node('node1');
  const files = recoveryFiles(node.dataDir);
  const deadline = Date.now() + 60_000;
  while (files.some((f) => existsSync(f)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
  }
  expect(
    files.filter((f) => existsSync(f)),
    `post_bootstrap left them; log: ${readFileSync(node.logFile, 'utf8').slice(-2000)}`,
  ).toEqual([]);
  const log = readFileSync(node.logFile, 'utf8');
  expect(log).toContain('Running custom bootstrap script');
  expect(log).not.toMatch(/post_init script .* (failed|returned non-zero)/);
}

async function newRows(clone: PatroniCluster): Promise<number[]> {
  const rows = await clone.query<{ id: number }>('SELECT id FROM orders WHERE id > 1000 ORDER BY id');
  return rows.map((r) => r.id);
}

describe('bootstrap.method pgvault (README snippet) to a restore point name', () => {
  let clone: PatroniCluster | undefined;
  afterAll(async () => {
    await clone?.stop();
  });

  it('has exactly the rows before the restore point, promotes, and post_bootstrap removes the restore_command files', async () => {
    // Act
    clone = await bootstrapWith('clone-name', '--target-name before_1002');

    // Assess
    expect((await clone.leader()).name).toBe('node1');
    expect(await newRows(clone)).toEqual([1001]);
    const [all] = await clone.query<{ n: string; r: boolean }>(
      'SELECT count(*) AS n, pg_is_in_recovery() AS r FROM orders',
    );
    expect(all).toEqual({ n: '101', r: false });
    await expectFinished(clone);
  }, 300_000);
});

describe('bootstrap.method pgvault (README snippet) to an LSN', () => {
  let clone: PatroniCluster | undefined;
  afterAll(async () => {
    await clone?.stop();
  });

  it('has exactly the rows committed before the LSN, promotes, and post_bootstrap removes the restore_command files', async () => {
    // Act
    clone = await bootstrapWith('clone-lsn', `--target-lsn ${lsnAfter1002}`);

    // Assess
    expect((await clone.leader()).name).toBe('node1');
    expect(await newRows(clone)).toEqual([1001, 1002]);
    const [all] = await clone.query<{ n: string; r: boolean }>(
      'SELECT count(*) AS n, pg_is_in_recovery() AS r FROM orders',
    );
    expect(all).toEqual({ n: '102', r: false });
    await expectFinished(clone);
    // Writable: the new cluster's own leader.
    await clone.query("INSERT INTO orders VALUES (2001, 'written on the clone')");
  }, 300_000);
});

describe('restore bootstrap --finish by hand', () => {
  it('refuses a data directory that has not promoted (recovery.signal), removing nothing; one line, exit 2', async () => {
    // Prepare: a data directory still recovering, with its restore_command files beside it.
    const parent = mkdtempSync(join(work, 'finish-early-'));
    const dataDir = join(parent, 'data');
    mkdirSync(dataDir);
    writeFileSync(join(dataDir, 'recovery.signal'), '');
    const files = recoveryFiles(dataDir);
    for (const f of files) writeFileSync(f, 'x\n');

    // Act
    const r = await pgvault(['restore', 'bootstrap', '--finish', '--datadir', dataDir]);

    // Assess
    expect(r.code).toBe(2);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('pgvault: '));
    expect(lines).toEqual([
      `pgvault: ${dataDir} still holds recovery.signal: it has not promoted; run restore bootstrap --finish once the cluster has promoted; nothing was removed`,
    ]);
    expect(files.every((f) => existsSync(f))).toBe(true);

    // Once promoted: removed, and a second run has nothing left to do.
    rmSync(join(dataDir, 'recovery.signal'));
    const done = await pgvault(['--json', 'restore', 'bootstrap', '--finish', '--datadir', dataDir]);
    expect(done.code, done.stderr).toBe(0);
    expect(JSON.parse(done.stdout)).toMatchObject({ ok: true, datadir: dataDir, removed: files });
    expect(files.some((f) => existsSync(f))).toBe(false);
    const again = await pgvault(['--json', 'restore', 'bootstrap', '--finish', '--datadir', dataDir]);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ ok: true, removed: [] });
  });
});
