import { readdirSync, statfsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evaluateThresholds } from '../../core/alert/thresholds';
import { parseConfig } from '../../core/config';
import { collectReport, writeReport } from '../../core/report/collect';
import { S3Target } from '../../core/storage/s3';
import { openVault, type Vault } from '../../core/vault';
import { verifyCapacity } from '../../core/verify/capacity';
import { verifySizes } from '../../core/verify/sizes';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { recordingReporter, tempDir } from '../helpers/vault';
import { DAY, storeHistory } from './report-fixture';

/** verify sizes and verify capacity on a real catalog: a file target, and S3 (s3rver) with a quota. */
let work: Awaited<ReturnType<typeof tempDir>>;
let s3: S3TestServer;
const NOW = new Date();

function vaultAt(extra: Record<string, string>): Vault {
  return openVault(parseConfig({ CLUSTER_NAME: 'main', ...extra }), recordingReporter());
}

/** Bytes and newest-week bytes of every file under a folder, as the capacity check should find. */
function walk(dir: string): { bytes: number; recent: number; files: number } {
  let bytes = 0;
  let recent = 0;
  let files = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      const sub = walk(p);
      bytes += sub.bytes;
      recent += sub.recent;
      files += sub.files;
    } else {
      const st = statSync(p);
      bytes += st.size;
      files++;
      if (st.mtimeMs > NOW.getTime() - 7 * DAY) recent += st.size;
    }
  }
  return { bytes, recent, files };
}

beforeAll(async () => {
  [work, s3] = await Promise.all([tempDir('pgvault-capacity-'), startS3Server('pgvault-capacity')]);
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
  });
});

afterAll(async () => {
  await Promise.all([work?.remove(), s3?.stop()]);
});

describe('verify sizes and capacity on a file target', () => {
  it('measures the disk with statfs, the cluster objects, the write rate, and the days until full', async () => {
    // Prepare: 14 nights of backups, the files dated as they were written.
    const dir = join(work.path, 'file');
    const vault = vaultAt({ BACKUP_DIR: dir });
    await storeHistory(vault.targets, 'main', NOW, { days: 14 });

    // Act
    const report = await verifyCapacity(vault, NOW);
    const disk = statfsSync(dir);

    // Assess
    const expected = walk(join(dir, 'main'));
    const [t] = report.targets;
    expect(report.targets).toHaveLength(1);
    expect(t).toMatchObject({
      location: `file://${dir}`,
      basis: 'disk',
      usedBytes: expected.bytes,
      objects: expected.files,
      windowDays: 7,
      limitBytes: disk.blocks * disk.bsize,
    });
    expect(t!.writtenBytesPerDay).toBeCloseTo(expected.recent / 7, 3);
    // The disk is shared with the running system: its numbers move a little between two statfs calls.
    const dfPercent = (100 * (disk.blocks - disk.bfree)) / (disk.blocks - disk.bfree + disk.bavail);
    expect(Math.abs(t!.percent! - dfPercent)).toBeLessThan(1);
    expect(t!.daysUntilFull).toBeCloseTo(t!.freeBytes! / t!.writtenBytesPerDay, 0);
    expect(report.ok).toBe(t!.percent! < 80);
  });

  it('flags the sudden shrink of one database and not the others', async () => {
    // Prepare
    const dir = join(work.path, 'shrink');
    const vault = vaultAt({ BACKUP_DIR: dir, ALERT_CAPACITY_PERCENT: '100' });
    await storeHistory(vault.targets, 'main', NOW, { days: 5, shrinkLast: true });

    // Act
    const sizes = await verifySizes(vault);
    const alerts = await evaluateThresholds(vault, NOW);

    // Assess
    expect(sizes.series.map((s) => [s.key, s.points.length])).toEqual([
      ['config', 5],
      ['full/app', 5],
      ['full/crm', 5],
    ]);
    expect(sizes.suspects).toHaveLength(1);
    expect(sizes.suspects[0]).toMatchObject({
      series: 'full/app',
      bytes: 2_000_000,
      previousBytes: 8_400_000,
    });
    expect(sizes.series.find((s) => s.key === 'full/app')!.points.at(-1)!.suspect).toBe(true);
    expect(alerts.map((a) => a.kind)).toEqual(['size-shrink']);
  });
});

describe('verify capacity on S3 (s3rver)', () => {
  const s3Config = () => ({
    BACKUP_DIR: join(work.path, 'unused-local'),
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    CLOUD_PREFIX: 'pg',
    S3_ENDPOINT: s3.endpoint,
    LOCAL_COPY: 'false',
  });

  it('measures the bucket against STORAGE_QUOTA_GB and alerts over ALERT_CAPACITY_PERCENT', async () => {
    // Prepare: ~8.4 MB stored against a 9 MiB quota.
    const vault = vaultAt({ ...s3Config(), STORAGE_QUOTA_GB: String(9 / 1024) });
    await storeHistory(vault.targets, 'main', NOW, { days: 3 });
    const bucket = new S3Target({
      bucket: s3.bucket,
      prefix: 'pg',
      region: s3.region,
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
    let listed = 0;
    for await (const o of bucket.list('main/')) listed += o.size;

    // Act
    const report = await verifyCapacity(vault, NOW);
    const alerts = await evaluateThresholds(vault, NOW);

    // Assess: every object was written now (S3 keeps its own times), so the window is one day.
    const [t] = report.targets;
    expect(t).toMatchObject({
      location: `s3://${s3.bucket}/pg`,
      kind: 's3',
      basis: 'quota',
      usedBytes: listed,
      limitBytes: 9 * 2 ** 20,
      freeBytes: 9 * 2 ** 20 - listed,
      windowDays: 1,
      writtenBytesPerDay: listed,
    });
    expect(t!.percent).toBeCloseTo((100 * listed) / (9 * 2 ** 20), 0);
    expect(t!.percent).toBeGreaterThan(80);
    expect(report.ok).toBe(false);
    expect(alerts.map((a) => a.kind)).toEqual(['capacity']);
    expect(alerts[0]!.what).toContain(`s3://${s3.bucket}/pg is `);
    expect(alerts[0]!.what).toContain('of STORAGE_QUOTA_GB; ALERT_CAPACITY_PERCENT 80%');
  });

  it('gives no percentage without a quota, and stores the report under {cluster}/reports/ in the bucket', async () => {
    // Prepare
    const vault = vaultAt({ ...s3Config(), CLOUD_PREFIX: 'noquota' });
    await storeHistory(vault.targets, 'main', NOW, { days: 2 });

    // Act
    const report = await verifyCapacity(vault, NOW);
    const { data } = await collectReport(vault, NOW);
    const stored = await writeReport(vault, data);

    // Assess
    expect(report.targets[0]).toMatchObject({ basis: 'none' });
    expect(report.targets[0]!.percent).toBeUndefined();
    expect(report.ok).toBe(true);
    expect(stored[0]!.html).toMatch(
      new RegExp(`^s3://${s3.bucket}/noquota/main/reports/report-\\d{8}-\\d{6}-[0-9a-f]{8}\\.html$`),
    );
    const keys: string[] = [];
    for await (const o of vault.targets[0]!.list('main/reports/')) keys.push(o.key);
    expect(keys.map((k) => k.replace(/\d{8}-\d{6}-[0-9a-f]{8}/, 'TS'))).toEqual([
      'main/reports/report-TS.html',
      'main/reports/report-TS.json',
      'main/reports/report-TS.md',
    ]);
  });
});
