import { Annotations, Duration, IgnoreMode, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as efs from 'aws-cdk-lib/aws-efs';
import type * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { type ClusterConfig, patroniUrls } from '../config';
import { repoRoot } from '../paths';
import type { VaultBucket } from './vault-bucket';

/** Name of the one container in every task definition (TASK_CONTAINER_NAME). */
export const CONTAINER_NAME = 'pgvault';
/** Where `wal receive` stages segments: an EFS access point, so a restart loses nothing. */
export const WAL_RECEIVE_DIR = '/var/lib/pgvault/wal-receive';
/** The file `wal receive --heartbeat` rewrites every 10 s while streaming; in the task, not on EFS. */
export const WAL_RECEIVE_HEARTBEAT = '/tmp/pgvault-wal-receive.alive';
/**
 * The receiver's health check: its heartbeat is younger than a minute (pg_receivewal has been running
 * for a while and the process is alive). A missing file (stopped, never streamed) fails too.
 */
export const WAL_RECEIVE_HEALTH_CHECK = `[ $(( $(date +%s) - $(stat -c %Y ${WAL_RECEIVE_HEARTBEAT}) )) -lt 60 ]`;
/**
 * Seconds between SIGTERM and SIGKILL for the receiver (Fargate's maximum): pg_receivewal flushes and
 * every completed segment is pushed before `wal receive` exits 0 (it gives itself 100 s, cli/main.ts).
 */
export const WAL_RECEIVE_STOP_TIMEOUT_SECONDS = 120;
export const REPO_ROOT = repoRoot();

/**
 * Family of a cluster's backup or restore task definition: `<stack>-backup-<cluster>`. The functions
 * start tasks by family (the cluster list they read is written at synth, before revisions exist), so
 * the family carries the stack name: two pgvault stacks in one account may both have a cluster `main`.
 */
export function taskFamily(stackName: string, kind: 'backup' | 'restore', cluster: string): string {
  return `${stackName}-${kind}-${cluster}`;
}

export interface TaskSize {
  readonly cpu: number;
  readonly memoryMiB: number;
  readonly ephemeralStorageGiB: number;
}

/**
 * IAM path of the roles of one kind of task (`/<deployment>/backup/`): the functions' PassRole names
 * `role/<deployment>/backup/*` instead of every cluster's roles, so their policies do not grow with the
 * fleet, and restore still passes only restore roles.
 */
export function taskRolePath(deployment: string, kind: 'backup' | 'restore' | 'wal-receive'): string {
  return `/${deployment}/${kind}/`;
}

export interface NetworkConfig {
  readonly vpcId: string;
  readonly subnetIds: readonly string[];
  readonly securityGroupIds: readonly string[];
  readonly assignPublicIp: boolean;
  /** Zone of each subnet (order of subnetIds), when known: the EFS mount targets are then one per zone. */
  readonly subnetAvailabilityZones?: readonly string[];
}

/**
 * The subnets that get a WAL staging mount target: EFS allows one mount target per availability zone
 * (a second subnet of the same zone fails the deploy), and a task reaches the file system through the
 * mount target of its own zone. With the zones known, the first subnet of each zone; otherwise every
 * subnet (right when each subnet is in its own zone, which `network.subnetAvailabilityZones` states).
 */
export function mountTargetSubnets(network: NetworkConfig): { ids: string[]; zones?: string[] } {
  const zones = network.subnetAvailabilityZones;
  if (!zones || zones.length !== network.subnetIds.length) return { ids: [...network.subnetIds] };
  const byZone = new Map<string, string>();
  network.subnetIds.forEach((id, i) => {
    if (!byZone.has(zones[i]!)) byZone.set(zones[i]!, id);
  });
  return { ids: [...byZone.values()], zones: [...byZone.keys()] };
}

/** What the deployment's task platform (shared stack) needs. */
export interface BackupTasksProps {
  /** Whether any cluster runs `pgvault wal receive` (the EFS staging file system is shared). */
  readonly needsWalFileSystem: boolean;
  readonly network: NetworkConfig;
  /** The task security groups (Network): the EFS group accepts NFS from them, and they get the egress. @default imported from network.securityGroupIds */
  readonly securityGroups?: ec2.ISecurityGroup[];
  readonly architecture: 'arm64' | 'x86_64';
  /** PostgreSQL server majors built into the image (PG_SERVER_VERSIONS). */
  readonly postgresServerVersions: readonly number[];
  /** Major of the image's client tools (PG_CLIENT_VERSION): config.ts postgresClientVersion(). */
  readonly postgresClientVersion: number;
  readonly logRetentionDays: number;
  /** Test seam: an image other than the Dockerfile build (no asset). @default the tasks/Dockerfile asset */
  readonly image?: ecs.ContainerImage;
}

/**
 * What the task definitions of a fleet stack use of the shared task platform (BackupTasks): in a fleet
 * stack, imported through SSM parameters (SharedValues), never the shared stack's constructs themselves.
 */
export interface TaskPlatform {
  readonly cluster: ecs.ICluster;
  readonly logGroup: logs.ILogGroup;
  readonly image: ecs.ContainerImage;
  readonly walFileSystem?: efs.IFileSystem;
}

/** What one fleet stack's task definitions need. */
export interface ClusterTasksProps {
  /** The deployment's name (config.stackName): task families and role paths carry it. */
  readonly deployment: string;
  readonly platform: TaskPlatform;
  readonly vault: VaultBucket;
  readonly topic: sns.ITopic;
  readonly eventBus: events.IEventBus;
  readonly clusters: readonly ClusterConfig[];
  /** Clusters that run `pgvault wal receive` as a service. */
  readonly walReceivers: ReadonlySet<string>;
  readonly network: NetworkConfig;
  /** pgvault settings every container shares (CLOUD_*, RETENTION_*, COMPRESSION, ...). */
  readonly sharedEnvironment: Readonly<Record<string, string>>;
  readonly task: TaskSize;
  readonly restoreTask: TaskSize;
  readonly walReceive: { cpu: number; memoryMiB: number };
  readonly architecture: 'arm64' | 'x86_64';
  /** The second repository's credentials secret (REPO2_SECRET_ARN), which every task reads when it starts. */
  readonly repositorySecret?: CredentialsSecret;
}

/** One cluster's task definitions and (optional) WAL receiver service. */
export interface ClusterTaskSet {
  /** Backups and deep verification (`TASK_DEFINITION_ARN`). */
  readonly backup: ecs.FargateTaskDefinition;
  /** Restores (`RESTORE_TASK_DEFINITION_ARN`): its own role, only the restore Lambda may run it. */
  readonly restore: ecs.FargateTaskDefinition;
  readonly walReceiver?: ecs.FargateService;
}

/**
 * What every cluster's tasks share (the shared stack): the ECS cluster, the task log group, the image,
 * the imported network and the EFS file system `wal receive` stages on. The task definitions are in
 * the fleet stacks (ClusterTasks).
 */
export class BackupTasks extends Construct {
  public readonly cluster: ecs.Cluster;
  public readonly logGroup: logs.LogGroup;
  public readonly image: ecs.ContainerImage;
  public readonly vpc: ec2.IVpc;
  public readonly subnets: ec2.ISubnet[];
  public readonly securityGroups: ec2.ISecurityGroup[];
  public readonly walFileSystem?: efs.FileSystem;

  constructor(scope: Construct, id: string, props: BackupTasksProps) {
    super(scope, id);
    // Imported by id: no lookups, so synth needs no credentials. Only the VPC id is used (ECS cluster, EFS
    // security group); subnets are always given explicitly, so the placeholder zone is never rendered.
    this.vpc = ec2.Vpc.fromVpcAttributes(this, 'Vpc', {
      vpcId: props.network.vpcId,
      availabilityZones: ['unused'],
    });
    this.subnets = props.network.subnetIds.map((sid) => ec2.Subnet.fromSubnetId(this, `Subnet-${sid}`, sid));
    for (const subnet of this.subnets) {
      Validations.of(subnet).acknowledge({
        id: 'Annotation::@aws-cdk/aws-ec2:noSubnetRouteTableId',
        reason:
          'Subnets are only passed to tasks, the service and EFS mount targets; no route table is read.',
      });
    }
    this.securityGroups =
      props.securityGroups ??
      props.network.securityGroupIds.map((gid) =>
        ec2.SecurityGroup.fromSecurityGroupId(this, `Sg-${gid}`, gid, { mutable: false }),
      );

    this.cluster = new ecs.Cluster(this, 'Cluster', { vpc: this.vpc, enableFargateCapacityProviders: true });
    Validations.of(this.cluster).acknowledge({
      id: 'AwsSolutions-ECS4',
      reason:
        'Container Insights is billed per task; backups are short batch runs whose failures are caught by the ' +
        'task state-change rule and whose results are pgvault metrics (duration, size, RPO, RTO).',
    });

    this.logGroup = new logs.LogGroup(this, 'Logs', {
      retention: props.logRetentionDays as logs.RetentionDays,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    const platform =
      props.architecture === 'arm64' ? ecrAssets.Platform.LINUX_ARM64 : ecrAssets.Platform.LINUX_AMD64;
    this.image =
      props.image ??
      ecs.ContainerImage.fromDockerImageAsset(
        new ecrAssets.DockerImageAsset(this, 'Image', {
          directory: REPO_ROOT,
          file: 'tasks/Dockerfile',
          platform,
          buildArgs: {
            PG_CLIENT_VERSION: String(props.postgresClientVersion),
            PG_SERVER_VERSIONS: props.postgresServerVersions.join(' '),
          },
          // The repository root's .dockerignore narrows the context; these are excluded whatever it says.
          ignoreMode: IgnoreMode.DOCKER,
          exclude: ['cdk.out', 'node_modules', '.git', 'dist'],
        }),
      );

    if (props.needsWalFileSystem) {
      const efsSecurityGroup = new ec2.SecurityGroup(this, 'WalFsSecurityGroup', {
        vpc: this.vpc,
        description: 'pgvault wal receive staging (NFS from the task security groups)',
        allowAllOutbound: false,
      });
      // Ingress here, and egress 2049 on the task group when the stack manages it (Network).
      for (const sg of this.securityGroups)
        efsSecurityGroup.connections.allowFrom(sg, ec2.Port.tcp(2049), 'NFS from pgvault tasks');
      const mounts = mountTargetSubnets(props.network);
      if (!mounts.zones) {
        Annotations.of(this).addWarningV2(
          'pgvault:efsMountTargetPerSubnet',
          'WAL staging (EFS): one mount target per subnet; two subnets in one availability zone fail the deploy. ' +
            'Set network.subnetAvailabilityZones to get one mount target per zone.',
        );
      }
      this.walFileSystem = new efs.FileSystem(this, 'WalFs', {
        vpc: this.vpc,
        vpcSubnets: { subnets: this.subnets.filter((sn) => mounts.ids.includes(sn.subnetId)) },
        securityGroup: efsSecurityGroup,
        encrypted: true,
        // Staging only: segments leave it as soon as they are stored in the vault.
        removalPolicy: RemovalPolicy.DESTROY,
      });
    }
  }
}

/**
 * One fleet stack's Fargate task definitions. One backup and one restore task definition per database
 * cluster: each holds that cluster's connection settings and takes its credentials (PGUSER, PGPASSWORD)
 * from that cluster's secret (the restore task from its restore secret), which ECS cannot override per
 * run; each task role may touch only its cluster's folder of the vault. Roles carry the deployment's
 * IAM path (taskRolePath).
 */
export class ClusterTasks extends Construct {
  public readonly byCluster = new Map<string, ClusterTaskSet>();
  private readonly subnets: ec2.ISubnet[];
  private readonly securityGroups: ec2.ISecurityGroup[];

  constructor(scope: Construct, id: string, props: ClusterTasksProps) {
    super(scope, id);
    // Plain ids, imported again in this stack (nothing to reference across stacks).
    this.subnets = props.network.subnetIds.map((sid) => ec2.Subnet.fromSubnetId(this, `Subnet-${sid}`, sid));
    for (const subnet of this.subnets) {
      Validations.of(subnet).acknowledge({
        id: 'Annotation::@aws-cdk/aws-ec2:noSubnetRouteTableId',
        reason: 'Subnets are only passed to the wal receive service; no route table is read.',
      });
    }
    this.securityGroups = props.network.securityGroupIds.map((gid) =>
      ec2.SecurityGroup.fromSecurityGroupId(this, `Sg-${gid}`, gid, { mutable: false }),
    );
    // The passphrase by reference (its ARN and key through SSM parameters, SharedValues): granting the
    // shared secret itself would add each execution role to the vault key's policy (a KMS grant through
    // Secrets Manager), which names this stack's roles from the shared stack, a cycle, and grows the
    // key policy with the fleet. The key's policy lets IAM policies grant its use; the grant is the
    // execution role's own (kms:Decrypt via Secrets Manager only, grantSecretKeys): the imported
    // secret's `encryptionKey` is not turned into a KMS grant by `grantRead`, so it is stated here.
    const vaultKeyArn = props.vault.keyArnFor(this);
    const passphrase = secretsmanager.Secret.fromSecretAttributes(this, 'Passphrase', {
      secretCompleteArn: props.vault.passphraseArnFor(this),
      encryptionKey: kms.Key.fromKeyArn(this, 'VaultKey', vaultKeyArn),
    });
    for (const c of props.clusters) {
      const env: Record<string, string> = {
        ...props.sharedEnvironment,
        CLUSTER_NAME: c.name,
        PGHOST: c.host,
        PGPORT: String(c.port),
        PGDATABASE: c.database,
        DEPLOYMENT_MODE: c.mode,
        ...(c.patroniUrl ? { PATRONI_URL: c.patroniUrl } : {}),
        ...(c.citusCoordinator ? { CITUS_COORDINATOR: c.citusCoordinator } : {}),
        ...patroniEnvironment(c),
        ...incrementalEnvironment(c),
      };
      const credentials = secretsmanager.Secret.fromSecretAttributes(this, `Credentials-${c.name}`, {
        secretCompleteArn: c.credentialsSecretArn,
        encryptionKey: c.credentialsKmsKeyArn
          ? kms.Key.fromKeyArn(this, `CredentialsKey-${c.name}`, c.credentialsKmsKeyArn)
          : undefined,
      });
      const secrets: Record<string, ecs.Secret> = {
        ENCRYPTION_KEY: ecs.Secret.fromSecretsManager(passphrase),
        PGUSER: ecs.Secret.fromSecretsManager(credentials, 'username'),
        PGPASSWORD: ecs.Secret.fromSecretsManager(credentials, 'password'),
      };
      // Restores sign in with their own user (it may create and write databases; the backup user needs
      // only read rights): restoreCredentialsSecretArn, else the backup's secret, with a synth warning.
      const restoreCredentials = restoreCredentialsOf(c);
      const restoreSecrets: Record<string, ecs.Secret> = c.restoreCredentialsSecretArn
        ? {
            ENCRYPTION_KEY: secrets.ENCRYPTION_KEY!,
            ...credentialSecrets(
              secretsmanager.Secret.fromSecretAttributes(this, `RestoreCredentials-${c.name}`, {
                secretCompleteArn: c.restoreCredentialsSecretArn,
                encryptionKey: c.restoreCredentialsKmsKeyArn
                  ? kms.Key.fromKeyArn(this, `RestoreCredentialsKey-${c.name}`, c.restoreCredentialsKmsKeyArn)
                  : undefined,
              }),
            ),
          }
        : secrets;

      const backup = this.taskDefinition(
        `Backup-${c.name}`,
        props,
        props.task,
        env,
        secrets,
        c.name,
        'backup',
      );
      // Backups write and undo (delete what an interrupted run stored); verification and drills write drills/.
      props.vault.grantRepository(backup.taskRole, {
        read: true,
        write: true,
        delete: true,
        cluster: c.name,
      });

      const restore = this.taskDefinition(
        `Restore-${c.name}`,
        props,
        props.restoreTask,
        env,
        restoreSecrets,
        c.name,
        'restore',
      );
      if (!c.restoreCredentialsSecretArn) {
        Annotations.of(restore).addWarningV2(
          'pgvault:restoreCredentialsFallback',
          `cluster ${c.name} has no restoreCredentialsSecretArn: its restore task signs in with the backup credentials (credentialsSecretArn), so the backup user needs the restore rights (CREATEDB, write); give restores their own secret (infra/README.md "Restore credentials")`,
        );
      }
      props.vault.grantRepository(restore.taskRole, { read: true, cluster: c.name });
      // Restore tests and drills record their measured RTO.
      props.vault.grantRepository(restore.taskRole, { write: true, cluster: c.name, folder: 'drills' });
      grantRestoreTargets(restore.taskRole, c);

      let walReceiver: ecs.FargateService | undefined;
      const fileSystem = props.platform.walFileSystem;
      if (props.walReceivers.has(c.name) && fileSystem) {
        walReceiver = this.walReceiver(c.name, props, env, secrets, fileSystem);
      }
      const backupCredentials = { secretArn: c.credentialsSecretArn, kmsKeyArn: c.credentialsKmsKeyArn };
      for (const def of [backup, walReceiver?.taskDefinition]) {
        if (def) grantSecretKeys(def.obtainExecutionRole(), vaultKeyArn, backupCredentials);
      }
      grantSecretKeys(restore.obtainExecutionRole(), vaultKeyArn, restoreCredentials);
      // Read by pgvault itself at start with the task role (core/pg/startup-secrets.ts): the Patroni REST
      // API's secret and the second repository's. Every task of the cluster, nothing else.
      for (const def of [backup, restore, walReceiver?.taskDefinition]) {
        if (!def) continue;
        if (c.patroniCredentialsSecretArn)
          grantReadSecret(def.taskRole, {
            secretArn: c.patroniCredentialsSecretArn,
            kmsKeyArn: c.patroniCredentialsKmsKeyArn,
          });
        if (props.repositorySecret) grantReadSecret(def.taskRole, props.repositorySecret);
      }
      warnPatroni(backup, c, walReceiver !== undefined);
      this.byCluster.set(c.name, { backup, restore, walReceiver });
    }
  }

  private taskDefinition(
    id: string,
    props: ClusterTasksProps,
    size: { cpu: number; memoryMiB: number; ephemeralStorageGiB?: number },
    environment: Record<string, string>,
    secrets: Record<string, ecs.Secret>,
    cluster: string,
    kind: 'backup' | 'restore',
  ): ecs.FargateTaskDefinition {
    const path = taskRolePath(props.deployment, kind);
    const def = new ecs.FargateTaskDefinition(this, id, {
      family: taskFamily(props.deployment, kind, cluster),
      taskRole: new iam.Role(this, `${id}TaskRole`, {
        assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
        path,
        description: `pgvault ${kind} tasks of ${cluster}`,
      }),
      executionRole: new iam.Role(this, `${id}ExecutionRole`, {
        assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
        path,
        description: `pgvault ${kind} task execution (image, logs, secrets) of ${cluster}`,
      }),
      cpu: size.cpu,
      memoryLimitMiB: size.memoryMiB,
      ephemeralStorageGiB: size.ephemeralStorageGiB,
      runtimePlatform: {
        cpuArchitecture:
          props.architecture === 'arm64' ? ecs.CpuArchitecture.ARM64 : ecs.CpuArchitecture.X86_64,
        operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
      },
    });
    def.addContainer(CONTAINER_NAME, {
      image: props.platform.image,
      essential: true,
      // The dispatcher overrides the command with pgvault's arguments (["backup","full","daily"], ...).
      command: ['backup', 'stats'],
      environment,
      secrets,
      logging: ecs.LogDrivers.awsLogs({
        logGroup: props.platform.logGroup,
        streamPrefix: `${kind}-${cluster}`,
      }),
    });
    // Every task may alert (SNS) and report lifecycle events; nothing else outside the vault.
    props.topic.grantPublish(def.taskRole);
    props.eventBus.grantPutEventsTo(def.taskRole);
    acknowledgeTaskDefinition(def);
    return def;
  }

  private walReceiver(
    cluster: string,
    props: ClusterTasksProps,
    env: Record<string, string>,
    secrets: Record<string, ecs.Secret>,
    fileSystem: efs.IFileSystem,
  ): ecs.FargateService {
    // In this stack, on the shared file system (fileSystem.addAccessPoint would put it in the shared stack).
    const accessPoint = new efs.AccessPoint(this, `WalAccessPoint-${cluster}`, {
      fileSystem,
      path: `/wal-receive/${cluster}`,
      createAcl: { ownerUid: '1000', ownerGid: '1000', permissions: '700' },
      posixUser: { uid: '1000', gid: '1000' },
    });
    const rolePath = taskRolePath(props.deployment, 'wal-receive');
    const def = new ecs.FargateTaskDefinition(this, `WalReceive-${cluster}`, {
      // The stack name, as in the backup and restore families: two deployments in one account may both
      // have a cluster `main`. (The service name is unique within the deployment's own ECS cluster.)
      family: `${props.deployment}-wal-receive-${cluster}`,
      taskRole: new iam.Role(this, `WalReceive-${cluster}TaskRole`, {
        assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
        path: rolePath,
        description: `pgvault wal receive of ${cluster}`,
      }),
      executionRole: new iam.Role(this, `WalReceive-${cluster}ExecutionRole`, {
        assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
        path: rolePath,
        description: `pgvault wal receive task execution of ${cluster}`,
      }),
      cpu: props.walReceive.cpu,
      memoryLimitMiB: props.walReceive.memoryMiB,
      runtimePlatform: {
        cpuArchitecture:
          props.architecture === 'arm64' ? ecs.CpuArchitecture.ARM64 : ecs.CpuArchitecture.X86_64,
        operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
      },
      volumes: [
        {
          name: 'wal-receive',
          efsVolumeConfiguration: {
            fileSystemId: fileSystem.fileSystemId,
            transitEncryption: 'ENABLED',
            authorizationConfig: { accessPointId: accessPoint.accessPointId, iam: 'ENABLED' },
          },
        },
      ],
    });
    const container = def.addContainer(CONTAINER_NAME, {
      image: props.platform.image,
      essential: true,
      command: ['wal', 'receive', '--heartbeat', WAL_RECEIVE_HEARTBEAT],
      environment: { ...env, WAL_RECEIVE_DIR },
      stopTimeout: Duration.seconds(WAL_RECEIVE_STOP_TIMEOUT_SECONDS),
      // Unhealthy: ECS replaces the task (the task-failure rule alerts on that, infra/constructs/monitoring.ts).
      healthCheck: {
        command: ['CMD-SHELL', WAL_RECEIVE_HEALTH_CHECK],
        interval: Duration.seconds(30),
        timeout: Duration.seconds(5),
        retries: 3,
        // Slot creation and the first connection; the heartbeat starts 5 s after pg_receivewal does.
        startPeriod: Duration.seconds(120),
      },
      secrets,
      logging: ecs.LogDrivers.awsLogs({
        logGroup: props.platform.logGroup,
        streamPrefix: `wal-receive-${cluster}`,
      }),
    });
    container.addMountPoints({
      containerPath: WAL_RECEIVE_DIR,
      sourceVolume: 'wal-receive',
      readOnly: false,
    });
    fileSystem.grant(def.taskRole, 'elasticfilesystem:ClientMount', 'elasticfilesystem:ClientWrite');
    props.vault.grantRepository(def.taskRole, { read: true, write: true, cluster, folder: 'wal' });
    // Every WAL push checks the archive's key against <cluster>/keys.json (and records it in a new archive).
    props.vault.grantClusterObject(def.taskRole, cluster, 'keys.json');
    props.topic.grantPublish(def.taskRole);
    props.eventBus.grantPutEventsTo(def.taskRole);
    acknowledgeTaskDefinition(def);

    return new ecs.FargateService(this, `WalReceiver-${cluster}`, {
      cluster: props.platform.cluster,
      taskDefinition: def,
      serviceName: `pgvault-wal-receive-${cluster}`,
      desiredCount: 1,
      // One pg_receivewal per replication slot: the old task stops before the new one starts.
      minHealthyPercent: 0,
      maxHealthyPercent: 100,
      vpcSubnets: { subnets: this.subnets },
      securityGroups: this.securityGroups,
      assignPublicIp: props.network.assignPublicIp,
      platformVersion: ecs.FargatePlatformVersion.LATEST,
      circuitBreaker: { enable: true, rollback: true },
    });
  }
}

/** A database credentials secret and its customer-managed key, if it has one. */
export interface CredentialsSecret {
  readonly secretArn: string;
  readonly kmsKeyArn?: string;
}

/** The secret the restore task's PGUSER/PGPASSWORD come from: its own, else the backup's. */
function restoreCredentialsOf(c: ClusterConfig): CredentialsSecret {
  return c.restoreCredentialsSecretArn
    ? { secretArn: c.restoreCredentialsSecretArn, kmsKeyArn: c.restoreCredentialsKmsKeyArn }
    : { secretArn: c.credentialsSecretArn, kmsKeyArn: c.credentialsKmsKeyArn };
}

function credentialSecrets(secret: secretsmanager.ISecret): Record<string, ecs.Secret> {
  return {
    PGUSER: ecs.Secret.fromSecretsManager(secret, 'username'),
    PGPASSWORD: ecs.Secret.fromSecretsManager(secret, 'password'),
  };
}

const viaSecretsManager = (region: string) => ({
  StringEquals: { 'kms:ViaService': `secretsmanager.${region}.amazonaws.com` },
});

/**
 * What an execution role needs to hand the container its `secrets`: ECS fetches them with the
 * execution role, and Secrets Manager decrypts each with its KMS key on the caller's behalf, so the role
 * needs kms:Decrypt on the vault key (the passphrase) and, when the credentials secret has its own
 * customer-managed key (`credentialsKmsKeyArn`, `restoreCredentialsKmsKeyArn`), on that key: only
 * through Secrets Manager (kms:ViaService), in the region of the secret (the stack's for the
 * passphrase, the ARN's for the credentials).
 */
function grantSecretKeys(role: iam.IRole, vaultKeyArn: string, credentials: CredentialsSecret): void {
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['kms:Decrypt'],
      resources: [vaultKeyArn],
      conditions: viaSecretsManager(Stack.of(role).region),
    }),
  );
  if (credentials.kmsKeyArn) {
    const secretRegion = credentials.secretArn.split(':')[3] || Stack.of(role).region;
    role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['kms:Decrypt'],
        resources: [credentials.kmsKeyArn],
        conditions: viaSecretsManager(secretRegion),
      }),
    );
  }
}

