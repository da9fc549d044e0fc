import { describe, expect, it } from 'vitest';
import { KNOWN_KEYS, parseConfig } from '../../core/config';
import { restoreCommandConfigText } from '../../core/restore/sandbox';

/**
 * restore_command runs inside a recovering server whose environment is not pgvault's: it sees only the
 * config file pgvault writes for it. Every storage setting a read of the archive needs must be in that
 * file, or a PITR from a repository configured in a config file reads nothing (it once lacked the AWS
 * keys and the S3 timeouts). A new storage setting fails here until it is written or listed below as one
 * a read never needs.
 */
const STORAGE_KEY = /^(CLOUD_|S3_|AWS_|AZURE_|GCS_|GOOGLE_|STORAGE_EMULATOR_)/;

/** Storage settings restore_command never needs, and why. */
const NOT_FOR_READS = new Map<string, string>([
  ['S3_LIFECYCLE_TAGS', 'tags are written, never read'],
  ['S3_OBJECT_LOCK_MODE', 'locks are set on writes'],
  ['S3_OBJECT_LOCK_RETAIN', 'locks are set on writes'],
  ['S3_OBJECT_LOCK_MIN_DAYS', 'locks are set on writes'],
  ['S3_STORAGE_CLASS', 'the storage class is set on writes, a read needs none'],
  ['S3_STORAGE_CLASS_ARCHIVE', 'the storage class is set on writes, a read needs none'],
  ['S3_STORAGE_CLASS_EXPIRE', 'the storage class is set on writes, a read needs none'],
  ['S3_STORAGE_CLASS_REPORT', 'the storage class is set on writes, a read needs none'],
  ['AZURE_ACCESS_TIER', 'the access tier is set on writes, a read needs none'],
  ['AZURE_ACCESS_TIER_ARCHIVE', 'the access tier is set on writes, a read needs none'],
  ['AZURE_ACCESS_TIER_EXPIRE', 'the access tier is set on writes, a read needs none'],
  ['AZURE_ACCESS_TIER_REPORT', 'the access tier is set on writes, a read needs none'],
  ['GCS_STORAGE_CLASS', 'the storage class is set on writes, a read needs none'],
  ['GCS_STORAGE_CLASS_ARCHIVE', 'the storage class is set on writes, a read needs none'],
  ['GCS_STORAGE_CLASS_EXPIRE', 'the storage class is set on writes, a read needs none'],
  ['GCS_STORAGE_CLASS_REPORT', 'the storage class is set on writes, a read needs none'],
  ['AWS_REGION', 'read as AWS_DEFAULT_REGION, which is written'],
  // The SDK's own environment (the server's environment keeps AWS_*, sandboxServerEnv), not pgvault settings.
  ['AWS_EXECUTION_ENV', 'set by AWS for the process'],
  ['AWS_CONFIG_FILE', "the SDK's, from the environment"],
  ['AWS_SHARED_CREDENTIALS_FILE', "the SDK's, from the environment"],
  ['AWS_CA_BUNDLE', "the SDK's, from the environment"],
  ['AWS_ROLE_ARN', "the SDK's, from the environment"],
  ['AWS_ROLE_SESSION_NAME', "the SDK's, from the environment"],
  ['AWS_WEB_IDENTITY_TOKEN_FILE', "the SDK's, from the environment"],
  ['AWS_STS_REGIONAL_ENDPOINTS', "the SDK's, from the environment"],
  ['AWS_MAX_ATTEMPTS', "the SDK's, from the environment"],
  ['AWS_RETRY_MODE', "the SDK's, from the environment"],
  ['AWS_USE_FIPS_ENDPOINT', "the SDK's, from the environment"],
  ['AWS_USE_DUALSTACK_ENDPOINT', "the SDK's, from the environment"],
  ['AWS_EC2_METADATA_DISABLED', "the SDK's, from the environment"],
  ['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED', "the SDK's, from the environment"],
  ['AWS_ENDPOINT_URL', "the SDK's, from the environment"],
  ['AWS_ENDPOINT_URL_*', "the SDK's, from the environment"],
  ['AWS_CONTAINER_*', "the SDK's, from the environment"],
  ['AWS_LAMBDA_*', 'set by Lambda for the process'],
  // DefaultAzureCredential's own environment (the server's environment keeps it), not pgvault settings.
  ['AZURE_CLIENT_ID', "DefaultAzureCredential's, from the environment"],
  ['AZURE_TENANT_ID', "DefaultAzureCredential's, from the environment"],
  ['AZURE_CLIENT_SECRET', "DefaultAzureCredential's, from the environment"],
  ['AZURE_CLIENT_CERTIFICATE_PATH', "DefaultAzureCredential's, from the environment"],
  ['AZURE_FEDERATED_TOKEN_FILE', "DefaultAzureCredential's, from the environment"],
  ['AZURE_AUTHORITY_HOST', "DefaultAzureCredential's, from the environment"],
]);

