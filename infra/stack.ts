import { CfnOutput, CfnResource, Duration, type Environment, Stack, type StackProps } from 'aws-cdk-lib';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type { Construct } from 'constructs';
import {
  type ClusterConfig,
  type DeployConfig,
  DeployConfigError,
  expirationDays,
  postgresClientVersion,
  receivesWal,
} from './config';
import { Alerts } from './constructs/alerts';
import { CLUSTERS_FILE, FUNCTION_NAMES, type FunctionCluster, Functions } from './constructs/functions';
import { ClusterMonitoring, type Heartbeat, Monitoring } from './constructs/monitoring';
import { Network } from './constructs/network';
import { ClusterSchedules, heartbeatHours, Schedules } from './constructs/schedules';
import {
  BackupTasks,
  ClusterTasks,
  CONTAINER_NAME,
  type NetworkConfig,
  taskFamily,
} from './constructs/tasks';
import { LIFECYCLE_TAGS_SETTING, VaultBucket } from './constructs/vault-bucket';
import { BACKUP_TYPE_DIMENSION } from './metrics';

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
 * Fleet stacks import the shared stack's exports; "strong" (CloudFormation exports, which protect the
 * producer from removing a value still imported) is CDK's default, set explicitly.
 */
const CROSS_STACK_REFERENCES = '@aws-cdk/core:defaultCrossStackReferences';

/** CDK's context key for CloudFormation's resource limit per stack (default 500; 0 turns the check off). */
const STACK_RESOURCE_LIMIT_CONTEXT = '@aws-cdk/core:stackResourceLimit';

/**
 * Clusters per fleet stack. A cluster brings at most 38 resources (two task definitions with their task
 * and execution roles and policies, nine schedules, eleven alarms with the two heartbeats, and with
 * `walReceive` a receiver task definition, its roles and policies, service, access point and alarm); 12 of
 * them are 456, 457 with the stack's dashboard and metadata: a margin under CloudFormation's 500. A constant, not derived
 * from the config, so switching an option never moves a cluster to another stack (its names, alarm
 * and schedule names among them, would then be created in one stack before the other deleted them).
 */
export const CLUSTERS_PER_FLEET_STACK = 12;

/** Lambda's limit on the environment of one function (keys and values). */
const LAMBDA_ENV_LIMIT = 4096;

/** Name of the n-th fleet stack (from 1) of a deployment. */
export function fleetStackName(deployment: string, n: number): string {
  return `${deployment}-Fleet${n}`;
}

/** The clusters of each fleet stack: config order, CLUSTERS_PER_FLEET_STACK at a time. */
export function fleetChunks<T>(clusters: readonly T[]): T[][] {
  const chunks: T[][] = [];
  for (let i = 0; i < clusters.length; i += CLUSTERS_PER_FLEET_STACK) {
    chunks.push(clusters.slice(i, i + CLUSTERS_PER_FLEET_STACK));
  }
  return chunks;
}

/**
 * The shared stack of a deployment (named `stackName`): the vault bucket and its key, the passphrase,
 * alerts (topic, key, event bus), the ECS cluster, task log group, image and WAL staging file system,
 * the five functions with the cluster layer, the schedule group, role and dead-letter queue, and the
 * deployment-wide monitoring. Its size does not depend on the fleet; the clusters' own resources are in
 * the fleet stacks (FleetStack), which reference these through CloudFormation exports.
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
    });

    this.schedules = new Schedules(this, 'Schedules', {
      functions: this.functions.functions,
      physicalBackups: c.physicalBackups,
      groupName: this.stackName,
    });

    this.monitoring = new Monitoring(this, 'Monitoring', {
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
    checkResourceCount(this);
  }
}

export interface FleetStackProps extends StackProps {
  readonly shared: PgvaultStack;
  /** This stack's clusters (at most CLUSTERS_PER_FLEET_STACK). */
  readonly clusters: readonly ClusterConfig[];
}

/**
 * A fleet stack: the resources of up to CLUSTERS_PER_FLEET_STACK clusters (task definitions and their
 * roles, wal receive services and access points, schedules, alarms, a dashboard). Everything shared is
 * the shared stack's, referenced the CDK way (exports and imports); nothing in the shared stack refers
 * to a fleet stack, so fleet stacks deploy after it, in parallel with each other.
 */
export class FleetStack extends Stack {
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
    this.addStackDependency(shared, 'the fleet uses the shared vault, functions, ECS cluster and topic');
    this.clusterNames = props.clusters.map((cl) => cl.name);
    const walReceivers = new Set(props.clusters.filter((cl) => receivesWal(c, cl)).map((cl) => cl.name));

    this.tasks = new ClusterTasks(this, 'Tasks', {
      deployment: c.stackName,
      platform: shared.tasks,
      vault: shared.vault,
      topic: shared.alerts.topic,
      eventBus: shared.alerts.eventBus,
      clusters: props.clusters,
      walReceivers,
      network: shared.taskNetwork,
      // Fargate's scratch space (ephemeralStorageGiB) is the root file system: TMPDIR and BACKUP_DIR live there.
      sharedEnvironment: { ...shared.sharedEnvironment, BACKUP_DIR: '/var/lib/pgvault', TMPDIR: '/tmp' },
      task: c.task,
      restoreTask: c.restoreTask,
      walReceive: c.walReceive,
      architecture: c.taskArchitecture,
    });

    this.schedules = new ClusterSchedules(this, 'Schedules', {
      clusters: this.clusterNames,
      base: shared.schedules,
      functions: shared.functions.functions,
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
      topic: shared.alerts.topic,
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

/** A deployment: the shared stack and its fleet stacks. */
export interface PgvaultDeployment {
  readonly shared: PgvaultStack;
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
 * The stacks of one configuration: `<stackName>` (shared) and `<stackName>-Fleet1..N`, N = the cluster
 * count / CLUSTERS_PER_FLEET_STACK rounded up (one for a small fleet). `cdk deploy --all` deploys the
 * shared stack first, then the fleet stacks.
 */
export function createDeployment(scope: Construct, props: PgvaultDeploymentProps): PgvaultDeployment {
  const c = props.config;
  const describe = (what: string) => (props.description ? `${props.description} (${what})` : undefined);
  const shared = new PgvaultStack(scope, c.stackName, {
    config: c,
    env: props.env,
    image: props.image,
    description: describe('shared: vault, functions, alerts'),
  });
  const chunks = fleetChunks(c.clusters);
  const fleets = chunks.map(
    (clusters, i) =>
      new FleetStack(scope, fleetStackName(c.stackName, i + 1), {
        shared,
        clusters,
        env: props.env,
        description: describe(
          `clusters ${clusters[0]!.name} to ${clusters[clusters.length - 1]!.name}, ${i + 1} of ${chunks.length}`,
        ),
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
