import { CfnOutput, CfnResource, Duration, Stack, type StackProps } from 'aws-cdk-lib';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type { Construct } from 'constructs';
import { type DeployConfig, DeployConfigError, expirationDays, receivesWal } from './config';
import { Alerts } from './constructs/alerts';
import { CLUSTERS_FILE, FUNCTION_NAMES, type FunctionCluster, Functions } from './constructs/functions';
import { Monitoring } from './constructs/monitoring';
import { Schedules } from './constructs/schedules';
import { BackupTasks, CONTAINER_NAME } from './constructs/tasks';
import { VaultBucket } from './constructs/vault-bucket';

export interface PgvaultStackProps extends StackProps {
  readonly config: DeployConfig;
  /** Test seam: a container image instead of building tasks/Dockerfile. @default the Dockerfile asset */
  readonly image?: ecs.ContainerImage;
}

/** Feature flags the stack needs (also in cdk.json). */
export const FEATURE_FLAGS = [
  '@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy',
  '@aws-cdk/aws-iam:minimizePolicies',
  '@aws-cdk/core:checkSecretUsage',
  '@aws-cdk/aws-ecs:arnFormatIncludesClusterName',
] as const;

/** CDK's context key for CloudFormation's resource limit per stack (default 500; 0 turns the check off). */
const STACK_RESOURCE_LIMIT_CONTEXT = '@aws-cdk/core:stackResourceLimit';

/**
 * Resources a stack has whatever the fleet (bucket, keys, topic, functions, ECS cluster, dashboard, ...;
 * about 58, a few more with EFS for wal receive): the rest is per cluster (25 to 36 each).
 */
const SHARED_RESOURCES = 60;

/** Lambda's limit on the environment of one function (keys and values). */
const LAMBDA_ENV_LIMIT = 4096;

/**
 * pgvault on AWS: the vault bucket, the Fargate tasks, the five functions, the schedules, alerts and
 * monitoring, for every cluster of the configuration.
 */
export class PgvaultStack extends Stack {
  public readonly vault: VaultBucket;
  public readonly alerts: Alerts;
  public readonly tasks: BackupTasks;
  public readonly functions: Functions;
  public readonly schedules: Schedules;
  public readonly monitoring: Monitoring;

