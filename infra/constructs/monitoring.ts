import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as sns from 'aws-cdk-lib/aws-sns';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import {
  BACKUP_TYPE_DIMENSION,
  CLUSTER_DIMENSION,
  FAILURE_ALARMS,
  METRIC_NAMESPACE,
  METRICS,
  type MetricKey,
  TASK_METRICS,
} from '../metrics';

export interface MonitoringProps {
  readonly topic: sns.ITopic;
  readonly ecsCluster: ecs.ICluster;
  readonly taskLogGroup: logs.ILogGroup;
  readonly functions: Readonly<Record<string, lambda.IFunction>>;
  readonly deadLetterQueue: sqs.IQueue;
  /** The functions' on-failure destination (Functions.failedRuns). */
  readonly failedRuns: sqs.IQueue;
  readonly dashboardName: string;
}

export interface ClusterMonitoringProps {
  readonly topic: sns.ITopic;
  readonly clusters: readonly string[];
  readonly walReceivers: ReadonlyMap<string, ecs.FargateService>;
  readonly thresholds: {
    readonly backupAgeHours: number;
    readonly rpoTargetMinutes: number;
    readonly rtoTargetMinutes: number;
    readonly maxBackupDurationMinutes: number;
    readonly capacityPercent: number;
  };
  /** STORAGE_QUOTA_GB; no storage alarm without it. */
  readonly storageQuotaGb?: number;
  /** Success metrics that must keep arriving (missing data breaches): one alarm per cluster each. */
  readonly heartbeats?: readonly Heartbeat[];
  readonly dashboardName: string;
}

/** A success metric expected at least once every `hours` per cluster (heartbeatHours in schedules.ts). */
export interface Heartbeat {
  /** Construct id suffix and what the alarm name says stopped. */
  readonly id: string;
  readonly what: string;
  readonly key: MetricKey;
  /** Dimensions besides Cluster (BackupType: full). */
  readonly dimensions?: Readonly<Record<string, string>>;
  readonly hours: number;
}

/**
 * What the deployment watches as a whole (the shared stack): a stopped task with a non-zero exit (or
 * killed for memory) becomes a backup-failure message in the topic; the metric filters turning the
 * tasks' EMF lines into metrics; function errors and schedule dead letters; the deployment dashboard.
 * Per-cluster alarms and dashboards are in the fleet stacks (ClusterMonitoring).
 */
export class Monitoring extends Construct {
  public readonly taskFailureRule: events.Rule;
  public readonly alarms: cloudwatch.Alarm[] = [];
  public readonly dashboard: cloudwatch.Dashboard;

