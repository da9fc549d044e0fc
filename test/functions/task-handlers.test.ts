import { RunTaskCommand } from '@aws-sdk/client-ecs';
import { PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { GetSecretValueCommand } from '@aws-sdk/client-secrets-manager';
import { PublishCommand } from '@aws-sdk/client-sns';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../../core/config';
import { createTargets } from '../../core/storage';
import { DISPATCH_COMMANDS, handler as dispatch } from '../../functions/dispatch';
import { handler as restore } from '../../functions/restore';
import { storeBackup } from '../integration/report-fixture';
import { ecs, events, putEvents, secrets, sns, useFunctionsFixture } from './fixture';

/**
 * The functions that start Fargate tasks: the exact RunTask request for every schedule payload and
 * every restore payload type, the per-cluster task definitions, the "started" lifecycle event, and
 * bad payloads refused with one line naming the field and no task started.
 */

const ECS_CLUSTER = 'arn:aws:ecs:eu-west-1:123456789012:cluster/pgvault';
const TASK_DEF = 'arn:aws:ecs:eu-west-1:123456789012:task-definition/pgvault-task:3';
const RESTORE_DEF = 'arn:aws:ecs:eu-west-1:123456789012:task-definition/pgvault-restore:3';
const CRM_TASK_DEF = 'arn:aws:ecs:eu-west-1:123456789012:task-definition/pgvault-crm:1';
const CRM_RESTORE_DEF = 'arn:aws:ecs:eu-west-1:123456789012:task-definition/pgvault-crm-restore:1';
const TASK_ARN = 'arn:aws:ecs:eu-west-1:123456789012:task/pgvault/0123456789abcdef';
const BUS = 'pgvault-events';
const TOPIC = 'arn:aws:sns:eu-west-1:123456789012:pgvault-alerts';
/** Restore target secrets the deployment lists for cluster main (restoreTargets). */
const TARGET_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/restore-db-AbCdEf';
const OTHER_TARGET_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/scratch-GhIjKl';
const UNLISTED_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/admin-XyZ123';
/** What the target secret holds: it must never reach a payload, the RunTask call or a log. */
const TARGET_PASSWORD = 'target-db-password-9f8e7d';

const CLUSTERS = [
  {
    name: 'main',
    mode: 'single-node',
    host: 'db.internal',
    port: 5432,
    database: 'postgres',
    credentialsSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:main-db',
    restoreTargetSecretArns: [TARGET_SECRET, OTHER_TARGET_SECRET],
  },
  {
    name: 'crm',
    mode: 'patroni',
    host: 'crm-leader.internal',
    port: 6432,
    database: 'crm',
    credentialsSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:crm-db',
    patroniUrl: 'http://crm-1.internal:8008',
    taskDefinitionArn: CRM_TASK_DEF,
    restoreTaskDefinitionArn: CRM_RESTORE_DEF,
  },
];

const ENV = {
  AWS_REGION: 'eu-west-1',
  CLOUD_PROVIDER: 's3',
  CLOUD_BUCKET: 'pgvault-vault',
  CLOUD_PREFIX: 'vault',
  LOCAL_COPY: 'false',
  ENCRYPTION: 'true',
  ENCRYPTION_KEY_SECRET_ARN: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault-key',
  EVENT_BUS_NAME: BUS,
  SNS_TOPIC_ARN: TOPIC,
  ECS_CLUSTER_ARN: ECS_CLUSTER,
  TASK_DEFINITION_ARN: TASK_DEF,
  RESTORE_TASK_DEFINITION_ARN: RESTORE_DEF,
  TASK_CONTAINER_NAME: 'pgvault',
  SUBNET_IDS: 'subnet-aaa, subnet-bbb',
  SECURITY_GROUP_IDS: 'sg-111',
  ASSIGN_PUBLIC_IP: 'false',
  PGVAULT_CLUSTERS: JSON.stringify(CLUSTERS),
  PGVAULT_METRICS: 'off',
};

const MAIN_ENVIRONMENT = [
  { name: 'CLUSTER_NAME', value: 'main' },
  { name: 'PGHOST', value: 'db.internal' },
  { name: 'PGPORT', value: '5432' },
  { name: 'PGDATABASE', value: 'postgres' },
  { name: 'DEPLOYMENT_MODE', value: 'single-node' },
];

function expectedRunTask(
  command: string[],
  taskDefinition: string,
  startedBy: string,
  environment: { name: string; value: string }[] = MAIN_ENVIRONMENT,
) {
  return {
    cluster: ECS_CLUSTER,
    taskDefinition,
    launchType: 'FARGATE',
    startedBy,
    networkConfiguration: {
      awsvpcConfiguration: {
        subnets: ['subnet-aaa', 'subnet-bbb'],
        securityGroups: ['sg-111'],
        assignPublicIp: 'DISABLED',
      },
    },
    overrides: { containerOverrides: [{ name: 'pgvault', command, environment }] },
  };
}

/** The restore function looks the backup up in the catalog (s3rver): the cluster's newest full backup. */
const FULL_LATEST = 'full-daily-20260212-020000';

const { s3Env } = useFunctionsFixture({
  bucket: 'pgvault-vault',
  env: () => ({ ...ENV, ...s3Env() }),
  answers: {
    taskArn: TASK_ARN,
    eventId: 'e-1',
    messageId: 'm-1',
    secretString: 'never-read-by-these-functions',
  },
});

beforeAll(async () => {
  const store = (
    cluster: string,
    type: 'full' | 'base',
    schedule: 'daily' | 'weekly' | 'manual',
    iso: string,
    databases: Record<string, number>,
  ) =>
    storeBackup(
      createTargets(parseConfig({ ...ENV, ...s3Env(), CLUSTER_NAME: cluster, ENCRYPTION: 'false' })),
      cluster,
      { type, schedule, at: new Date(iso), databases },
    );
  const both = { app: 1000, crm: 1000 };
  await store('main', 'full', 'weekly', '2026-02-08T03:00:00Z', both);
  await store('main', 'base', 'weekly', '2026-02-09T03:00:00Z', { '-': 1000 });
  await store('main', 'full', 'manual', '2026-02-10T02:00:00Z', { postgres: 10, app: 1000 });
  await store('main', 'full', 'manual', '2026-02-11T02:00:00Z', { app: 1000 });
  await store('main', 'full', 'daily', '2026-02-12T02:00:00Z', both);
  await store('crm', 'full', 'daily', '2026-02-12T02:00:00Z', { crm: 1000 });
});

describe('dispatch', () => {
  it.each(DISPATCH_COMMANDS.map((c) => [c.join(' '), c]))(
    'starts `pgvault %s` with the exact RunTask request',
    async (_name, command) => {
      // Prepare
      const payload = { cluster: 'main', command: [...command] };

      // Act
      const result = await dispatch(payload);

      // Assess
      expect(result).toEqual({ cluster: 'main', command, taskArn: TASK_ARN });
      const calls = ecs.commandCalls(RunTaskCommand);
      expect(calls).toHaveLength(1);
      expect(calls[0]!.args[0].input).toEqual(expectedRunTask([...command], TASK_DEF, 'pgvault-dispatch'));
      // Starting a task needs no key: the secret is never read by the dispatcher.
      expect(secrets.commandCalls(GetSecretValueCommand)).toHaveLength(0);
    },
  );

  it('puts a "Backup Started" event naming the task, and uses the cluster\'s own task definition', async () => {
    // Prepare
    process.env.ASSIGN_PUBLIC_IP = 'true';

    // Act
    await dispatch({ cluster: 'crm', command: ['backup', 'full', 'weekly'] });

    // Assess
    const input = ecs.commandCalls(RunTaskCommand)[0]!.args[0].input;
    expect(input.taskDefinition).toBe(CRM_TASK_DEF);
    expect(input.networkConfiguration?.awsvpcConfiguration?.assignPublicIp).toBe('ENABLED');
    expect(input.overrides?.containerOverrides?.[0]?.environment).toEqual([
      { name: 'CLUSTER_NAME', value: 'crm' },
      { name: 'PGHOST', value: 'crm-leader.internal' },
      { name: 'PGPORT', value: '6432' },
      { name: 'PGDATABASE', value: 'crm' },
      { name: 'DEPLOYMENT_MODE', value: 'patroni' },
      { name: 'PATRONI_URL', value: 'http://crm-1.internal:8008' },
    ]);
    const [put] = putEvents();
    expect(put).toMatchObject({ Source: 'pgvault', DetailType: 'Backup Started', EventBusName: BUS });
    expect(put!.detail).toEqual({
      version: 1,
      outcome: 'started',
      cluster: 'crm',
      command: 'backup full weekly',
      origin: 'lambda:dispatch',
      taskArn: TASK_ARN,
      backupType: 'full',
      schedule: 'weekly',
      startedAt: expect.any(String),
      host: expect.any(String),
      at: expect.any(String),
    });
  });

  it.each([
    [
      { cluster: 'main', command: ['backup', 'full', 'hourly'] },
      'invalid payload: "command": ["backup","full","hourly"] is not a command the dispatcher starts',
    ],
    [
      { cluster: 'main', command: ['restore', 'full', 'latest'] },
      '"command": ["restore","full","latest"] is not a command',
    ],
    [
      { cluster: 'main', command: ['backup', 'full', 'daily', '--database', 'x'] },
      'is not a command the dispatcher starts',
    ],
    [
      { cluster: 'main', command: 'backup full daily' },
      'invalid payload: "command": Invalid input: expected array',
    ],
    [{ cluster: 'main' }, 'invalid payload: "command" is required'],
    [{ command: ['drill'] }, 'invalid payload: "cluster" is required'],
    [
      { cluster: 'nope', command: ['drill'] },
      'invalid payload: "cluster": nope is not a cluster of this deployment; use one of main, crm',
    ],
    [{ cluster: 'main', command: ['drill'], extra: 1 }, 'invalid payload: unknown field "extra"'],
    ['not json', 'invalid payload: not a JSON object'],
  ])('refuses %j with one line naming the field, and starts nothing', async (payload, message) => {
    // Act
    const failure = dispatch(payload).catch((err: Error) => err);

    // Assess
    const err = (await failure) as Error;
    expect(err.name).toBe('InvalidPayloadError');
    expect(err.message).toContain(message);
    expect(err.message.split('\n')).toHaveLength(1);
    expect(ecs.commandCalls(RunTaskCommand)).toHaveLength(0);
    expect(events.commandCalls(PutEventsCommand)).toHaveLength(0);
  });

  it('turns a RunTask response with failures into an error naming the reason, a failure event and an alert', async () => {
    // Prepare
    ecs.on(RunTaskCommand).resolves({
      tasks: [],
      failures: [{ arn: TASK_DEF, reason: 'RESOURCE:MEMORY', detail: 'no capacity' }],
    });
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});

    // Act
    const err = (await dispatch({ cluster: 'main', command: ['backup', 'base', 'weekly'] }).catch(
      (e: Error) => e,
    )) as Error;
    warn.mockRestore();

    // Assess
    expect(err.name).toBe('TaskStartError');
    expect(err.message).toBe(
      `ECS did not start pgvault backup base weekly for cluster main: RESOURCE:MEMORY (no capacity) for ${TASK_DEF}; check the task definition, subnets and capacity, then invoke again`,
    );
    const [put] = putEvents();
    expect(put).toMatchObject({ DetailType: 'Backup Failed' });
    expect(put!.detail).toMatchObject({ cluster: 'main', command: 'backup base weekly', error: err.message });
    const alert = sns.commandCalls(PublishCommand)[0]!.args[0].input;
    expect(alert.Subject).toContain('backup failed (pgvault backup base)');
  });

  it('names a missing deployment setting', async () => {
    // Prepare
    delete process.env.SUBNET_IDS;

    // Act
    const err = (await dispatch({ cluster: 'main', command: ['drill'] }).catch((e: Error) => e)) as Error;

    // Assess
    expect(err.message).toBe('SUBNET_IDS is not set; the stack sets it');
    expect(ecs.commandCalls(RunTaskCommand)).toHaveLength(0);
  });
});

