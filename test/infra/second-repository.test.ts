import { Validations } from 'aws-cdk-lib';
import type { Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { parseDeployConfig } from '../../infra/config';
import type { FleetStack } from '../../infra/stack';
import {
  buildStack,
  containerEnvironment,
  expectDecryptsThroughSecretsManager,
  list,
  logicalId,
  readsSecret,
  resourcesOf,
  type Statement,
  type SynthResult,
  sharedValueIn,
  statementsOf,
  synthTemplate,
  taskDefinitions,
  testConfig,
} from './synth';

/**
 * Issue 14, "AWS deployment": an optional second repository in GCS or Azure, outside the AWS account.
 * The tasks and the functions that read backups get the repositories as numbered keys (REPO1 the
 * stack's bucket, REPO2 the other provider) and only the ARN of the credentials secret, which pgvault
 * reads at start (core/pg/startup-secrets.ts); the roles may read exactly that secret and its key.
 * Without a second repository the environment is today's (CLOUD_PROVIDER=s3 ...).
 */

const REPO_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/gcs-copy-MnOpQr';
const REPO_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/9999abcd-12ab-34cd-56ef-1234567890ab';
const SECOND = {
  type: 'gcs' as const,
  bucket: 'pgvault-copy-eu',
  prefix: 'aws-copy',
  credentialsSecretArn: REPO_SECRET,
  credentialsKmsKeyArn: REPO_KEY,
  holds: ['full', 'base', 'wal'],
};

/** The keys every task and function had before issue 14 (CLOUD_*, then the shared settings). */
const SHARED_KEYS = [
  'CLOUD_PROVIDER',
  'CLOUD_BUCKET',
  'CLOUD_PREFIX',
  'S3_LIFECYCLE_TAGS',
  'LOCAL_COPY',
  'ENCRYPTION',
  'S3_OBJECT_LOCK_MODE',
  'S3_OBJECT_LOCK_RETAIN',
  'S3_OBJECT_LOCK_MIN_DAYS',
  'RETENTION_DAYS',
  'RETENTION_WEEKS',
  'RETENTION_MONTHS',
  'RETENTION_CONFIG_COUNT',
  'RETENTION_INDEXES_COUNT',
  'RETENTION_WAL_DAYS',
  'COMPRESSION',
  'SNS_TOPIC_ARN',
  'STORAGE_QUOTA_GB',
  'RPO_TARGET_MINUTES',
  'RTO_TARGET_MINUTES',
  'ALERT_BACKUP_AGE_HOURS',
  'ALERT_CAPACITY_PERCENT',
  'EVENT_BUS_NAME',
];
const TASK_KEYS = [
  ...SHARED_KEYS,
  'BACKUP_DIR',
  'TMPDIR',
  'CLUSTER_NAME',
  'PGHOST',
  'PGPORT',
  'PGDATABASE',
  'DEPLOYMENT_MODE',
];
const FUNCTION_KEYS = [
  ...SHARED_KEYS,
  'BACKUP_DIR',
  'ENCRYPTION_KEY_SECRET_ARN',
  'ECS_CLUSTER_ARN',
  'TASK_DEFINITION_ARN',
  'RESTORE_TASK_DEFINITION_ARN',
  'TASK_CONTAINER_NAME',
  'SUBNET_IDS',
  'SECURITY_GROUP_IDS',
  'ASSIGN_PUBLIC_IP',
  'PGVAULT_CLUSTERS_FILE',
  'NODE_OPTIONS',
];

function functionEnvironment(synth: SynthResult, name: 'dispatch' | 'verify'): Record<string, unknown> {
  const id = logicalId(synth.stack.functions.functions[name]);
  return synth.template.toJSON().Resources[id].Properties.Environment.Variables as Record<string, unknown>;
}

describe('without a second repository', () => {
  let synth: SynthResult;
  beforeAll(() => {
    synth = synthTemplate(testConfig());
  }, 120_000);

  it("the tasks and functions get today's single-target keys, and no REPO key", () => {
    // Prepare
    const fleet = synth.fleets[0]!;

    // Act
    const envs = taskDefinitions(fleet.stack).map((t) => containerEnvironment(fleet.template, t.def));
    const fn = functionEnvironment(synth, 'verify');

    // Assess
    expect(Object.keys(envs[0]!)).toEqual(TASK_KEYS);
    for (const env of envs) {
      expect(env).toMatchObject({ CLOUD_PROVIDER: 's3', CLOUD_PREFIX: 'pgvault', LOCAL_COPY: 'false' });
      expect(Object.keys(env).filter((k) => k.startsWith('REPO'))).toEqual([]);
    }
    expect(envs[0]!.CLOUD_BUCKET).toEqual(
      sharedValueIn(synth.template, fleet.template, { Ref: logicalId(synth.stack.vault.bucket) }),
    );
    expect(Object.keys(fn)).toEqual(FUNCTION_KEYS);
    expect(fn).toMatchObject({ CLOUD_PROVIDER: 's3', CLOUD_PREFIX: 'pgvault', LOCAL_COPY: 'false' });
  });
});

describe('a second repository in GCS', () => {
  let synth: SynthResult;
  let fleet: { stack: FleetStack; template: Template };
  beforeAll(() => {
    synth = synthTemplate(testConfig({ secondRepository: SECOND }));
    fleet = synth.fleets[0]!;
  }, 120_000);

  it('every task gets REPO1 (the vault bucket) and REPO2 (the GCS bucket, its prefix, holds, the secret by ARN) instead of CLOUD_*', () => {
    // Act
    const envs = taskDefinitions(fleet.stack).map((t) => containerEnvironment(fleet.template, t.def));

    // Assess
    expect(envs).toHaveLength(5); // main: backup, restore; orders: backup, restore, wal receive
    for (const env of envs) {
      expect(env).toMatchObject({
        REPO1_TYPE: 's3',
        REPO1_PREFIX: 'pgvault',
        REPO2_TYPE: 'gcs',
        REPO2_BUCKET: 'pgvault-copy-eu',
        REPO2_PREFIX: 'aws-copy',
        REPO2_HOLDS: 'full,base,wal',
        REPO2_SECRET_ARN: REPO_SECRET,
      });
      expect(env.REPO1_BUCKET).toEqual(
        sharedValueIn(synth.template, fleet.template, { Ref: logicalId(synth.stack.vault.bucket) }),
      );
      expect(
        Object.keys(env).filter((k) =>
          ['CLOUD_PROVIDER', 'CLOUD_BUCKET', 'CLOUD_PREFIX', 'LOCAL_COPY'].includes(k),
        ),
      ).toEqual([]);
    }
    // The rest is unchanged: main's backup task has today's keys but the single target's.
    expect(Object.keys(envs[0]!).filter((k) => !k.startsWith('REPO'))).toEqual(
      TASK_KEYS.filter((k) => !['CLOUD_PROVIDER', 'CLOUD_BUCKET', 'CLOUD_PREFIX', 'LOCAL_COPY'].includes(k)),
    );
  });

  it("the core's config reader takes a task's environment as it stands: two repositories, s3 then gcs, holding what holds says", () => {
    // Prepare: the task's environment with the template's references as the strings they become, and
    // the secret's key file as the start-up step would set it (core/pg/startup-secrets.ts), and the
    // passphrase ECS injects from Secrets Manager.
    const env = containerEnvironment(fleet.template, taskDefinitions(fleet.stack)[0]!.def);
    const raw: Record<string, string> = Object.fromEntries(
      Object.entries(env).map(([k, v]) => [k, typeof v === 'string' ? v : 'resolved-at-deploy']),
    );
    raw.REPO1_BUCKET = 'pgvault-vault-bucket';
    raw.REPO2_GOOGLE_APPLICATION_CREDENTIALS = '/tmp/pgvault-secrets/gcs-key.json';
    raw.ENCRYPTION_KEY ??= 'the passphrase ECS injects from its secret';
    if (typeof env.SNS_TOPIC_ARN !== 'string')
      raw.SNS_TOPIC_ARN = 'arn:aws:sns:eu-west-1:123456789012:alerts';

    // Act
    const config = parseConfig(raw);

    // Assess
    expect(config.repositories?.map((r) => [r.n, r.type])).toEqual([
      [1, 's3'],
      [2, 'gcs'],
    ]);
    expect(config.repositories?.[1]?.config.cloud.bucket).toBe('pgvault-copy-eu');
  });

  it("the functions get the same repository keys, within Lambda's environment limit", () => {
    // Act
    const fn = functionEnvironment(synth, 'verify');

    // Assess
    expect(fn).toMatchObject({
      REPO1_TYPE: 's3',
      REPO1_BUCKET: { Ref: logicalId(synth.stack.vault.bucket) },
      REPO2_TYPE: 'gcs',
      REPO2_SECRET_ARN: REPO_SECRET,
    });
    expect(fn).not.toHaveProperty('CLOUD_PROVIDER');
  });

  it('every task role, and the retention, verify, report and restore functions, may read exactly that secret and decrypt its key through Secrets Manager; execution roles and dispatch may not', () => {
    // Prepare
    const fnRole = (name: 'dispatch' | 'retention' | 'verify' | 'report' | 'restore') =>
      logicalId(synth.stack.functions.functions[name].role);

    // Act
    const tasks = taskDefinitions(fleet.stack);

    // Assess
    for (const t of tasks) {
      const statements = statementsOf(fleet.template, t.taskRole);
      expect(readsSecret(statements, REPO_SECRET), t.taskRole).toBe(true);
      expectDecryptsThroughSecretsManager(statements, REPO_KEY);
      expect(JSON.stringify(statementsOf(fleet.template, t.executionRole))).not.toContain(REPO_SECRET);
    }
    for (const name of ['retention', 'verify', 'report', 'restore'] as const) {
      const statements = statementsOf(synth.template, fnRole(name));
      expect(readsSecret(statements, REPO_SECRET), name).toBe(true);
      expect(JSON.stringify(statements)).toContain(REPO_KEY);
    }
    expect(JSON.stringify(statementsOf(synth.template, fnRole('dispatch')))).not.toContain(REPO_SECRET);
    // No wildcard: each statement naming the secret lists complete ARNs only (IAM merges the restore
    // role's statement with its restore targets').
    const all = [
      ...resourcesOf(synth.template, 'AWS::IAM::Policy'),
      ...resourcesOf(fleet.template, 'AWS::IAM::Policy'),
    ]
      .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Statement[])
      .filter((s) => JSON.stringify(s.Resource).includes('gcs-copy'));
    expect(all.length).toBeGreaterThanOrEqual(9);
    for (const s of all) {
      expect(s.Action).toBe('secretsmanager:GetSecretValue');
      for (const r of list(s.Resource))
        expect(r).toMatch(/^arn:aws:secretsmanager:eu-west-1:123456789012:secret:[^*]+-[A-Za-z0-9]{6}$/);
    }
  });

  it('an Azure repository without a prefix takes bucket.prefix; without holds, no REPO2_HOLDS', () => {
    // Act
    const azure = synthTemplate(
      testConfig({
        secondRepository: { type: 'azure', bucket: 'pgvault-copy', credentialsSecretArn: REPO_SECRET },
      }),
    );
    const f = azure.fleets[0]!;
    const env = containerEnvironment(f.template, taskDefinitions(f.stack)[0]!.def);

    // Assess
    expect(env).toMatchObject({ REPO2_TYPE: 'azure', REPO2_BUCKET: 'pgvault-copy', REPO2_PREFIX: 'pgvault' });
    expect(env).not.toHaveProperty('REPO2_HOLDS');
    const roleStatements = statementsOf(f.template, taskDefinitions(f.stack)[0]!.taskRole);
    expect(readsSecret(roleStatements, REPO_SECRET)).toBe(true);
    expect(JSON.stringify(roleStatements)).not.toContain('secretsmanager.eu-west-1.amazonaws.com');
  });
});

