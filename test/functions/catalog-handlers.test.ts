import { RunTaskCommand } from '@aws-sdk/client-ecs';
import { GetSecretValueCommand } from '@aws-sdk/client-secrets-manager';
import { PublishCommand } from '@aws-sdk/client-sns';
import { beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { inMemorySource, type ObjectSource, runBackup } from '../../core/backup/run';
import type { ManifestBody } from '../../core/catalog/manifest';
import type { BackupType, Schedule } from '../../core/catalog/naming';
import { parseConfig } from '../../core/config';
import type { ServerInfo } from '../../core/pg/server';
import { runRetention } from '../../core/retention/apply';
import { openVault, type Vault } from '../../core/vault';
import { handler as report } from '../../functions/report';
import { handler as retention } from '../../functions/retention';
import { handler as verify } from '../../functions/verify';
import { recordingReporter } from '../helpers/vault';
import { ecs, putEvents, secrets, sns, useFunctionsFixture } from './fixture';

/**
 * The retention, verify and report functions run for real against catalogs in s3rver: backups
 * written by the backup code (objects, then the sealed manifest, encrypted with the passphrase the
 * functions read from Secrets Manager). Secrets Manager, SNS, EventBridge and ECS are mocked; the
 * assertions are on what the functions return, what they left in the bucket and what they published.
 */

const PASSPHRASE = 'correct horse battery staple, from Secrets Manager';
const KEY_ARN = 'arn:aws:secretsmanager:us-east-1:123456789012:secret:pgvault-key';
const TOPIC = 'arn:aws:sns:us-east-1:123456789012:pgvault-alerts';
const BUS = 'arn:aws:events:us-east-1:123456789012:event-bus/pgvault';
const TASK_ARN = 'arn:aws:ecs:us-east-1:123456789012:task/pgvault/feedface';
const DAY = 86_400_000;
const HOUR = 3_600_000;
const NOW = Date.now();
const SERVER: ServerInfo = {
  version: '15.8',
  versionNum: 150008,
  major: 15,
  systemIdentifier: '7345000000000000001',
  superuser: true,
};

const { s3 } = useFunctionsFixture({
  bucket: 'pgvault-functions',
  env: functionEnv,
  answers: {
    taskArn: TASK_ARN,
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
    CLOUD_PREFIX: 'vault',
    S3_ENDPOINT: s3.endpoint,
    LOCAL_COPY: 'false',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY_SECRET_ARN: KEY_ARN,
    ENCRYPTION_ITERATIONS: '1000',
    COMPRESSION: 'none',
    RETENTION_DAYS: '3',
    RETENTION_WEEKS: '0',
    RETENTION_MONTHS: '0',
    RETENTION_CONFIG_COUNT: '2',
    RETENTION_INDEXES_COUNT: '1',
    RETENTION_WAL_DAYS: '1',
    // The newest dumps hold data as of 2 hours ago: one threshold alert (RPO) to see sent and reported.
    RPO_TARGET_MINUTES: '60',
    SNS_TOPIC_ARN: TOPIC,
    EVENT_BUS_NAME: BUS,
    PGVAULT_METRICS: 'emf',
    ECS_CLUSTER_ARN: 'arn:aws:ecs:us-east-1:123456789012:cluster/pgvault',
    TASK_DEFINITION_ARN: 'arn:aws:ecs:us-east-1:123456789012:task-definition/pgvault-task:1',
    RESTORE_TASK_DEFINITION_ARN: 'arn:aws:ecs:us-east-1:123456789012:task-definition/pgvault-restore:1',
    TASK_CONTAINER_NAME: 'pgvault',
    SUBNET_IDS: 'subnet-1',
    SECURITY_GROUP_IDS: 'sg-1',
    ASSIGN_PUBLIC_IP: 'false',
    PGVAULT_CLUSTERS: JSON.stringify(
      ['ret', 'main', 'broken', 'empty'].map((name) => ({
        name,
        mode: 'single-node',
        host: `${name}.db.internal`,
        port: 5432,
        database: 'postgres',
        credentialsSecretArn: `arn:aws:secretsmanager:us-east-1:123456789012:secret:${name}-db`,
      })),
    ),
  };
}

/** The vault a backup task of the cluster would write with (same bucket, prefix and key). */
function writerVault(cluster: string): Vault {
  return openVault(
    parseConfig({ ...functionEnv(), CLUSTER_NAME: cluster, ENCRYPTION_KEY: PASSPHRASE }),
    recordingReporter(),
  );
}

function sources(type: BackupType): ObjectSource[] {
  if (type === 'full') {
    return [
      { ...inMemorySource('database', 'dump', 'app', Buffer.alloc(4000, 7)), part: 'app', database: 'app' },
      { ...inMemorySource('globals', 'sql', 'globals', Buffer.from('CREATE ROLE app;')), part: 'globals' },
    ];
  }
  return [inMemorySource(type, type === 'config' ? 'tar' : 'sql', type, Buffer.alloc(500, 1))];
}

function take(vault: Vault, type: BackupType, schedule: Schedule, at: number): Promise<ManifestBody> {
  return runBackup(vault, {
    type,
    schedule,
    server: SERVER,
    tools: {},
    now: new Date(at),
    sources: sources(type),
  });
}

async function keys(vault: Vault, cluster: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of vault.targets[0]!.list(`${cluster}/`)) out.push(o.key);
  return out.sort();
}

/** Captures the embedded-metric-format lines the functions write on stdout. */
function captureMetrics(): { lines: () => Record<string, unknown>[]; restore: () => void } {
  const written: string[] = [];
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: unknown) => {
    written.push(String(chunk));
    return true;
  });
  return {
    lines: () =>
      written
        .flatMap((w) => w.split('\n'))
        .filter((l) => l.startsWith('{"_aws"'))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    restore: () => spy.mockRestore(),
  };
}

