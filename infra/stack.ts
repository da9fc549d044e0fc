import {
  CfnOutput,
  CfnResource,
  Duration,
  type Environment,
  Stack,
  type StackProps,
  Token,
  Validations,
} from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as efs from 'aws-cdk-lib/aws-efs';
import * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import {
  type ClusterConfig,
  type DeployConfig,
  DeployConfigError,
  expirationDays,
  postgresClientVersion,
  receivesWal,
} from './config';
import { Alerts } from './constructs/alerts';
import {
  CLUSTERS_FILE,
  FUNCTION_NAMES,
  type FunctionCluster,
  type FunctionName,
  Functions,
} from './constructs/functions';
import { ClusterMonitoring, type Heartbeat, Monitoring } from './constructs/monitoring';
import { Network } from './constructs/network';
import { ClusterSchedules, heartbeatHours, type ScheduleBase, Schedules } from './constructs/schedules';
import { checkNoExports, SharedValues } from './constructs/shared-values';
import {
  BackupTasks,
  ClusterTasks,
  CONTAINER_NAME,
  type NetworkConfig,
  type TaskPlatform,
  taskFamily,
} from './constructs/tasks';
import { LIFECYCLE_TAGS_SETTING, VaultBucket } from './constructs/vault-bucket';
import { fleetLayout, fleetStackName } from './fleet';
import { BACKUP_TYPE_DIMENSION } from './metrics';
import { nagResource } from './nag';
import { repositoryEnvironment, repositorySecret } from './repositories';
import { warnScheduleDst } from './schedule-dst';

export { CLUSTERS_PER_FLEET_STACK, fleetStackName } from './fleet';

export interface PgvaultStackProps extends StackProps {
  readonly config: DeployConfig;
  /** Test seam: a container image instead of building tasks/Dockerfile. @default the Dockerfile asset */
  readonly image?: ecs.ContainerImage;
}

/** Feature flags the stacks need (also in cdk.json). */
export const FEATURE_FLAGS = [
  '@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy',
  '@aws-cdk/aws-iam:minimizePolicies',
  '@aws-cdk/core:checkSecretUsage',
  '@aws-cdk/aws-ecs:arnFormatIncludesClusterName',
] as const;

/**
 * Fleet stacks read the shared stack's values through SSM parameters (SharedValues), never through
 * CDK's automatic cross-stack references; should one be made anyway, the shared stack refuses synth
 * (checkNoExports). The strength is set explicitly so CDK does not warn about its default.
 */
const CROSS_STACK_REFERENCES = '@aws-cdk/core:defaultCrossStackReferences';

/**
 * Context key (`-c pgvault:legacyExports=true`) for the one deployment that moves an existing deployment
 * from CloudFormation exports to SSM parameters: the shared stack keeps the exports earlier builds made
 * while the fleet stacks switch to the parameters (CloudFormation refuses to delete an export in use).
 * The next deployment without it drops them. infra/README.md "Shared values".
 */
export const LEGACY_EXPORTS_CONTEXT = 'pgvault:legacyExports';

/**
 * The exports of earlier builds, under the names CDK gave them (`<stack>:ExportsOutputRef...`,
 * `...FnGetAtt...Arn...`: Stack.exportValue names a value the same way): every shared value a fleet
 * stack of those builds imported. Returns the ids of the outputs, which checkNoExports then allows.
 */
function keepLegacyExports(stack: PgvaultStack): string[] {
  const { vault, alerts, tasks, schedules, functions } = stack;
  const values = [
    vault.bucket.bucketArn,
    vault.bucket.bucketName,
    vault.key.keyArn,
    vault.passphrase.secretArn,
    alerts.topic.topicArn,
    alerts.key.keyArn,
    alerts.eventBus.eventBusArn,
    alerts.eventBus.eventBusName,
    tasks.logGroup.logGroupArn,
    tasks.logGroup.logGroupName,
    tasks.cluster.clusterName,
    ...(tasks.walFileSystem ? [tasks.walFileSystem.fileSystemId, tasks.walFileSystem.fileSystemArn] : []),
    schedules.group.ref,
    schedules.role.roleArn,
    schedules.deadLetterQueue.queueArn,
    ...(['dispatch', 'retention', 'verify', 'report'] as const).map(
      (f) => functions.functions[f].functionArn,
    ),
  ];
  for (const value of values) stack.exportValue(value);
  return stack.node.tryFindChild('Exports')?.node.children.map((c) => c.node.id) ?? [];
}