describe('cdk-nag AwsSolutions', () => {
  it('has no unacknowledged finding with a second repository and a Patroni cluster with its secret', () => {
    // Prepare
    const base = testConfig();
    const { app } = buildStack(
      testConfig({
        secondRepository: SECOND,
        clusters: base.clusters.map((cl) =>
          cl.mode === 'patroni'
            ? {
                ...cl,
                patroniUrl: 'https://10.0.1.10:8008,https://10.0.2.10:8008',
                backupFrom: 'replica' as const,
                patroniCredentialsSecretArn:
                  'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/orders-patroni-AbCdEf',
                patroniCredentialsKmsKeyArn: REPO_KEY,
              }
            : cl,
        ),
      }),
    );

    // Act
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));

    // Assess: synth throws the list of findings that are not acknowledged.
    expect(() => app.synth()).not.toThrow();
  }, 120_000);
});

describe('secondRepository in the deployment config', () => {
  const base = JSON.parse(JSON.stringify(testConfig())) as Record<string, unknown>;
  const parse = (secondRepository: unknown) => parseDeployConfig({ ...base, secondRepository }, 'test.json');

  it.each([
    [
      'another provider',
      { ...SECOND, type: 's3' },
      'pgvault deploy config test.json: secondRepository.type: Invalid option: expected one of "gcs"|"azure"',
    ],
    [
      'no credentials',
      { type: 'gcs', bucket: 'pgvault-copy' },
      'pgvault deploy config test.json: secondRepository.credentialsSecretArn: Invalid input: expected string, received undefined',
    ],
    [
      'the credentials inline',
      { ...SECOND, credentials: { AZURE_STORAGE_KEY: 'x' } },
      'pgvault deploy config test.json: secondRepository: Unrecognized key: "credentials"',
    ],
    [
      'an Azure container with a dot',
      { ...SECOND, type: 'azure', bucket: 'pgvault.copy' },
      "pgvault deploy config test.json: secondRepository.bucket: pgvault.copy is not an Azure container name; use 3-63 lowercase letters, digits and single '-'",
    ],
    [
      'an upper-case bucket',
      { ...SECOND, bucket: 'PgvaultCopy' },
      'pgvault deploy config test.json: secondRepository.bucket: 3-63 lowercase letters, digits, ".", "_" or "-"',
    ],
    [
      'a prefix with a leading slash',
      { ...SECOND, prefix: '/copy' },
      "pgvault deploy config test.json: secondRepository.prefix: path segments without leading or trailing '/'",
    ],
    [
      'holds with a comma inside',
      { ...SECOND, holds: ['full,wal'] },
      'pgvault deploy config test.json: secondRepository.holds[0]: a placement word such as full, wal or full:weekly',
    ],
  ])('%s: one line naming the field', (_name, value, message) => {
    expect(() => parse(value)).toThrow(message);
  });
});
