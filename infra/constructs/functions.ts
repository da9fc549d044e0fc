import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { ArnFormat, Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { nagResource } from '../nag';
import {
  type BackupTasks,
  type CredentialsSecret,
  grantReadSecret,
  REPO_ROOT,
  taskFamily,
  taskRolePath,
} from './tasks';
import type { VaultBucket } from './vault-bucket';

export const FUNCTION_NAMES = ['dispatch', 'retention', 'verify', 'report', 'restore'] as const;
export type FunctionName = (typeof FUNCTION_NAMES)[number];

/**
 * Asynchronous invocations (Scheduler's, and `aws lambda invoke --invocation-type Event`): Lambda
 * retries a function error this many times (its maximum), then sends the event to the failed-runs
 * queue instead of dropping it. Scheduler's own retries and dead-letter queue cover only delivery.
 */
export const ASYNC_RETRY_ATTEMPTS = 2;
/** How long Lambda keeps retrying an asynchronous event before it goes to the failed-runs queue. */
export const ASYNC_MAX_EVENT_AGE = Duration.hours(6);

const SETTINGS: Record<FunctionName, { description: string; timeout: Duration; memorySize: number }> = {
  dispatch: {
    description: 'pgvault: starts the Fargate task of a scheduled backup',
    timeout: Duration.seconds(60),
    memorySize: 256,
  },
  retention: {
    description: 'pgvault: GFS retention of the vault (backup retention)',
    timeout: Duration.minutes(15),
    memorySize: 1024,
  },
  verify: {
    description: 'pgvault: quick verification, then the deep verification task',
    timeout: Duration.minutes(10),
    memorySize: 1024,
  },
  report: {
    description: 'pgvault: stores the report and mails its summary with a presigned link',
    timeout: Duration.minutes(5),
    memorySize: 1024,
  },
  restore: {
    description: 'pgvault: validates a restore request and starts the restore task (invoke by hand)',
    timeout: Duration.seconds(60),
    memorySize: 512,
  },
};

/**
 * Where the functions find the cluster list: a file of the cluster layer (Lambda unpacks layers under
 * /opt). functions/env.ts reads the same path (DEFAULT_CLUSTERS_FILE) and PGVAULT_CLUSTERS_FILE.
 */
export const CLUSTERS_FILE = '/opt/pgvault/clusters.json';

/** One entry of the cluster list, as functions/env.ts reads it (plain values only: no tokens). */
export interface FunctionCluster {
  readonly name: string;
  readonly mode: string;
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly credentialsSecretArn: string;
  readonly patroniUrl?: string;
  readonly citusCoordinator?: string;
  /** Family of the cluster's backup task definition (RunTask starts its newest revision). */
  readonly taskDefinition: string;
  /** Family of the cluster's restore task definition. */
  readonly restoreTaskDefinition: string;
  /** The secrets a restore payload may name as its target's credentials (the cluster's restoreTargets). */
  readonly restoreTargetSecretArns?: readonly string[];
}

export interface FunctionsProps {
  /** The deployment's name (config.stackName): the task families and role paths the functions may use. */
  readonly deployment: string;
  readonly vault: VaultBucket;
  readonly tasks: BackupTasks;
  readonly topic: sns.ITopic;
  readonly eventBus: events.IEventBus;
  /** Environment of every function (the contract with functions/*.ts); its size does not grow with the fleet. */
  readonly environment: Readonly<Record<string, string>>;
  /** The clusters the functions serve: shipped as CLUSTERS_FILE in a layer, not in the environment. */
  readonly clusters: readonly FunctionCluster[];
  readonly logRetentionDays: number;
  /** The second repository's credentials secret (REPO2_SECRET_ARN): the functions that read backups read it. */
  readonly repositorySecret?: CredentialsSecret;
}

/**
 * The folder the cluster layer is made from (`pgvault/clusters.json` inside). Named by its content's
 * hash under the temporary folder, so a synth with the same list reuses it and parallel synths of
 * different lists never share one; written through a rename, so no reader sees half a file.
 */
export function clusterLayerFolder(clusters: readonly FunctionCluster[]): string {
  const json = `${JSON.stringify(clusters, null, 1)}\n`;
  const hash = createHash('sha256').update(json).digest('hex').slice(0, 20);
  const folder = join(tmpdir(), 'pgvault-cdk', `clusters-${hash}`);
  const file = join(folder, 'pgvault', 'clusters.json');
  if (!existsSync(file) || readFileSync(file, 'utf8') !== json) {
    mkdirSync(dirname(file), { recursive: true });
    const partial = `${file}.${process.pid}.tmp`;
    writeFileSync(partial, json);
    renameSync(partial, file);
  }
  return folder;
}

/**
 * The five Lambdas, bundled from functions/*.ts with esbuild (Node 22, ARM64), each with its own role
 * granting its own job only.
 */
export class Functions extends Construct {
  public readonly functions = {} as Record<FunctionName, nodejs.NodejsFunction>;
  /** The cluster list (CLUSTERS_FILE), one layer every function carries. */
  public readonly clusterLayer: lambda.LayerVersion;
  /** The folder the layer was made from, for tests: `pgvault/clusters.json` inside. */
  public readonly clusterLayerFolder: string;
  /**
   * On-failure destination of every function's asynchronous invocations: a scheduled run whose
   * function failed after Lambda's retries lands here (the event and the error), and alarms.
   */
  public readonly failedRuns: sqs.Queue;

  constructor(scope: Construct, id: string, props: FunctionsProps) {
    super(scope, id);
    // Lambda allows 4 KB of environment per function: the list of a fleet goes into a layer instead.
    this.clusterLayerFolder = clusterLayerFolder(props.clusters);
    this.clusterLayer = new lambda.LayerVersion(this, 'ClusterList', {
      code: lambda.Code.fromAsset(this.clusterLayerFolder),
      compatibleRuntimes: [lambda.Runtime.NODEJS_22_X],
      compatibleArchitectures: [lambda.Architecture.ARM_64],
      description: `pgvault: the ${props.clusters.length} clusters of this deployment (${CLUSTERS_FILE})`,
    });
    for (const name of FUNCTION_NAMES) this.functions[name] = this.create(name, props);

    this.failedRuns = new sqs.Queue(this, 'FailedRuns', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    Validations.of(this.failedRuns).acknowledge({
      id: 'AwsSolutions-SQS3',
      reason:
        'This queue is itself the on-failure destination of the functions (their failed runs); an alarm fires on its first message.',
    });
    for (const name of FUNCTION_NAMES) {
      this.functions[name].configureAsyncInvoke({
        onFailure: new destinations.SqsDestination(this.failedRuns),
        retryAttempts: ASYNC_RETRY_ATTEMPTS,
        maxEventAge: ASYNC_MAX_EVENT_AGE,
      });
    }

    const { vault, tasks, deployment } = props;

    // dispatch: run the backup task definitions, nothing in the bucket.
    this.grantRunTasks(this.functions.dispatch, tasks.cluster, deployment, 'backup');

    // retention: read manifests, delete under the repository prefix.
    vault.grantRepository(this.functions.retention, { read: true, delete: true });
    vault.passphrase.grantRead(this.functions.retention);

    // verify: quick checks read the vault; the deep check is a backup/verify task run.
    vault.grantRepository(this.functions.verify, { read: true });
    vault.passphrase.grantRead(this.functions.verify);
    this.grantRunTasks(this.functions.verify, tasks.cluster, deployment, 'backup');

    // report: read the vault, store reports (and presign a link to them).
    vault.grantRepository(this.functions.report, { read: true });
    vault.grantRepository(this.functions.report, { write: true, cluster: '*', folder: 'reports' });
    vault.passphrase.grantRead(this.functions.report);

    // restore: resolve the backup (read), run only the restore task definitions.
    vault.grantRepository(this.functions.restore, { read: true });
    vault.passphrase.grantRead(this.functions.restore);
    this.grantRunTasks(this.functions.restore, tasks.cluster, deployment, 'restore');

    // The second repository's credentials (read at cold start, functions/env.ts): the readers only.
    if (props.repositorySecret)
      for (const name of ['retention', 'verify', 'report', 'restore'] as const)
        grantReadSecret(this.functions[name], props.repositorySecret);

    for (const name of FUNCTION_NAMES) {
      props.topic.grantPublish(this.functions[name]);
      props.eventBus.grantPutEventsTo(this.functions[name]);
    }
  }

  private create(name: FunctionName, props: FunctionsProps): nodejs.NodejsFunction {
    const settings = SETTINGS[name];
    const logGroup = new logs.LogGroup(this, `${name}Logs`, {
      retention: props.logRetentionDays as logs.RetentionDays,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    // Own role instead of AWSLambdaBasicExecutionRole: logs go to this function's group only.
    const role = new iam.Role(this, `${name}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `pgvault ${name} function`,
    });
    role.addToPolicy(
      new iam.PolicyStatement({
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [logGroup.logGroupArn, `${logGroup.logGroupArn}:log-stream:*`],
      }),
    );
    const fn = new nodejs.NodejsFunction(this, name, {
      entry: join(REPO_ROOT, 'functions', `${name}.ts`),
      handler: 'handler',
      projectRoot: REPO_ROOT,
      depsLockFilePath: join(REPO_ROOT, 'package-lock.json'),
      runtime: lambda.Runtime.NODEJS_22_X,
      architecture: lambda.Architecture.ARM_64,
      description: settings.description,
      timeout: settings.timeout,
      memorySize: settings.memorySize,
      role,
      logGroup,
      environment: { ...props.environment, NODE_OPTIONS: '--enable-source-maps' },
      layers: [this.clusterLayer],
      bundling: {
        // The AWS SDK v3 is bundled (pinned with the lockfile); pg's optional native binding is not used.
        externalModules: ['pg-native'],
        format: nodejs.OutputFormat.CJS,
        target: 'node22',
        minify: true,
        // Class names survive minification: `this.name = new.target.name` (core/errors.ts) is what the Lambda
        // log shows as errorType, InvalidPayloadError rather than `mu`.
        keepNames: true,
        sourceMap: true,
        sourcesContent: false,
      },
    });
    Validations.of(fn).acknowledge({
      id: 'AwsSolutions-L1',
      reason:
        'Node.js 22 on purpose: the Fargate image runs Node 22 too, so functions and tasks share one runtime ' +
        'and the AWS SDK support window; raised together when the image moves.',
    });
    Validations.of(role).acknowledge(
      {
        id: `AwsSolutions-IAM5[Resource::<${Stack.of(this).getLogicalId(logGroup.node.defaultChild as logs.CfnLogGroup)}.Arn>:log-stream:*]`,
        reason: 'Lambda creates one log stream per execution environment in its own log group.',
      },
      {
        id: 'AwsSolutions-IAM5[Action::kms:GenerateDataKey*]',
        reason:
          'Publishing to the KMS-encrypted alert topic needs GenerateDataKey* on its key (the one key is named).',
      },
    );
    return fn;
  }

  /**
   * RunTask on the deployment's task definitions of one kind, and PassRole on their roles, named by
   * pattern: the families `<deployment>-<kind>-*` and the IAM path `/<deployment>/<kind>/`. The
   * definitions live in the fleet stacks (which depend on this one), and naming each of them would grow
   * these policies with the fleet past IAM's size limits; the patterns are the same for any fleet and
   * still keep restore to restore definitions and dispatch and verify to backup ones.
   */
  private grantRunTasks(
    fn: lambda.IFunction,
    cluster: ecs.ICluster,
    deployment: string,
    kind: 'backup' | 'restore',
  ): void {
    const stack = Stack.of(this);
    const definitions = stack.formatArn({
      service: 'ecs',
      resource: 'task-definition',
      resourceName: `${taskFamily(deployment, kind, '*')}`,
      arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
    });
    const roles = stack.formatArn({
      service: 'iam',
      region: '',
      resource: 'role',
      resourceName: `${taskRolePath(deployment, kind).slice(1)}*`,
      arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
    });
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['ecs:RunTask'],
        resources: [definitions],
        conditions: { ArnEquals: { 'ecs:cluster': cluster.clusterArn } },
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['iam:PassRole'],
        resources: [roles],
        conditions: { StringLike: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } },
      }),
    );
    const role = fn.role as iam.Role;
    Validations.of(role).acknowledge(
      {
        id: `AwsSolutions-IAM5[Resource::${nagResource(role, definitions)}]`,
        reason:
          `The ${kind} task definitions of this deployment, any revision (family ${taskFamily(deployment, kind, '*')}): ` +
          'they are in the fleet stacks, and naming each would grow this policy with the fleet; only in the pgvault ECS cluster.',
      },
      {
        id: `AwsSolutions-IAM5[Resource::${nagResource(role, roles)}]`,
        reason:
          `The task and execution roles of this deployment's ${kind} tasks (IAM path ${taskRolePath(deployment, kind)}), ` +
          'passed only to ECS tasks; a pattern so the policy does not grow with the fleet.',
      },
    );
  }
}