/** CDK's context key for CloudFormation's resource limit per stack (default 500; 0 turns the check off). */
const STACK_RESOURCE_LIMIT_CONTEXT = '@aws-cdk/core:stackResourceLimit';

/** Lambda's limit on the environment of one function (keys and values). */
const LAMBDA_ENV_LIMIT = 4096;

/**
 * The shared stack of a deployment (named `stackName`): the vault bucket and its key, the passphrase,
 * alerts (topic, key, event bus), the ECS cluster, task log group, image and WAL staging file system,
 * the five functions with the cluster layer, the schedule group, role and dead-letter queue, and the
 * deployment-wide monitoring. Its size does not depend on the fleet; the clusters' own resources are in
 * the fleet stacks (FleetStack), which read these through SSM parameters (SharedValues), not exports.
 */
export class PgvaultStack extends Stack {
  public readonly config: DeployConfig;
  public readonly vault: VaultBucket;
  public readonly alerts: Alerts;
  public readonly tasks: BackupTasks;
  public readonly functions: Functions;
  public readonly schedules: Schedules;
  public readonly monitoring: Monitoring;
  /** VPC, task security group, VPC endpoints. */
  public readonly network: Network;
  /** The task network: the configured ids, with the task security groups' ids (made or given). */
  public readonly taskNetwork: NetworkConfig;
  /** Settings the tasks and the functions share (core/config.ts keys). */
  public readonly sharedEnvironment: Readonly<Record<string, string>>;