beforeAll(async () => {
  // Ten nightly full backups and four config backups of `ret`; two fresh ones of `main`.
  const ret = writerVault('ret');
  for (let d = 9; d >= 0; d--) await take(ret, 'full', 'daily', NOW - d * DAY - 2 * HOUR);
  for (let d = 3; d >= 0; d--) await take(ret, 'config', 'daily', NOW - d * DAY - 3 * HOUR);
  const main = writerVault('main');
  await take(main, 'full', 'daily', NOW - 2 * HOUR);
  await take(main, 'config', 'daily', NOW - 3 * HOUR);
  const broken = writerVault('broken');
  const m = await take(broken, 'full', 'daily', NOW - 2 * HOUR);
  // A manifest whose object went missing: the quick verification must find it without reading data.
  await broken.targets[0]!.delete(m.objects[0]!.key);
});

beforeEach(() => {
  vi.spyOn(console, 'info').mockImplementation(() => {});
  vi.spyOn(console, 'warn').mockImplementation(() => {});
});

describe('retention function', () => {
  it('carries out the GFS plan in the bucket, returns what it deleted and puts "Retention Succeeded"', async () => {
    // Prepare: what core plans for this catalog (dry run), and what is there.
    const vault = writerVault('ret');
    const plan = (await runRetention(vault, { dryRun: true })).plan;
    const toDelete = plan.backups.filter((b) => b.action === 'delete').map((b) => b.id);
    const before = await keys(vault, 'ret');
    const metrics = captureMetrics();

    // Act
    const result = await retention({ cluster: 'ret' });
    metrics.restore();

    // Assess: 7 of 10 nightly fulls and 2 of 4 configs go.
    expect(toDelete).toHaveLength(9);
    expect(result).toEqual({
      cluster: 'ret',
      ok: true,
      kept: 5,
      deletedBackups: toDelete,
      deletedLeftoverObjects: 0,
      deletedWalObjects: 0,
      deletedBytes: plan.summary.deleteBytes,
      locked: 0,
      failed: [],
    });
    const after = await keys(vault, 'ret');
    expect(after).toEqual(before.filter((k) => !toDelete.some((id) => k.includes(`/${id}.`))));
    expect(after.filter((k) => k.endsWith('.manifest.json'))).toHaveLength(5);
    expect(secrets.commandCalls(GetSecretValueCommand)).toHaveLength(1);
    const [put, ...more] = putEvents();
    expect(more).toEqual([]);
    expect(put).toMatchObject({ Source: 'pgvault', DetailType: 'Retention Succeeded', EventBusName: BUS });
    expect(put!.detail).toEqual({
      version: 1,
      outcome: 'succeeded',
      cluster: 'ret',
      command: 'backup retention',
      origin: 'lambda:retention',
      durationMs: expect.any(Number),
      startedAt: expect.any(String),
      finishedAt: expect.any(String),
      details: {
        kept: 5,
        deletedBackups: toDelete,
        deletedLeftoverObjects: 0,
        deletedWalObjects: 0,
        deletedBytes: plan.summary.deleteBytes,
        locked: 0,
      },
      host: expect.any(String),
      at: expect.any(String),
    });
    expect(metrics.lines()).toEqual([
      {
        _aws: {
          Timestamp: expect.any(Number),
          CloudWatchMetrics: [
            {
              Namespace: 'pgvault',
              Dimensions: [['Cluster']],
              Metrics: [
                { Name: 'RetentionSucceeded', Unit: 'Count' },
                { Name: 'RetentionDeletedBackups', Unit: 'Count' },
              ],
            },
          ],
        },
        Cluster: 'ret',
        RetentionSucceeded: 1,
        RetentionDeletedBackups: 9,
      },
    ]);
    expect(JSON.stringify(putEvents())).not.toContain(PASSPHRASE);
  });

  it('reads the key once per container', async () => {
    // Act: a second invocation in the same container (nothing left to delete).
    await retention({ cluster: 'ret' });
    await retention({ cluster: 'ret' });

    // Assess
    expect(secrets.commandCalls(GetSecretValueCommand)).toHaveLength(1);
  });

  it('fails with a clear line when the key cannot be read, and deletes nothing', async () => {
    // Prepare
    secrets
      .on(GetSecretValueCommand)
      .rejects(Object.assign(new Error('User is not authorized'), { name: 'AccessDeniedException' }));
    const before = await keys(writerVault('ret'), 'ret');

    // Act
    const err = (await retention({ cluster: 'ret' }).catch((e: Error) => e)) as Error;

    // Assess
    expect(err.message).toBe(
      `the encryption key cannot be read from ${KEY_ARN} (AccessDeniedException: User is not authorized); check the secret and the function's permission to read it`,
    );
    expect(await keys(writerVault('ret'), 'ret')).toEqual(before);
  });
});

