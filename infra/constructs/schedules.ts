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

export interface ClusterSchedulesProps {
  readonly clusters: readonly string[];
  readonly base: Schedules;
  readonly functions: Readonly<Record<FunctionName, lambda.IFunction>>;
  /** Crontab or Scheduler expression per job; null turns it off. */
  readonly expressions: Readonly<Record<ScheduleName, string | null>>;
  readonly timeZone: string;
  readonly physicalBackups: boolean;
  readonly retryAttempts: number;
  readonly maxEventAge: Duration;
  /** Flexible window in minutes (scheduleWindowMinutes); 0: OFF. */
  readonly windowMinutes: number;
}

/** Scheduler's FlexibleTimeWindow for a window of `minutes` (0: OFF, the run starts on the minute). */
export function flexibleTimeWindow(minutes: number): scheduler.CfnSchedule.FlexibleTimeWindowProperty {
  return minutes > 0 ? { mode: 'FLEXIBLE', maximumWindowInMinutes: minutes } : { mode: 'OFF' };
}

/**
 * EventBridge Scheduler: one schedule per cluster per job (of one fleet stack), in the configured time
 * zone, in a flexible window (scheduleWindowMinutes), with retries and the shared dead-letter queue for
 * invocations that still fail.
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
          // Spread: each run starts somewhere in the window, so a fleet's RunTasks and Lambdas do not all
          // start in one minute. A run is late by at most the window (README "Deploy on AWS", RPO).
          flexibleTimeWindow: flexibleTimeWindow(props.windowMinutes),
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

/**
 * Hours between two runs of a schedule when it is regular enough to say: `rate(...)`, a daily crontab
 * (one minute and hour, every day) 24, a weekly one (one day of the week) 168; undefined otherwise.
 */
export function scheduleIntervalHours(expression: string): number | undefined {
  const e = cronToScheduler(expression);
  if (!e) return undefined;
  const rate = /^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$/.exec(e);
  if (rate) {
    const n = Number(rate[1]);
    return rate[2]!.startsWith('minute') ? n / 60 : rate[2]!.startsWith('hour') ? n : n * 24;
  }
  const cron = /^cron\((\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\)$/.exec(e);
  if (!cron) return undefined;
  const [, minute, hour, dom, month, dow] = cron as unknown as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  const single = (f: string) => /^\d+$/.test(f);
  const any = (f: string) => f === '*' || f === '?';
  if (!single(minute) || !single(hour) || !any(month)) return undefined;
  if (any(dom) && any(dow)) return 24;
  if (any(dom) && /^[A-Z]{3}$/.test(dow)) return 168;
  return undefined;
}

/** CloudWatch evaluates at most 7 days (periods × evaluation periods); heartbeats of 1-hour periods fit 168. */
export const MAX_HEARTBEAT_HOURS = 168;

/**
 * Hours without a success after which a heartbeat alarm fires: the schedule's interval, plus its flexible
 * window, plus 2 hours for the run itself (a backup that takes longer has its own duration alarm).
 * Undefined when the schedule is off, irregular, or too sparse for CloudWatch's 7-day evaluation limit.
 */
export function heartbeatHours(expression: string | null, windowMinutes: number): number | undefined {
  if (expression === null) return undefined;
  const interval = scheduleIntervalHours(expression);
  if (interval === undefined) return undefined;
  const hours = Math.ceil(interval + windowMinutes / 60) + 2;
  return hours <= MAX_HEARTBEAT_HOURS ? hours : undefined;
}
