import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PublishCommand, SNSClient } from '@aws-sdk/client-sns';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { commandFailedAlert, failureAlertWanted, sendFailureAlert } from '../../core/alert/failure';
import { sendAlerts } from '../../core/alert/notify';
import type { Alert } from '../../core/alert/types';
import { parseConfig } from '../../core/config';
import { UsageError } from '../../core/errors';

const sns = mockClient(SNSClient);
const TOPIC = 'arn:aws:sns:eu-west-1:123456789012:pgvault-alerts';
const NOW = new Date('2026-02-12T06:00:00Z');
const work = mkdtempSync(join(tmpdir(), 'pgvault-alert-unit-'));

const config = parseConfig({
  BACKUP_DIR: join(work, 'backups'),
  CLUSTER_NAME: 'main',
  SNS_TOPIC_ARN: TOPIC,
  ENCRYPTION: 'true',
  ENCRYPTION_KEY: 'correct horse battery staple',
  PGPASSWORD: 's3cret-pg-password',
});

const capacityAlert: Alert = {
  kind: 'capacity',
  severity: 'critical',
  cluster: 'main',
  title: 'storage 86% full',
  what: 'file:///var/backups/postgresql is 86.0% full (of its disk; ALERT_CAPACITY_PERCENT 80%), 14.0 GiB free',
  since: '2026-02-11T18:30:00.000Z',
  sinceKind: 'estimated',
  nextStep: 'pgvault backup retention --dry-run',
  hint: 'Then apply it (pgvault backup retention), lower RETENTION_DAYS/WEEKS/MONTHS, or grow the volume.',
};

beforeEach(() => {
  sns.reset();
});

afterAll(() => {
  sns.restore();
  rmSync(work, { recursive: true, force: true });
});