describe('verify function', () => {
  it('runs the quick checks, sends the threshold alerts, and with deep starts `verify restore latest`', async () => {
    // Prepare
    const metrics = captureMetrics();

    // Act
    const result = await verify({ cluster: 'main', deep: true });
    metrics.restore();

    // Assess
    expect(result).toEqual({
      cluster: 'main',
      ok: true,
      mode: 'quick',
      backups: 2,
      faults: [],
      alerts: ['RPO 2.0 h over target 60 min'],
      // The function reaches no database (main.db.internal does not resolve): skipped, not failed.
      server: {
        checked: false,
        server: 'main.db.internal:5432',
        skipped: expect.stringMatching(/^no server reachable/),
        problems: [],
      },
      deepTask: { taskArn: TASK_ARN, command: ['verify', 'restore', 'latest'] },
    });
    const run = ecs.commandCalls(RunTaskCommand)[0]!.args[0].input;
    expect(run).toMatchObject({
      taskDefinition: 'arn:aws:ecs:us-east-1:123456789012:task-definition/pgvault-task:1',
      launchType: 'FARGATE',
      startedBy: 'pgvault-verify',
      overrides: { containerOverrides: [{ name: 'pgvault', command: ['verify', 'restore', 'latest'] }] },
    });
    expect(sns.commandCalls(PublishCommand).map((c) => c.args[0].input.Subject)).toEqual([
      'pgvault ALERT [main]: RPO 2.0 h over target 60 min',
    ]);
    const puts = putEvents();
    expect(puts.map((p) => p.DetailType)).toEqual(['Verification Succeeded', 'Verification Started']);
    expect(puts[0]!.detail).toEqual({
      version: 1,
      outcome: 'succeeded',
      cluster: 'main',
      command: 'verify all --quick',
      origin: 'lambda:verify',
      durationMs: expect.any(Number),
      startedAt: expect.any(String),
      finishedAt: expect.any(String),
      details: { mode: 'quick', backups: 2, faults: 0, alerts: ['rpo'] },
      host: expect.any(String),
      at: expect.any(String),
    });
    expect(puts[1]!.detail).toMatchObject({
      outcome: 'started',
      cluster: 'main',
      command: 'verify restore latest',
      taskArn: TASK_ARN,
    });
    const [line] = metrics.lines();
    expect(line).toMatchObject({ Cluster: 'main', VerificationSucceeded: 1, VerificationFaults: 0 });
    // Age from the backup's end (it was written just now), RPO from the data it holds (2 hours ago).
    expect(line!.BackupAgeHours as number).toBeLessThan(0.1);
    expect(line!.RpoSeconds as number).toBeGreaterThan(2 * 3600 - 5);
  });

  it('reports a missing object as a fault, puts "Verification Failed" and sends the failure alert; no task without deep', async () => {
    // Act
    const result = await verify({ cluster: 'broken' });

    // Assess
    expect(result.ok).toBe(false);
    expect(result.faults).toHaveLength(1);
    expect(result.faults[0]).toMatchObject({ kind: 'missing' });
    expect(result).not.toHaveProperty('deepTask');
    expect(ecs.commandCalls(RunTaskCommand)).toHaveLength(0);
    const subjects = sns.commandCalls(PublishCommand).map((c) => c.args[0].input.Subject);
    expect(subjects).toContain('pgvault ALERT [broken]: verification failed (pgvault verify all)');
    const [put] = putEvents();
    expect(put!.DetailType).toBe('Verification Failed');
    expect(put!.detail).toMatchObject({
      outcome: 'failed',
      cluster: 'broken',
      error: result.faults[0]!.problem,
      details: { mode: 'quick', backups: 1, faults: 1 },
    });
  });

  it('refuses a bad payload before reading anything', async () => {
    // Act
    const err = (await verify({ cluster: 'main', deep: 'yes' }).catch((e: Error) => e)) as Error;

    // Assess
    expect(err.message).toBe('invalid payload: "deep": Invalid input: expected boolean, received string');
    expect(secrets.commandCalls(GetSecretValueCommand)).toHaveLength(0);
  });
});

