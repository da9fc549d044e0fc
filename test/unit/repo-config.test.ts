import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig, repositoryHolds } from '../../core/config';
import { createTargets, repositoryOf, targetsHolding } from '../../core/storage';

/**
 * Issue 14, "Repositories": several targets at once (REPO<n>_* keys, pgBackRest's style), each with
 * its own placement (REPO<n>_HOLDS) and retention, read through the single-target readers.
 */

/** The guide's storage table (backup-and-restore-guide.md, "Backup Types"), as README gives it. */
const GUIDE_TABLE = {
  RETENTION_CONFIG_COUNT: '10',
  RETENTION_WAL_DAYS: '7',
  REPO1_TYPE: 'file',
  REPO1_PATH: '/var/backups/postgresql',
  REPO1_HOLDS: 'full:daily,full:manual,wal,config,indexes,reports',
  REPO1_RETENTION_DAYS: '7',
  REPO1_RETENTION_INDEXES_COUNT: '5',
  REPO2_TYPE: 's3',
  REPO2_BUCKET: 'company-backups',
  REPO2_PREFIX: 'postgresql',
  REPO2_REGION: 'eu-west-1',
  REPO2_HOLDS: 'full,wal,config,reports',
  REPO2_RETENTION_DAYS: '7',
  REPO2_RETENTION_WEEKS: '4',
  REPO2_RETENTION_MONTHS: '6',
};

