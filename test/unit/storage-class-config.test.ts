import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { ConfigError } from '../../core/errors';
import { placementFor } from '../../core/storage';

const S3 = { BACKUP_DIR: '/var/lib/pgvault', CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'backups' };

function refusal(raw: Record<string, string>): string {
  try {
    parseConfig(raw);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const message = (err as Error).message;
    expect(message.split('\n')).toHaveLength(1);
    return message;
  }
  throw new Error('the config was accepted');
}

describe('S3_STORAGE_CLASS and AZURE_ACCESS_TIER: one per lifecycle kind', () => {
  it('reads the classes case-insensitively, the kinds set and no others', () => {
    const config = parseConfig({
      ...S3,
      S3_STORAGE_CLASS: 'intelligent_tiering',
      S3_STORAGE_CLASS_ARCHIVE: 'deep_archive',
      S3_STORAGE_CLASS_EXPIRE: 'STANDARD_IA',
    });
    expect(config.cloud.storageClass).toEqual({
      default: 'INTELLIGENT_TIERING',
      archive: 'DEEP_ARCHIVE',
      expire: 'STANDARD_IA',
    });
    expect(parseConfig(S3).cloud.storageClass).toBeUndefined();
    expect(parseConfig({ ...S3, AZURE_ACCESS_TIER_ARCHIVE: 'archive' }).cloud.accessTier).toEqual({
      archive: 'Archive',
    });
  });

  it('refuses an unknown class in one line that lists the valid ones', () => {
    expect(refusal({ ...S3, S3_STORAGE_CLASS_ARCHIVE: 'GLACIR' })).toBe(
      'S3_STORAGE_CLASS_ARCHIVE=GLACIR is not allowed; use one of STANDARD, INTELLIGENT_TIERING, STANDARD_IA, ONEZONE_IA, GLACIER_IR, GLACIER, DEEP_ARCHIVE',
    );
    expect(refusal({ ...S3, AZURE_ACCESS_TIER: 'Premium' })).toBe(
      'AZURE_ACCESS_TIER=Premium is not allowed; use one of Hot, Cool, Cold, Archive',
    );
  });

  it('refuses a class that cannot be read at once for WAL, manifests and reports', () => {
    expect(refusal({ ...S3, S3_STORAGE_CLASS_EXPIRE: 'glacier' })).toMatch(
      /^S3_STORAGE_CLASS_EXPIRE=GLACIER is not allowed: it covers WAL segments, .*; use one of STANDARD, INTELLIGENT_TIERING, STANDARD_IA, ONEZONE_IA, GLACIER_IR \(only S3_STORAGE_CLASS_ARCHIVE may be GLACIER or DEEP_ARCHIVE\)$/,
    );
    expect(refusal({ ...S3, S3_STORAGE_CLASS: 'DEEP_ARCHIVE' })).toMatch(
      /covers manifests and catalog objects/,
    );
    expect(refusal({ ...S3, S3_STORAGE_CLASS_REPORT: 'GLACIER' })).toMatch(/covers reports/);
    expect(refusal({ ...S3, AZURE_ACCESS_TIER: 'archive' })).toMatch(
      /^AZURE_ACCESS_TIER=Archive is not allowed: .*; use one of Hot, Cool, Cold \(only AZURE_ACCESS_TIER_ARCHIVE may be Archive\)$/,
    );
    expect(refusal({ ...S3, AZURE_ACCESS_TIER_EXPIRE: 'Archive' })).toMatch(/WAL segments/);
  });
});

describe('a class for the other provider', () => {
  it('is named in a warning instead of being ignored silently', () => {
    const config = parseConfig({ ...S3, AZURE_ACCESS_TIER_ARCHIVE: 'Cool', S3_STORAGE_CLASS: 'STANDARD_IA' });
    expect(config.warnings).toContain(
      'AZURE_ACCESS_TIER_ARCHIVE applies only to CLOUD_PROVIDER=azure and has no effect with CLOUD_PROVIDER=s3; remove it or set S3_STORAGE_CLASS instead',
    );
    expect(config.warnings.filter((w) => w.includes('S3_STORAGE_CLASS applies'))).toEqual([]);
  });
});

