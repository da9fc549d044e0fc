import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { backupFull } from '../../core/backup/full';
import { type ManifestBody, sealManifest } from '../../core/catalog/manifest';
import { listDrillRecords } from '../../core/catalog/records';
import { runDrill } from '../../core/drill/drill';
import { UsageError, ValidationError } from '../../core/errors';
import {
  type ArchivingCluster,
  type Batch,
  between,
  commitBatch,
  createAppTable,
  PGVAULT_BIN,
  sleep,
  startArchivingCluster,
  switchAndWaitArchived,
} from './pitr-fixture';
import { temporaryDatabasesLeft } from './verify-fixture';

/**
 * `pgvault drill` on a real cluster archiving through pgvault (encrypted, 1 MB WAL segments):
 *
 *   batch 0 · full backup · base backup · batch 1 · batch 2 · archived
 *
 * The logical drill restores the full backup (batch 0) in a sandbox server; the PITR drill recovers
 * between batches 1 and 2 in a recovery sandbox. Every run, passed or failed, leaves one record under drills/.
 */
let a: ArchivingCluster;
let full: ManifestBody;
let base: ManifestBody;
const batches: Batch[] = [];

beforeAll(async () => {
  a = await startArchivingCluster({ cluster: 'drill' });
  await createAppTable(a.cluster);
  batches.push(await commitBatch(a.cluster, 0));
  full = await backupFull(a.vault(), { schedule: 'daily', databases: ['app'] });
  base = await backupBase(a.vault(), { schedule: 'weekly' });
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 1));
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 2));
  await switchAndWaitArchived(a.cluster);
}, 120_000);

afterAll(async () => {
  await a?.stop();
});

describe('pgvault drill', () => {
  it('restores the newest full backup, validates it, records RTO and RPO, and cleans up', async () => {
    // Prepare
    const before = Date.now();

    // Act
    const r = await runDrill(a.vault());

    // Assess
    expect(r.kind).toBe('drill');
    expect(r.backupId).toBe(full.id);
    expect(r.restoredOn.kind).toBe('sandbox');
    expect(r.databases.map((d) => [d.database, d.tables, d.rows])).toEqual([['app', 1, 50]]);
    expect(r.rtoMs).toBeGreaterThan(0);
    expect(r.rtoMs).toBeLessThanOrEqual(Date.now() - before);
    expect(r.restoredTo).toBe(full.finishedAt);
    expect(r.rpoMs).toBeGreaterThanOrEqual(before - Date.parse(full.finishedAt));
    expect(await temporaryDatabasesLeft(a.cluster)).toEqual([]);
    const stored = (await listDrillRecords(a.vault())).find((x) => x.startedAt === r.record.startedAt);
    expect(stored).toMatchObject({
      format: 'pgvault-drill/1',
      kind: 'drill',
      ok: true,
      backupId: full.id,
      rtoMs: r.rtoMs,
      rpoMs: r.rpoMs,
      tables: 1,
      rows: 50,
    });
  });

  it('--pitr recovers the base backup and the WAL to the target in a sandbox', async () => {
    // Prepare
    const target = between(batches[1]!.commitTime, batches[2]!.commitTime);

    // Act
    const r = await runDrill(a.vault(), { pitr: true, targetTime: target });

    // Assess
    expect(r.kind).toBe('pitr');
    expect(r.backupId).toBe(base.id);
    expect(r.restoredOn.kind).toBe('sandbox');
    expect(r.choice).toMatch(/newest base backup that ended before the target/);
    // Batches 0 and 1 only: recovery stopped at the target.
    expect(r.databases.find((d) => d.database === 'app')).toMatchObject({ tables: 1, rows: 100 });
    expect(r.restoredTo).toBe(new Date(target).toISOString());
    expect(r.targetTime?.utc).toBe(`${target.slice(0, 10)} ${target.slice(11, 23)}000 UTC`);
    expect(r.rpoMs).toBeGreaterThanOrEqual(0);
    const stored = (await listDrillRecords(a.vault())).find((x) => x.startedAt === r.record.startedAt);
    expect(stored).toMatchObject({ kind: 'pitr', ok: true, backupId: base.id, rtoMs: r.rtoMs });
    expect(stored?.rpoMs).toBe(r.rpoMs);
    // Where it recovered: the recovery sandbox, with the server version it ran.
    expect(stored?.restoredOn).toEqual({ kind: 'sandbox', serverVersion: r.restoredOn.serverVersion });
    expect(r.restoredOn.serverVersion).toMatch(/^1\d\.\d+/);
  });

  it('a drill that fails is recorded with its error (a tampered full backup)', async () => {
    // Prepare: a newer full backup whose manifest says app.t holds one row more, sealed again with
    // the archive's key (its HMAC holds: only the drill's recount can notice).
    const vault = a.vault();
    const tampered = await backupFull(vault, { schedule: 'manual', databases: ['app'] });
    const target = vault.targets[0]!;
    const key = `drill/full/manual/${tampered.id}.manifest.json`;
    const { hmac: _hmac, ...m } = JSON.parse((await target.getBytes(key)).toString('utf8'));
    m.objects.find((o: { database?: string }) => o.database === 'app').tables[0].rows += 1;
    await target.putBytes(key, await sealManifest(m, vault.config.encryption.passphrase));

    // Act
    const attempt = runDrill(a.vault());

    // Assess
    await expect(attempt).rejects.toThrow(ValidationError);
    await expect(attempt).rejects.toThrow(/public\.t: expected 151, found 150/);
    const [newest] = await listDrillRecords(a.vault());
    expect(newest).toMatchObject({ kind: 'drill', ok: false, backupId: tampered.id });
    expect(newest?.error).toMatch(/differs from the backup/);
    expect(newest?.rtoMs).toBeUndefined();
    expect(await temporaryDatabasesLeft(a.cluster)).toEqual([]);
    await target.delete(key);
  });

  it('the CLI: `drill --pitr` to one hour ago fails before the oldest base backup, exits 2 and is recorded', async () => {
    // Act
    const r = spawnSync(
      process.execPath,
      [PGVAULT_BIN, '--config', a.configFile, '--json', 'drill', '--pitr'],
      {
        encoding: 'utf8',
        timeout: 120_000,
      },
    );

    // Assess
    expect(r.status).toBe(new UsageError('').exitCode);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false });
    expect(r.stderr).toMatch(/^pgvault: target .* is before the oldest base backup/m);
    const [newest] = await listDrillRecords(a.vault());
    expect(newest).toMatchObject({ kind: 'pitr', ok: false, backupId: 'none' });
    expect(newest?.error).toMatch(/before the oldest base backup/);
  });
});