/**
 * The one thing task code reads from Secrets Manager itself: a restore into another server names its
 * credentials secret in PGVAULT_PG_SECRET_ARN, and pgvault reads it at start with the task role. That
 * role may read the cluster's `restoreTargets` secrets, each by its complete ARN, and nothing else (no
 * wildcard); a secret with its own key also needs kms:Decrypt through Secrets Manager. No targets, no
 * statement. The backup and WAL roles get none of this.
 */
function grantRestoreTargets(role: iam.IRole, cluster: ClusterConfig): void {
  if (cluster.restoreTargets.length === 0) return;
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['secretsmanager:GetSecretValue'],
      resources: cluster.restoreTargets.map((t) => t.credentialsSecretArn),
    }),
  );
  for (const t of cluster.restoreTargets) {
    if (!t.credentialsKmsKeyArn) continue;
    role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['kms:Decrypt'],
        resources: [t.credentialsKmsKeyArn],
        conditions: viaSecretsManager(t.credentialsSecretArn.split(':')[3] || Stack.of(role).region),
      }),
    );
  }
}

/**
 * A cluster's incremental base backup settings for its tasks (issue 15): only the keys configured
 * (infra/config.ts incrementalProblems has checked them), so a cluster without them gets none.
 */
export function incrementalEnvironment(c: ClusterConfig): Record<string, string> {
  if (c.baseIncremental !== true) return {};
  return {
    BASE_INCREMENTAL: 'true',
    ...(c.incrementalChainMax !== undefined ? { INCREMENTAL_CHAIN_MAX: String(c.incrementalChainMax) } : {}),
  };
}