describe('placementFor: the setting of an object by its key', () => {
  const classes = { default: 'STANDARD', archive: 'GLACIER', expire: 'STANDARD_IA' } as const;
  it.each([
    ['main/full/weekly/full-weekly-20260101-000000.app.dump.zst', 'GLACIER'],
    ['main/base/monthly/base-monthly-20260101-000000.tar.zst', 'GLACIER'],
    ['main/full/weekly/full-weekly-20260101-000000.manifest.json', 'STANDARD'],
    // An incremental of this weekly full reads its server manifest: never in the archive class.
    ['main/base/weekly/base-weekly-20260101-000000.server-manifest.json.zst.enc', 'STANDARD'],
    ['main/base/weekly/base-weekly-20260101-000000.server-manifest.json', 'STANDARD'],
    ['main/full/daily/full-daily-20260101-000000.app.dump.zst', 'STANDARD_IA'],
    ['main/wal/0000000100000000/000000010000000000000001.zst', 'STANDARD_IA'],
    ['main/wal/archive.json', 'STANDARD'],
    ['main/reports/2026-01.json', 'STANDARD'],
    ['main/manual/x.dump', 'STANDARD'],
  ])('%s: %s', (key, expected) => {
    expect(placementFor(key, classes)).toBe(expected);
  });

  it('is undefined (nothing sent) when nothing is configured', () => {
    expect(placementFor('main/full/weekly/x.dump', undefined)).toBeUndefined();
    expect(placementFor('main/full/weekly/x.dump', { expire: 'Cool' })).toBeUndefined();
  });
});

describe('GCS_STORAGE_CLASS, object retention and the GCS keys (CLOUD_PROVIDER=gcs)', () => {
  const GCS = { BACKUP_DIR: '/var/lib/pgvault', CLOUD_PROVIDER: 'gcs', CLOUD_BUCKET: 'backups' };

  it('reads a class per kind, ARCHIVE for any kind (GCS reads every class at once)', () => {
    const config = parseConfig({
      ...GCS,
      GCS_STORAGE_CLASS: 'nearline',
      GCS_STORAGE_CLASS_ARCHIVE: 'ARCHIVE',
      GCS_STORAGE_CLASS_EXPIRE: 'coldline',
    });
    expect(config.cloud.gcs?.storageClass).toEqual({
      default: 'NEARLINE',
      archive: 'ARCHIVE',
      expire: 'COLDLINE',
    });
    expect(config.warnings).toEqual([]);
  });

  it('refuses a class GCS does not have and a relative key file, in one line each', () => {
    expect(refusal({ ...GCS, GCS_STORAGE_CLASS: 'STANDARD_IA' })).toBe(
      'GCS_STORAGE_CLASS=STANDARD_IA is not allowed; use one of STANDARD, NEARLINE, COLDLINE, ARCHIVE',
    );
    expect(refusal({ ...GCS, GOOGLE_APPLICATION_CREDENTIALS: 'key.json' })).toMatch(
      /^GOOGLE_APPLICATION_CREDENTIALS=key\.json is a relative path; use the key file's absolute path/,
    );
  });

  it('warns of a GCS class with another provider, and of an S3 class with gcs', () => {
    const s3 = parseConfig({ ...S3, GCS_STORAGE_CLASS: 'NEARLINE' });
    const gcs = parseConfig({ ...GCS, S3_STORAGE_CLASS: 'STANDARD_IA' });
    expect(s3.warnings).toContain(
      'GCS_STORAGE_CLASS applies only to CLOUD_PROVIDER=gcs and has no effect with CLOUD_PROVIDER=s3; remove it or set S3_STORAGE_CLASS instead',
    );
    expect(gcs.warnings).toContain(
      'S3_STORAGE_CLASS applies only to CLOUD_PROVIDER=s3 and has no effect with CLOUD_PROVIDER=gcs; remove it or set GCS_STORAGE_CLASS instead',
    );
  });
});
