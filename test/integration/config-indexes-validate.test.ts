import { execFileSync } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupConfig } from '../../core/backup/config-backup';
import { backupFull } from '../../core/backup/full';
import { backupIndexes } from '../../core/backup/indexes';
import { checkRestorePrerequisites, initBackupTargets } from '../../core/backup/init';
import { backupStats } from '../../core/backup/stats';
import { readObject } from '../../core/catalog/objects';
import { ValidationError } from '../../core/errors';
import type { TempCluster } from '../../core/pg/cluster';
import { restoreIndexes } from '../../core/restore/indexes';
import { assertValid, validateDatabase } from '../../core/restore/validate';
import type { Vault } from '../../core/vault';
import { createSampleData, startCluster } from '../helpers/pg';
import { tempDir, testVault } from '../helpers/vault';

let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
let vault: Vault;
const KEY = 'config and indexes key';

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir()]);
  await createSampleData(cluster, 'app');
  await cluster.psql('CREATE EXTENSION IF NOT EXISTS pg_trgm', 'app').catch(() => {});
  vault = testVault(cluster, `${work.path}/vault`, {
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: KEY,
    COMPRESSION: 'gzip',
  });
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

/** The raw bytes of a backup's single object, through the same read path restores use. */
async function rawObject(id: string, type: 'config' | 'indexes', file: string): Promise<void> {
  const entry = await vault.catalog.resolve(id, type);
  const raw = await readObject({
    target: entry.targets[0]!,
    object: entry.manifest.objects[0]!,
    compression: entry.manifest.compression.algorithm,
    threads: 2,
    encryption: { passphrase: KEY, iterations: entry.manifest.encryption!.iterations },
  });
  await pipeline(raw, createWriteStream(file));
}

describe('backup init and restore init', () => {
  it('lays out the folders, is idempotent, and checks what restores need', async () => {
    const first = await initBackupTargets(vault);
    const second = await initBackupTargets(vault);
    const restore = await checkRestorePrerequisites(vault);

    expect(first.every((c) => c.ok)).toBe(true);
    expect(second).toEqual(first);
    expect(
      execFileSync('stat', ['-c', '%a', join(`${work.path}/vault`, 'default', 'full', 'daily')], {
        encoding: 'utf8',
      }).trim(),
    ).toBe('700');
    expect(restore.map((c) => [c.check, c.ok])).toEqual([
      ['server connection', true],
      ['pg_restore', true],
      ['pg_dump', true],
      ['psql', true],
      ['free port for sandboxes', true],
      ['temporary space', true],
      ['backups readable', true],
      ['encryption keys', true],
    ]);
  });
});

describe('backup config', () => {
  it('archives settings, configuration files, hba rules, roles and extensions as a tar', async () => {
    // Act
    const m = await backupConfig(vault);
    const dir = `${work.path}/config-out`;
    mkdirSync(dir);
    await rawObject(m.id, 'config', `${dir}/config.tar`);
    execFileSync('tar', ['-xf', `${dir}/config.tar`, '-C', dir]);

    // Assess
    expect(m.id).toMatch(/^config-\d{8}-\d{6}$/);
    expect(m.objects[0]!.key).toMatch(/\/config\/config-\d{8}-\d{6}\.tar\.gz\.enc$/);
    const listing = execFileSync('tar', ['-tf', `${dir}/config.tar`], { encoding: 'utf8' }).split('\n');
    expect(listing).toEqual(
      expect.arrayContaining([
        'settings.tsv',
        'files/postgresql.conf',
        'files/pg_hba.conf',
        'pg_hba_rules.tsv',
        'roles.sql',
        'extensions.tsv',
      ]),
    );
    const read = (f: string) => execFileSync('cat', [join(dir, f)], { encoding: 'utf8' });
    expect(read('settings.tsv')).toMatch(/^port\t/m);
    expect(read('roles.sql')).toContain('CREATE ROLE pgvault_reader');
    expect(read('extensions.tsv')).toMatch(/^app\tplpgsql\t/m);
  });
});

describe('backup indexes and restore indexes', () => {
  it('rebuilds a dropped index from the newest index backup', async () => {
    // Prepare
    const before = await cluster.query<{ indexname: string; indexdef: string }>(
      `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname IN ('public', 'sales') ORDER BY 1`,
      [],
      'app',
    );
    const m = await backupIndexes(vault);
    const droppable = before.find((i) => !/_pkey$|_key$/.test(i.indexname))!;
    await cluster.psql(
      `DROP INDEX ${droppable.indexdef.match(/ON (?:ONLY )?(\S+)\./)?.[1] ?? 'public'}.${droppable.indexname}`,
      'app',
    );

    // Act
    const result = await restoreIndexes(vault, 'app');

    // Assess
    expect(result.backupId).toBe(m.id);
    expect(result.created).toEqual([expect.stringContaining(droppable.indexname)]);
    expect(result.failed).toEqual([]);
    const after = await cluster.query(
      `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname IN ('public', 'sales') ORDER BY 1`,
      [],
      'app',
    );
    expect(after).toEqual(before);
  });

  it('writes SQL that psql can run as it is', async () => {
    const file = `${work.path}/indexes.sql`;
    await rawObject('latest', 'indexes', file);
    const text = execFileSync('cat', [file], { encoding: 'utf8' });
    expect(text).toContain('\\connect "app"');
    expect(text).toMatch(/CREATE (UNIQUE )?INDEX IF NOT EXISTS \S+ ON sales\.\S+ USING btree/);
    execFileSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', file], {
      env: {
        ...process.env,
        PGHOST: cluster.host,
        PGPORT: String(cluster.port),
        PGUSER: cluster.superuser,
        PGDATABASE: 'postgres',
      },
    });
  });
});

describe('restore validate and backup stats', () => {
  it('passes on matching data and names the table that differs', async () => {
    // Prepare
    const m = await backupFull(vault, { schedule: 'weekly', databases: ['app'] });
    const good = await validateDatabase(vault, 'app');

    // Act
    await cluster.psql('DELETE FROM sales.order_lines WHERE order_id % 5 = 0', 'app');
    const bad = await validateDatabase(vault, 'app', { against: m.id });

    // Assess
    expect(good.against).toBe(m.id);
    expect(good.report?.ok).toBe(true);
    expect(good.health.invalidIndexes).toEqual([]);
    expect(bad.report?.ok).toBe(false);
    expect(bad.report?.mismatches.map((x) => `${x.schema}.${x.table}`)).toEqual(['sales.order_lines']);
    expect(() => assertValid(bad.report!)).toThrow(ValidationError);
    expect(() => assertValid(bad.report!)).toThrow(/sales\.order_lines: expected 3000, found 2400/);
  });

  it('counts backups, sizes and last success per type', async () => {
    const stats = await backupStats(vault);
    const types = Object.fromEntries(stats.byType.map((t) => [t.type, t]));
    expect(Object.keys(types).sort()).toEqual(['config', 'full/weekly', 'indexes']);
    expect(types['full/weekly']!.count).toBe(1);
    expect(types['full/weekly']!.ratio).toBeGreaterThan(0);
    expect(types['full/weekly']!.ratio).toBeLessThan(1);
    expect(stats.total.count).toBe(3);
    // No base backup and no WAL: no PITR window to show.
    expect(stats.recoverable).toBeUndefined();
  });
});
