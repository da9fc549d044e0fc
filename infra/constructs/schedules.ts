import { Duration, Stack, Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { cronToScheduler, type ScheduleName } from '../config';
import type { FunctionName } from './functions';

/** What each schedule invokes, with which payload (the contract with functions/*.ts). */
export interface ScheduledJob {
  readonly schedule: ScheduleName;
  readonly function: FunctionName;
  readonly input: (cluster: string) => Record<string, unknown>;
  /** Only when physical backups are on. */
  readonly physicalOnly?: boolean;
}

export const SCHEDULED_JOBS: readonly ScheduledJob[] = [
  {
    schedule: 'config',
    function: 'dispatch',
    input: (cluster) => ({ cluster, command: ['backup', 'config'] }),
  },
  {
    schedule: 'indexes',
    function: 'dispatch',
    input: (cluster) => ({ cluster, command: ['backup', 'indexes'] }),
  },
  {
    schedule: 'fullDaily',
    function: 'dispatch',
    input: (cluster) => ({ cluster, command: ['backup', 'full', 'daily'] }),
  },
  {
    schedule: 'fullWeekly',
    function: 'dispatch',
    input: (cluster) => ({ cluster, command: ['backup', 'full', 'weekly'] }),
  },
  {
    schedule: 'fullMonthly',
    function: 'dispatch',
    input: (cluster) => ({ cluster, command: ['backup', 'full', 'monthly'] }),
  },
  {
    schedule: 'baseWeekly',
    function: 'dispatch',
    input: (cluster) => ({ cluster, command: ['backup', 'base', 'weekly'] }),
    physicalOnly: true,
  },
  { schedule: 'retention', function: 'retention', input: (cluster) => ({ cluster }) },
  { schedule: 'verify', function: 'verify', input: (cluster) => ({ cluster, deep: true }) },
  { schedule: 'report', function: 'report', input: (cluster) => ({ cluster }) },
];

export interface SchedulesProps {
  readonly functions: Readonly<Record<FunctionName, lambda.IFunction>>;
  readonly physicalBackups: boolean;
  readonly groupName: string;
}

/**
 * What every cluster's schedules share (the shared stack): the schedule group, the role that invokes
 * the functions and the dead-letter queue. The schedules themselves are in the fleet stacks.
 */
export class Schedules extends Construct {
  public readonly group: scheduler.CfnScheduleGroup;
  public readonly deadLetterQueue: sqs.Queue;
  public readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: SchedulesProps) {
    super(scope, id);
    this.group = new scheduler.CfnScheduleGroup(this, 'Group', { name: props.groupName });
    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    Validations.of(this.deadLetterQueue).acknowledge({
      id: 'AwsSolutions-SQS3',
      reason: 'This queue is the dead-letter queue of the schedules; an alarm fires on its first message.',
    });

    const account = Stack.of(this).account;
    this.role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('scheduler.amazonaws.com', {
        conditions: { StringEquals: { 'aws:SourceAccount': account } },
      }),
      description: 'pgvault schedules: invoke the pgvault functions',
    });
    const used = new Set(
      SCHEDULED_JOBS.filter((j) => !j.physicalOnly || props.physicalBackups).map((j) => j.function),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        actions: ['lambda:InvokeFunction'],
        resources: [...used].map((f) => props.functions[f].functionArn),
      }),
    );
    this.deadLetterQueue.grantSendMessages(this.role);
  }
}

/**
 * What a fleet stack's schedules use of the shared Schedules: imported through SSM parameters
 * (SharedValues) in a fleet stack, never the shared stack's constructs themselves.
 */
export interface ScheduleBase {
  readonly group: { readonly ref: string };
  readonly role: iam.IRole;
  readonly deadLetterQueue: sqs.IQueue;
}

export interface ClusterSchedulesProps {
  readonly clusters: readonly string[];
  readonly base: ScheduleBase;
  readonly functions: Readonly<Record<FunctionName, lambda.IFunction>>;
  /** Crontab or Scheduler expression per job; null turns it off. */
  readonly expressions: Readonly<Record<ScheduleName, string | null>>;
  readonly timeZone: string;
  readonly physicalBackups: boolean;
  readonly retryAttempts: number;
  readonly maxEventAge: Duration;
}

/**
 * EventBridge Scheduler: one schedule per cluster per job (of one fleet stack), in the configured time
 * zone, with retries and the shared dead-letter queue for invocations that still fail.
 */
export class ClusterSchedules extends Construct {
  public readonly schedules: scheduler.CfnSchedule[] = [];

  constructor(scope: Construct, id: string, props: ClusterSchedulesProps) {
    super(scope, id);
    for (const cluster of props.clusters) {
      for (const job of SCHEDULED_JOBS) {
        if (job.physicalOnly && !props.physicalBackups) continue;
        const expression = props.expressions[job.schedule];
        if (expression === null) continue;
        const scheduleExpression = cronToScheduler(expression);
        if (!scheduleExpression) throw new Error(`schedules.${job.schedule}: cannot convert ${expression}`);
        const schedule = new scheduler.CfnSchedule(this, `${cluster}-${job.schedule}`, {
          name: `${cluster}-${job.schedule}`,
          groupName: props.base.group.ref,
          description: `pgvault ${job.function} ${JSON.stringify(job.input(cluster))}`,
          scheduleExpression,
          scheduleExpressionTimezone: props.timeZone,
          flexibleTimeWindow: { mode: 'OFF' },
          state: 'ENABLED',
          target: {
            arn: props.functions[job.function].functionArn,
            roleArn: props.base.role.roleArn,
            input: JSON.stringify(job.input(cluster)),
            retryPolicy: {
              maximumRetryAttempts: props.retryAttempts,
              maximumEventAgeInSeconds: props.maxEventAge.toSeconds(),
            },
            deadLetterConfig: { arn: props.base.deadLetterQueue.queueArn },
          },
        });
        this.schedules.push(schedule);
      }
    }
  }
}
