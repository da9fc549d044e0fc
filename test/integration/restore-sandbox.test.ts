import { spawn } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFull } from '../../core/backup/full';
import { backupIndexes } from '../../core/backup/indexes';
import { type ManifestBody, sealManifest } from '../../core/catalog/manifest';
import { listDrillRecords } from '../../core/catalog/records';
import { parseConfig } from '../../core/config';
import type { TempCluster } from '../../core/pg/cluster';
import { pickServerBinaries } from '../../core/restore/scratch';
import { openVault, type Vault } from '../../core/vault';
import { PGVAULT_CLI, runPgvault } from '../helpers/cli';
import { createSampleData, SAMPLE_TABLES, startCluster } from '../helpers/pg';
import { recordingReporter, tempDir } from '../helpers/vault';
import { temporaryDatabasesLeft } from './verify-fixture';

/**
 * Issue 12, "Restores and drills never touch production": `restore test`, `verify restore` and
 * `drill` restore a full backup into a sandbox server they start themselves (initdb in TMPDIR), so a
 * backup user without CREATEDB can run them and the configured server gets no database, not even for
 * a moment (its log records every DDL statement here). Restoring on the configured server stays an
 * explicit choice (--on-server, RESTORE_TEST_TARGET=server).
 */
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
/** TMPDIR of the CLI runs: the sandboxes are made there and must be gone after each run. */
let scratchTmp: string;
let configFile: string;
let settings: Record<string, string>;
let full: ManifestBody;
const KEY = 'restore sandbox test key, long enough';
const SAMPLE_ROWS = Object.values(SAMPLE_TABLES).reduce((n, r) => n + r, 0);

beforeAll(async () => {
  cluster = await startCluster();
  await createSampleData(cluster, 'shop');
  // The backup user of a careful deployment: reads everything, creates nothing.
  await cluster.psql(
    'CREATE ROLE backup_user LOGIN NOCREATEDB NOSUPERUSER; GRANT pg_read_all_data TO backup_user;',
  );
  // Every CREATE/DROP DATABASE on the configured server is logged, so a test can tell whether one ran.
  await cluster.psql("ALTER SYSTEM SET log_statement = 'ddl'; SELECT pg_reload_conf();");
  work = await tempDir('pgvault-restore-sandbox-');
  scratchTmp = join(work.path, 'tmp');
  await mkdir(scratchTmp);
  // The server's OS user (we may be root) must reach the sandbox's directory inside.
  await chmod(work.path, 0o755);
  await chmod(scratchTmp, 0o777);
  settings = {
    BACKUP_DIR: join(work.path, 'backups'),
    CLUSTER_NAME: 'main',
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: 'backup_user',
    PGDATABASE: 'postgres',
    PARALLEL_JOBS: '2',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: KEY,
    ENCRYPTION_ITERATIONS: '1000',
  };
  configFile = join(work.path, 'pgvault.conf');
  await writeFile(
    configFile,
    `${Object.entries(settings)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    {
      mode: 0o600,
    },
  );
  full = await backupFull(vault(), { schedule: 'daily', databases: ['shop'] });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  await work?.remove();
});

function vault(extra: Record<string, string> = {}): Vault {
  return openVault(parseConfig({ ...settings, ...extra }), recordingReporter());
}

/** The CLI as a user runs it: only PATH, HOME and TMPDIR from here, the rest from the config file. */
function pgvault(args: string[], env: Record<string, string> = {}) {
  return runPgvault(
    ['--config', configFile, ...args],
    { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', TMPDIR: scratchTmp, ...env },
    work.path,
  );
}

/** What a run left in its TMPDIR (a sandbox's directory, a staged dump). */
const leftInTmp = () => readdir(scratchTmp);

/** CREATE DATABASE statements the configured server ran since the log had `from` characters. */
const createdOnServer = (from: number) =>
  cluster
    .readLog()
    .slice(from)
    .split('\n')
    .filter((l) => /statement: CREATE DATABASE/.test(l));

/** Exact row counts of the source database, summed. */
async function sourceRows(): Promise<number> {
  let n = 0;
  for (const table of Object.keys(SAMPLE_TABLES)) {
    const [r] = await cluster.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${table}`, [], 'shop');
    n += Number(r!.n);
  }
  return n;
}