  constructor(scope: Construct, id: string, props: PgvaultStackProps) {
    super(scope, id, props);
    // Behaviour this stack relies on, whatever cdk.json says (tests build it without cdk.json).
    for (const flag of FEATURE_FLAGS) this.node.setContext(flag, true);
    this.node.setContext(CROSS_STACK_REFERENCES, 'strong');
    const c = props.config;
    this.config = c;
    const deployment = c.stackName;

    this.vault = new VaultBucket(this, 'Vault', {
      prefix: c.bucket.prefix,
      archiveStorageClass: c.bucket.archiveStorageClass,
      archiveAfterDays: c.bucket.archiveAfterDays,
      archiveMinObjectBytes: c.bucket.archiveMinObjectBytes,
      expireAfterDays: expirationDays(c),
      reportsExpireAfterDays: c.bucket.reportsExpireAfterDays,
      noncurrentVersionExpireDays: c.bucket.noncurrentVersionExpireDays,
      accessLogExpireDays: c.bucket.accessLogExpireDays,
      abortIncompleteMultipartUploadDays: c.bucket.abortIncompleteMultipartUploadDays,
      objectLock: c.bucket.objectLock,
      retainData: c.retainData,
      breakGlassRoleArn: c.bucket.breakGlassRoleArn,
      protectKeyPolicy: c.bucket.protectKeyPolicy,
      replication: c.bucket.replication,
      passphraseCopy: c.bucket.passphraseCopy,
    });
    this.alerts = new Alerts(this, 'Alerts', {
      emails: c.alerts.emails,
      eventBusName: `${this.stackName}-events`,
    });

    this.sharedEnvironment = {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: this.vault.bucket.bucketName,
      ...(c.bucket.prefix ? { CLOUD_PREFIX: c.bucket.prefix } : {}),
      // The writer tags objects for the bucket's lifecycle rules (VaultBucket, LIFECYCLE_TAG).
      [LIFECYCLE_TAGS_SETTING]: 'true',
      LOCAL_COPY: 'false',
      ENCRYPTION: 'true',
      // Each object locked until its planned GFS expiry, never less than the bucket default (core/retention/lock.ts).
      ...(c.bucket.objectLock?.retain === 'gfs'
        ? {
            S3_OBJECT_LOCK_MODE: c.bucket.objectLock.mode,
            S3_OBJECT_LOCK_RETAIN: 'gfs',
            S3_OBJECT_LOCK_MIN_DAYS: String(c.bucket.objectLock.days),
          }
        : {}),
      RETENTION_DAYS: String(c.retention.days),
      RETENTION_WEEKS: String(c.retention.weeks),
      RETENTION_MONTHS: String(c.retention.months),
      RETENTION_CONFIG_COUNT: String(c.retention.configCount),
      RETENTION_INDEXES_COUNT: String(c.retention.indexesCount),
      RETENTION_WAL_DAYS: String(c.retention.walDays),
      COMPRESSION: c.compression,
      SNS_TOPIC_ARN: this.alerts.topic.topicArn,
      ...(c.storageQuotaGb !== undefined ? { STORAGE_QUOTA_GB: String(c.storageQuotaGb) } : {}),
      RPO_TARGET_MINUTES: String(c.alerts.rpoTargetMinutes),
      RTO_TARGET_MINUTES: String(c.alerts.rtoTargetMinutes),
      ALERT_BACKUP_AGE_HOURS: String(c.alerts.backupAgeHours),
      ALERT_CAPACITY_PERCENT: String(c.alerts.capacityPercent),
      EVENT_BUS_NAME: this.alerts.eventBus.eventBusName,
    };
    // A second repository outside AWS (infra/repositories.ts): REPO1 (this bucket) and REPO2 instead of
    // CLOUD_*. Without one, the environment above stays as it is.
    if (c.secondRepository)
      this.sharedEnvironment = repositoryEnvironment(
        this.sharedEnvironment,
        c.bucket.prefix,
        c.secondRepository,
      );

    this.network = new Network(this, 'Network', { network: c.network, clusters: c.clusters });
    this.taskNetwork = {
      ...c.network,
      securityGroupIds: this.network.taskSecurityGroups.map((sg) => sg.securityGroupId),
    };
    this.tasks = new BackupTasks(this, 'Tasks', {
      needsWalFileSystem: c.clusters.some((cl) => receivesWal(c, cl)),
      network: this.taskNetwork,
      securityGroups: this.network.taskSecurityGroups,
      architecture: c.taskArchitecture,
      postgresServerVersions: c.postgresServerVersions,
      postgresClientVersion: postgresClientVersion(c),
      logRetentionDays: c.logRetentionDays,
      image: props.image,
    });

    // The cluster list the functions read (functions/env.ts): plain values known at synth, so it ships
    // in a layer rather than the 4 KB environment. Task definitions by family (they are in the fleet
    // stacks): RunTask starts the newest revision, which the functions' RunTask pattern covers.
    const functionClusters: FunctionCluster[] = c.clusters.map((cl) => ({
      name: cl.name,
      mode: cl.mode,
      host: cl.host,
      port: cl.port,
      database: cl.database,
      credentialsSecretArn: cl.credentialsSecretArn,
      ...(cl.patroniUrl ? { patroniUrl: cl.patroniUrl } : {}),
      ...(cl.citusCoordinator ? { citusCoordinator: cl.citusCoordinator } : {}),
      // Each cluster has its own task definitions (its credentials are ECS secrets of that definition).
      taskDefinition: taskFamily(deployment, 'backup', cl.name),
      restoreTaskDefinition: taskFamily(deployment, 'restore', cl.name),
      // The restore function refuses any other target secret (the restore task role may read only these).
      ...(cl.restoreTargets.length > 0
        ? { restoreTargetSecretArns: cl.restoreTargets.map((t) => t.credentialsSecretArn) }
        : {}),
    }));
    const first = c.clusters[0]!.name;
    const functionEnvironment: Record<string, string> = {
      ...this.sharedEnvironment,
      BACKUP_DIR: '/tmp/pgvault',
      ENCRYPTION_KEY_SECRET_ARN: this.vault.passphrase.secretArn,
      ECS_CLUSTER_ARN: this.tasks.cluster.clusterArn,
      // The first cluster's, by family (RunTask takes a family; the cluster list's entries win).
      TASK_DEFINITION_ARN: taskFamily(deployment, 'backup', first),
      RESTORE_TASK_DEFINITION_ARN: taskFamily(deployment, 'restore', first),
      TASK_CONTAINER_NAME: CONTAINER_NAME,
      SUBNET_IDS: c.network.subnetIds.join(','),
      SECURITY_GROUP_IDS: this.taskNetwork.securityGroupIds.join(','),
      ASSIGN_PUBLIC_IP: String(c.network.assignPublicIp),
      PGVAULT_CLUSTERS_FILE: CLUSTERS_FILE,
    };
    // The same for one cluster or a hundred; only bucket.prefix and the subnet and security group lists change it.
    const size = estimateEnvironmentSize(functionEnvironment, this);
    if (size > LAMBDA_ENV_LIMIT) {
      throw new DeployConfigError(
        `pgvault deploy config: the functions' environment needs about ${size} bytes (Lambda's limit is ${LAMBDA_ENV_LIMIT}); shorten bucket.prefix or list fewer subnets and security groups`,
      );
    }

    this.functions = new Functions(this, 'Functions', {
      deployment,
      vault: this.vault,
      tasks: this.tasks,
      topic: this.alerts.topic,
      eventBus: this.alerts.eventBus,
      environment: functionEnvironment,
      clusters: functionClusters,
      logRetentionDays: c.logRetentionDays,
      repositorySecret: repositorySecret(c),
    });

    this.schedules = new Schedules(this, 'Schedules', {
      functions: this.functions.functions,
      physicalBackups: c.physicalBackups,
      groupName: this.stackName,
    });
    // DST: a schedule in an hour the time zone skips or repeats says what happens to that run.
    warnScheduleDst(this, c);

    this.monitoring = new Monitoring(this, 'Monitoring', {
      deployment,
      topic: this.alerts.topic,
      ecsCluster: this.tasks.cluster,
      taskLogGroup: this.tasks.logGroup,
      functions: this.functions.functions,
      deadLetterQueue: this.schedules.deadLetterQueue,
      failedRuns: this.functions.failedRuns,
      dashboardName: `${this.stackName}-pgvault`,
    });

    new CfnOutput(this, 'VaultBucketName', { value: this.vault.bucket.bucketName });
    new CfnOutput(this, 'PassphraseSecretArn', {
      value: this.vault.passphrase.secretArn,
      description: 'Copy the passphrase somewhere safe outside AWS too: without it no backup opens.',
    });
    new CfnOutput(this, 'AlertTopicArn', { value: this.alerts.topic.topicArn });
    new CfnOutput(this, 'EventBusName', { value: this.alerts.eventBus.eventBusName });
    for (const name of FUNCTION_NAMES) {
      new CfnOutput(this, `${name}FunctionName`, { value: this.functions.functions[name].functionName });
    }
    // Upgrading a deployment whose fleet stacks still import: keep its exports for one deployment.
    const legacy = this.node.tryGetContext(LEGACY_EXPORTS_CONTEXT);
    const kept = legacy === true || legacy === 'true' ? keepLegacyExports(this) : [];
    checkNoExports(this, kept);
    checkResourceCount(this);
  }
}