describe('sendAlerts', () => {
  it('publishes one SNS message per alert with the exact subject and body, and prints one line', async () => {
    // Prepare
    sns.on(PublishCommand).resolves({ MessageId: 'm-1' });
    const lines: string[] = [];

    // Act
    const result = await sendAlerts(config, [capacityAlert], { write: (l) => lines.push(l), now: NOW });

    // Assess
    expect(result).toEqual({ lines, published: 1, failures: [] });
    expect(lines).toEqual([
      'pgvault: ALERT [main] file:///var/backups/postgresql is 86.0% full (of its disk; ALERT_CAPACITY_PERCENT 80%), 14.0 GiB free (since about 2026-02-11 18:30:00 UTC); next: pgvault backup retention --dry-run',
    ]);
    const calls = sns.commandCalls(PublishCommand);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.args[0].input).toEqual({
      TopicArn: TOPIC,
      Subject: 'pgvault ALERT [main]: storage 86% full',
      Message: [
        'pgvault alert for cluster main',
        '',
        'What failed: file:///var/backups/postgresql is 86.0% full (of its disk; ALERT_CAPACITY_PERCENT 80%), 14.0 GiB free',
        'Since: 2026-02-11 18:30:00 UTC (estimated)',
        'Next step: pgvault backup retention --dry-run',
        'Then apply it (pgvault backup retention), lower RETENTION_DAYS/WEEKS/MONTHS, or grow the volume.',
        '',
        `Host: ${hostname()}`,
        'Checked: 2026-02-12 06:00:00 UTC',
        '',
      ].join('\n'),
      MessageAttributes: {
        cluster: { DataType: 'String', StringValue: 'main' },
        kind: { DataType: 'String', StringValue: 'capacity' },
        severity: { DataType: 'String', StringValue: 'critical' },
      },
    });
  });

  it('uses the topic region and sends nothing to SNS without SNS_TOPIC_ARN', async () => {
    // Prepare
    sns.on(PublishCommand).resolves({ MessageId: 'm-2' });
    const lines: string[] = [];
    const withoutTopic = parseConfig({ BACKUP_DIR: join(work, 'backups') });

    // Act
    await sendAlerts(config, [capacityAlert], { write: () => {}, now: NOW });
    const region = await (sns.send.thisValues[0] as SNSClient).config.region();
    const result = await sendAlerts(withoutTopic, [capacityAlert], { write: (l) => lines.push(l), now: NOW });

    // Assess
    expect(region).toBe('eu-west-1');
    expect(result.published).toBe(0);
    expect(lines).toHaveLength(1);
    expect(sns.commandCalls(PublishCommand)).toHaveLength(1);
  });

  it('turns a failing publish into one warning line and never throws', async () => {
    // Prepare
    sns.on(PublishCommand).rejects(
      Object.assign(new Error('User is not authorized to perform SNS:Publish'), {
        name: 'AuthorizationError',
      }),
    );
    const lines: string[] = [];

    // Act
    const result = await sendAlerts(config, [capacityAlert, { ...capacityAlert, title: 'second' }], {
      write: (l) => lines.push(l),
      now: NOW,
    });

    // Assess
    expect(result.published).toBe(0);
    expect(lines).toHaveLength(3);
    expect(lines[2]).toBe(
      `pgvault: warning: alert "pgvault ALERT [main]: storage 86% full" not sent to ${TOPIC}: User is not authorized to perform SNS:Publish (and 1 more alert(s) not sent)`,
    );
  });

  it('keeps secrets out of every message', async () => {
    // Prepare
    sns.on(PublishCommand).resolves({ MessageId: 'm-3' });
    const leaky: Alert = {
      ...capacityAlert,
      what: 'pg_dump failed: password "s3cret-pg-password" rejected; key correct horse battery staple; s3://AKIA:wJalr@host/b',
    };
    const lines: string[] = [];

    // Act
    await sendAlerts(config, [leaky], { write: (l) => lines.push(l), now: NOW });

    // Assess
    const published = sns.commandCalls(PublishCommand)[0]!.args[0].input;
    const everything = [...lines, published.Subject, published.Message].join('\n');
    expect(everything).not.toContain('s3cret-pg-password');
    expect(everything).not.toContain('correct horse battery staple');
    expect(everything).not.toContain('wJalr');
    expect(published.Message).toContain(
      'What failed: pg_dump failed: password "***" rejected; key ***; s3://***@host/b',
    );
  });

  it('sets the FIFO message group and deduplication id for a .fifo topic', async () => {
    // Prepare
    sns.on(PublishCommand).resolves({ MessageId: 'm-4' });
    const fifo = { ...config, alerts: { ...config.alerts, snsTopicArn: `${TOPIC}.fifo` } };

    // Act
    await sendAlerts(fifo, [capacityAlert], { write: () => {}, now: NOW });

    // Assess
    const input = sns.commandCalls(PublishCommand)[0]!.args[0].input;
    expect(input.MessageGroupId).toBe('main');
    expect(input.MessageDeduplicationId).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('failure alerts', () => {
  it('are sent for backup, restore, verify and drill commands, not for the per-WAL-file ones', () => {
    // Assess
    expect(
      ['backup full', 'backup base', 'restore full', 'verify all', 'verify report', 'drill'].map(
        failureAlertWanted,
      ),
    ).toEqual([true, true, true, true, true, true]);
    expect(['backup wal', 'restore wal', 'wal receive', 'backup schedule'].map(failureAlertWanted)).toEqual([
      false,
      false,
      false,
      false,
    ]);
  });

  it('name the command, the error, since when, and the exact command to run again', async () => {
    // Prepare
    sns.on(PublishCommand).resolves({ MessageId: 'm-5' });
    const configFile = join(work, 'pgvault.env');
    writeFileSync(configFile, `BACKUP_DIR=${work}/b\nCLUSTER_NAME=main\nSNS_TOPIC_ARN=${TOPIC}\n`);
    const started = new Date('2026-02-12T02:00:00Z');
    const lines: string[] = [];

    // Act
    const result = await sendFailureAlert({
      configFile,
      commandPath: 'backup full',
      argv: ['--config', configFile, 'backup', 'full', 'daily', '--database', 'my app'],
      error: new UsageError('database "my app" does not exist; see `psql -l`'),
      startedAt: started,
      write: (l) => lines.push(l),
    });

    // Assess: no stderr line of its own (the command's error line is the line).
    expect(result?.published).toBe(1);
    expect(lines).toEqual([]);
    const input = sns.commandCalls(PublishCommand)[0]!.args[0].input;
    expect(input.Subject).toBe('pgvault ALERT [main]: backup failed (pgvault backup full)');
    const body = (input.Message ?? '').split('\n');
    expect(body[body.length - 2]).toMatch(/^Checked: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);
    expect(body.filter((l) => !l.startsWith('Checked: '))).toEqual([
      'pgvault alert for cluster main',
      '',
      'What failed: pgvault backup full failed: database "my app" does not exist; see `psql -l`',
      'Since: 2026-02-12 02:00:00 UTC',
      `Next step: pgvault --config ${configFile} backup full daily --database 'my app'`,
      'Fix the cause named above, then run the command again.',
      '',
      `Host: ${hostname()}`,
      '',
    ]);
  });

  it('send nothing without a readable config or a topic', async () => {
    // Act
    const noConfig = await sendFailureAlert({
      configFile: join(work, 'missing.env'),
      commandPath: 'backup full',
      argv: [],
      error: new Error('x'),
      startedAt: NOW,
    });
    const alert = commandFailedAlert({
      cluster: 'main',
      commandPath: 'verify restore',
      argv: ['verify', 'restore', 'latest', '--json'],
      error: new Error('restored row counts differ\nsecond line'),
      startedAt: NOW,
    });

    // Assess
    expect(noConfig).toBeUndefined();
    expect(sns.commandCalls(PublishCommand)).toHaveLength(0);
    expect(alert).toMatchObject({
      title: 'verification failed (pgvault verify restore)',
      what: 'pgvault verify restore failed: restored row counts differ',
      nextStep: 'pgvault verify restore latest',
    });
  });
});