  constructor(scope: Construct, id: string, props: MonitoringProps) {
    super(scope, id);

    this.taskFailureRule = new events.Rule(this, 'TaskFailed', {
      description: 'pgvault: a backup, verification or restore task stopped with an error',
      eventPattern: {
        source: ['aws.ecs'],
        detailType: ['ECS Task State Change'],
        detail: {
          clusterArn: [props.ecsCluster.clusterArn],
          lastStatus: ['STOPPED'],
          $or: [
            { containers: { exitCode: [{ 'anything-but': 0 }] } },
            { containers: { reason: [{ prefix: 'OutOfMemoryError' }] } },
            { stopCode: ['TaskFailedToStart'] },
          ],
        },
      },
    });
    this.taskFailureRule.addTarget(
      new targets.SnsTopic(props.topic, {
        message: events.RuleTargetInput.fromText(
          `pgvault ALERT: task ${events.EventField.fromPath('$.detail.group')} ` +
            `(${events.EventField.fromPath('$.detail.taskDefinitionArn')}) stopped: ` +
            `${events.EventField.fromPath('$.detail.stoppedReason')}; ` +
            `exit ${events.EventField.fromPath('$.detail.containers[0].exitCode')} ` +
            `${events.EventField.fromPath('$.detail.containers[0].reason')}. ` +
            `Task ${events.EventField.fromPath('$.detail.taskArn')}; logs in CloudWatch under the task's stream.`,
        ),
      }),
    );

    // The awslogs driver does not extract EMF: one metric filter per task metric does.
    for (const key of TASK_METRICS) {
      const m = METRICS[key];
      new logs.MetricFilter(this, `TaskMetric-${m.name}`, {
        logGroup: props.taskLogGroup,
        metricNamespace: METRIC_NAMESPACE,
        metricName: m.name,
        metricValue: `$.${m.name}`,
        filterPattern: logs.FilterPattern.all(
          logs.FilterPattern.stringValue('$._aws.CloudWatchMetrics[0].Namespace', '=', METRIC_NAMESPACE),
          logs.FilterPattern.numberValue(`$.${m.name}`, '>=', 0),
        ),
        dimensions: { [CLUSTER_DIMENSION]: `$.${CLUSTER_DIMENSION}` },
        unit: m.unit === 'None' ? undefined : (m.unit as cloudwatch.Unit),
      });
    }

    // Successful backups by type: the full backups' heartbeat (ClusterMonitoring) counts BackupType=full.
    const succeeded = METRICS.backupSucceeded.name;
    new logs.MetricFilter(this, `TaskMetric-${succeeded}`, {
      logGroup: props.taskLogGroup,
      metricNamespace: METRIC_NAMESPACE,
      metricName: succeeded,
      metricValue: `$.${succeeded}`,
      filterPattern: logs.FilterPattern.all(
        logs.FilterPattern.stringValue('$._aws.CloudWatchMetrics[0].Namespace', '=', METRIC_NAMESPACE),
        logs.FilterPattern.numberValue(`$.${succeeded}`, '>=', 0),
        logs.FilterPattern.exists(`$.${BACKUP_TYPE_DIMENSION}`),
      ),
      dimensions: {
        [CLUSTER_DIMENSION]: `$.${CLUSTER_DIMENSION}`,
        [BACKUP_TYPE_DIMENSION]: `$.${BACKUP_TYPE_DIMENSION}`,
      },
      unit: cloudwatch.Unit.COUNT,
    });

    const action = new actions.SnsAction(props.topic);
    const add = (alarm: cloudwatch.Alarm): void => {
      alarm.addAlarmAction(action);
      this.alarms.push(alarm);
    };

    add(
      props.deadLetterQueue
        .metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(5) })
        .createAlarm(this, 'ScheduleDeadLetters', {
          alarmName: 'pgvault: a scheduled job could not be started (dead-letter queue)',
          threshold: 1,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          evaluationPeriods: 1,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        }),
    );
    // A scheduled function that failed after Lambda's retries: its event is in the failed-runs queue.
    add(
      props.failedRuns
        .metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(5) })
        .createAlarm(this, 'FailedRuns', {
          alarmName: 'pgvault: a scheduled function failed after its retries (failed-runs queue)',
          alarmDescription:
            'A function invoked asynchronously (a schedule) failed after Lambda retried it; the event and the error are messages of the failed-runs queue.',
          threshold: 1,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          evaluationPeriods: 1,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        }),
    );
    const errorMetrics: cloudwatch.IMetric[] = [];
    for (const [name, fn] of Object.entries(props.functions)) {
      const errors = fn.metricErrors({ period: Duration.minutes(5), statistic: 'Sum' });
      errorMetrics.push(errors.with({ label: name }));
      add(
        errors.createAlarm(this, `${name}-Errors`, {
          alarmName: `pgvault: ${name} function failed`,
          threshold: 1,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          evaluationPeriods: 1,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        }),
      );
    }

    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: props.dashboardName,
      defaultInterval: Duration.days(14),
      widgets: [
        [
          new cloudwatch.AlarmStatusWidget({
            title: 'pgvault alarms',
            alarms: this.alarms,
            width: 24,
            height: 6,
          }),
        ],
        [
          new cloudwatch.GraphWidget({ title: 'Function errors', left: errorMetrics, width: 12 }),
          new cloudwatch.LogQueryWidget({
            title: 'Task errors (last lines)',
            logGroupNames: [props.taskLogGroup.logGroupName],
            queryLines: [
              'fields @timestamp, @logStream, @message',
              'filter @message like /pgvault: /',
              'sort @timestamp desc',
              'limit 50',
            ],
            width: 12,
          }),
        ],
      ],
    });
  }
}

