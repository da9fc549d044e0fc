import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { createSampleData, startCluster, tableContents } from '../helpers/pg';
import { tempDir } from '../helpers/vault';

/**
 * Issue 11, "restores restore what they name": a backup of several databases (postgres, app and
 * my_database, each with its own tables), PGDATABASE=postgres as the guide's .env has it, and the
 * CLI run as a user runs it. The source of a restore is the object a path names, else --from, else
 * the database of the target's name, else the one user database; never PGDATABASE.
 */
const BIN = resolve(__dirname, '../../bin/pgvault.js');
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
let configFile: string;
let id: string;
/** my_database's tables and their contents when the backup was taken. */
const before = new Map<string, string>();

function pgvault(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, '--config', configFile, ...args], {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/root',
      PGDATABASE: 'postgres',
      TZ: 'UTC',
      ...env,
    },
    cwd: work.path,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function tablesOf(db: string): Promise<string[]> {
  const rows = await cluster.query<{ t: string }>(
    `SELECT schemaname || '.' || tablename AS t FROM pg_tables
      WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
    [],
    db,
  );
  return rows.map((r) => r.t);
}

async function databaseExists(db: string): Promise<boolean> {
  return (await cluster.query('SELECT 1 FROM pg_database WHERE datname = $1', [db])).length > 0;
}

async function expectSameAsMyDatabase(db: string): Promise<void> {
  expect(await tablesOf(db)).toEqual([...before.keys()]);
  for (const [t, contents] of before) expect(await tableContents(cluster, db, t), t).toBe(contents);
}

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir()]);
  await createSampleData(cluster, 'app');
  // postgres holds a users table too, with other rows: taking it by mistake shows.
  await cluster.psql(
    `CREATE TABLE users (id int PRIMARY KEY, name text);
     INSERT INTO users SELECT g, 'postgres-' || g FROM generate_series(1, 3) g;`,
    'postgres',
  );
  await cluster.query('CREATE DATABASE my_database');
  await cluster.psql(
    `CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
     INSERT INTO users SELECT g, 'user-' || g FROM generate_series(1, 40) g;
     CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users, total numeric);
     INSERT INTO orders (user_id, total) SELECT 1 + g % 40, g * 1.5 FROM generate_series(1, 25) g;
     CREATE SCHEMA billing;
     CREATE TABLE billing.invoices (id int, note text);
     INSERT INTO billing.invoices SELECT g, 'invoice ' || g FROM generate_series(1, 7) g;`,
    'my_database',
  );
  for (const t of await tablesOf('my_database'))
    before.set(t, await tableContents(cluster, 'my_database', t));
  configFile = join(work.path, 'pgvault.env');
  writeFileSync(
    configFile,
    [
      `BACKUP_DIR=${work.path}/backups`,
      'COMPRESSION=zstd',
      'ENCRYPTION=false',
      `PGHOST=${cluster.host}`,
      `PGPORT=${cluster.port}`,
      `PGUSER=${cluster.superuser}`,
      'PGDATABASE=postgres',
      'CLUSTER_NAME=main',
      'PARALLEL_JOBS=2',
    ].join('\n'),
  );
  const backup = pgvault(['backup', 'full', 'daily', '--json']);
  expect(backup.code, backup.stderr).toBe(0);
  id = JSON.parse(backup.stdout).manifest.id;
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

const objectPath = (db: string) => join(work.path, 'backups/main/full/daily', `${id}.${db}.dump.zst`);

describe('the source of a restore', () => {
  it("the guide's path form restores the database the path names", async () => {
    // Act
    const r = pgvault(['restore', 'full', objectPath('my_database'), 'md_from_path']);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      new RegExp(`restored my_database from ${id} into "md_from_path".*3 tables, 72 rows`),
    );
    await expectSameAsMyDatabase('md_from_path');
  });

  it('restore validate --against a path compares with the object the path names', () => {
    // Act
    const r = pgvault([
      'restore',
      'validate',
      'md_from_path',
      '--against',
      objectPath('my_database'),
      '--json',
    ]);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    const v = JSON.parse(r.stdout);
    expect(v.report).toMatchObject({ ok: true, tablesChecked: 3, rowsChecked: 72 });
  });

  it('a backup of several databases and a target none of them is named: exit 2, listing them, nothing created', async () => {
    // Act
    const r = pgvault(['restore', 'full', id, 'newdb']);

    // Assess
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('app, my_database, postgres');
    expect(r.stderr).toContain('--from');
    expect(await databaseExists('newdb')).toBe(false);
  });

  it('restore test <id> tests every database of the backup', () => {
    // Act
    const r = pgvault(['restore', 'test', id]);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('3 database(s) restored and validated');
    expect(r.stdout).toMatch(/^ {2}app: 6 tables, 5214 rows/m);
    expect(r.stdout).toMatch(/^ {2}my_database: 3 tables, 72 rows/m);
    expect(r.stdout).toMatch(/^ {2}postgres: 1 tables, 3 rows/m);
  });

  it('a restore that ends with fewer tables than the object it restored holds fails with exit 4', async () => {
    // Prepare: a hand copy of the backup whose manifest lists one more table for my_database than
    // its dump holds (what a dump that lost a table looks like after restore).
    const copy = join(work.path, 'copy');
    mkdirSync(copy);
    const folder = join(work.path, 'backups/main/full/daily');
    for (const f of readdirSync(folder)) if (f.startsWith(id)) cpSync(join(folder, f), join(copy, f));
    const manifestFile = join(copy, `${id}.manifest.json`);
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8'));
    const md = manifest.objects.find((o: { database?: string }) => o.database === 'my_database');
    md.tables.push({ schema: 'public', table: 'ghost', rows: 5 });
    writeFileSync(manifestFile, JSON.stringify(manifest));
    // A second copy whose manifest does not list billing.invoices: a partial restore of it checks nothing.
    const unlisted = join(work.path, 'unlisted');
    cpSync(copy, unlisted, { recursive: true });
    md.tables = md.tables.filter((t: { table: string }) => t.table !== 'invoices' && t.table !== 'ghost');
    writeFileSync(join(unlisted, `${id}.manifest.json`), JSON.stringify(manifest));
    await cluster.query('CREATE DATABASE md_partial');
    await cluster.psql('CREATE SCHEMA billing', 'md_partial');

    // Act
    const test = pgvault(['restore', 'test', join(copy, `${id}.my_database.dump.zst`)]);
    const all = pgvault(['restore', 'test', join(copy, `${id}.manifest.json`)]);
    const full = pgvault(['restore', 'full', join(copy, `${id}.my_database.dump.zst`), 'md_ghost']);
    const partial = pgvault([
      'restore',
      'partial',
      join(unlisted, `${id}.my_database.dump.zst`),
      'table',
      'billing.invoices',
      'md_partial',
    ]);

    // Assess
    expect(test.code, test.stdout).toBe(4);
    expect(test.stderr).toMatch(/public\.ghost: expected 5, found missing/);
    expect(all.code, all.stdout).toBe(4);
    expect(full.code, full.stdout).toBe(4);
    expect(full.stdout).toMatch(/1 of 4 tables DIFFER/);
    expect(partial.code, partial.stdout + partial.stderr).toBe(4);
    expect(partial.stderr).toMatch(/billing\.invoices: expected absent, found 7/);
    const left = await cluster.query("SELECT 1 FROM pg_database WHERE datname LIKE 'pgvault_test_%'");
    expect(left).toHaveLength(0);
  });

  it('restore full <id> my_database takes my_database from the backup', async () => {
    // Prepare: the database is lost.
    await cluster.query('DROP DATABASE my_database');

    // Act
    const r = pgvault(['restore', 'full', id, 'my_database']);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/restored my_database from .* into "my_database"/);
    await expectSameAsMyDatabase('my_database');
  });

  it('restore partial <id> table users my_database takes users from my_database', async () => {
    // Prepare: the table is lost.
    await cluster.psql('DROP TABLE users CASCADE', 'my_database');

    // Act
    const r = pgvault(['restore', 'partial', id, 'table', 'users', 'my_database']);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(await tableContents(cluster, 'my_database', 'public.users')).toBe(before.get('public.users'));
  });

  it('a table not in the backup: the hint names a command that lists its tables, and that command does', () => {
    // Act
    const r = pgvault(['restore', 'partial', id, 'table', 'nosuch', 'my_database']);
    const list = pgvault(['restore', 'list', id]);
    const listJson = pgvault(['restore', 'list', id, '--json']);

    // Assess
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`table nosuch is not in database "my_database" of backup ${id}`);
    expect(r.stderr).toContain(`\`pgvault restore list ${id}\``);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/^database my_database: /m);
    expect(list.stdout).toMatch(/^ {2}public\.users {2}40 rows$/m);
    expect(list.stdout).toMatch(/^ {2}billing\.invoices {2}7 rows$/m);
    const objects = JSON.parse(listJson.stdout).objects as { database?: string; tables?: unknown[] }[];
    expect(objects.find((o) => o.database === 'my_database')?.tables).toHaveLength(3);
  });

  it("a path naming no object of the backup is refused; the guide's id.dump.zst names the whole backup", async () => {
    // Act
    const typo = pgvault(['restore', 'full', objectPath('my_databse'), 'md_typo']);
    const whole = pgvault(['restore', 'list', join(work.path, 'backups/main/full/daily', `${id}.dump.zst`)]);

    // Assess
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain(`backup ${id} has no object ${id}.my_databse.dump.zst; it holds`);
    expect(await databaseExists('md_typo')).toBe(false);
    expect(whole.code, whole.stderr).toBe(0);
    expect(whole.stdout).toMatch(/^database app: /m);
  });

  it('a PITR time without a zone is read in TZ and printed in UTC and local time', () => {
    // Act: no base backup exists, so it fails after saying which moment it was asked for.
    const r = pgvault(['restore', 'pitr', 'auto', '2026-07-01 09:30:00', 'somedb'], {
      TZ: 'America/New_York',
    });

    // Assess
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(
      'target time 2026-07-01 13:30:00.000000 UTC = 2026-07-01 09:30:00.000000-04:00 (America/New_York)',
    );
  });
});
