import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFull } from '../../core/backup/full';
import { parseConfig } from '../../core/config';
import { ConfigError, IntegrityError, PostgresError, StorageError, UsageError } from '../../core/errors';
import type { TempCluster } from '../../core/pg/cluster';
import { findPgBinary } from '../../core/pg/tools';
import { restoreFull } from '../../core/restore/full';
import { restorePartial } from '../../core/restore/partial';
import { openVault, type Vault } from '../../core/vault';
import { verifyBackupFile } from '../../core/verify/file';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { recordingReporter, tempDir, testConfig, testVault } from '../helpers/vault';

let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
let sampleBefore: Map<string, string>;

async function databaseExists(name: string): Promise<boolean> {
  return (await cluster.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).length > 0;
}

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath, d.name));
}

function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

function flipByte(path: string, at: number): void {
  const fd = openSync(path, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at);
  b[0] = b[0]! ^ 0x55;
  writeSync(fd, b, 0, 1, at);
  closeSync(fd);
}

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir()]);
  await createSampleData(cluster, 'app');
  sampleBefore = new Map();
  for (const t of Object.keys(SAMPLE_TABLES)) sampleBefore.set(t, await tableContents(cluster, 'app', t));
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

describe('partial restore', () => {
  let vault: Vault;
  let backupId: string;
  beforeAll(async () => {
    vault = testVault(cluster, `${work.path}/partial`, { ENCRYPTION: 'true', ENCRYPTION_KEY: 'partial-key' });
    backupId = (await backupFull(vault, { schedule: 'manual', databases: ['app'] })).id;
  });

  it('brings back a dropped table with its data, keys, indexes and the foreign keys that pointed at it', async () => {
    // Prepare
    await cluster.psql('DROP TABLE sales.orders CASCADE', 'app');

    // Act
    const result = await restorePartial(vault, backupId, 'table', 'sales.orders');

    // Assess
    expect(result.validation.ok).toBe(true);
    expect(await tableContents(cluster, 'app', 'sales.orders')).toBe(sampleBefore.get('sales.orders'));
    const constraints = await cluster.query<{ conname: string; contype: string; rel: string }>(
      `SELECT conname, contype, conrelid::regclass::text AS rel FROM pg_constraint
        WHERE conrelid = 'sales.orders'::regclass OR confrelid = 'sales.orders'::regclass ORDER BY 1`,
      [],
      'app',
    );
    expect(constraints.some((c) => c.contype === 'p' && c.rel === 'sales.orders')).toBe(true);
    expect(constraints.some((c) => c.contype === 'f' && c.rel === 'sales.order_lines')).toBe(true);
    const indexes = await cluster.query(
      `SELECT 1 FROM pg_indexes WHERE schemaname = 'sales' AND tablename = 'orders'`,
      [],
      'app',
    );
    expect(indexes.length).toBeGreaterThan(0);
  });

  it('refuses to overwrite a table that exists, and changes nothing', async () => {
    await expect(restorePartial(vault, backupId, 'table', 'sales.orders')).rejects.toThrow(
      /table sales\.orders already exists in "app".*--clean/,
    );
    expect(await tableContents(cluster, 'app', 'sales.orders')).toBe(sampleBefore.get('sales.orders'));
  });

  it('brings back a dropped schema with every table in it', async () => {
    // Prepare
    await cluster.psql('DROP SCHEMA sales CASCADE', 'app');

    // Act
    const result = await restorePartial(vault, 'latest', 'schema', 'sales');

    // Assess
    expect(result.validation.ok).toBe(true);
    for (const t of Object.keys(SAMPLE_TABLES).filter((x) => x.startsWith('sales.'))) {
      expect(await tableContents(cluster, 'app', t), t).toBe(sampleBefore.get(t));
    }
  });

  it('names a table that is not in the backup', async () => {
    await expect(restorePartial(vault, backupId, 'table', 'public.nope')).rejects.toThrow(
      `table public.nope is not in database "app" of backup ${backupId}; list its tables with \`pgvault restore list ${backupId}\``,
    );
  });
});