/** Synth warnings of Patroni clusters (issue 13). */
export const PATRONI_SLOT_WARNING = 'pgvault:patroniPermanentSlot';
export const PATRONI_CA_WARNING = 'pgvault:patroniHttpsWithoutCa';

/**
 * A Patroni cluster's settings for its tasks (DEPLOYMENT_MODE=patroni: the core finds the leader and the
 * replicas through PATRONI_URL). Only the keys configured: a cluster without them gets none.
 */
export function patroniEnvironment(c: ClusterConfig): Record<string, string> {
  return {
    ...(c.backupFrom ? { BACKUP_FROM: c.backupFrom } : {}),
    ...(c.replicaMaxLag ? { REPLICA_MAX_LAG: c.replicaMaxLag } : {}),
    // The ARN only: pgvault reads the REST API's user, password and CA at start (core/pg/startup-secrets.ts).
    ...(c.patroniCredentialsSecretArn ? { PATRONI_SECRET_ARN: c.patroniCredentialsSecretArn } : {}),
  };
}

/**
 * A Patroni cluster's receiver follows the leader on a slot Patroni keeps on every member (a permanent
 * slot), which only Patroni's dynamic configuration can declare; an https API signed by a private CA
 * needs that CA (`cacert` in the Patroni secret).
 */