describe("restore_command's config file", () => {
  const settings: Record<string, string> = {
    BACKUP_DIR: '/var/lib/pgvault',
    CLUSTER_NAME: 'main',
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: 'vault',
    CLOUD_PREFIX: 'pgvault',
    S3_ENDPOINT: 'http://127.0.0.1:9000',
    AWS_DEFAULT_REGION: 'eu-west-1',
    AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE',
    AWS_SECRET_ACCESS_KEY: 'secret-example',
    AWS_SESSION_TOKEN: 'token-example',
    AWS_PROFILE: 'backup',
    S3_REQUEST_TIMEOUT: '17',
    S3_MAX_ATTEMPTS: '4',
  };
  const text = restoreCommandConfigText(parseConfig(settings), undefined);
  const written = new Set(
    text
      .split('\n')
      .filter((l) => /^[A-Z0-9_]+=/.test(l))
      .map((l) => l.slice(0, l.indexOf('='))),
  );

  it('writes every storage setting a read of the archive needs', () => {
    // Each way to sign in to Azure, one at a time (they exclude each other).
    const azureBase = { BACKUP_DIR: '/b', CLUSTER_NAME: 'main', CLOUD_PROVIDER: 'azure', CLOUD_BUCKET: 'c' };
    const azureLogins = [
      { AZURE_STORAGE_ACCOUNT: 'acct1', AZURE_STORAGE_KEY: 'a2V5' },
      { AZURE_STORAGE_ACCOUNT: 'acct1', AZURE_STORAGE_SAS_TOKEN: 'sv=1&sig=x' },
      {
        AZURE_STORAGE_CONNECTION_STRING:
          'AccountName=acct1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/acct1',
      },
    ];
    const gcs = {
      BACKUP_DIR: '/b',
      CLUSTER_NAME: 'main',
      CLOUD_PROVIDER: 'gcs',
      CLOUD_BUCKET: 'b',
      STORAGE_EMULATOR_HOST: 'http://127.0.0.1:4443',
      GOOGLE_APPLICATION_CREDENTIALS: '/etc/pgvault/gcs-key.json',
      GOOGLE_CLOUD_PROJECT: 'proj',
    };
    const all = new Set(written);
    for (const line of restoreCommandConfigText(parseConfig(gcs), undefined).split('\n')) {
      if (/^[A-Z0-9_]+=/.test(line)) all.add(line.slice(0, line.indexOf('=')));
    }
    for (const login of azureLogins) {
      for (const line of restoreCommandConfigText(parseConfig({ ...azureBase, ...login }), undefined).split(
        '\n',
      )) {
        if (/^[A-Z0-9_]+=/.test(line)) all.add(line.slice(0, line.indexOf('=')));
      }
    }
    const needed = KNOWN_KEYS.filter((k) => STORAGE_KEY.test(k) && !NOT_FOR_READS.has(k));
    expect(needed.filter((k) => !all.has(k))).toEqual([]);
  });

  it('writes the Azure account and its one way to sign in', () => {
    const azure = {
      BACKUP_DIR: '/var/lib/pgvault',
      CLUSTER_NAME: 'main',
      CLOUD_PROVIDER: 'azure',
      CLOUD_BUCKET: 'backups',
      AZURE_STORAGE_ACCOUNT: 'pgvaultstore',
      AZURE_STORAGE_SAS_TOKEN: 'sv=2024-01-01&sig=example',
    };
    const file = restoreCommandConfigText(parseConfig(azure), undefined);
    const reread = parseConfig(
      Object.fromEntries(
        file
          .split('\n')
          .filter((l) => /^[A-Z0-9_]+=/.test(l))
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 2, -1)]),
      ),
    );
    expect(reread.cloud.azure).toEqual(parseConfig(azure).cloud.azure);
    expect(written.size).toBeGreaterThan(0);
  });

  it("writes GCS's endpoint and key file path, so the file reads back to the same GCS settings, and never a key", () => {
    const gcs = {
      BACKUP_DIR: '/var/lib/pgvault',
      CLUSTER_NAME: 'main',
      CLOUD_PROVIDER: 'gcs',
      CLOUD_BUCKET: 'backups',
      STORAGE_EMULATOR_HOST: 'http://127.0.0.1:4443',
      GOOGLE_APPLICATION_CREDENTIALS: '/etc/pgvault/gcs-key.json',
      GCS_STORAGE_CLASS_ARCHIVE: 'ARCHIVE',
      OBJECT_LOCK_MODE: 'compliance',
    };
    const file = restoreCommandConfigText(parseConfig(gcs), undefined);
    const reread = parseConfig(
      Object.fromEntries(
        file
          .split('\n')
          .filter((l) => /^[A-Z0-9_]+=/.test(l))
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 2, -1)]),
      ),
    );
    expect(file).toContain("STORAGE_EMULATOR_HOST='http://127.0.0.1:4443'");
    expect(file).toContain("GOOGLE_APPLICATION_CREDENTIALS='/etc/pgvault/gcs-key.json'");
    expect(reread.cloud.gcs?.endpoint).toBe('http://127.0.0.1:4443');
    expect(reread.cloud.gcs?.keyFile).toBe('/etc/pgvault/gcs-key.json');
    expect(file).not.toMatch(/PRIVATE KEY|private_key/);
  });

  it('writes the values as configured, so the file reads back to the same storage settings', () => {
    for (const [key, value] of Object.entries(settings)) {
      if (written.has(key)) expect(text).toContain(`${key}='${value}'`);
    }
    const reread = parseConfig(
      Object.fromEntries(
        text
          .split('\n')
          .filter((l) => /^[A-Z0-9_]+=/.test(l))
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 2, -1)]),
      ),
    );
    expect(reread.cloud).toEqual(parseConfig(settings).cloud);
  });
});

