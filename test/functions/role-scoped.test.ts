import { beforeAll, describe, expect, it, vi } from 'vitest';
import { inMemorySource, runBackup } from '../../core/backup/run';
import { parseConfig } from '../../core/config';
import type { ServerInfo } from '../../core/pg/server';
import { openVault } from '../../core/vault';
import { handler as report } from '../../functions/report';
import { handler as retention } from '../../functions/retention';
import { handler as verify } from '../../functions/verify';
import { type PolicyProxy, roleS3Statements, type S3Statement, startPolicyProxy } from '../helpers/s3-policy';
import { recordingReporter } from '../helpers/vault';
import { type CfnJson, synthTemplate, testConfig } from '../infra/synth';
import { useFunctionsFixture } from './fixture';

/**
 * Issue 12: the retention, verify and report functions run under their own role's S3 statements from
 * the synthesized template, through a proxy in front of s3rver that answers AccessDenied to anything
 * those statements do not allow. Every key a function reads, lists, writes or deletes must be allowed.
 */
const KEY_ARN = 'arn:aws:secretsmanager:us-east-1:123456789012:secret:pgvault-key';
const PASSPHRASE = 'role scoped functions passphrase';
const DAY = 86_400_000;
const NOW = Date.now();
const SERVER: ServerInfo = {
  version: '15.8',
  versionNum: 150008,
  major: 15,
  systemIdentifier: '7345000000000000002',
  superuser: true,
};

interface FunctionRole {
  readonly statements: S3Statement[];
  readonly prefix: string;
}

const synth = synthTemplate(testConfig());

/** The S3 statements of a function's role and the CLOUD_PREFIX the template gives it. */
function functionRole(name: string, bucket: string): FunctionRole {
  const found = Object.entries(synth.template.findResources('AWS::Lambda::Function')).find(
    ([id]) => !id.startsWith('LogRetention') && id.toLowerCase().includes(name),
  ) as [string, CfnJson] | undefined;
  if (!found) throw new Error(`no ${name} function in the synthesized template`);
  const [, fn] = found;
  const roleId = fn.Properties.Role['Fn::GetAtt'][0] as string;
  const prefix = fn.Properties.Environment?.Variables?.CLOUD_PREFIX;
  return {
    statements: roleS3Statements(synth.template, roleId, bucket),
    prefix: typeof prefix === 'string' ? prefix : 'pgvault',
  };
}

let proxy: PolicyProxy | undefined;
const { s3 } = useFunctionsFixture({
  bucket: 'pgvault-roles',
  env: functionEnv,
  answers: {
    taskArn: 'arn:aws:ecs:us-east-1:123456789012:task/pgvault/feedface',
    eventId: 'ev-1',
    messageId: 'sns-1',
    secretString: PASSPHRASE,
    secretArn: KEY_ARN,
  },
});

function functionEnv(): Record<string, string> {
  return {
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    CLOUD_PREFIX: 'pgvault',
    // As deployed (infra/stack.ts): writes carry their lifecycle tag.
    S3_LIFECYCLE_TAGS: 'true',
    S3_ENDPOINT: proxy?.endpoint ?? s3.endpoint,
    LOCAL_COPY: 'false',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY_SECRET_ARN: KEY_ARN,
    ENCRYPTION_ITERATIONS: '1000',
    COMPRESSION: 'none',
    RETENTION_DAYS: '2',
    RETENTION_WEEKS: '0',
    RETENTION_MONTHS: '0',
    SNS_TOPIC_ARN: 'arn:aws:sns:us-east-1:123456789012:pgvault-alerts',
    EVENT_BUS_NAME: 'arn:aws:events:us-east-1:123456789012:event-bus/pgvault',
    ECS_CLUSTER_ARN: 'arn:aws:ecs:us-east-1:123456789012:cluster/pgvault',
    TASK_DEFINITION_ARN: 'arn:aws:ecs:us-east-1:123456789012:task-definition/pgvault-task:1',
    RESTORE_TASK_DEFINITION_ARN: 'arn:aws:ecs:us-east-1:123456789012:task-definition/pgvault-restore:1',
    TASK_CONTAINER_NAME: 'pgvault',
    SUBNET_IDS: 'subnet-1',
    SECURITY_GROUP_IDS: 'sg-1',
    ASSIGN_PUBLIC_IP: 'false',
    PGVAULT_CLUSTERS: JSON.stringify([
      {
        name: 'main',
        mode: 'single-node',
        host: 'main.db.internal',
        port: 5432,
        database: 'postgres',
        credentialsSecretArn: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:main-db',
      },
    ]),
  };
}

beforeAll(async () => {
  // Five nightly full backups of `main`, written straight to s3rver (the backup task's job).
  const vault = openVault(
    parseConfig({
      ...functionEnv(),
      S3_ENDPOINT: s3.endpoint,
      CLUSTER_NAME: 'main',
      ENCRYPTION_KEY: PASSPHRASE,
    }),
    recordingReporter(),
  );
  for (let d = 4; d >= 0; d--) {
    await runBackup(vault, {
      type: 'full',
      schedule: 'daily',
      server: SERVER,
      tools: {},
      now: new Date(NOW - d * DAY - 3_600_000),
      sources: [
        { ...inMemorySource('database', 'dump', 'app', Buffer.alloc(2000, 7)), part: 'app', database: 'app' },
      ],
    });
  }
  vi.spyOn(console, 'info').mockImplementation(() => {});
  vi.spyOn(console, 'warn').mockImplementation(() => {});
  vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
});

/** Runs `act` with the S3 endpoint being a proxy that enforces the function's role. */
async function underRole<T>(name: string, act: () => Promise<T>): Promise<{ result: T; proxy: PolicyProxy }> {
  const role = functionRole(name, s3.bucket);
  expect(role.prefix).toBe('pgvault');
  proxy = await startPolicyProxy(s3.endpoint, role.statements);
  process.env.S3_ENDPOINT = proxy.endpoint;
  try {
    return { result: await act(), proxy };
  } finally {
    await proxy.stop();
    process.env.S3_ENDPOINT = s3.endpoint;
    proxy = undefined;
  }
}

describe('functions under their role (issue 12)', () => {
  it('the verify function reads only what its role allows', async () => {
    const { result, proxy } = await underRole('verify', () => verify({ cluster: 'main' }));

    expect(proxy.denied).toEqual([]);
    expect(proxy.seen.length).toBeGreaterThan(0);
    expect(result).toMatchObject({ cluster: 'main', ok: true });
  });

  it('the report function reads and writes only what its role allows', async () => {
    const { proxy } = await underRole('report', () => report({ cluster: 'main' }));

    expect(proxy.denied).toEqual([]);
    expect(proxy.seen.some((r) => r.action === 's3:PutObject')).toBe(true);
    // The report goes up with its lifecycle tag, which S3 authorizes as s3:PutObjectTagging.
    expect(proxy.seen.some((r) => r.action === 's3:PutObjectTagging' && r.key.includes('/reports/'))).toBe(
      true,
    );
  });

  it('the retention function deletes only what its role allows, and deletes what the plan says', async () => {
    const { result, proxy } = await underRole('retention', () => retention({ cluster: 'main' }));

    expect(proxy.denied).toEqual([]);
    expect(result).toMatchObject({ cluster: 'main', ok: true, failed: [] });
    expect(result.deletedBackups.length).toBeGreaterThan(0);
    expect(proxy.seen.filter((r) => r.action === 's3:DeleteObject').length).toBeGreaterThan(0);
  });
});
