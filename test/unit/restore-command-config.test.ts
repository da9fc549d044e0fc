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
const STORAGE_KEY = /^(CLOUD_|S3_|AWS_|AZURE_|GCS_|GOOGLE_)/;

/** Storage settings restore_command never needs, and why. */
const NOT_FOR_READS = new Map<string, string>([
  ['S3_LIFECYCLE_TAGS', 'tags are written, never read'],
  ['S3_OBJECT_LOCK_MODE', 'locks are set on writes'],
  ['S3_OBJECT_LOCK_RETAIN', 'locks are set on writes'],
  ['S3_OBJECT_LOCK_MIN_DAYS', 'locks are set on writes'],
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
    const needed = KNOWN_KEYS.filter((k) => STORAGE_KEY.test(k) && !NOT_FOR_READS.has(k));
    expect(needed.filter((k) => !written.has(k))).toEqual([]);
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