describe("restore_command's config file with several repositories (REPO<n>_*)", () => {
  const settings: Record<string, string> = {
    CLUSTER_NAME: 'main',
    AWS_DEFAULT_REGION: 'eu-west-1',
    REPO1_TYPE: 'file',
    REPO1_PATH: '/var/backups/postgresql',
    REPO1_HOLDS: 'full:daily,wal,config,indexes,reports',
    REPO1_RETENTION_DAYS: '3',
    REPO2_TYPE: 's3',
    REPO2_BUCKET: 'vault',
    REPO2_PREFIX: 'pg',
    REPO2_REGION: 'us-west-2',
    REPO2_S3_ENDPOINT: 'http://127.0.0.1:9000',
    REPO2_S3_STORAGE_CLASS_ARCHIVE: 'GLACIER',
    REPO3_TYPE: 'azure',
    REPO3_BUCKET: 'backups',
    REPO3_AZURE_STORAGE_ACCOUNT: 'pgvaultstore',
  };
  const text = restoreCommandConfigText(parseConfig(settings), undefined);
  const values = Object.fromEntries(
    text
      .split('\n')
      .filter((l) => /^[A-Z0-9_]+=/.test(l))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 2, -1)]),
  );

  it('reads back to the same repositories, in the same order, each with its own storage settings', () => {
    // Act
    const reread = parseConfig(values);
    const original = parseConfig(settings);

    // Assess
    expect(reread.repositories?.map((r) => [r.n, r.type, r.holds.join(',')])).toEqual(
      original.repositories?.map((r) => [r.n, r.type, r.holds.join(',')]),
    );
    for (const [i, repo] of (original.repositories ?? []).entries()) {
      const again = reread.repositories![i]!.config;
      expect(again.backupDir).toBe(repo.config.backupDir);
      expect({ ...again.cloud, storageClass: undefined, accessTier: undefined }).toEqual({
        ...repo.config.cloud,
        storageClass: undefined,
        accessTier: undefined,
      });
    }
    expect(values.REPO2_AWS_DEFAULT_REGION).toBe('us-west-2');
    expect(values.REPO2_S3_ENDPOINT).toBe('http://127.0.0.1:9000');
  });

  it('writes no single-target key beside them, and nothing the reads never need', () => {
    for (const key of ['CLOUD_PROVIDER', 'CLOUD_BUCKET', 'CLOUD_PREFIX', 'LOCAL_COPY']) {
      expect(Object.keys(values)).not.toContain(key);
    }
    expect(Object.keys(values).filter((k) => /RETENTION|STORAGE_CLASS/.test(k))).toEqual([]);
  });
});
