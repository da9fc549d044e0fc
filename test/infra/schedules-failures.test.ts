import { Stack } from 'aws-cdk-lib';
import { Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseDeployConfig } from '../../infra/config';
import { heartbeatHours, scheduleIntervalHours } from '../../infra/constructs/schedules';
import type { PgvaultStack } from '../../infra/stack';
import { type CfnJson, resourcesOf, synthTemplate, testConfig } from './synth';

// Issue 12, "Network and cost": schedules spread over a window, failed function runs kept and alarmed,
// per-cluster heartbeats that treat missing data as breaching. One synth of the example configuration.
let template: Template;
let stack: PgvaultStack;
let fleetTemplate: Template;
beforeAll(() => {
  const result = synthTemplate(testConfig());
  ({ template, stack } = result);
  fleetTemplate = result.fleets[0]!.template;
}, 120_000);

const logicalId = (c: { node: { defaultChild?: unknown } }) => {
  const child = c.node.defaultChild as Parameters<PgvaultStack['getLogicalId']>[0];
  return Stack.of(child).getLogicalId(child);
};
const alarms = (t: Template) => resourcesOf(t, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);

describe('schedules spread over a flexible window', () => {
  it('every schedule of the fleet starts within a 15-minute flexible window by default', () => {
    const schedules = resourcesOf(fleetTemplate, 'AWS::Scheduler::Schedule').map(([, s]) => s.Properties);
    expect(schedules.length).toBe(18);
    for (const s of schedules) {
      expect(s.FlexibleTimeWindow, s.Name).toEqual({ Mode: 'FLEXIBLE', MaximumWindowInMinutes: 15 });
    }
  });

  it('scheduleWindowMinutes sets the window; 0 turns it off (on the minute)', () => {
    for (const [minutes, expected] of [
      [45, { Mode: 'FLEXIBLE', MaximumWindowInMinutes: 45 }],
      [0, { Mode: 'OFF' }],
    ] as const) {
      const { fleets } = synthTemplate(testConfig({ scheduleWindowMinutes: minutes }));
      const windows = resourcesOf(fleets[0]!.template, 'AWS::Scheduler::Schedule').map(
        ([, s]) => s.Properties.FlexibleTimeWindow,
      );
      expect(windows.length).toBe(18);
      for (const w of windows) expect(w).toEqual(expected);
    }
  }, 120_000);

  it('a window over Scheduler’s 1440 minutes is refused with one line naming the key', () => {
    const example = JSON.parse(JSON.stringify(testConfig()));
    expect(() => parseDeployConfig({ ...example, scheduleWindowMinutes: 1441 }, 'my.json')).toThrow(
      /^pgvault deploy config my\.json: scheduleWindowMinutes: .*1440/,
    );
  });
});

describe('failed function runs are kept and alarmed', () => {
  it('every function has an on-failure destination (the failed-runs queue) with 2 retries', () => {
    const queue = logicalId(stack.functions.failedRuns);
    const configs = resourcesOf(template, 'AWS::Lambda::EventInvokeConfig').map(([, c]) => c.Properties);
    const functions = Object.values(stack.functions.functions).map((f) => logicalId(f));
    expect(configs.map((c) => c.FunctionName.Ref).sort()).toEqual([...functions].sort());
    for (const c of configs) {
      expect(c.MaximumRetryAttempts).toBe(2);
      expect(c.MaximumEventAgeInSeconds).toBe(6 * 3600);
      expect(c.DestinationConfig).toEqual({ OnFailure: { Destination: { 'Fn::GetAtt': [queue, 'Arn'] } } });
    }
    template.hasResourceProperties('AWS::SQS::Queue', {
      SqsManagedSseEnabled: true,
      MessageRetentionPeriod: 14 * 86400,
    });
    // Each function's role may send to it.
    const senders = resourcesOf(template, 'AWS::IAM::Policy').filter(([, p]) =>
      JSON.stringify(p.Properties.PolicyDocument).includes(`"${queue}"`),
    );
    expect(senders.length).toBeGreaterThanOrEqual(5);
    expect(JSON.stringify(senders.map(([, p]) => p.Properties.PolicyDocument))).toContain('sqs:SendMessage');
  });

  it('the first message in the failed-runs queue alarms into the alert topic', () => {
    const queue = logicalId(stack.functions.failedRuns);
    const topic = logicalId(stack.alerts.topic);
    const alarm = alarms(template).find((a) =>
      JSON.stringify(a.Dimensions ?? []).includes(`"${queue}"`),
    ) as CfnJson;
    expect(alarm).toBeDefined();
    expect(alarm).toMatchObject({
      Namespace: 'AWS/SQS',
      MetricName: 'ApproximateNumberOfMessagesVisible',
      Threshold: 1,
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      AlarmActions: [{ Ref: topic }],
    });
  });
});