  constructor(scope: Construct, id: string, props: PgvaultStackProps) {
    super(scope, id, props);
    // Behaviour this stack relies on, whatever cdk.json says (tests build it without cdk.json).
    for (const flag of FEATURE_FLAGS) this.node.setContext(flag, true);
    const c = props.config;
    const clusterNames = c.clusters.map((cl) => cl.name);
    const walReceivers = new Set(c.clusters.filter((cl) => receivesWal(c, cl)).map((cl) => cl.name));

    this.vault = new VaultBucket(this, 'Vault', {
      clusters: clusterNames,
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
    });
    this.alerts = new Alerts(this, 'Alerts', {
      emails: c.alerts.emails,
      eventBusName: `${this.stackName}-events`,
    });

    // Settings the tasks and the functions share (core/config.ts keys).
    const shared: Record<string, string> = {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: this.vault.bucket.bucketName,
      ...(c.bucket.prefix ? { CLOUD_PREFIX: c.bucket.prefix } : {}),
      LOCAL_COPY: 'false',
      ENCRYPTION: 'true',
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

    this.tasks = new BackupTasks(this, 'Tasks', {
      vault: this.vault,
      topic: this.alerts.topic,
      eventBus: this.alerts.eventBus,
      clusters: c.clusters,
      walReceivers,
      network: c.network,
      // Fargate's scratch space (ephemeralStorageGiB) is the root file system: TMPDIR and BACKUP_DIR live there.
      sharedEnvironment: { ...shared, BACKUP_DIR: '/var/lib/pgvault', TMPDIR: '/tmp' },
      task: c.task,
      restoreTask: c.restoreTask,
      walReceive: c.walReceive,
      architecture: c.taskArchitecture,
      postgresServerVersions: c.postgresServerVersions,
      logRetentionDays: c.logRetentionDays,
      image: props.image,
    });

    const first = this.tasks.byCluster.get(clusterNames[0]!)!;
    // The cluster list the functions read (functions/env.ts): plain values known at synth, so it ships
    // in a layer rather than the 4 KB environment. Task definitions by family: RunTask starts the
    // newest revision, which is the one the functions' RunTask permission names.
    const functionClusters: FunctionCluster[] = c.clusters.map((cl) => {
      const t = this.tasks.byCluster.get(cl.name)!;
      return {
        name: cl.name,
        mode: cl.mode,
        host: cl.host,
        port: cl.port,
        database: cl.database,
        credentialsSecretArn: cl.credentialsSecretArn,
        ...(cl.patroniUrl ? { patroniUrl: cl.patroniUrl } : {}),
        ...(cl.citusCoordinator ? { citusCoordinator: cl.citusCoordinator } : {}),
        // Each cluster has its own task definitions (its credentials are ECS secrets of that definition).
        taskDefinition: t.backup.family,
        restoreTaskDefinition: t.restore.family,
      };
    });
    const functionEnvironment: Record<string, string> = {
      ...shared,
      BACKUP_DIR: '/tmp/pgvault',
      ENCRYPTION_KEY_SECRET_ARN: this.vault.passphrase.secretArn,
      ECS_CLUSTER_ARN: this.tasks.cluster.clusterArn,
      TASK_DEFINITION_ARN: first.backup.taskDefinitionArn,
      RESTORE_TASK_DEFINITION_ARN: first.restore.taskDefinitionArn,
      TASK_CONTAINER_NAME: CONTAINER_NAME,
      SUBNET_IDS: c.network.subnetIds.join(','),
      SECURITY_GROUP_IDS: c.network.securityGroupIds.join(','),
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
      vault: this.vault,
      tasks: this.tasks,
      topic: this.alerts.topic,
      eventBus: this.alerts.eventBus,
      environment: functionEnvironment,
      clusters: functionClusters,
      logRetentionDays: c.logRetentionDays,
    });

    this.schedules = new Schedules(this, 'Schedules', {
      clusters: clusterNames,
      functions: this.functions.functions,
      expressions: c.schedules,
      timeZone: c.timeZone,
      physicalBackups: c.physicalBackups,
      retryAttempts: c.scheduleRetry.attempts,
      maxEventAge: Duration.minutes(c.scheduleRetry.maxEventAgeMinutes),
      groupName: this.stackName,
    });

    const receivers = new Map<string, ecs.FargateService>();
    for (const [name, t] of this.tasks.byCluster) if (t.walReceiver) receivers.set(name, t.walReceiver);
    this.monitoring = new Monitoring(this, 'Monitoring', {
      topic: this.alerts.topic,
      ecsCluster: this.tasks.cluster,
      taskLogGroup: this.tasks.logGroup,
      clusters: clusterNames,
      functions: this.functions.functions,
      deadLetterQueue: this.schedules.deadLetterQueue,
      walReceivers: receivers,
      thresholds: c.alerts,
      storageQuotaGb: c.storageQuotaGb,
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

    // CloudFormation takes at most 500 resources per stack and every cluster brings its own task
    // definitions, roles, schedules and alarms: refuse a fleet that does not fit with one line, before
    // CDK's own synth check (a list of resource types) or a failed deployment.
    const limit = resourceLimit(this);
    const resources = this.node.findAll().filter((n) => CfnResource.isCfnResource(n)).length + 1; // + CDKMetadata
    if (limit > 0 && resources > limit) {
      const perCluster = (resources - SHARED_RESOURCES) / c.clusters.length;
      const fit = Math.max(1, Math.floor((limit - SHARED_RESOURCES) / perCluster));
      throw new DeployConfigError(
        `pgvault deploy config: clusters: ${c.clusters.length} clusters need about ${resources} CloudFormation ` +
          `resources, more than the ${limit} one stack may hold; deploy the fleet as several stacks of at most ` +
          `about ${fit} clusters (one config file each, its own stackName)`,
      );
    }
  }
}

/** CloudFormation's resource limit per stack as CDK applies it (context `@aws-cdk/core:stackResourceLimit`, 0: off). */
function resourceLimit(stack: Stack): number {
  const configured = stack.node.tryGetContext(STACK_RESOURCE_LIMIT_CONTEXT);
  return configured === undefined ? 500 : Number.parseInt(String(configured), 10);
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