describe('restore', () => {
  it.each([
    [
      'full, latest, same name',
      { type: 'full', cluster: 'main', database: 'app' },
      ['restore', 'full', FULL_LATEST, 'app', '--from', 'app'],
    ],
    [
      'full into another database, replacing it',
      {
        type: 'full',
        cluster: 'main',
        backup: 'full-daily-20260212-020000',
        from: 'app',
        targetDatabase: 'app_copy',
        clean: true,
      },
      ['restore', 'full', 'full-daily-20260212-020000', 'app_copy', '--from', 'app', '--clean'],
    ],
    [
      'full of a one-database backup',
      { type: 'full', cluster: 'main', backup: 'full-manual-20260211-020000' },
      ['restore', 'full', 'full-manual-20260211-020000'],
    ],
    [
      // The CLI's rule: no "database" and no database of the target's name, but one user database.
      'full of a backup holding postgres and one user database, into another name',
      { type: 'full', cluster: 'main', backup: 'full-manual-20260210-020000', targetDatabase: 'app_copy' },
      ['restore', 'full', 'full-manual-20260210-020000', 'app_copy'],
    ],
    [
      'full into the database of the same name in the backup',
      { type: 'full', cluster: 'main', targetDatabase: 'crm' },
      ['restore', 'full', FULL_LATEST, 'crm'],
    ],
    [
      'partial table',
      { type: 'partial', cluster: 'main', database: 'app', table: 'sales.orders' },
      ['restore', 'partial', FULL_LATEST, 'table', 'sales.orders', 'app', '--from', 'app'],
    ],
    [
      'partial schema into another database',
      { type: 'partial', cluster: 'main', database: 'app', schema: 'sales', targetDatabase: 'scratch' },
      ['restore', 'partial', FULL_LATEST, 'schema', 'sales', 'scratch', '--from', 'app'],
    ],
    [
      'pitr to a time',
      { type: 'pitr', cluster: 'main', database: 'app', time: '2026-02-12 10:30:00' },
      ['restore', 'pitr', 'auto', 'app', '--target-time', '2026-02-12 10:30:00', '--from', 'app'],
    ],
    [
      'pitr to an LSN into another database',
      {
        type: 'pitr',
        cluster: 'main',
        backup: 'latest',
        database: 'app',
        targetDatabase: 'app_then',
        lsn: '0/5000028',
      },
      ['restore', 'pitr', 'latest', 'app_then', '--target-lsn', '0/5000028', '--from', 'app'],
    ],
    [
      'pitr to an xid',
      {
        type: 'pitr',
        cluster: 'main',
        backup: 'base-weekly-20260209-030000',
        targetDatabase: 'app',
        xid: 7415,
      },
      ['restore', 'pitr', 'base-weekly-20260209-030000', 'app', '--target-xid', '7415'],
    ],
    [
      'pitr to a restore point',
      { type: 'pitr', cluster: 'main', database: 'app', name: 'before-migration' },
      ['restore', 'pitr', 'auto', 'app', '--target-name', 'before-migration', '--from', 'app'],
    ],
    [
      'pitr, immediate',
      { type: 'pitr', cluster: 'main', database: 'app', immediate: true },
      ['restore', 'pitr', 'auto', 'app', '--immediate', '--from', 'app'],
    ],
    ['test', { type: 'test', cluster: 'main' }, ['restore', 'test', FULL_LATEST]],
    [
      'test of one database',
      { type: 'test', cluster: 'main', backup: 'full-weekly-20260208-030000', database: 'app' },
      ['restore', 'test', 'full-weekly-20260208-030000', '--from', 'app'],
    ],
  ])('%s: starts the restore task with the matching pgvault command', async (_name, payload, command) => {
    // Act
    const result = await restore(payload);

    // Assess
    expect(result).toEqual({ taskArn: TASK_ARN, command });
    const calls = ecs.commandCalls(RunTaskCommand);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.args[0].input).toEqual(expectedRunTask(command, RESTORE_DEF, 'pgvault-restore'));
    const [put] = putEvents();
    expect(put).toMatchObject({ DetailType: 'Restore Started' });
    expect(put!.detail).toMatchObject({ cluster: 'main', command: command.join(' '), taskArn: TASK_ARN });
    expect(secrets.commandCalls(GetSecretValueCommand)).toHaveLength(0);
  });

  it("uses the cluster's own restore task definition", async () => {
    // Act
    await restore({ type: 'test', cluster: 'crm' });

    // Assess
    expect(ecs.commandCalls(RunTaskCommand)[0]!.args[0].input.taskDefinition).toBe(CRM_RESTORE_DEF);
  });

  it.each([
    [
      { type: 'everything', cluster: 'main' },
      'invalid payload: "type": use one of full, partial, pitr, test',
    ],
    [{ cluster: 'main' }, 'invalid payload: "type": use one of full, partial, pitr, test'],
    [{ type: 'full' }, 'invalid payload: "cluster" is required'],
    [
      { type: 'full', cluster: 'main', backup: 'yesterday' },
      'invalid payload: "backup": use a backup id (full-daily-20260212-020000) or "latest"',
    ],
    [{ type: 'full', cluster: 'main', backup: 'auto' }, 'invalid payload: "backup": use a backup id'],
    [
      { type: 'full', cluster: 'main', database: '--clean' },
      'invalid payload: "database": must not start with "-"',
    ],
    [
      { type: 'full', cluster: 'main', targetDatabase: 'x'.repeat(64) },
      'invalid payload: "targetDatabase": longer than 63 bytes',
    ],
    [
      { type: 'full', cluster: 'main', database: 'a', from: 'b' },
      'invalid payload: "from": names b but "database" names a; give one of them',
    ],
    [{ type: 'full', cluster: 'main', time: '2026-02-12 10:30:00' }, 'invalid payload: unknown field "time"'],
    [
      { type: 'partial', cluster: 'main', database: 'app' },
      'invalid payload: "table": give either "table" or "schema", one of them',
    ],
    [
      { type: 'partial', cluster: 'main', table: 't', schema: 's' },
      'invalid payload: "schema": give either "table" or "schema", one of them',
    ],
    [{ type: 'pitr', cluster: 'main', database: 'app' }, 'invalid payload: "time": give the recovery target'],
    [
      { type: 'pitr', cluster: 'main', database: 'app', time: '2026-02-12 10:30:00', xid: 5 },
      'invalid payload: "xid": give one recovery target, not time and xid',
    ],
    [
      { type: 'pitr', cluster: 'main', database: 'app', time: 'yesterday noon' },
      'invalid payload: "time": yesterday noon is not a time',
    ],
    [{ type: 'pitr', cluster: 'main', database: 'app', lsn: 'zz' }, 'invalid payload: "lsn":'],
    [
      { type: 'pitr', cluster: 'main', database: 'app', xid: 'abc' },
      'invalid payload: "xid": --target-xid abc is not a transaction id',
    ],
    [{ type: 'pitr', cluster: 'main', database: 'app', immediate: false }, 'invalid payload: "immediate":'],
    [
      { type: 'pitr', cluster: 'main', time: '2026-02-12 10:30:00' },
      'invalid payload: "database": name the database to recover',
    ],
    [
      { type: 'test', cluster: 'main', targetDatabase: 'x' },
      'invalid payload: unknown field "targetDatabase"',
    ],
    [
      { type: 'test', cluster: 'other' },
      'invalid payload: "cluster": other is not a cluster of this deployment',
    ],
    [
      { type: 'full', cluster: 'main', backup: 'full-daily-20200101-000000' },
      'invalid payload: "backup": backup full-daily-20200101-000000 not found in s3://pgvault-vault/vault',
    ],
    [
      { type: 'full', cluster: 'main', backup: 'base-weekly-20260209-030000' },
      'invalid payload: "backup": base-weekly-20260209-030000 is a base backup; a full restore needs a full backup',
    ],
    [
      {
        type: 'pitr',
        cluster: 'main',
        backup: 'full-weekly-20260208-030000',
        database: 'app',
        immediate: true,
      },
      'invalid payload: "backup": full-weekly-20260208-030000 is a full backup; PITR needs a base backup',
    ],
    [
      { type: 'full', cluster: 'main' },
      `invalid payload: "database": backup ${FULL_LATEST} holds several databases (app, crm); name the one to restore in "database"`,
    ],
    [
      { type: 'full', cluster: 'main', targetDatabase: 'app_copy' },
      `invalid payload: "database": backup ${FULL_LATEST} holds several databases (app, crm), none named "app_copy"; name the one to restore in "database"`,
    ],
    [
      { type: 'partial', cluster: 'main', database: 'nope', table: 't' },
      `invalid payload: "database": backup ${FULL_LATEST} has no database "nope"; it holds app, crm`,
    ],
    [
      { type: 'test', cluster: 'main', backup: 'full-manual-20260211-020000', from: 'crm' },
      'invalid payload: "database": backup full-manual-20260211-020000 has no database "crm"; it holds app',
    ],
  ])('refuses %j with one line naming the field, and starts nothing', async (payload, message) => {
    // Act
    const err = (await restore(payload).catch((e: Error) => e)) as Error;

    // Assess
    expect(err.name).toBe('InvalidPayloadError');
    expect(err.message).toContain(message);
    expect(err.message.split('\n')).toHaveLength(1);
    expect(ecs.commandCalls(RunTaskCommand)).toHaveLength(0);
    expect(events.commandCalls(PutEventsCommand)).toHaveLength(0);
  });
});

