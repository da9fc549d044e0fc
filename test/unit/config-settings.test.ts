import { mkdirSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../core/config';
import { ConfigError } from '../../core/errors';
import { AzureTarget, createTargets, FileTarget, S3Target } from '../../core/storage';
import { tempDir } from '../helpers/vault';

/**
 * Issue 11: every setting of the guide does something, or is refused with one line. Each case is a
 * value a user types into the .env; the assertion is the line they read or the value pgvault uses.
 */
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  work = await tempDir('pgvault-config-settings-');
});

afterAll(async () => {
  await work?.remove();
});

function refusal(raw: Record<string, string>, cwd = '/'): ConfigError {
  try {
    parseConfig({ BACKUP_DIR: '/var/backups/postgresql', ...raw }, [], cwd);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).exitCode).toBe(2);
    expect((err as Error).message).not.toContain('\n');
    return err as ConfigError;
  }
  throw new Error(`${JSON.stringify(raw)} was accepted`);
}

describe('email notifications', () => {
  it('refuses EMAIL_NOTIFICATIONS=true with no way to send mail', () => {
    // Act
    const err = refusal({ EMAIL_NOTIFICATIONS: 'true', EMAIL_TO: 'admin@example.com' });

    // Assess
    expect(err.message).toBe(
      'EMAIL_NOTIFICATIONS=true but there is no way to send mail; set SMTP_URL (smtp://user:password@host:587) or SNS_TOPIC_ARN, or set EMAIL_NOTIFICATIONS=false',
    );
  });

  it('mails EMAIL_TO through SMTP_URL, from pgvault@<host> unless EMAIL_FROM says otherwise', () => {
    // Act
    const plain = parseConfig({
      BACKUP_DIR: '/b',
      EMAIL_NOTIFICATIONS: 'true',
      EMAIL_TO: 'admin@example.com, dba@example.com',
      SMTP_URL: 'smtp://alerts:s3cret@mail.example.com:587',
    }).alerts;
    const from = parseConfig({
      BACKUP_DIR: '/b',
      EMAIL_TO: 'admin@example.com',
      SMTP_URL: 'smtps://mail.example.com',
      EMAIL_FROM: 'pgvault <backups@example.com>',
    }).alerts;
    const off = parseConfig({
      BACKUP_DIR: '/b',
      EMAIL_NOTIFICATIONS: 'false',
      EMAIL_TO: 'admin@example.com',
      SMTP_URL: 'smtp://mail.example.com',
    }).alerts;
    const viaSns = parseConfig({
      BACKUP_DIR: '/b',
      EMAIL_NOTIFICATIONS: 'true',
      EMAIL_TO: 'admin@example.com',
      SNS_TOPIC_ARN: 'arn:aws:sns:eu-west-1:123456789012:pgvault-alerts',
    }).alerts;

    // Assess
    expect(plain.smtp).toEqual({
      url: 'smtp://alerts:s3cret@mail.example.com:587',
      from: `pgvault@${hostname()}`,
      to: ['admin@example.com', 'dba@example.com'],
    });
    expect(from.smtp?.from).toBe('pgvault <backups@example.com>');
    expect(off.smtp).toBeUndefined();
    expect(viaSns.smtp).toBeUndefined();
  });

  it.each([
    [
      { SMTP_URL: 'smtp://alerts:s3cret@mail.example.com' },
      'SMTP_URL is set but EMAIL_TO is empty; set EMAIL_TO to the addresses that get alerts',
    ],
    [
      { SMTP_URL: 'mail.example.com:s3cret', EMAIL_TO: 'a@example.com' },
      'SMTP_URL is not a valid smtp:// or smtps:// URL; use smtp://user:password@mail.example.com:587 (or smtps:// for port 465)',
    ],
    [
      { SMTP_URL: 'smtp://mail.example.com', EMAIL_TO: 'a@example.com', EMAIL_FROM: 'pgvault' },
      'EMAIL_FROM=pgvault is not allowed; use an address like pgvault@db1.example.com or "pgvault <pgvault@db1.example.com>"',
    ],
    [
      { ALERT_WEBHOOK_URL: 'hooks.slack.com/services/T0/B0/s3cret' },
      'ALERT_WEBHOOK_URL is not a valid http:// or https:// URL; use the URL your chat or paging service gave you',
    ],
    [{ EMAIL_NOTIFICATIONS: 'maybe' }, 'EMAIL_NOTIFICATIONS=maybe is not allowed; use true or false'],
  ])('refuses %j with one line that does not echo the URL', (raw, message) => {
    // Act
    const err = refusal(raw);

    // Assess
    expect(err.message).toBe(message);
    expect(err.message).not.toContain('s3cret');
  });

  it('reads ALERT_WEBHOOK_URL and ALERT_COMMAND', () => {
    // Act
    const alerts = parseConfig({
      BACKUP_DIR: '/b',
      ALERT_WEBHOOK_URL: 'https://hooks.slack.com/services/T0/B0/xyz',
      ALERT_COMMAND: 'logger -t pgvault',
    }).alerts;

    // Assess
    expect(alerts.webhookUrl).toBe('https://hooks.slack.com/services/T0/B0/xyz');
    expect(alerts.command).toBe('logger -t pgvault');
  });
});