describe('refusals that leave everything as it was', () => {
  let vault: Vault;
  let backupId: string;
  let objectPath: string;
  beforeAll(async () => {
    vault = testVault(cluster, `${work.path}/bad`, {
      ENCRYPTION: 'true',
      ENCRYPTION_KEY: 'right key',
      COMPRESSION: 'zstd',
    });
    const m = await backupFull(vault, { schedule: 'daily', databases: ['app'] });
    backupId = m.id;
    objectPath = join(`${work.path}/bad`, m.objects.find((o) => o.database === 'app')!.key);
  });

  it('a wrong key is named as such and nothing is restored', async () => {
    // Prepare
    const wrong = openVault(
      testConfig(cluster, `${work.path}/bad`, { ENCRYPTION: 'true', ENCRYPTION_KEY: 'wrong key' }),
      recordingReporter(),
    );

    // Act
    const attempt = restoreFull(wrong, backupId, { database: 'wrong_key_target' });

    // Assess
    await expect(attempt).rejects.toBeInstanceOf(IntegrityError);
    await expect(attempt).rejects.toThrow(/wrong encryption key/);
    expect(await databaseExists('wrong_key_target')).toBe(false);
  });

  it('a restore into a database that is not empty is refused and the database is untouched', async () => {
    await expect(restoreFull(vault, backupId, { database: 'app' })).rejects.toBeInstanceOf(UsageError);
    await expect(restoreFull(vault, backupId, { database: 'app' })).rejects.toThrow(
      /"app" is not empty.*--clean/,
    );
    for (const [t, c] of sampleBefore)
      if (!t.startsWith('sales.')) expect(await tableContents(cluster, 'app', t)).toBe(c);
  });

  it('a flipped byte is refused by verify and by restore', async () => {
    // Prepare: a copy of the backup with one byte changed in the middle of the object.
    const copyDir = `${work.path}/flipped`;
    execFileSync('cp', ['-a', `${work.path}/bad`, copyDir]);
    const copyPath = objectPath.replace(`${work.path}/bad`, copyDir);
    flipByte(copyPath, Math.floor(statSync(copyPath).size / 2));
    const flipped = testVault(cluster, copyDir, { ENCRYPTION: 'true', ENCRYPTION_KEY: 'right key' });

    // Act + Assess
    await expect(verifyBackupFile(flipped, backupId)).rejects.toBeInstanceOf(IntegrityError);
    await expect(restoreFull(flipped, backupId, { database: 'flipped_target' })).rejects.toBeInstanceOf(
      IntegrityError,
    );
    expect(await databaseExists('flipped_target')).toBe(false);
  });

  it('a truncated object is refused by verify and by restore', async () => {
    // Prepare
    const copyDir = `${work.path}/truncated`;
    execFileSync('cp', ['-a', `${work.path}/bad`, copyDir]);
    const copyPath = objectPath.replace(`${work.path}/bad`, copyDir);
    truncateSync(copyPath, Math.floor(statSync(copyPath).size * 0.7));
    const truncated = testVault(cluster, copyDir, { ENCRYPTION: 'true', ENCRYPTION_KEY: 'right key' });

    // Act + Assess
    await expect(verifyBackupFile(truncated, backupId)).rejects.toThrow(/corrupt/);
    await expect(restoreFull(truncated, backupId, { database: 'truncated_target' })).rejects.toBeInstanceOf(
      IntegrityError,
    );
    expect(await databaseExists('truncated_target')).toBe(false);
  });

  it('a tampered manifest is refused', async () => {
    // Prepare
    const copyDir = `${work.path}/tampered`;
    execFileSync('cp', ['-a', `${work.path}/bad`, copyDir]);
    const manifestPath = filesUnder(copyDir).find((f) => f.endsWith('.manifest.json'))!;
    const text = (await import('node:fs')).readFileSync(manifestPath, 'utf8');
    writeFileSync(
      manifestPath,
      text.replace(/"rows": (\d+)/, (_m, n) => `"rows": ${Number(n) + 1}`),
    );
    const tampered = testVault(cluster, copyDir, { ENCRYPTION: 'true', ENCRYPTION_KEY: 'right key' });

    // Act + Assess
    await expect(verifyBackupFile(tampered, backupId)).rejects.toThrow(/modified since the backup was made/);
  });

  it('pg_dump dying mid-stream leaves no object and no manifest, and earlier backups stay intact', async () => {
    // Prepare: a pg_dump that writes part of a real dump, then fails.
    const bin = `${work.path}/fakebin`;
    mkdirSync(bin, { recursive: true });
    const real = dirname(findPgBinary('pg_dump'));
    writeFileSync(
      `${bin}/pg_dump`,
      `#!/bin/sh\n${real}/pg_dump "$@" | head -c 20000\necho "pg_dump: error: simulated failure" >&2\nexit 1\n`,
    );
    chmodSync(`${bin}/pg_dump`, 0o755);
    for (const tool of ['pg_dumpall', 'pg_restore', 'psql']) symlinkSync(`${real}/${tool}`, `${bin}/${tool}`);
    const dir = `${work.path}/bad`;
    const before = filesUnder(dir).sort();
    const failing = testVault(cluster, dir, {
      ENCRYPTION: 'true',
      ENCRYPTION_KEY: 'right key',
      PG_BIN_DIR: bin,
    });

    // Act
    const attempt = backupFull(failing, { schedule: 'daily', databases: ['app'] });

    // Assess
    await expect(attempt).rejects.toThrow(/simulated failure/);
    // keys.json, recorded before the first object, stays: it names the key this backup used.
    expect(
      filesUnder(dir)
        .filter((f) => !f.endsWith('/keys.json'))
        .sort(),
    ).toEqual(before.filter((f) => !f.endsWith('/keys.json')));
    const listed = await vault.catalog.list();
    expect(listed.map((e) => e.manifest.id)).toEqual([backupId]);
    await expect(verifyBackupFile(vault, backupId)).resolves.toBeDefined();
  });

  it('an unreachable server is one clear line', async () => {
    // Prepare
    const port = await closedPort();
    const config = parseConfig({
      BACKUP_DIR: `${work.path}/unreachable`,
      PGHOST: '127.0.0.1',
      PGPORT: String(port),
      PGUSER: 'postgres',
    });

    // Act
    const attempt = backupFull(openVault(config, recordingReporter()), { schedule: 'manual' });

    // Assess
    await expect(attempt).rejects.toBeInstanceOf(PostgresError);
    await expect(attempt).rejects.toThrow(
      new RegExp(`cannot connect to PostgreSQL at 127\\.0\\.0\\.1:${port}.*PGHOST`),
    );
  });

  it('an S3 endpoint that is down fails fast and leaves no local copy behind', async () => {
    // Prepare
    const port = await closedPort();
    const dir = `${work.path}/s3down`;
    const down = testVault(cluster, dir, {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: 'backups',
      S3_ENDPOINT: `http://127.0.0.1:${port}`,
      AWS_ACCESS_KEY_ID: 'x',
      AWS_SECRET_ACCESS_KEY: 'y',
    });
    process.env.AWS_ACCESS_KEY_ID ??= 'x';
    process.env.AWS_SECRET_ACCESS_KEY ??= 'y';

    // Act
    const attempt = backupFull(down, { schedule: 'manual', databases: ['app'] });

    // Assess
    await expect(attempt).rejects.toBeInstanceOf(StorageError);
    await expect(attempt).rejects.toThrow(new RegExp(`127\\.0\\.0\\.1:${port}`));
    expect(filesUnder(dir).filter((f) => !f.includes('.probe'))).toEqual([]);
  });

  it('an unknown compression is refused by the config reader', () => {
    expect(() => parseConfig({ COMPRESSION: 'brotli' })).toThrow(ConfigError);
    expect(() => parseConfig({ COMPRESSION: 'brotli' })).toThrow(
      'COMPRESSION=brotli is not allowed; use one of gzip, bzip2, xz, zstd, lz4, none',
    );
  });
});