describe('report function', () => {
  it('writes the report into the bucket and mails its summary with a presigned link that opens it', async () => {
    // Prepare
    const metrics = captureMetrics();

    // Act
    const result = await report({ cluster: 'main' });
    metrics.restore();

    // Assess: the HTML is in the bucket, and the link serves it.
    expect(result.html).toMatch(
      new RegExp(`^s3://${s3.bucket}/vault/main/reports/report-\\d{8}-\\d{6}-[0-9a-f]{8}\\.html$`),
    );
    expect(result).toMatchObject({
      cluster: 'main',
      status: 'failing',
      failing: ['RPO 2.0 h over target 60 min'],
      messageId: 'sns-1',
    });
    expect(result.link.startsWith(`${s3.endpoint}/${s3.bucket}/vault/main/reports/report-`)).toBe(true);
    expect(result.link).toContain('X-Amz-Expires=604800');
    const page = await fetch(result.link);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<html');
    const key = result.html.replace(`s3://${s3.bucket}/vault/`, '');
    const stored = await keys(writerVault('main'), 'main/reports');
    expect(stored).toEqual(
      [
        key.replace(/\.html$/, '.html'),
        key.replace(/\.html$/, '.json'),
        key.replace(/\.html$/, '.md'),
      ].sort(),
    );

    const [mail, ...others] = sns.commandCalls(PublishCommand).map((c) => c.args[0].input);
    expect(others).toEqual([]);
    expect(mail!.TopicArn).toBe(TOPIC);
    expect(mail!.Subject).toBe('pgvault report [main]: 1 check(s) failing');
    expect(mail!.Message).toContain(`Full report (HTML): ${result.link}`);
    expect(mail!.Message).toContain('Status: 1 check(s) failing');
    expect(mail!.Message).toContain('  - RPO 2.0 h over target 60 min:');
    expect(mail!.Message).toContain(`then: aws s3 cp ${result.html} .`);
    expect(mail!.Message).not.toContain(PASSPHRASE);

    const [put] = putEvents();
    expect(put!.DetailType).toBe('Report Succeeded');
    expect(put!.detail).toEqual({
      version: 1,
      outcome: 'succeeded',
      cluster: 'main',
      command: 'verify report',
      origin: 'lambda:report',
      durationMs: expect.any(Number),
      startedAt: expect.any(String),
      finishedAt: expect.any(String),
      details: { status: 'failing', failing: ['rpo'], html: result.html },
      host: expect.any(String),
      at: expect.any(String),
    });
    const [line] = metrics.lines();
    expect(line).toMatchObject({ Cluster: 'main', ReportSucceeded: 1, ReportFailingChecks: 1 });
    expect(line!.StorageUsedBytes as number).toBeGreaterThan(4000);
    expect(line!.RpoSeconds as number).toBeGreaterThan(2 * 3600 - 5);
  });

  it('puts "Report Failed" when the summary cannot be mailed, and fails with the reason', async () => {
    // Prepare: SNS refuses the summary (and the failure alert after it).
    sns.on(PublishCommand).rejects(new Error('Topic does not exist'));

    // Act
    const err = (await report({ cluster: 'empty' }).catch((e: Error) => e)) as Error;

    // Assess
    expect(err.message).toBe('Topic does not exist');
    expect(putEvents().map((p) => p.DetailType)).toEqual(['Report Failed']);
    expect(putEvents()[0]!.detail).toMatchObject({ cluster: 'empty', error: 'Topic does not exist' });
  });
});