describe('WAL_ARCHIVE_DIR', () => {
  it('is where WAL goes: BACKUP_DIR/CLUSTER_NAME/wal; the guide value and that place are accepted', () => {
    // Act
    const unset = parseConfig({ BACKUP_DIR: '/var/backups/postgresql', CLUSTER_NAME: 'main' });
    const guide = parseConfig({
      BACKUP_DIR: '/var/backups/postgresql',
      CLUSTER_NAME: 'main',
      WAL_ARCHIVE_DIR: '/var/backups/postgresql/wal',
    });
    const exact = parseConfig({
      BACKUP_DIR: '/var/backups/postgresql',
      CLUSTER_NAME: 'main',
      WAL_ARCHIVE_DIR: '/var/backups/postgresql/main/wal/',
    });

    // Assess
    for (const c of [unset, guide, exact]) expect(c.walArchiveDir).toBe('/var/backups/postgresql/main/wal');
  });

  it('refuses any other directory instead of ignoring it', () => {
    // Act
    const other = refusal({ CLUSTER_NAME: 'main', WAL_ARCHIVE_DIR: '/mnt/wal' });
    const relative = refusal({ CLUSTER_NAME: 'main', WAL_ARCHIVE_DIR: 'wal' });

    // Assess
    expect(other.message).toBe(
      'WAL_ARCHIVE_DIR=/mnt/wal is not supported; WAL is archived into the backup targets under BACKUP_DIR/CLUSTER_NAME/wal (/var/backups/postgresql/main/wal): remove WAL_ARCHIVE_DIR',
    );
    expect(relative.message).toBe(
      'WAL_ARCHIVE_DIR=wal is a relative path; remove it (WAL is archived under /var/backups/postgresql/main/wal)',
    );
  });
});

describe('relative paths', () => {
  it.each([
    ['BACKUP_DIR', 'backups'],
    ['ENCRYPTION_KEY_FILE', 'keys/encryption-key'],
    ['PG_BIN_DIR', 'bin'],
    ['WAL_RECEIVE_DIR', './receive'],
  ])('refuses %s=%s: archive_command runs in the data directory', (key, value) => {
    // Prepare: the relative key file exists from the working directory, as it did in the shell that tested it.
    mkdirSync(join(work.path, 'keys'), { recursive: true });
    writeFileSync(join(work.path, 'keys', 'encryption-key'), 'a-long-enough-key-for-tests\n');

    // Act
    const err = refusal({ [key]: value }, work.path);

    // Assess
    expect(err.message).toBe(
      `${key}=${value} is a relative path; use an absolute path (archive_command runs in the data directory, where ${value} names another place)`,
    );
  });
});