describe('restore tests and drills in a sandbox server (the default)', () => {
  it('verify restore latest: a backup user without CREATEDB, nothing created on the server, counts equal the source', async () => {
    // Prepare
    const logFrom = cluster.readLog().length;

    // Act
    const r = await pgvault(['--json', 'verify', 'restore', 'latest']);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ ok: true, backupId: full.id, type: 'full' });
    expect(out.restoredOn.kind).toBe('sandbox');
    expect(out.restoredOn.description).toMatch(/^a sandbox server \(PostgreSQL 1\d\.\d+\) in /);
    expect(out.databases).toHaveLength(1);
    expect(out.databases[0]).toMatchObject({ database: 'shop', tables: 6, rows: await sourceRows() });
    expect(out.rows).toBe(SAMPLE_ROWS);
    expect(createdOnServer(logFrom)).toEqual([]);
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
    expect(await leftInTmp()).toEqual([]);
  });

  it('drill: the same, recorded with its RTO, and the text output says where it restored', async () => {
    // Prepare
    const logFrom = cluster.readLog().length;

    // Act
    const r = await pgvault(['drill']);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^drill passed: ${full.id} restored and validated`, 'm'));
    expect(r.stdout).toMatch(/^ {2}restored in a sandbox server \(PostgreSQL 1\d\.\d+\) in \//m);
    expect(r.stdout).toContain(`  shop: 6 tables, ${await sourceRows()} rows`);
    expect(createdOnServer(logFrom)).toEqual([]);
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
    expect(await leftInTmp()).toEqual([]);
  });

  it("libpq variables of the environment, meant for the configured server, reach none of the sandbox's clients", async () => {
    // Prepare: PGHOSTADDR would send a client to an unroutable address (TEST-NET-1) instead of the
    // sandbox's socket; PGSSLMODE=require would demand TLS the sandbox does not offer.
    const env = { PGHOSTADDR: '192.0.2.1', PGSSLMODE: 'require', PGPASSWORD: 'not-for-the-sandbox' };

    // Act
    const r = await pgvault(['--json', 'restore', 'test', full.id], env);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      ok: true,
      rows: SAMPLE_ROWS,
      restoredOn: { kind: 'sandbox' },
    });
    expect(await leftInTmp()).toEqual([]);
  });

  it('restore test: owners and grants name roles the sandbox lacks; it restores without them and validates', async () => {
    // The sample database grants to pgvault_reader, a role a fresh sandbox does not have.
    const r = await pgvault(['restore', 'test', full.id]);

    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`6 tables, ${SAMPLE_ROWS} rows match the backup`);
    expect(r.stdout).toMatch(/restored in a sandbox server .* \(removed\)/);
    expect(await leftInTmp()).toEqual([]);
  });

  it('a manifest whose row counts differ still fails validation in the sandbox: exit 4, recorded, nothing left', async () => {
    // Prepare: an older full backup whose sealed manifest claims one more customer.
    const v = vault();
    const tampered = await backupFull(v, {
      schedule: 'manual',
      databases: ['shop'],
      now: new Date(Date.now() - 3 * 86_400_000),
    });
    const key = `main/full/manual/${tampered.id}.manifest.json`;
    const { hmac: _hmac, ...m } = JSON.parse((await v.targets[0]!.getBytes(key)).toString('utf8'));
    m.objects
      .find((o: { database?: string }) => o.database === 'shop')
      .tables.find((t: { table: string }) => t.table === 'customers').rows += 1;
    await v.targets[0]!.putBytes(key, await sealManifest(m, KEY));
    const logFrom = cluster.readLog().length;

    // Act
    const r = await pgvault(['verify', 'restore', tampered.id]);

    // Assess
    expect(r.code, r.stderr).toBe(4);
    expect(r.stderr).toMatch(
      /^pgvault: database "pgvault_test_\w+" differs from the backup in 1 table\(s\): public\.customers: expected 501, found 500/m,
    );
    expect(createdOnServer(logFrom)).toEqual([]);
    expect(await leftInTmp()).toEqual([]);
  });

  it('a dump cut short is refused before anything is restored: exit 3, sandbox removed', async () => {
    // Prepare: a separate backup whose dump object loses its tail.
    const v = vault();
    const short = await backupFull(v, {
      schedule: 'manual',
      databases: ['shop'],
      now: new Date(Date.now() - 4 * 86_400_000),
    });
    const object = short.objects.find((o) => o.database === 'shop')!;
    const file = join(settings.BACKUP_DIR!, object.key);
    await truncate(file, Math.floor(object.storedSize / 2));

    // Act
    const r = await pgvault(['restore', 'test', short.id]);

    // Assess
    expect(r.code, r.stderr).toBe(3);
    expect(
      r.stderr
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('pgvault: ') && !/warning/.test(l)),
    ).toHaveLength(1);
    expect(await leftInTmp()).toEqual([]);
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
  });

  it('SIGINT during the restore stops and removes the sandbox', async () => {
    // Act: interrupt as soon as the sandbox server is up (its start is reported on stderr).
    const child = spawn(
      process.execPath,
      [PGVAULT_CLI, '--config', configFile, 'verify', 'restore', full.id],
      {
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', TMPDIR: scratchTmp },
        cwd: work.path,
      },
    );
    let stderr = '';
    let sandboxDir: string | undefined;
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      const started = /started a sandbox server \(PostgreSQL [^)]+\) in (\S+)/.exec(stderr);
      if (started && sandboxDir === undefined) {
        sandboxDir = started[1];
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((done) => child.on('close', done));

    // Assess
    expect(sandboxDir, stderr).toBeDefined();
    expect(code, stderr).toBe(130);
    expect(await leftInTmp()).toEqual([]);
    expect(await postgresProcessesIn(sandboxDir!)).toEqual([]);
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
  });
});

/** Processes whose command line names a directory (a sandbox's postgres would name its data directory). */
async function postgresProcessesIn(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(dir)) pids.push(Number(entry));
  }
  return pids;
}

describe('restoring on the configured server: only when asked', () => {
  it('--on-server with a backup user lacking CREATEDB fails with one line saying what to do, nothing left', async () => {
    // Act
    const r = await pgvault(['verify', 'restore', 'latest', '--on-server']);

    // Assess
    expect(r.code).toBe(1);
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('pgvault: ') && !/warning/.test(l));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(
      /a restore test on the configured server \(127\.0\.0\.1:\d+\) needs CREATEDB, which PGUSER backup_user lacks .*RESTORE_TEST_TARGET=sandbox/,
    );
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
  });

  it('--on-server with a user that may create databases restores there (verify restore and drill), and drops them', async () => {
    // Prepare
    const logFrom = cluster.readLog().length;

    // Act
    const verify = await pgvault(['--json', 'verify', 'restore', 'latest', '--on-server'], {
      PGUSER: cluster.superuser,
    });
    const drill = await pgvault(['--json', 'drill'], {
      PGUSER: cluster.superuser,
      RESTORE_TEST_TARGET: 'server',
    });

    // Assess
    expect(verify.code, verify.stderr).toBe(0);
    expect(drill.code, drill.stderr).toBe(0);
    for (const out of [JSON.parse(verify.stdout), JSON.parse(drill.stdout)]) {
      expect(out.restoredOn).toEqual({
        kind: 'server',
        description: `the configured server 127.0.0.1:${cluster.port}`,
      });
      expect(out.databases[0]).toMatchObject({ database: 'shop', rows: SAMPLE_ROWS });
    }
    expect(createdOnServer(logFrom)).toHaveLength(2);
    expect(createdOnServer(logFrom)[0]).toMatch(/CREATE DATABASE "pgvault_test_/);
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
  });

  it('RESTORE_TEST_TARGET takes sandbox or server only', async () => {
    const r = await pgvault(['verify', 'restore', 'latest'], { RESTORE_TEST_TARGET: 'production' });

    expect(r.code).toBe(2);
    expect(r.stderr).toContain('RESTORE_TEST_TARGET=production is not allowed; use one of sandbox, server');
  });

  it('drill --pitr --on-server is refused (a PITR drill always recovers in a sandbox)', async () => {
    const r = await pgvault(['drill', '--pitr', '--on-server']);

    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--on-server applies to the drill of a full backup/);
  });
});

describe('drill records say where the drill restored', () => {
  it('drill --json and the report: a sandbox with its server version; the configured server when asked', async () => {
    // Act
    const sandboxed = await pgvault(['--json', 'drill']);
    const onServer = await pgvault(['--json', 'drill', '--on-server'], { PGUSER: cluster.superuser });
    const report = await pgvault(['--json', 'verify', 'report']);

    // Assess
    expect(sandboxed.code, sandboxed.stderr).toBe(0);
    expect(onServer.code, onServer.stderr).toBe(0);
    const a = JSON.parse(sandboxed.stdout);
    const b = JSON.parse(onServer.stdout);
    expect(a.record.restoredOn).toEqual({ kind: 'sandbox', serverVersion: a.restoredOn.serverVersion });
    expect(a.record.restoredOn.serverVersion).toMatch(/^1\d\.\d+/);
    expect(b.record.restoredOn).toEqual({ kind: 'server', server: `127.0.0.1:${cluster.port}` });
    const drills = JSON.parse(report.stdout).report.drills as Array<{
      startedAt: string;
      restoredOn?: unknown;
    }>;
    expect(drills.find((d) => d.startedAt === a.record.startedAt)?.restoredOn).toEqual(a.record.restoredOn);
    expect(drills.find((d) => d.startedAt === b.record.startedAt)?.restoredOn).toEqual(b.record.restoredOn);
  });

  it('a failed drill records where it was to restore', async () => {
    // Act: the sandbox cannot be made (TMPDIR missing), so the drill fails.
    const r = await pgvault(['drill'], { TMPDIR: join(work.path, 'no-such-dir') });
    const records = await listDrillRecords(vault());

    // Assess
    expect(r.code).toBe(1);
    const failed = records.find((d) => d.kind === 'drill' && !d.ok);
    expect(failed?.error).toMatch(/cannot start the restore-test sandbox/);
    expect(failed?.restoredOn).toEqual({ kind: 'sandbox' });
  });
});

describe('what the sandbox cannot take', () => {
  it('a dump from a newer major than any installed server: one line naming what to install and the fallback', async () => {
    // Act
    const attempt = pickServerBinaries(undefined, 99);

    // Assess
    await expect(attempt).rejects.toThrow(
      /the backup comes from PostgreSQL 99, but the newest server binaries here are \d+ \(\S+\), which cannot load its dump; install postgresql-99 .*--on-server, or RESTORE_TEST_TARGET=server/,
    );
  });

  it('a TMPDIR the sandbox cannot be made in: one line naming TMPDIR and the fallback, nothing on the server', async () => {
    // Act
    const r = await pgvault(['verify', 'restore', 'latest'], { TMPDIR: join(work.path, 'no-such-dir') });

    // Assess
    expect(r.code).toBe(1);
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('pgvault: ') && !/warning/.test(l));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(
      /^pgvault: cannot start the restore-test sandbox \(PostgreSQL \d+ in TMPDIR\): .*ENOENT.*; free space in TMPDIR or point TMPDIR elsewhere, or restore on the configured server instead \(--on-server/,
    );
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
  });

  it('the sandbox runs the backup server major when installed', async () => {
    const binaries = await pickServerBinaries(undefined, Math.floor(full.server.versionNum / 10000));

    expect(binaries.major).toBe(Math.floor(full.server.versionNum / 10000));
    expect(binaries.binDir).toMatch(new RegExp(`/${binaries.major}/bin$`));
  });

  it('an extension the sandbox lacks: one line naming it and the fallback', async () => {
    // Prepare: an extension installed for the server while the backup is taken, gone afterwards
    // (as in a task image without the extension's package).
    const [share] = await cluster.query<{ setting: string }>(
      "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'",
    );
    const name = `pgvault_probe_${process.pid}`;
    const files = [
      join(share!.setting, 'extension', `${name}.control`),
      join(share!.setting, 'extension', `${name}--1.0.sql`),
    ];
    await writeFile(files[0]!, "default_version = '1.0'\nrelocatable = true\n");
    await writeFile(
      files[1]!,
      'CREATE FUNCTION pgvault_probe() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n',
    );
    let r: Awaited<ReturnType<typeof pgvault>>;
    try {
      await cluster.query('CREATE DATABASE extdb');
      await cluster.psql(`CREATE EXTENSION ${name}; CREATE TABLE t AS SELECT 1 AS x;`, 'extdb');
      const backup = await backupFull(vault({ PGUSER: cluster.superuser }), {
        schedule: 'manual',
        databases: ['extdb'],
      });
      await Promise.all(files.map((f) => rm(f, { force: true })));

      // Act
      r = await pgvault(['verify', 'restore', backup.id]);
    } finally {
      await Promise.all(files.map((f) => rm(f, { force: true })));
    }

    // Assess
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(
        `^pgvault: database "extdb" of the backup uses the extension "${name}", which a sandbox server \\(PostgreSQL [^)]+\\) in \\S+ lacks; install its package .*--on-server, or RESTORE_TEST_TARGET=server\\)$`,
        'm',
      ),
    );
    expect(await leftInTmp()).toEqual([]);
  });
});

/** DDL statements (CREATE, DROP, ALTER of anything) the configured server ran since the log had `from` characters. */
const ddlOnServer = (from: number) =>
  cluster
    .readLog()
    .slice(from)
    .split('\n')
    .filter((l) => /statement: (CREATE|DROP|ALTER) /i.test(l));

describe('verify indexes in the sandbox (the default)', () => {
  let indexes: ManifestBody;

  beforeAll(async () => {
    indexes = await backupIndexes(vault(), { now: new Date(Date.now() - 3_600_000) });
  });

  it('a backup user without CREATEDB: every index rebuilt and valid, exit 0, nothing created on the server', async () => {
    // Prepare
    const logFrom = cluster.readLog().length;

    // Act
    const json = await pgvault(['--json', 'verify', 'indexes', indexes.id]);
    const text = await pgvault(['verify', 'indexes', indexes.id]);

    // Assess
    expect(json.code, json.stderr).toBe(0);
    const out = JSON.parse(json.stdout);
    expect(out).toMatchObject({ ok: true, backupId: indexes.id });
    expect(out.restoredOn.kind).toBe('sandbox');
    expect(out.restoredOn.serverVersion).toMatch(/^1\d\.\d+/);
    // customers_email_lower_key and orders_open_ordered_at_idx; the rest back constraints.
    expect(out.databases.find((d: { database: string }) => d.database === 'shop')).toMatchObject({
      schemaFrom: full.id,
      statements: 2,
      created: 2,
      failed: [],
      invalid: [],
    });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^ {2}checked in a sandbox server \(PostgreSQL 1\d\.\d+\) in \//m);
    expect(ddlOnServer(logFrom)).toEqual([]);
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
    expect(await leftInTmp()).toEqual([]);
  });

  it('an index the schema cannot take still fails in the sandbox: exit 4, the statement named, nothing on the server', async () => {
    // Prepare: an index on a table made after the full backup, so its schema lacks the table.
    await cluster.query('CREATE TABLE late (id int, note text)', [], 'shop');
    await cluster.query('CREATE INDEX late_note_idx ON late (note)', [], 'shop');
    let bad: ManifestBody;
    try {
      bad = await backupIndexes(vault(), { now: new Date(Date.now() - 2 * 3_600_000) });
    } finally {
      await cluster.query('DROP TABLE late', [], 'shop');
    }
    const logFrom = cluster.readLog().length;

    // Act
    const r = await pgvault(['verify', 'indexes', bad.id]);

    // Assess
    expect(r.code, r.stderr).toBe(4);
    expect(r.stdout).toContain('FAILED CREATE INDEX IF NOT EXISTS late_note_idx');
    expect(r.stderr).toMatch(/does not rebuild cleanly in "shop": relation "public.late" does not exist/);
    expect(ddlOnServer(logFrom)).toEqual([]);
    expect(await leftInTmp()).toEqual([]);
  });

  it('an index backup whose stored bytes were altered is refused: exit 3, no sandbox started', async () => {
    // Prepare: its own index backup, one byte of the stored object flipped.
    const altered = await backupIndexes(vault(), { now: new Date(Date.now() - 3 * 3_600_000) });
    const file = join(settings.BACKUP_DIR!, altered.objects[0]!.key);
    const bytes = await readFile(file);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await writeFile(file, bytes);

    // Act
    const r = await pgvault(['verify', 'indexes', altered.id]);

    // Assess
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).not.toMatch(/started a sandbox server/);
    expect(await leftInTmp()).toEqual([]);
  });

  it('--on-server (or RESTORE_TEST_TARGET=server) with a superuser checks on the configured server and drops its databases', async () => {
    // Prepare
    const logFrom = cluster.readLog().length;

    // Act
    const flag = await pgvault(['--json', 'verify', 'indexes', indexes.id, '--on-server'], {
      PGUSER: cluster.superuser,
    });
    const env = await pgvault(['--json', 'verify', 'indexes', indexes.id], {
      PGUSER: cluster.superuser,
      RESTORE_TEST_TARGET: 'server',
    });

    // Assess
    for (const r of [flag, env]) {
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout);
      expect(out.ok).toBe(true);
      expect(out.restoredOn).toEqual({
        kind: 'server',
        description: `the configured server 127.0.0.1:${cluster.port}`,
      });
      expect(out.databases.find((d: { database: string }) => d.database === 'shop').created).toBe(2);
    }
    const created = createdOnServer(logFrom);
    expect(created).toHaveLength(2);
    expect(created[0]).toMatch(/CREATE DATABASE "pgvault_idx_/);
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
  });

  it('--on-server with a backup user lacking CREATEDB: exit 4, the database named with what to do', async () => {
    const r = await pgvault(['verify', 'indexes', indexes.id, '--on-server']);

    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(
      /does not rebuild cleanly in "shop": .*permission denied to create database: checking an index backup on the configured server needs CREATEDB for PGUSER; grant it .*RESTORE_TEST_TARGET=sandbox/,
    );
    expect(await temporaryDatabasesLeft(cluster)).toEqual([]);
  });
});
