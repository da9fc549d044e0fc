import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFull } from '../../core/backup/full';
import { PostgresError } from '../../core/errors';
import type { TempCluster } from '../../core/pg/cluster';
import { restoreFull } from '../../core/restore/full';
import { restoreGlobals } from '../../core/restore/globals';
import { openVault } from '../../core/vault';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { recordingReporter, tempDir, testConfig, testVault } from '../helpers/vault';

/**
 * The guide's "complete database loss": the backup comes back on a server that has never seen the
 * database or its roles.
 */
let source: TempCluster;
let fresh: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [source, fresh, work] = await Promise.all([startCluster(), startCluster(), tempDir()]);
  await createSampleData(source, 'app');
  await source.psql(
    `CREATE ROLE app_owner LOGIN PASSWORD 'owner secret'; ALTER DATABASE app OWNER TO app_owner;
    ALTER TABLE sales.orders OWNER TO app_owner;`,
    'app',
  );
});

afterAll(async () => {
  await Promise.all([source?.stop(), fresh?.stop(), work?.remove()]);
});

describe('restore onto a new server', () => {
  it('says which role is missing, then restores roles and the database', async () => {
    // Prepare
    const dir = `${work.path}/vault`;
    const extra = { ENCRYPTION: 'true', ENCRYPTION_KEY: 'new server key' };
    const m = await backupFull(testVault(source, dir, extra), { schedule: 'daily' });
    const onFresh = openVault(testConfig(fresh, dir, extra), recordingReporter());

    // Act
    const withoutRoles = restoreFull(onFresh, m.id, { from: 'app' });
    await expect(withoutRoles).rejects.toBeInstanceOf(PostgresError);
    await expect(withoutRoles).rejects.toThrow(
      /role "(app_owner|pgvault_reader)" does not exist on the target server.*restore globals/,
    );
    const dbAfterFailure = await fresh.query(`SELECT 1 FROM pg_database WHERE datname = 'app'`);
    const globals = await restoreGlobals(onFresh, m.id);
    const result = await restoreFull(onFresh, m.id, { from: 'app' });

    // Assess
    expect(dbAfterFailure).toEqual([]);
    expect(globals.errors.every((e) => /already exists/.test(e))).toBe(true);
    expect(globals.alreadyExisting).toBeGreaterThanOrEqual(1);
    const roles = await fresh.query<{ rolname: string; has_password: boolean }>(
      `SELECT rolname, rolpassword IS NOT NULL AS has_password FROM pg_authid WHERE rolname IN ('app_owner', 'pgvault_reader') ORDER BY 1`,
    );
    expect(roles).toEqual([
      { rolname: 'app_owner', has_password: true },
      { rolname: 'pgvault_reader', has_password: false },
    ]);
    expect(result.validation.ok).toBe(true);
    const owner = await fresh.query(
      `SELECT tableowner FROM pg_tables WHERE schemaname = 'sales' AND tablename = 'orders'`,
      [],
      'app',
    );
    expect(owner).toEqual([{ tableowner: 'app_owner' }]);
    for (const t of Object.keys(SAMPLE_TABLES))
      expect(await tableContents(fresh, 'app', t)).toBe(await tableContents(source, 'app', t));
  });

  it('backs up as a non-superuser with pg_read_all_data, without role passwords', async () => {
    // Prepare
    await source.psql(`CREATE ROLE backup_reader LOGIN; GRANT pg_read_all_data TO backup_reader;`);
    const reporter = recordingReporter();
    const config = {
      ...testConfig(source, `${work.path}/reader`),
      pg: { ...testConfig(source, '/x').pg, user: 'backup_reader' },
    };

    // Act
    const m = await backupFull(openVault(config, reporter), { schedule: 'manual', databases: ['app'] });

    // Assess
    expect(reporter.warnings.join('\n')).toMatch(
      /not connected as a superuser: roles are saved without their passwords/,
    );
    expect(m.objects.map((o) => o.kind)).toEqual(['globals', 'database']);
    expect(m.objects[1]!.tables?.length).toBe(Object.keys(SAMPLE_TABLES).length);
  });
});