describe('restore into another server (issue 12: restores never touch production)', () => {
  const TARGET = {
    host: 'restore-db.internal',
    port: 6543,
    database: 'restores',
    credentialsSecretArn: TARGET_SECRET,
  };
  /** The cluster's variables with the target's server over them, and the secret's ARN (never its value). */
  const TARGET_ENVIRONMENT = [
    { name: 'CLUSTER_NAME', value: 'main' },
    { name: 'PGHOST', value: 'restore-db.internal' },
    { name: 'PGPORT', value: '6543' },
    { name: 'PGDATABASE', value: 'restores' },
    { name: 'DEPLOYMENT_MODE', value: 'single-node' },
    { name: 'PGVAULT_PG_SECRET_ARN', value: TARGET_SECRET },
  ];

  it.each([
    [
      'full',
      { type: 'full', cluster: 'main', database: 'app', targetDatabase: 'app_copy', target: TARGET },
      ['restore', 'full', FULL_LATEST, 'app_copy', '--from', 'app'],
    ],
    [
      'partial',
      { type: 'partial', cluster: 'main', database: 'app', table: 'sales.orders', target: TARGET },
      ['restore', 'partial', FULL_LATEST, 'table', 'sales.orders', 'app', '--from', 'app'],
    ],
    [
      'pitr',
      { type: 'pitr', cluster: 'main', database: 'app', time: '2026-02-12 10:30:00', target: TARGET },
      ['restore', 'pitr', 'auto', 'app', '--target-time', '2026-02-12 10:30:00', '--from', 'app'],
    ],
  ])(
    '%s with a target: the task gets its host, port, database and secret ARN, and no secret value',
    async (_name, payload, command) => {
      // Prepare: the secret answers with the target's credentials, should anything ask.
      secrets
        .on(GetSecretValueCommand, { SecretId: TARGET_SECRET })
        .resolves({ SecretString: JSON.stringify({ username: 'restorer', password: TARGET_PASSWORD }) });
      const logged: string[] = [];
      const spies = (['log', 'info', 'warn', 'error'] as const).map((level) =>
        vi.spyOn(console, level).mockImplementation((...args: unknown[]) => {
          logged.push(args.map(String).join(' '));
        }),
      );

      // Act
      const result = await restore(payload).finally(() => {
        for (const spy of spies) spy.mockRestore();
      });

      // Assess
      expect(result).toEqual({
        taskArn: TASK_ARN,
        command,
        target: { host: 'restore-db.internal', port: 6543, database: 'restores' },
      });
      const calls = ecs.commandCalls(RunTaskCommand);
      expect(calls).toHaveLength(1);
      const input = calls[0]!.args[0].input;
      expect(input).toEqual(expectedRunTask(command, RESTORE_DEF, 'pgvault-restore', TARGET_ENVIRONMENT));
      // The task reads the secret itself: the function never does, and no value is in what it sent or logged.
      expect(secrets.commandCalls(GetSecretValueCommand)).toHaveLength(0);
      const sent = JSON.stringify([input, putEvents(), logged]);
      expect(sent).not.toContain(TARGET_PASSWORD);
      expect(sent).not.toContain('restorer');
      expect(putEvents()[0]!.detail).toMatchObject({
        command: command.join(' '),
        details: { target: { host: 'restore-db.internal', port: 6543, database: 'restores' } },
      });
    },
  );

  it('defaults the port to 5432 and the database to postgres, and without a secret uses the restore credentials', async () => {
    // Act
    await restore({ type: 'full', cluster: 'main', database: 'app', target: { host: '10.0.3.17' } });

    // Assess: no PGVAULT_PG_SECRET_ARN, so the task keeps the restore task definition's PGUSER/PGPASSWORD.
    const environment =
      ecs.commandCalls(RunTaskCommand)[0]!.args[0].input.overrides?.containerOverrides?.[0]?.environment;
    expect(environment).toEqual([
      { name: 'CLUSTER_NAME', value: 'main' },
      { name: 'PGHOST', value: '10.0.3.17' },
      { name: 'PGPORT', value: '5432' },
      { name: 'PGDATABASE', value: 'postgres' },
      { name: 'DEPLOYMENT_MODE', value: 'single-node' },
    ]);
  });

  it("blanks a Patroni cluster's PATRONI_URL and PATRONI_SECRET_ARN: the target is a plain server", async () => {
    // Act
    await restore({ type: 'full', cluster: 'crm', target: { host: 'fd00::17', port: 5433 } });

    // Assess
    const input = ecs.commandCalls(RunTaskCommand)[0]!.args[0].input;
    expect(input.taskDefinition).toBe(CRM_RESTORE_DEF);
    expect(input.overrides?.containerOverrides?.[0]?.environment).toEqual([
      { name: 'CLUSTER_NAME', value: 'crm' },
      { name: 'PGHOST', value: 'fd00::17' },
      { name: 'PGPORT', value: '5433' },
      { name: 'PGDATABASE', value: 'postgres' },
      { name: 'DEPLOYMENT_MODE', value: 'single-node' },
      { name: 'PATRONI_URL', value: '' },
      { name: 'PATRONI_SECRET_ARN', value: '' },
    ]);
  });

  const full = (target: unknown) => ({ type: 'full', cluster: 'main', database: 'app', target });
  it.each([
    [full({ host: 'db_internal' }), '"target.host": not a host name or IP address'],
    [full({ host: '-oProxyCommand' }), '"target.host": not a host name or IP address'],
    [full({ host: 'a..b' }), '"target.host": not a host name or IP address'],
    [full({ host: '999.1.1.1' }), '"target.host": not a host name or IP address'],
    [full({ host: 'db.internal/other' }), '"target.host": not a host name or IP address'],
    [full({ host: `${'a'.repeat(64)}.internal` }), '"target.host": not a host name or IP address'],
    [full({ port: 5432 }), 'invalid payload: "target.host" is required'],
    [full({ host: 'db', port: 0 }), '"target.port": use a port number, 1 to 65535'],
    [full({ host: 'db', port: 65536 }), '"target.port": use a port number, 1 to 65535'],
    [full({ host: 'db', port: 5432.5 }), '"target.port": use a port number, 1 to 65535'],
    [full({ host: 'db', port: '5432' }), '"target.port": use a port number, 1 to 65535'],
    [full({ host: 'db', database: '-d' }), '"target.database": must not start with "-"'],
    [
      full({ host: 'db', credentialsSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:db' }),
      '"target.credentialsSecretArn": use the complete ARN of a Secrets Manager secret',
    ],
    [
      full({ host: 'db', credentialsSecretArn: 'restore-db' }),
      '"target.credentialsSecretArn": use the complete ARN of a Secrets Manager secret',
    ],
    [
      full({ host: 'db', password: 'hunter2hunter2' }),
      '"target.password": credentials never go in the payload; store them in a Secrets Manager secret',
    ],
    [full({ host: 'db', username: 'admin' }), '"target.username": credentials never go in the payload'],
    [full({ host: 'db', sslmode: 'disable' }), 'invalid payload: unknown field "sslmode" in "target"'],
    [full('db.internal'), '"target": Invalid input: expected object'],
    [{ type: 'test', cluster: 'main', target: { host: 'db' } }, 'invalid payload: unknown field "target"'],
    [
      full({ host: 'db', credentialsSecretArn: UNLISTED_SECRET }),
      `invalid payload: "target.credentialsSecretArn": ${UNLISTED_SECRET} is not a restore target secret of cluster main (it has 2); add it to the cluster's restoreTargets in the deployment config and deploy, or name one of those`,
    ],
    [
      { type: 'full', cluster: 'crm', target: { host: 'db', credentialsSecretArn: TARGET_SECRET } },
      `"target.credentialsSecretArn": ${TARGET_SECRET} is not a restore target secret of cluster crm (it has none)`,
    ],
  ])('refuses %j with one line naming the field, and starts nothing', async (payload, message) => {
    // Act
    const err = (await restore(payload).catch((e: Error) => e)) as Error;

    // Assess
    expect(err.name).toBe('InvalidPayloadError');
    expect(err.message).toContain(message);
    expect(err.message.split('\n')).toHaveLength(1);
    expect(err.message).not.toContain('hunter2hunter2');
    expect(ecs.commandCalls(RunTaskCommand)).toHaveLength(0);
    expect(events.commandCalls(PutEventsCommand)).toHaveLength(0);
  });
});