export interface FleetStackProps extends StackProps {
  readonly shared: PgvaultStack;
  /** This stack's number (`<stackName>-Fleet<shard>`). */
  readonly shard: number;
  /** This stack's clusters (at most CLUSTERS_PER_FLEET_STACK), sorted by name. */
  readonly clusters: readonly ClusterConfig[];
}

/**
 * The shared stack's resources as a fleet stack uses them: imported by the values the shared stack
 * writes to SSM parameters (SharedValues). Nothing here is a reference to a construct of the shared
 * stack, so no CloudFormation export ties the two (the vault's grants go through the same parameters,
 * VaultBucket.bucketArnFor).
 */
class SharedImports extends Construct {
  public readonly topic: sns.ITopic;
  public readonly eventBus: events.IEventBus;
  public readonly platform: TaskPlatform;
  public readonly scheduleBase: ScheduleBase;
  public readonly functions: Readonly<Record<FunctionName, lambda.IFunction>>;

  constructor(scope: Construct, id: string, shared: PgvaultStack) {
    super(scope, id);
    const values = SharedValues.of(shared);
    const read = (key: string, value: string) => values.valueFor(this, key, value);
    const c = shared.config;

    this.topic = sns.Topic.fromTopicAttributes(this, 'AlertTopic', {
      topicArn: read('AlertTopicArn', shared.alerts.topic.topicArn),
      // Publishing to the encrypted topic needs its key: grantPublish grants it from this ARN.
      keyArn: read('AlertKeyArn', shared.alerts.key.keyArn),
    });
    this.eventBus = events.EventBus.fromEventBusArn(
      this,
      'EventBus',
      read('EventBusArn', shared.alerts.eventBus.eventBusArn),
    );

    const platform = shared.tasks;
    const vpc = ec2.Vpc.fromVpcAttributes(this, 'Vpc', {
      vpcId: c.network.vpcId,
      availabilityZones: ['unused'],
    });
    const fs = platform.walFileSystem;
    this.platform = {
      cluster: ecs.Cluster.fromClusterAttributes(this, 'EcsCluster', {
        clusterName: read('EcsClusterName', platform.cluster.clusterName),
        vpc,
        securityGroups: [],
      }),
      logGroup: logs.LogGroup.fromLogGroupName(
        this,
        'TaskLogs',
        read('TaskLogGroupName', platform.logGroup.logGroupName),
      ),
      // A registry image or the Dockerfile asset: its URI names the CDK asset repository, no resource here.
      image: platform.image,
      walFileSystem: fs
        ? efs.FileSystem.fromFileSystemAttributes(this, 'WalFs', {
            fileSystemId: read('WalFileSystemId', fs.fileSystemId),
            // Required by the import, used only by `connections` (NFS rules live in the shared stack): not
            // rendered, so no parameter; should a fleet construct use it, synth refuses the export it makes.
            securityGroup: ec2.SecurityGroup.fromSecurityGroupId(
              this,
              'WalFsSecurityGroup',
              fs.connections.securityGroups[0]!.securityGroupId,
              { mutable: false },
            ),
          })
        : undefined,
    };

    const schedules = shared.schedules;
    this.scheduleBase = {
      group: { ref: read('ScheduleGroupName', schedules.group.ref) },
      role: iam.Role.fromRoleArn(this, 'SchedulerRole', read('SchedulerRoleArn', schedules.role.roleArn), {
        mutable: false,
      }),
      deadLetterQueue: sqs.Queue.fromQueueArn(
        this,
        'ScheduleDeadLetters',
        read('ScheduleDeadLetterQueueArn', schedules.deadLetterQueue.queueArn),
      ),
    };
    // Imported on first use (while the schedules are built): a parameter only for the functions that some
    // schedule invokes.
    const functions = {} as Record<FunctionName, lambda.IFunction>;
    const imported = new Map<FunctionName, lambda.IFunction>();
    for (const name of FUNCTION_NAMES) {
      Object.defineProperty(functions, name, {
        enumerable: true,
        get: () => {
          let fn = imported.get(name);
          if (!fn) {
            fn = lambda.Function.fromFunctionAttributes(this, `Function-${name}`, {
              functionArn: read(`${name}FunctionArn`, shared.functions.functions[name].functionArn),
              sameEnvironment: true,
            });
            imported.set(name, fn);
          }
          return fn;
        },
      });
    }
    this.functions = functions;
  }
}