/** CloudWatch allows up to 100 alarms in one alarm status widget. */
const ALARMS_PER_STATUS_WIDGET = 100;

/**
 * One fleet stack's per-cluster alarms (into the topic) and its dashboard: the pgvault metrics have
 * alarms on their targets, failures alarm at the first one.
 */
export class ClusterMonitoring extends Construct {
  public readonly alarms: cloudwatch.Alarm[] = [];
  public readonly dashboard: cloudwatch.Dashboard;

  constructor(scope: Construct, id: string, props: ClusterMonitoringProps) {
    super(scope, id);
    const t = props.thresholds;
    const action = new actions.SnsAction(props.topic);
    const add = (alarm: cloudwatch.Alarm): void => {
      alarm.addAlarmAction(action);
      this.alarms.push(alarm);
    };
    const metric = (
      key: MetricKey,
      cluster: string,
      statistic: string,
      period: Duration,
    ): cloudwatch.Metric =>
      new cloudwatch.Metric({
        namespace: METRIC_NAMESPACE,
        metricName: METRICS[key].name,
        dimensionsMap: { [CLUSTER_DIMENSION]: cluster },
        statistic,
        period,
      });

    const widgets: cloudwatch.IWidget[][] = [];
    for (const cluster of props.clusters) {
      add(
        metric('backupAgeHours', cluster, 'Maximum', Duration.hours(1)).createAlarm(
          this,
          `${cluster}-BackupAge`,
          {
            alarmName: `pgvault ${cluster}: newest backup older than ${t.backupAgeHours} h`,
            threshold: t.backupAgeHours,
            comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluationPeriods: 1,
            treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
          },
        ),
      );
      add(
        metric('rpoSeconds', cluster, 'Maximum', Duration.minutes(5)).createAlarm(this, `${cluster}-Rpo`, {
          alarmName: `pgvault ${cluster}: RPO over ${t.rpoTargetMinutes} min`,
          threshold: t.rpoTargetMinutes * 60,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
          evaluationPeriods: 1,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        }),
      );
      add(
        metric('drillRtoSeconds', cluster, 'Maximum', Duration.hours(1)).createAlarm(
          this,
          `${cluster}-DrillRto`,
          {
            alarmName: `pgvault ${cluster}: drill RTO over ${t.rtoTargetMinutes} min`,
            threshold: t.rtoTargetMinutes * 60,
            comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluationPeriods: 1,
            treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
          },
        ),
      );
      add(
        metric('backupDurationSeconds', cluster, 'Maximum', Duration.hours(1)).createAlarm(
          this,
          `${cluster}-BackupDuration`,
          {
            alarmName: `pgvault ${cluster}: backup took over ${t.maxBackupDurationMinutes} min`,
            threshold: t.maxBackupDurationMinutes * 60,
            comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluationPeriods: 1,
            treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
          },
        ),
      );
      // Drill, restore and verification failures: the first one alarms. A task that failed also stops
      // with a non-zero exit (the task rule above); a verify function that found faults does not fail.
      for (const { key, what } of FAILURE_ALARMS) {
        add(
          metric(key, cluster, 'Sum', Duration.minutes(5)).createAlarm(
            this,
            `${cluster}-${METRICS[key].name}`,
            {
              alarmName: `pgvault ${cluster}: ${what}`,
              alarmDescription: `pgvault ${METRICS[key].name} >= 1 for cluster ${cluster}: see the alert mail and the lifecycle event for the error`,
              threshold: 1,
              comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
              evaluationPeriods: 1,
              treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
            },
          ),
        );
      }
      // Heartbeats: no success for `hours` (no data at all counts) means the job stopped running, or
      // runs and fails in a way no other alarm sees (a schedule deleted, a task that never starts).
      for (const hb of props.heartbeats ?? []) {
        add(
          new cloudwatch.Metric({
            namespace: METRIC_NAMESPACE,
            metricName: METRICS[hb.key].name,
            dimensionsMap: { [CLUSTER_DIMENSION]: cluster, ...hb.dimensions },
            statistic: 'SampleCount',
            period: Duration.hours(1),
          }).createAlarm(this, `${cluster}-${hb.id}`, {
            alarmName: `pgvault ${cluster}: no ${hb.what} in ${hb.hours} h`,
            alarmDescription: `pgvault ${METRICS[hb.key].name} missing for ${hb.hours} hours for cluster ${cluster}: the job stopped running or never succeeds; missing data counts as breaching`,
            threshold: 1,
            comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluationPeriods: hb.hours,
            datapointsToAlarm: hb.hours,
            treatMissingData: cloudwatch.TreatMissingData.BREACHING,
          }),
        );
      }
      // A sudden shrink: the stored size falls below the band learned from earlier backups.
      const sizeAlarm = new cloudwatch.AnomalyDetectionAlarm(this, `${cluster}-BackupSize`, {
        alarmName: `pgvault ${cluster}: backup size unusually small`,
        metric: metric('backupStoredBytes', cluster, 'Minimum', Duration.hours(1)),
        stdDevs: 3,
        comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_LOWER_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      add(sizeAlarm);
      if (props.storageQuotaGb !== undefined) {
        add(
          metric('storageUsedPercent', cluster, 'Maximum', Duration.hours(1)).createAlarm(
            this,
            `${cluster}-Storage`,
            {
              alarmName: `pgvault ${cluster}: vault over ${t.capacityPercent}% of ${props.storageQuotaGb} GB`,
              threshold: t.capacityPercent,
              comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
              evaluationPeriods: 1,
              treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
            },
          ),
        );
      }
      const receiver = props.walReceivers.get(cluster);
      if (receiver) {
        // No CPU samples at all means no receiver task is running: WAL is not being archived.
        add(
          receiver
            .metricCpuUtilization({ statistic: 'SampleCount', period: Duration.minutes(5) })
            .createAlarm(this, `${cluster}-WalReceiverDown`, {
              alarmName: `pgvault ${cluster}: wal receive is not running`,
              threshold: 1,
              comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
              evaluationPeriods: 2,
              treatMissingData: cloudwatch.TreatMissingData.BREACHING,
            }),
        );
      }
      widgets.push([
        new cloudwatch.TextWidget({ markdown: `## ${cluster}`, width: 24, height: 1 }),
        new cloudwatch.GraphWidget({
          title: `${cluster}: backup age (h) and RPO (s)`,
          left: [metric('backupAgeHours', cluster, 'Maximum', Duration.hours(1))],
          right: [metric('rpoSeconds', cluster, 'Maximum', Duration.minutes(5))],
          width: 8,
        }),
        new cloudwatch.GraphWidget({
          title: `${cluster}: backup size and storage (bytes)`,
          left: [metric('backupStoredBytes', cluster, 'Maximum', Duration.hours(1))],
          right: [metric('storageUsedBytes', cluster, 'Maximum', Duration.hours(1))],
          width: 8,
        }),
        new cloudwatch.GraphWidget({
          title: `${cluster}: backup duration and drill RTO (s)`,
          left: [metric('backupDurationSeconds', cluster, 'Maximum', Duration.hours(1))],
          right: [metric('drillRtoSeconds', cluster, 'Maximum', Duration.hours(1))],
          width: 8,
        }),
      ]);
    }

    const statusWidgets: cloudwatch.IWidget[][] = [];
    for (let i = 0; i < this.alarms.length; i += ALARMS_PER_STATUS_WIDGET) {
      statusWidgets.push([
        new cloudwatch.AlarmStatusWidget({
          title: `pgvault alarms (${props.clusters[0]} to ${props.clusters[props.clusters.length - 1]})`,
          alarms: this.alarms.slice(i, i + ALARMS_PER_STATUS_WIDGET),
          width: 24,
          height: 6,
        }),
      ]);
    }
    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: props.dashboardName,
      defaultInterval: Duration.days(14),
      widgets: [...statusWidgets, ...widgets],
    });
  }
}
