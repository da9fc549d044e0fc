import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { backupFull } from '../../core/backup/full';
import { backupIndexes } from '../../core/backup/indexes';
import type { ManifestBody } from '../../core/catalog/manifest';
import { listDrillRecords } from '../../core/catalog/records';
import { UsageError, ValidationError } from '../../core/errors';
import { verifyIndexes } from '../../core/verify/indexes';
import { verifyRestore } from '../../core/verify/restore';
import { createSampleData, SAMPLE_TABLES } from '../helpers/pg';
import { type ArchivingCluster, PGVAULT_BIN, startArchivingCluster } from './pitr-fixture';
import { temporaryDatabasesLeft } from './verify-fixture';

/**
 * `verify restore` (a full backup into temporary databases of a sandbox server by default, a base
 * backup in a recovery sandbox; test/integration/restore-sandbox.test.ts covers the choice) and
 * `verify indexes` (an index backup rebuilt on the schema of the newest full backup), on one real
 * cluster holding the sample database. Unencrypted, so a test can edit a manifest's row counts.
 */
let a: ArchivingCluster;
let full: ManifestBody;
let base: ManifestBody;
let indexes: ManifestBody;
const SAMPLE_ROWS = Object.values(SAMPLE_TABLES).reduce((n, r) => n + r, 0);
const DAY = 86_400_000;

beforeAll(async () => {
  a = await startArchivingCluster({ cluster: 'vr', extra: { ENCRYPTION: 'false' } });
  await createSampleData(a.cluster, 'shop');
  full = await backupFull(a.vault(), { schedule: 'daily', databases: ['shop'] });
  base = await backupBase(a.vault(), { schedule: 'weekly' });
  indexes = await backupIndexes(a.vault(), { now: new Date(Date.now() - DAY) });
}, 120_000);

afterAll(async () => {
  await a?.stop();
});

const cli = (args: string[]) =>
  spawnSync(process.execPath, [PGVAULT_BIN, '--config', a.configFile, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
  });

describe('verify restore', () => {
  it('restores a full backup into a temporary database of a sandbox server, validates the row counts, removes it and records the RTO', async () => {
    // Act
    const r = await verifyRestore(a.vault(), 'latest');

    // Assess
    expect(r.backupId).toBe(full.id);
    expect(r.type).toBe('full');
    expect(r.databases).toHaveLength(1);
    expect(r.databases[0]).toMatchObject({
      database: 'shop',
      tables: Object.keys(SAMPLE_TABLES).length,
      rows: SAMPLE_ROWS,
      mismatches: [],
    });
    expect(r.databases[0]!.restoredAs).toMatch(/^pgvault_test_/);
    expect(r.restoredOn.kind).toBe('sandbox');
    expect(await temporaryDatabasesLeft(a.cluster)).toEqual([]);
    const [record] = await listDrillRecords(a.vault());
    expect(record).toMatchObject({
      kind: 'verify-restore',
      ok: true,
      backupId: full.id,
      rtoMs: r.restoreMs,
      rows: SAMPLE_ROWS,
      restoredTo: full.finishedAt,
    });
  });

  it('recovers a base backup in a sandbox server and counts every table there', async () => {
    const r = await verifyRestore(a.vault(), base.id);

    expect(r.type).toBe('base');
    expect(r.recovered?.lsn).toBeDefined();
    const shop = r.databases.find((d) => d.database === 'shop');
    expect(shop).toMatchObject({ restoredAs: 'sandbox', rows: SAMPLE_ROWS, invalidIndexes: [] });
    expect(r.restoredOn.kind).toBe('sandbox');
    expect(r.restoredTo).toBe(base.physical?.stopTime);
    const [record] = await listDrillRecords(a.vault());
    expect(record).toMatchObject({ kind: 'verify-restore', ok: true, backupId: base.id });
  });

  it('fails on a row count that differs from the manifest, and records the failure (on the configured server too)', async () => {
    // Prepare: an older full backup whose manifest claims one more customer.
    const tampered = await backupFull(a.vault(), {
      schedule: 'manual',
      databases: ['shop'],
      now: new Date(Date.now() - 3 * DAY),
    });
    const target = a.vault().targets[0]!;
    const key = `vr/full/manual/${tampered.id}.manifest.json`;
    const m = JSON.parse((await target.getBytes(key)).toString('utf8'));
    const shop = m.objects.find((o: { database?: string }) => o.database === 'shop');
    shop.tables.find((t: { table: string }) => t.table === 'customers').rows += 1;
    await target.putBytes(key, JSON.stringify(m));

    // Act
    const attempt = verifyRestore(a.vault(), tampered.id);
    const onServer = verifyRestore(a.vault(), tampered.id, { target: 'server' }).catch((e: unknown) => e);

    // Assess
    await expect(attempt).rejects.toThrow(ValidationError);
    await expect(attempt).rejects.toThrow(/public\.customers: expected 501, found 500/);
    expect(await onServer).toBeInstanceOf(ValidationError);
    expect(String(await onServer)).toMatch(/public\.customers: expected 501, found 500/);
    const [record] = await listDrillRecords(a.vault());
    expect(record).toMatchObject({ kind: 'verify-restore', ok: false, backupId: tampered.id });
    expect(record?.error).toMatch(/public\.customers: expected 501, found 500/);
    expect(await temporaryDatabasesLeft(a.cluster)).toEqual([]);
  });

  it('refuses an index backup (verify indexes checks those)', async () => {
    await expect(verifyRestore(a.vault(), indexes.id)).rejects.toThrow(UsageError);
  });

  it('the CLI prints the result (--json)', async () => {
    const r = cli(['--json', 'verify', 'restore', full.id]);

    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ ok: true, backupId: full.id, rows: SAMPLE_ROWS });
  });
});

describe('verify indexes', () => {
  it("rebuilds every index of the backup on the full backup's schema and finds them valid", async () => {
    // Act
    const r = await verifyIndexes(a.vault(), indexes.id);

    // Assess
    expect(r.ok).toBe(true);
    const shop = r.databases.find((d) => d.database === 'shop');
    // customers_email_lower_key and orders_open_ordered_at_idx; the rest back constraints.
    expect(shop).toMatchObject({ schemaFrom: full.id, statements: 2, created: 2, failed: [], invalid: [] });
    expect(await temporaryDatabasesLeft(a.cluster)).toEqual([]);
  });

  it('names an index whose table the full backup does not have, and the CLI exits 4', async () => {
    // Prepare: a table and index made after the newest full backup, then an index backup.
    await a.cluster.query('CREATE TABLE late (id int, note text)', [], 'shop');
    await a.cluster.query('CREATE INDEX late_note_idx ON late (note)', [], 'shop');
    const newer = await backupIndexes(a.vault());

    // Act
    const r = await verifyIndexes(a.vault(), 'latest');
    const run = cli(['verify', 'indexes', 'latest']);

    // Assess
    expect(r.backupId).toBe(newer.id);
    expect(r.ok).toBe(false);
    const shop = r.databases.find((d) => d.database === 'shop')!;
    expect(shop.created).toBe(2);
    expect(shop.failed).toHaveLength(1);
    expect(shop.failed[0]!.statement).toContain('late_note_idx');
    expect(shop.failed[0]!.error).toMatch(/relation "public.late" does not exist/);
    expect(run.status).toBe(4);
    expect(run.stdout).toContain('FAILED CREATE INDEX IF NOT EXISTS late_note_idx');
    expect(run.stderr).toMatch(/does not rebuild cleanly in "shop": relation "public.late" does not exist/);
    expect(await temporaryDatabasesLeft(a.cluster)).toEqual([]);
  });
});