/**
 * A fleet stack: the resources of up to CLUSTERS_PER_FLEET_STACK clusters (task definitions and their
 * roles, wal receive services and access points, schedules, alarms, a dashboard). Everything shared is
 * the shared stack's, read through SSM parameters (SharedImports); nothing in the shared stack refers to
 * a fleet stack, so fleet stacks deploy after it, in parallel with each other. Which clusters a fleet
 * stack holds depends on each cluster alone (infra/fleet.ts), so the list's order changes nothing.
 */
export class FleetStack extends Stack {
  public readonly shard: number;
  public readonly clusterNames: readonly string[];
  public readonly tasks: ClusterTasks;
  public readonly schedules: ClusterSchedules;
  public readonly monitoring: ClusterMonitoring;

  constructor(scope: Construct, id: string, props: FleetStackProps) {
    super(scope, id, props);
    for (const flag of FEATURE_FLAGS) this.node.setContext(flag, true);
    this.node.setContext(CROSS_STACK_REFERENCES, 'strong');
    const { shared } = props;
    const c = shared.config;
    this.shard = props.shard;
    this.addStackDependency(shared, 'the fleet uses the shared vault, functions, ECS cluster and topic');
    this.clusterNames = props.clusters.map((cl) => cl.name);
    const walReceivers = new Set(props.clusters.filter((cl) => receivesWal(c, cl)).map((cl) => cl.name));
    const imports = new SharedImports(this, 'Shared', shared);

    this.tasks = new ClusterTasks(this, 'Tasks', {
      deployment: c.stackName,
      platform: imports.platform,
      vault: shared.vault,
      topic: imports.topic,
      eventBus: imports.eventBus,
      clusters: props.clusters,
      walReceivers,
      // The task security groups the shared stack made, by id through their SSM parameters (no export).
      network: {
        ...shared.taskNetwork,
        securityGroupIds: shared.taskNetwork.securityGroupIds.map((id, i) =>
          Token.isUnresolved(id) ? SharedValues.of(shared).valueFor(this, `TaskSecurityGroupId${i}`, id) : id,
        ),
      },
      // Fargate's scratch space (ephemeralStorageGiB) is the root file system: TMPDIR and BACKUP_DIR live there.
      sharedEnvironment: {
        ...sharedEnvironmentFor(this, shared),
        BACKUP_DIR: '/var/lib/pgvault',
        TMPDIR: '/tmp',
      },
      task: c.task,
      restoreTask: c.restoreTask,
      walReceive: c.walReceive,
      architecture: c.taskArchitecture,
      repositorySecret: repositorySecret(c),
    });

    // The execution roles write the task log streams as `log-group:<name>:*`, the ARN IAM gives a group's
    // streams (in the shared stack the group's Arn attribute said the same without showing the `*`).
    const logStreams = nagResource(this, imports.platform.logGroup.logGroupArn);
    for (const set of this.tasks.byCluster.values()) {
      for (const def of [set.backup, set.restore, set.walReceiver?.taskDefinition]) {
        if (!def) continue;
        Validations.of(def.obtainExecutionRole()).acknowledge({
          id: `AwsSolutions-IAM5[Resource::${logStreams}]`,
          reason:
            "ECS writes the task's log streams, named at run time, in the deployment's one task log group; " +
            'no other log group.',
        });
      }
    }

    this.schedules = new ClusterSchedules(this, 'Schedules', {
      clusters: this.clusterNames,
      base: imports.scheduleBase,
      functions: imports.functions,
      expressions: c.schedules,
      timeZone: c.timeZone,
      physicalBackups: c.physicalBackups,
      retryAttempts: c.scheduleRetry.attempts,
      maxEventAge: Duration.minutes(c.scheduleRetry.maxEventAgeMinutes),
      windowMinutes: c.scheduleWindowMinutes,
    });

    const receivers = new Map<string, ecs.FargateService>();
    for (const [name, t] of this.tasks.byCluster) if (t.walReceiver) receivers.set(name, t.walReceiver);
    this.monitoring = new ClusterMonitoring(this, 'Monitoring', {
      deployment: c.stackName,
      topic: imports.topic,
      clusters: this.clusterNames,
      walReceivers: receivers,
      thresholds: c.alerts,
      storageQuotaGb: c.storageQuotaGb,
      heartbeats: heartbeats(c),
      dashboardName: `${this.stackName}-pgvault`,
    });
    checkResourceCount(this);
  }
}