describe('REPO<n>_* keys', () => {
  it("README's Repositories example is the guide's table tested here", () => {
    // Prepare
    const readme = readFileSync(join(__dirname, '../../README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Repositories'));
    const block = section.slice(
      section.indexOf('```') + 4,
      section.indexOf('```', section.indexOf('```') + 3),
    );

    // Act
    const keys = Object.fromEntries(
      block
        .split('\n')
        .filter((l) => /^[A-Z0-9_]+=/.test(l))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );

    // Assess
    expect(keys).toEqual(GUIDE_TABLE);
  });

  it("express the guide's storage table as it stands", () => {
    // Act
    const config = parseConfig(GUIDE_TABLE);
    const targets = createTargets(config);

    // Assess
    expect(config.repositories?.map((r) => [r.n, r.type])).toEqual([
      [1, 'file'],
      [2, 's3'],
    ]);
    expect(targets.map((t) => t.location)).toEqual([
      'file:///var/backups/postgresql',
      's3://company-backups/postgresql',
    ]);
    const where = (kind: Parameters<typeof targetsHolding>[1], schedule?: string) =>
      targetsHolding(targets, kind, schedule).map((t) => repositoryOf(t)?.n);
    // Full daily: Local + Cloud; weekly and monthly: Cloud; WAL and config: both; indexes: Local.
    expect(where('full', 'daily')).toEqual([1, 2]);
    expect(where('full', 'weekly')).toEqual([2]);
    expect(where('full', 'monthly')).toEqual([2]);
    expect(where('wal')).toEqual([1, 2]);
    expect(where('config')).toEqual([1, 2]);
    expect(where('indexes')).toEqual([1]);
    // Each its own retention; shared keys (config 10, WAL 7 days) apply to both.
    const [local, cloud] = config.repositories!;
    expect(local!.config.retention).toMatchObject({ days: 7, configCount: 10, indexesCount: 5, walDays: 7 });
    expect(cloud!.config.retention).toMatchObject({
      days: 7,
      weeks: 4,
      months: 6,
      configCount: 10,
      walDays: 7,
    });
    expect(cloud!.config.cloud).toMatchObject({
      provider: 's3',
      bucket: 'company-backups',
      region: 'eu-west-1',
    });
    // BACKUP_DIR follows the first file repository.
    expect(config.backupDir).toBe('/var/backups/postgresql');
  });

  it('take a per-repository key over the shared one, in gaps and in number order', () => {
    // Act
    const config = parseConfig({
      AWS_DEFAULT_REGION: 'us-east-2',
      S3_ENDPOINT: 'http://127.0.0.1:9000',
      REPO7_TYPE: 's3',
      REPO7_BUCKET: 'b7',
      REPO7_S3_ENDPOINT: 'http://127.0.0.1:9007',
      REPO3_TYPE: 'file',
      REPO3_PATH: '/srv/three',
    });

    // Assess
    expect(config.repositories?.map((r) => r.n)).toEqual([3, 7]);
    const seven = config.repositories![1]!.config.cloud;
    expect(seven.s3Endpoint).toBe('http://127.0.0.1:9007');
    expect(seven.region).toBe('us-east-2');
    expect(config.repositories![0]!.holds).toEqual(['full', 'base', 'wal', 'config', 'indexes', 'reports']);
  });

  it("take the AWS deployment's second repository as it emits it (REPO2_SECRET_ARN, GCS credentials per repository)", () => {
    // Act
    const config = parseConfig({
      REPO1_TYPE: 's3',
      REPO1_BUCKET: 'stack-bucket',
      REPO2_TYPE: 'azure',
      REPO2_BUCKET: 'offsite',
      REPO2_SECRET_ARN: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:repo2-AbCdEf',
      REPO2_AZURE_STORAGE_CONNECTION_STRING:
        'AccountName=a;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/a',
      REPO3_TYPE: 'gcs',
      REPO3_BUCKET: 'offsite-gcs',
      REPO3_GOOGLE_APPLICATION_CREDENTIALS: '/run/pgvault/repo3-gcs-key.json',
    });

    // Assess
    expect(config.repositories?.map((r) => [r.n, r.type, r.config.cloud.bucket])).toEqual([
      [1, 's3', 'stack-bucket'],
      [2, 'azure', 'offsite'],
      [3, 'gcs', 'offsite-gcs'],
    ]);
    expect(config.repositories![1]!.config.cloud.azure?.connectionString).toContain('AccountName=a');
  });

  it('leave the single-target keys meaning what they meant', () => {
    // Act
    const config = parseConfig({ BACKUP_DIR: '/b', CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'x' });

    // Assess
    expect(config.repositories).toBeUndefined();
    expect(createTargets(config).map((t) => t.location)).toEqual(['file:///b', 's3://x']);
    expect(repositoryHolds(['full:daily'], 'full', 'weekly')).toBe(false);
  });

  it.each([
    [
      { REPO1_TYPE: 'file', REPO1_PATH: '/a', REPO1_COLOUR: 'x' },
      /^REPO1_COLOUR is not a repository setting; use REPO1_TYPE/,
    ],
    [
      { REPO1_TYPE: 'file', REPO1_PATH: '/a', REPO1_LOCAL_COPY: 'false' },
      /^REPO1_LOCAL_COPY is not a repository setting/,
    ],
    [{ REPO2_TYPE: 's3' }, /^REPO2_TYPE=s3 needs REPO2_BUCKET; set it to the bucket name$/],
    [{ REPO2_TYPE: 'azure' }, /^REPO2_TYPE=azure needs REPO2_BUCKET; set it to the container name$/],
    [{ REPO1_TYPE: 'file' }, /^REPO1_TYPE=file needs REPO1_PATH/],
    [
      { REPO1_PATH: '/a' },
      /^REPO1_TYPE is missing \(REPO1_PATH is set\); set REPO1_TYPE to file, s3, azure or gcs$/,
    ],
    [{ REPO1_TYPE: 'ftp', REPO1_PATH: '/a' }, /^REPO1_TYPE=ftp is not allowed; use file, s3, azure or gcs$/],
    [{ REPO0_TYPE: 'file' }, /^REPO0_TYPE: repositories are numbered 1 to 9/],
    [{ REPO10_TYPE: 'file' }, /^REPO10_TYPE: repositories are numbered 1 to 9/],
    [
      { REPO1_TYPE: 'file', REPO1_PATH: '/a', REPO1_HOLDS: 'full,logs' },
      /^REPO1_HOLDS: logs is not a kind; use a comma list of full, base, wal/,
    ],
    [
      { REPO1_TYPE: 'file', REPO1_PATH: '/a', REPO1_HOLDS: 'wal:daily' },
      /^REPO1_HOLDS: wal:daily is not a kind/,
    ],
    [
      { REPO1_TYPE: 'file', REPO1_PATH: '/a', REPO1_HOLDS: 'full:hourly' },
      /^REPO1_HOLDS: full:hourly is not a kind/,
    ],
    [{ REPO1_TYPE: 'file', REPO1_PATH: '/a', REPO1_HOLDS: ' , ' }, /^REPO1_HOLDS is empty/],
    [
      { REPO1_TYPE: 's3', REPO1_BUCKET: 'b', REPO1_PATH: '/a' },
      /^REPO1_PATH is for REPO1_TYPE=file; use REPO1_PREFIX/,
    ],
    [{ REPO1_TYPE: 'file', REPO1_PATH: '/a', REPO1_BUCKET: 'b' }, /^REPO1_BUCKET is for a cloud repository/],
    [{ REPO1_TYPE: 'file', REPO1_PATH: 'relative' }, /^repository 1 \(REPO1_\*\): BACKUP_DIR/],
    [
      { REPO1_TYPE: 'file', REPO1_PATH: '/a', REPO1_RETENTION_DAYS: 'many' },
      /^repository 1 \(REPO1_\*\): RETENTION_DAYS/,
    ],
    [
      { CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'b', REPO1_TYPE: 'file', REPO1_PATH: '/a' },
      /^CLOUD_PROVIDER is set beside REPO<n>_\* keys; use one form: remove CLOUD_PROVIDER and describe every target as a repository/,
    ],
    [
      { LOCAL_COPY: 'false', REPO1_TYPE: 'file', REPO1_PATH: '/a' },
      /^LOCAL_COPY is set beside REPO<n>_\* keys/,
    ],
  ])('refuse %o with one line', (raw, message) => {
    // Act
    const attempt = () => parseConfig(raw as Record<string, string>);

    // Assess
    expect(attempt).toThrow(message);
    try {
      attempt();
    } catch (err) {
      expect((err as Error).message).not.toContain('\n');
      expect((err as { exitCode?: number }).exitCode).toBe(2);
    }
  });
});