describe('per-cluster heartbeats', () => {
  it('schedule intervals: daily 24 h, weekly 168 h, rate(...) as given, irregular none', () => {
    expect(scheduleIntervalHours('0 2 * * *')).toBe(24);
    expect(scheduleIntervalHours('0 3 * * 0')).toBe(168);
    expect(scheduleIntervalHours('rate(6 hours)')).toBe(6);
    expect(scheduleIntervalHours('0 4 1 * *')).toBeUndefined();
    expect(scheduleIntervalHours('0 */6 * * *')).toBeUndefined();
    expect(heartbeatHours('0 2 * * *', 15)).toBe(27);
    expect(heartbeatHours('0 2 * * *', 0)).toBe(26);
    // Weekly plus window and slack is over CloudWatch's 7 days: no heartbeat rather than a false one.
    expect(heartbeatHours('0 3 * * 0', 15)).toBeUndefined();
    expect(heartbeatHours(null, 15)).toBeUndefined();
  });

  it('no successful full backup or no report for 27 h alarms, missing data breaching, per cluster', () => {
    for (const cluster of ['main', 'orders']) {
      const backup = alarms(fleetTemplate).find(
        (a) => a.MetricName === 'BackupSucceeded' && JSON.stringify(a.Dimensions).includes(`"${cluster}"`),
      ) as CfnJson;
      expect(backup, cluster).toMatchObject({
        Namespace: 'pgvault',
        Statistic: 'SampleCount',
        Period: 3600,
        EvaluationPeriods: 27,
        DatapointsToAlarm: 27,
        Threshold: 1,
        ComparisonOperator: 'LessThanThreshold',
        TreatMissingData: 'breaching',
      });
      expect(backup.Dimensions).toEqual(
        expect.arrayContaining([
          { Name: 'Cluster', Value: cluster },
          { Name: 'BackupType', Value: 'full' },
        ]),
      );
      const report = alarms(fleetTemplate).find(
        (a) => a.MetricName === 'ReportSucceeded' && JSON.stringify(a.Dimensions).includes(`"${cluster}"`),
      ) as CfnJson;
      expect(report, cluster).toMatchObject({
        Namespace: 'pgvault',
        EvaluationPeriods: 27,
        TreatMissingData: 'breaching',
        ComparisonOperator: 'LessThanThreshold',
        Dimensions: [{ Name: 'Cluster', Value: cluster }],
      });
      // Into the alert topic, as the cluster's other alarms.
      const age = alarms(fleetTemplate).find(
        (a) => a.MetricName === 'BackupAgeHours' && JSON.stringify(a.Dimensions).includes(`"${cluster}"`),
      ) as CfnJson;
      for (const a of [backup, report]) {
        expect(a.AlarmActions).toHaveLength(1);
        expect(a.AlarmActions).toEqual(age.AlarmActions);
      }
    }
  });

  it('the task log group turns BackupSucceeded into a metric by cluster and backup type', () => {
    template.hasResourceProperties('AWS::Logs::MetricFilter', {
      FilterPattern: Match.stringLikeRegexp('\\$\\.BackupSucceeded >= 0.*\\$\\.BackupType'),
      MetricTransformations: [
        Match.objectLike({
          MetricNamespace: 'pgvault',
          MetricName: 'BackupSucceeded',
          MetricValue: '$.BackupSucceeded',
          Dimensions: Match.arrayWith([
            { Key: 'Cluster', Value: '$.Cluster' },
            { Key: 'BackupType', Value: '$.BackupType' },
          ]),
        }),
      ],
    });
  });

  it('a job turned off has no heartbeat; a 6-hourly full backup gets a 9 h one', () => {
    const base = testConfig();
    const { fleets } = synthTemplate(
      testConfig({
        schedules: { ...base.schedules, fullDaily: 'rate(6 hours)', report: null },
        scheduleWindowMinutes: 30,
      }),
    );
    const list = alarms(fleets[0]!.template);
    expect(list.filter((a) => a.MetricName === 'ReportSucceeded')).toEqual([]);
    const backup = list.filter((a) => a.MetricName === 'BackupSucceeded');
    expect(backup).toHaveLength(2);
    for (const a of backup) expect(a.EvaluationPeriods).toBe(9);
  }, 120_000);
});