/**
 * The per-cluster heartbeats: a successful full backup within the most frequent full schedule's
 * interval (plus its window and 2 h), and a stored report within the report's. A job that is off, or
 * whose schedule is irregular or sparser than CloudWatch's 7-day evaluation, gets none.
 */
export function heartbeats(c: DeployConfig): Heartbeat[] {
  const list: Heartbeat[] = [];
  const full = [c.schedules.fullDaily, c.schedules.fullWeekly, c.schedules.fullMonthly]
    .map((e) => heartbeatHours(e, c.scheduleWindowMinutes))
    .filter((h): h is number => h !== undefined);
  if (full.length > 0)
    list.push({
      id: 'BackupHeartbeat',
      what: 'successful full backup',
      key: 'backupSucceeded',
      dimensions: { [BACKUP_TYPE_DIMENSION]: 'full' },
      hours: Math.min(...full),
    });
  const report = heartbeatHours(c.schedules.report, c.scheduleWindowMinutes);
  if (report !== undefined)
    list.push({ id: 'ReportHeartbeat', what: 'report', key: 'reportSucceeded', hours: report });
  return list;
}

/**
 * The shared stack's environment as a fleet stack's tasks get it: plain values as they are, each value
 * that refers to a shared resource (bucket, topic, bus) read through its SSM parameter.
 */
