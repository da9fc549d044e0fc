import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFull } from '../../core/backup/full';
import { COMPRESSIONS } from '../../core/config';
import type { TempCluster } from '../../core/pg/cluster';
import { restoreFull } from '../../core/restore/full';
import { openVault } from '../../core/vault';
import { verifyBackupFile } from '../../core/verify/file';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { startS3Server } from '../helpers/s3-server';
import { recordingReporter, tempDir, testConfig } from '../helpers/vault';

/**
 * The promise of a backup tool: what comes back equals what went in. Every compression, with and
 * without encryption, to the local folder and to S3, compared table by table, row by row.
 */
let cluster: TempCluster;
let s3: Awaited<ReturnType<typeof startS3Server>>;
let work: Awaited<ReturnType<typeof tempDir>>;
const original = new Map<string, string>();
let restoreCount = 0;

beforeAll(async () => {
  [cluster, s3, work] = await Promise.all([startCluster(), startS3Server(), tempDir()]);
  await createSampleData(cluster, 'app');
  for (const table of Object.keys(SAMPLE_TABLES))
    original.set(table, await tableContents(cluster, 'app', table));
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), s3?.stop(), work?.remove()]);
});

const cases = (['file', 's3'] as const).flatMap((target) =>
  COMPRESSIONS.flatMap((compression) =>
    [true, false].map((encrypted) => ({ target, compression, encrypted })),
  ),
);

describe.each(cases)(
  'round trip: $target, $compression, encrypted=$encrypted',
  ({ target, compression, encrypted }) => {
    it('restores data equal to the source', async () => {
      // Prepare
      const n = ++restoreCount;
      const extra: Record<string, string> = {
        COMPRESSION: compression,
        ENCRYPTION: String(encrypted),
        CLUSTER_NAME: `rt${n}`,
      };
      if (encrypted) extra.ENCRYPTION_KEY = `correct horse battery staple ${n}`;
      if (target === 's3') {
        Object.assign(extra, {
          CLOUD_PROVIDER: 's3',
          CLOUD_BUCKET: s3.bucket,
          S3_ENDPOINT: s3.endpoint,
          LOCAL_COPY: 'false',
        });
      }
      const vault = openVault(testConfig(cluster, `${work.path}/${n}`, extra), recordingReporter());
      const restored = `restored_${n}`;

      // Act
      const manifest = await backupFull(vault, { schedule: 'daily', databases: ['app'] });
      const verified = await verifyBackupFile(vault, manifest.id);
      const result = await restoreFull(vault, manifest.id, { database: restored });

      // Assess
      expect(vault.targets.map((t) => t.kind)).toEqual([target]);
      expect(manifest.encryption !== null).toBe(encrypted);
      const db = manifest.objects.find((o) => o.database === 'app')!;
      expect(db.key).toMatch(
        new RegExp(`full-daily-\\d{8}-\\d{6}\\.app\\.dump${compression === 'none' ? '' : '\\.'}`),
      );
      expect(
        Object.fromEntries((db.tables ?? []).map((t) => [`${t.schema}.${t.table}`, t.rows])),
      ).toMatchObject(SAMPLE_TABLES);
      expect(verified.objects.find((o) => o.key === db.key)?.tablesMatched).toBe(db.tables?.length);
      expect(result.validation.ok).toBe(true);
      expect(result.createdDatabase).toBe(true);
      for (const [table, contents] of original)
        expect(await tableContents(cluster, restored, table), table).toBe(contents);
    });
  },
);

describe('local + cloud in one pass', () => {
  it('keeps the local copy and the S3 copy, and restores from S3 when the local one is damaged', async () => {
    // Prepare
    const dir = `${work.path}/both`;
    const extra = {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      S3_ENDPOINT: s3.endpoint,
      CLOUD_PREFIX: 'pg/prod',
      ENCRYPTION: 'true',
      ENCRYPTION_KEY: 'two copies',
      CLUSTER_NAME: 'both',
    };
    const reporter = recordingReporter();
    const vault = openVault(testConfig(cluster, dir, extra), reporter);
    const manifest = await backupFull(vault, { schedule: 'daily', databases: ['app'] });
    const db = manifest.objects.find((o) => o.database === 'app')!;
    const [local, cloud] = vault.targets;
    const listed = await vault.catalog.list();
    writeFileSync(join(dir, db.key), 'not a backup any more');

    // Act
    const result = await restoreFull(vault, manifest.id, { database: 'from_cloud' });

    // Assess
    expect(vault.targets.map((t) => t.kind)).toEqual(['file', 's3']);
    expect(cloud!.location).toBe(`s3://${s3.bucket}/pg/prod`);
    expect((await cloud!.stat(db.key))?.size).toBe(db.storedSize);
    expect(await local!.stat(`${db.key}`)).toBeDefined();
    expect(listed).toHaveLength(1);
    expect(listed[0]!.targets.map((t) => t.kind)).toEqual(['file', 's3']);
    expect(reporter.warnings.join('\n')).toMatch(/corrupt.*trying the next copy/);
    expect(result.validation.ok).toBe(true);
    for (const [table, contents] of original)
      expect(await tableContents(cluster, 'from_cloud', table)).toBe(contents);
  });
});

describe('a backup copied by hand', () => {
  it('restores from a folder outside BACKUP_DIR, with its manifest beside it', async () => {
    // Prepare: the guide's "download from the cloud into /tmp, then restore".
    const vault = openVault(
      testConfig(cluster, `${work.path}/origin`, { CLUSTER_NAME: 'copied' }),
      recordingReporter(),
    );
    const manifest = await backupFull(vault, { schedule: 'monthly', databases: ['app'] });
    const elsewhere = `${work.path}/downloaded`;
    mkdirSync(elsewhere);
    const folder = join(`${work.path}/origin`, 'copied/full/monthly');
    for (const f of readdirSync(folder)) copyFileSync(join(folder, f), join(elsewhere, f));
    const db = manifest.objects.find((o) => o.database === 'app')!;
    const other = openVault(testConfig(cluster, `${work.path}/unrelated`), recordingReporter());

    // Act
    const result = await restoreFull(other, join(elsewhere, db.key.split('/').pop()!), {
      database: 'from_copy',
    });

    // Assess
    expect(result.backupId).toBe(manifest.id);
    expect(result.validation.ok).toBe(true);
    expect(await tableContents(cluster, 'from_copy', 'sales.orders')).toBe(original.get('sales.orders'));
  });
});