describe('warnings on every command', () => {
  it.each([
    ['your-secret-key-here', "ENCRYPTION_KEY is the guide's placeholder, which anyone can read"],
    ['short-key', 'ENCRYPTION_KEY is shorter than 16 characters and easy to guess'],
  ])('warns about ENCRYPTION_KEY=%s without printing it', (key, start) => {
    // Act
    const { warnings } = parseConfig({ BACKUP_DIR: '/b', ENCRYPTION: 'true', ENCRYPTION_KEY: key });

    // Assess
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(new RegExp(`^${start}; create a key with \`openssl rand -base64 32`));
    expect(warnings[0]).not.toContain(key);
  });

  it('warns about a placeholder in ENCRYPTION_KEY_FILE too, and not about a good key', () => {
    // Prepare
    const file = join(work.path, 'placeholder-key');
    writeFileSync(file, 'your-secret-key-here\n');

    // Act
    const fromFile = parseConfig({ BACKUP_DIR: '/b', ENCRYPTION_KEY_FILE: file }).warnings;
    const good = parseConfig({ BACKUP_DIR: '/b', ENCRYPTION_KEY: 'x'.repeat(16) }).warnings;

    // Assess
    expect(fromFile).toEqual([
      expect.stringMatching(/^the key in ENCRYPTION_KEY_FILE is the guide's placeholder/),
    ]);
    expect(good).toEqual([]);
  });

  it.each(['citus'])('says DEPLOYMENT_MODE=%s is not built yet', (mode) => {
    // Act
    const { warnings, deploymentMode } = parseConfig({
      BACKUP_DIR: '/b',
      DEPLOYMENT_MODE: mode,
      PGHOST: 'db1.example.com',
    });

    // Assess
    expect(deploymentMode).toBe(mode);
    expect(warnings).toEqual([
      `DEPLOYMENT_MODE=${mode} is not built yet; pgvault acts as single-node on PGHOST (db1.example.com)`,
    ]);
  });
});

describe('AWS credentials in the --config file', () => {
  it('reads the keys and AWS_PROFILE from the file and hands them to the S3 client', async () => {
    // Prepare
    const file = join(work.path, 'aws.env');
    writeFileSync(
      file,
      [
        'BACKUP_DIR=/b',
        'CLOUD_PROVIDER=s3',
        'CLOUD_BUCKET=backups',
        'LOCAL_COPY=false',
        'AWS_ACCESS_KEY_ID=AKIAFROMFILE',
        'AWS_SECRET_ACCESS_KEY=secret-from-file',
        'AWS_SESSION_TOKEN=token-from-file',
        'AWS_PROFILE=backups',
      ].join('\n'),
    );

    // Act
    const config = loadConfig({ configFile: file, env: {}, cwd: work.path });
    const [target] = createTargets(config);
    type Connected = { client: { config: { credentials(): Promise<Record<string, string>> } } };
    const { client } = await (target as unknown as { connect(): Promise<Connected> }).connect();
    const credentials = await client.config.credentials();

    // Assess
    expect(target).toBeInstanceOf(S3Target);
    expect(config.cloud.credentials).toEqual({
      accessKeyId: 'AKIAFROMFILE',
      secretAccessKey: 'secret-from-file',
      sessionToken: 'token-from-file',
    });
    expect(config.cloud.profile).toBe('backups');
    expect(credentials).toMatchObject({
      accessKeyId: 'AKIAFROMFILE',
      secretAccessKey: 'secret-from-file',
      sessionToken: 'token-from-file',
    });
  });

  it('refuses half a key pair without printing the secret', () => {
    // Act
    const err = refusal({ AWS_SECRET_ACCESS_KEY: 'secret-from-file' });

    // Assess
    expect(err.message).toBe(
      'AWS_SECRET_ACCESS_KEY is set without AWS_ACCESS_KEY_ID; set both, or neither (AWS_PROFILE or an IAM role)',
    );
  });
});

describe('CLOUD_PROVIDER=azure', () => {
  const azure = { CLOUD_PROVIDER: 'azure', CLOUD_BUCKET: 'postgresql-backups' };

  it("takes the guide's settings: the container from CLOUD_BUCKET, AZURE_STORAGE_ACCOUNT, local copy first", () => {
    // Act
    const config = parseConfig({
      BACKUP_DIR: '/b',
      ...azure,
      CLOUD_PREFIX: 'prod',
      AZURE_STORAGE_ACCOUNT: 'mystorageaccount',
      AZURE_STORAGE_KEY: 'a2V5LWZyb20tZmlsZQ==',
    });
    const targets = createTargets(config);

    // Assess
    expect(targets.map((t) => t.kind)).toEqual(['file', 'azure']);
    expect(targets[0]).toBeInstanceOf(FileTarget);
    expect(targets[1]).toBeInstanceOf(AzureTarget);
    expect(targets[1]!.location).toBe('azure://mystorageaccount/postgresql-backups/prod');
    expect(config.cloud.azure).toEqual({
      account: 'mystorageaccount',
      accountKey: 'a2V5LWZyb20tZmlsZQ==',
      connectionString: undefined,
      sasToken: undefined,
    });
  });

  it('accepts a connection string alone, and the account alone (Entra ID: DefaultAzureCredential)', () => {
    // Act
    const byString = createTargets(
      parseConfig({
        BACKUP_DIR: '/b',
        ...azure,
        LOCAL_COPY: 'false',
        AZURE_STORAGE_CONNECTION_STRING:
          'DefaultEndpointsProtocol=https;AccountName=fromstring;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net',
      }),
    );
    const byIdentity = createTargets(
      parseConfig({
        BACKUP_DIR: '/b',
        ...azure,
        LOCAL_COPY: 'false',
        AZURE_STORAGE_ACCOUNT: 'mystorageaccount',
      }),
    );

    // Assess
    expect(byString.map((t) => t.location)).toEqual(['azure://fromstring/postgresql-backups']);
    expect(byIdentity.map((t) => t.location)).toEqual(['azure://mystorageaccount/postgresql-backups']);
  });

  it('refuses a missing account, two ways to authenticate (without the secrets) and a bad account name', () => {
    // Act
    const noAccount = refusal({ ...azure });
    const twoWays = refusal({
      ...azure,
      AZURE_STORAGE_ACCOUNT: 'mystorageaccount',
      AZURE_STORAGE_KEY: 'a2V5LXNlY3JldA==',
      AZURE_STORAGE_SAS_TOKEN: 'sv=2024&sig=sas-secret',
    });
    const badName = refusal({ ...azure, AZURE_STORAGE_ACCOUNT: 'My_Account' });

    // Assess
    expect(noAccount.message).toBe(
      'CLOUD_PROVIDER=azure needs AZURE_STORAGE_ACCOUNT (or AZURE_STORAGE_CONNECTION_STRING); set it to the storage account name',
    );
    expect(twoWays.message).toBe(
      'AZURE_STORAGE_KEY and AZURE_STORAGE_SAS_TOKEN are both set; set one way to authenticate to Azure (or none, for a managed identity)',
    );
    expect(badName.message).toBe(
      'AZURE_STORAGE_ACCOUNT=My_Account is not a storage account name; use its 3-24 lowercase letters and digits',
    );
  });
});