function sharedEnvironmentFor(scope: Construct, shared: PgvaultStack): Record<string, string> {
  const values = SharedValues.of(shared);
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(shared.sharedEnvironment)) {
    env[key] = Token.isUnresolved(value) ? values.valueFor(scope, `env.${key}`, value) : value;
  }
  return env;
}

/** A deployment: the shared stack and its fleet stacks. */
export interface PgvaultDeployment {
  readonly shared: PgvaultStack;
  /** The fleet stacks, by number. */
  readonly fleets: readonly FleetStack[];
  /** Every stack, shared first. */
  readonly stacks: readonly Stack[];
}

export interface PgvaultDeploymentProps {
  readonly config: DeployConfig;
  readonly env?: Environment;
  readonly description?: string;
  /** Test seam: a container image instead of building tasks/Dockerfile. @default the Dockerfile asset */
  readonly image?: ecs.ContainerImage;
}

/**
 * The stacks of one configuration: `<stackName>` (shared) and a `<stackName>-Fleet<n>` for each fleet
 * stack that holds a cluster (infra/fleet.ts decides which: an explicit `shard`, else `fleet.layout`).
 * `cdk deploy --all` deploys the shared stack first, then the fleet stacks. A layout that would put more
 * than CLUSTERS_PER_FLEET_STACK clusters in one stack refuses synth (DeployConfigError, one line).
 */
export function createDeployment(scope: Construct, props: PgvaultDeploymentProps): PgvaultDeployment {
  const c = props.config;
  const layout = fleetLayout(c);
  const describe = (what: string) => (props.description ? `${props.description} (${what})` : undefined);
  const shared = new PgvaultStack(scope, c.stackName, {
    config: c,
    env: props.env,
    image: props.image,
    description: describe('shared: vault, functions, alerts'),
  });
  const fleets = layout.map(
    ({ shard, clusters }) =>
      new FleetStack(scope, fleetStackName(c.stackName, shard), {
        shared,
        shard,
        clusters,
        env: props.env,
        // The clusters by name (at most 12 of at most 32 characters): which stack holds a cluster, at a glance.
        description: describe(`fleet stack ${shard}: ${clusters.map((cl) => cl.name).join(', ')}`),
      }),
  );
  return { shared, fleets, stacks: [shared, ...fleets] };
}

/** CloudFormation's resource limit per stack as CDK applies it (context `@aws-cdk/core:stackResourceLimit`, 0: off). */
export function resourceLimit(stack: Stack): number {
  const configured = stack.node.tryGetContext(STACK_RESOURCE_LIMIT_CONTEXT);
  return configured === undefined ? 500 : Number.parseInt(String(configured), 10);
}

/**
 * CloudFormation takes at most 500 resources per stack. The split keeps every stack well under it;
 * should a stack still not fit, refuse with one line before CDK's own synth check (a list of resource
 * types) or a failed deployment.
 */
function checkResourceCount(stack: Stack): void {
  const limit = resourceLimit(stack);
  const resources = stack.node.findAll().filter((n) => CfnResource.isCfnResource(n)).length + 1; // + CDKMetadata
  if (limit > 0 && resources > limit) {
    throw new DeployConfigError(
      `pgvault deploy config: stack ${stack.stackName} needs about ${resources} CloudFormation resources, ` +
        `more than the ${limit} one stack may hold`,
    );
  }
}

/** Bytes the environment will take once deployed, counting each unresolved reference as a long ARN. */
function estimateEnvironmentSize(env: Record<string, string>, stack: Stack): number {
  let total = 0;
  for (const [key, value] of Object.entries(env)) total += key.length + deployedLength(stack.resolve(value));
  return total;
}

/** Length of a resolved value once CloudFormation substituted its references (ARNs up to ~100 characters). */
function deployedLength(value: unknown): number {
  if (typeof value === 'string') return value.length;
  if (typeof value === 'number') return String(value).length;
  const join = (value as { 'Fn::Join'?: [string, unknown[]] })['Fn::Join'];
  if (join)
    return (
      join[1].reduce<number>((n, part) => n + deployedLength(part), 0) + join[0].length * (join[1].length - 1)
    );
  return 100;
}