function warnPatroni(def: ecs.FargateTaskDefinition, c: ClusterConfig, receivesWal: boolean): void {
  if (c.mode !== 'patroni' || !c.patroniUrl) return;
  if (receivesWal) {
    Annotations.of(def).addWarningV2(
      PATRONI_SLOT_WARNING,
      `cluster ${c.name} receives WAL from a Patroni cluster: declare the slot as a Patroni permanent slot (dynamic configuration: slots: {pgvault: {type: physical}}), or wal receive exits 2 (infra/README.md "Patroni clusters")`,
    );
  }
  const https = patroniUrls(c.patroniUrl).some((u) => u.protocol === 'https:');
  if (https && !c.patroniCredentialsSecretArn) {
    Annotations.of(def).addWarningV2(
      PATRONI_CA_WARNING,
      `cluster ${c.name}'s Patroni REST API is https and has no patroniCredentialsSecretArn: the tasks trust only public CAs; put the CA's PEM as "cacert" in a secret and name it in patroniCredentialsSecretArn`,
    );
  }
}

/**
 * A secret pgvault reads itself when it starts (GetSecretValue with the task or function role): that
 * secret by its complete ARN, no wildcard, and its customer-managed key through Secrets Manager only.
 */
export function grantReadSecret(grantee: iam.IGrantable, secret: CredentialsSecret): void {
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({ actions: ['secretsmanager:GetSecretValue'], resources: [secret.secretArn] }),
  );
  if (secret.kmsKeyArn) {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['kms:Decrypt'],
        resources: [secret.kmsKeyArn],
        // The secret's region (a complete ARN, config.ts checks it names one).
        conditions: viaSecretsManager(secret.secretArn.split(':')[3]!),
      }),
    );
  }
}

/**
 * The findings every pgvault task definition carries, with why they are accepted: on the definition,
 * its execution role and its task role (the roles carry the deployment's IAM path, so they are made
 * beside the definition rather than inside it).
 */
function acknowledgeTaskDefinition(def: ecs.FargateTaskDefinition): void {
  Validations.of(def).acknowledge({
    id: 'AwsSolutions-ECS2',
    reason:
      'Environment variables hold non-secret settings only (bucket, prefix, host, retention); the passphrase ' +
      'and database credentials come from Secrets Manager as ECS secrets.',
  });
  Validations.of(def.obtainExecutionRole()).acknowledge({
    id: 'AwsSolutions-IAM5[Resource::*]',
    reason:
      'ecr:GetAuthorizationToken (execution role, pulling the image) has no resource to name; IAM requires *.',
  });
  Validations.of(def.taskRole).acknowledge({
    id: 'AwsSolutions-IAM5[Action::kms:GenerateDataKey*]',
    reason:
      'Publishing to the KMS-encrypted alert topic needs GenerateDataKey* on its key (the one key is named).',
  });
}
