import { EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { commandOutcome, emitMetrics, publishLifecycleEvent } from '../../core/events';

/** core/events.ts: the bus is optional, a failed put is a warning, metric lines only in AWS. */

const events = mockClient(EventBridgeClient);
const BUS_ARN = 'arn:aws:events:eu-west-1:123456789012:event-bus/pgvault';
const config = parseConfig({
  CLUSTER_NAME: 'main',
  EVENT_BUS_NAME: BUS_ARN,
  ENCRYPTION: 'true',
  ENCRYPTION_KEY: 'the passphrase',
  PGVAULT_METRICS: 'emf',
});
const NOW = new Date('2026-02-12T02:10:00Z');
const STARTED = new Date('2026-02-12T02:00:00Z');

beforeEach(() => events.reset());
afterAll(() => events.restore());

describe('config', () => {
  it('reads EVENT_BUS_NAME (a name or an ARN) and resolves PGVAULT_METRICS=auto from the runtime', () => {
    expect(parseConfig({ EVENT_BUS_NAME: 'pgvault-events' }).eventBusName).toBe('pgvault-events');
    expect(config.eventBusName).toBe(BUS_ARN);
    expect(parseConfig({}).eventBusName).toBeUndefined();
    expect(parseConfig({}).metrics).toBe('off');
    expect(parseConfig({ AWS_EXECUTION_ENV: 'AWS_Lambda_nodejs22.x' }).metrics).toBe('emf');
    expect(parseConfig({ ECS_CONTAINER_METADATA_URI_V4: 'http://169.254.170.2/v4/x' }).metrics).toBe('emf');
    expect(parseConfig({ AWS_EXECUTION_ENV: 'AWS_ECS_FARGATE', PGVAULT_METRICS: 'off' }).metrics).toBe('off');
    expect(() => parseConfig({ EVENT_BUS_NAME: 'bad bus!' })).toThrow(
      'EVENT_BUS_NAME=bad bus! is not allowed; use a bus name like pgvault-events or its ARN',
    );
    expect(() => parseConfig({ PGVAULT_METRICS: 'statsd' })).toThrow(
      'PGVAULT_METRICS=statsd is not allowed; use one of auto, emf, off',
    );
  });
});

describe('publishLifecycleEvent', () => {
  it('does nothing without a bus', async () => {
    // Act
    const put = await publishLifecycleEvent(parseConfig({}), {
      kind: 'backup',
      outcome: 'succeeded',
      cluster: 'x',
    });

    // Assess
    expect(put).toBe(false);
    expect(events.calls()).toHaveLength(0);
  });

  it('puts one entry in the bus region, with the error redacted', async () => {
    // Prepare
    events.on(PutEventsCommand).resolves({ FailedEntryCount: 0, Entries: [{ EventId: 'e' }] });

    // Act
    const put = await publishLifecycleEvent(
      config,
      { kind: 'restore', outcome: 'failed', cluster: 'main', error: 'bad key the passphrase here' },
      { now: NOW },
    );

    // Assess
    expect(put).toBe(true);
    const input = events.commandCalls(PutEventsCommand)[0]!.args[0].input;
    expect(input.Entries).toHaveLength(1);
    expect(input.Entries![0]).toMatchObject({
      EventBusName: BUS_ARN,
      Source: 'pgvault',
      DetailType: 'Restore Failed',
      Time: NOW,
    });
    expect(JSON.parse(input.Entries![0]!.Detail!)).toEqual({
      version: 1,
      outcome: 'failed',
      cluster: 'main',
      error: 'bad key *** here',
      host: expect.any(String),
      at: NOW.toISOString(),
    });
    expect(await events.commandCalls(PutEventsCommand)[0]!.thisValue.config.region()).toBe('eu-west-1');
  });

  it.each([
    [
      'a rejected call',
      () => events.on(PutEventsCommand).rejects(new Error('AccessDeniedException: not allowed')),
      'AccessDeniedException: not allowed',
    ],
    [
      'a failed entry',
      () =>
        events.on(PutEventsCommand).resolves({
          FailedEntryCount: 1,
          Entries: [{ ErrorCode: 'InternalFailure', ErrorMessage: 'try again' }],
        }),
      'InternalFailure: try again',
    ],
  ])('turns %s into one warning line and never throws', async (_name, prepare, reason) => {
    // Prepare
    prepare();
    const lines: string[] = [];

    // Act
    const put = await publishLifecycleEvent(
      config,
      { kind: 'drill', outcome: 'succeeded', cluster: 'main' },
      { warn: (l) => lines.push(l) },
    );

    // Assess
    expect(put).toBe(false);
    expect(lines).toEqual([
      `pgvault: warning: lifecycle event "Drill Succeeded" not put on ${BUS_ARN}: ${reason}`,
    ]);
  });
});

describe('emitMetrics', () => {
  it('writes one embedded-metric-format line, or nothing outside AWS', () => {
    // Prepare
    const lines: string[] = [];
    const metrics = [
      { name: 'DrillRtoSeconds', value: 42.5, unit: 'Seconds' as const },
      { name: 'Skipped', value: Number.NaN, unit: 'None' as const },
    ];

    // Act
    emitMetrics(parseConfig({}), 'main', metrics, { writeMetric: (l) => lines.push(l) });
    emitMetrics(config, 'main', metrics, { writeMetric: (l) => lines.push(l), now: NOW });

    // Assess
    expect(lines.map((l) => JSON.parse(l))).toEqual([
      {
        _aws: {
          Timestamp: NOW.getTime(),
          CloudWatchMetrics: [
            {
              Namespace: 'pgvault',
              Dimensions: [['Cluster']],
              Metrics: [{ Name: 'DrillRtoSeconds', Unit: 'Seconds' }],
            },
          ],
        },
        Cluster: 'main',
        DrillRtoSeconds: 42.5,
      },
    ]);
  });
});

describe('commandOutcome', () => {
  const base = { cluster: 'main', startedAt: STARTED, finishedAt: NOW };

  it('records a drill with its RTO and RPO', () => {
    // Act
    const record = commandOutcome({
      ...base,
      commandPath: 'drill',
      args: ['--pitr'],
      result: {
        kind: 'pitr',
        backupId: 'base-weekly-20260209-030000',
        rtoMs: 90_000,
        rpoMs: 3_600_000,
        tables: 6,
        rows: 5214,
        restoredTo: '2026-02-12 01:00:00',
      },
    });

    // Assess
    expect(record).toEqual({
      event: {
        kind: 'drill',
        outcome: 'succeeded',
        cluster: 'main',
        command: 'drill --pitr',
        origin: 'cli',
        backupId: 'base-weekly-20260209-030000',
        durationMs: 90_000,
        startedAt: STARTED.toISOString(),
        finishedAt: NOW.toISOString(),
        details: {
          tables: 6,
          rows: 5214,
          restoredTo: '2026-02-12 01:00:00',
          rtoMs: 90_000,
          rpoMs: 3_600_000,
          drill: 'pitr',
        },
      },
      metrics: [
        { name: 'DrillSucceeded', value: 1, unit: 'Count' },
        { name: 'DrillRtoSeconds', value: 90, unit: 'Seconds' },
        { name: 'DrillRpoSeconds', value: 3600, unit: 'Seconds' },
      ],
      dimensions: undefined,
    });
  });

  it('records verify all with faults as failed, with the first fault', () => {
    // Act
    const record = commandOutcome({
      ...base,
      commandPath: 'verify all',
      args: [],
      exitCode: 3,
      result: {
        ok: false,
        mode: 'full',
        backups: 4,
        durationMs: 1200,
        faults: [{ problem: 'sha256 differs' }],
        wal: { rpoSeconds: 30 },
      },
    });

    // Assess
    expect(record!.event).toMatchObject({
      kind: 'verification',
      outcome: 'failed',
      error: 'sha256 differs',
      details: { mode: 'full', backups: 4, faults: 1, firstFault: 'sha256 differs', exitCode: 3 },
    });
    expect(record!.metrics).toEqual([
      { name: 'VerificationFailed', value: 1, unit: 'Count' },
      { name: 'VerificationFaults', value: 1, unit: 'Count' },
    ]);
  });

  it('records nothing for the commands PostgreSQL runs per WAL file, or for listings', () => {
    for (const commandPath of ['backup wal', 'restore wal', 'restore list', 'backup stats', 'wal receive']) {
      expect(commandOutcome({ ...base, commandPath, args: [] })).toBeUndefined();
    }
  });
});
