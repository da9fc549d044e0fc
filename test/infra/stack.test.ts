import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Stack } from 'aws-cdk-lib';
import { Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import type { FleetStack, PgvaultStack } from '../../infra/stack';
import { type CfnJson, resourcesOf, synthTemplate, testConfig } from './synth';

// One synth of the example configuration (two clusters, Object Lock, physical backups, quota,
// WAL receiving for "orders") for every assertion in this file: the shared stack (`stack`, `template`)
// and, two clusters being fewer than a fleet stack holds, one fleet stack (`fleet`, `fleetTemplate`).
let template: Template;
let stack: PgvaultStack;
let fleetTemplate: Template;
let fleet: FleetStack;
beforeAll(() => {
  const result = synthTemplate(testConfig());
  ({ template, stack } = result);
  expect(result.fleets).toHaveLength(1);
  ({ template: fleetTemplate, stack: fleet } = result.fleets[0]!);
}, 120_000);

const ref = (id: string) => ({ Ref: id });
/** Logical id of a construct's resource, in whichever stack holds it. */
const logicalId = (c: { node: { defaultChild?: unknown } }) => {
  const child = c.node.defaultChild as Parameters<PgvaultStack['getLogicalId']>[0];
  return Stack.of(child).getLogicalId(child);
};
/** What a fleet stack holds for a value of the shared stack: the import of the export CDK made for it. */
function imported(value: unknown): CfnJson {
  const outputs = Object.values(template.toJSON().Outputs as Record<string, CfnJson>);
  const output = outputs.find((o) => o.Export && JSON.stringify(o.Value) === JSON.stringify(value));
  expect(output, `an export of ${JSON.stringify(value)}`).toBeDefined();
  return { 'Fn::ImportValue': output!.Export.Name };
}

type Statement = { Action: string | string[]; Resource: unknown; Effect: string; Condition?: unknown };
/** Every statement of the policies attached to a role (in the shared or the fleet stack). */
function statementsOf(roleLogicalId: string): Statement[] {
  return [template, fleetTemplate]
    .flatMap((t) => resourcesOf(t, 'AWS::IAM::Policy'))
    .filter(([, p]) => JSON.stringify(p.Properties.Roles).includes(`"${roleLogicalId}"`))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Statement[]);
}
/** The task security group the stack makes when network.securityGroupIds is not given (the example). */
const taskSecurityGroupId = () => ({
  'Fn::GetAtt': [
    logicalId({ node: { defaultChild: stack.network.taskSecurityGroup!.node.defaultChild } }),
    'GroupId',
  ],
});
const actionsOf = (s: Statement) => (Array.isArray(s.Action) ? s.Action : [s.Action]);
const allActions = (roleId: string) => statementsOf(roleId).flatMap(actionsOf);

describe('vault bucket', () => {
  it('is SSE-KMS with the customer-managed key, versioned, private, logged, with Object Lock', () => {
    const bucketId = logicalId(stack.vault.bucket);
    const keyId = logicalId(stack.vault.key);
    const props = template.toJSON().Resources[bucketId].Properties;
    expect(props.BucketEncryption.ServerSideEncryptionConfiguration[0]).toEqual({
      BucketKeyEnabled: true,
      ServerSideEncryptionByDefault: {
        SSEAlgorithm: 'aws:kms',
        KMSMasterKeyID: { 'Fn::GetAtt': [keyId, 'Arn'] },
      },
    });
    expect(props.VersioningConfiguration).toEqual({ Status: 'Enabled' });
    expect(props.PublicAccessBlockConfiguration).toEqual({
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    expect(props.LoggingConfiguration.DestinationBucketName).toEqual(
      ref(logicalId(stack.vault.accessLogsBucket)),
    );
    expect(props.ObjectLockEnabled).toBe(true);
    expect(props.ObjectLockConfiguration).toEqual({
      ObjectLockEnabled: 'Enabled',
      Rule: { DefaultRetention: { Mode: 'GOVERNANCE', Days: 7 } },
    });
    template.hasResource('AWS::KMS::Key', {
      Properties: { EnableKeyRotation: true },
      DeletionPolicy: 'Retain',
    });
    expect(template.toJSON().Resources[bucketId].DeletionPolicy).toBe('Retain');
  });

  it('denies requests without TLS (both buckets)', () => {
    for (const bucket of [stack.vault.bucket, stack.vault.accessLogsBucket]) {
      template.hasResourceProperties('AWS::S3::BucketPolicy', {
        Bucket: ref(logicalId(bucket)),
        PolicyDocument: {
          Statement: Match.arrayWith([
            Match.objectLike({
              Effect: 'Deny',
              Action: 's3:*',
              Condition: { Bool: { 'aws:SecureTransport': 'false' } },
            }),
          ]),
        },
      });
    }
  });

  it('has the lifecycle rules: archive weekly/monthly, safety-net expirations, multipart, noncurrent', () => {
    const rules = template.toJSON().Resources[logicalId(stack.vault.bucket)].Properties.LifecycleConfiguration
      .Rules as CfnJson[];
    const byId = new Map(rules.map((r) => [r.Id, r]));
    // The same rules for any fleet: they select by the object tag the writer sets, not by cluster folder.
    expect([...byId.keys()].sort()).toEqual(
      [
        'abort-incomplete-multipart',
        'expire-noncurrent-versions',
        'remove-expired-delete-markers',
        'archive-weekly-monthly',
        'archive-weekly-monthly-small',
        'expire-managed',
        'expire-reports-drills',
      ].sort(),
    );
    expect(byId.get('abort-incomplete-multipart')).toMatchObject({
      AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 },
      Status: 'Enabled',
    });
    expect(byId.get('expire-noncurrent-versions')).toMatchObject({
      NoncurrentVersionExpiration: { NoncurrentDays: 30 },
    });
    const tag = (value: string) => [{ Key: 'pgvault-lifecycle', Value: value }];
    // 6 months × 31 + 60 days: behind every retention hold.
    expect(byId.get('archive-weekly-monthly')).toMatchObject({
      Prefix: 'pgvault/',
      TagFilters: tag('archive'),
      Transitions: [{ StorageClass: 'GLACIER_IR', TransitionInDays: 30 }],
      ExpirationInDays: 246,
      ObjectSizeGreaterThan: 4 * 1024 * 1024,
    });
    // Small objects (manifests) stay in STANDARD but get the same safety-net expiration.
    expect(byId.get('archive-weekly-monthly-small')).toMatchObject({
      Prefix: 'pgvault/',
      TagFilters: tag('archive'),
      ObjectSizeLessThan: 4 * 1024 * 1024 + 1,
      ExpirationInDays: 246,
    });
    expect(byId.get('archive-weekly-monthly-small')?.Transitions).toBeUndefined();
    expect(byId.get('expire-managed')).toMatchObject({
      Prefix: 'pgvault/',
      TagFilters: tag('expire'),
      ExpirationInDays: 246,
    });
    expect(byId.get('expire-managed')?.Transitions).toBeUndefined();
    expect(byId.get('expire-reports-drills')).toMatchObject({
      Prefix: 'pgvault/',
      TagFilters: tag('report'),
      ExpirationInDays: 400,
    });
    // Manual backups are kept until deleted by hand: no rule may reach them (they get no tag), and
    // every rule that expires or archives current objects selects a tag.
    for (const r of rules.filter((x) => !x.TagFilters)) {
      expect(r.ExpirationInDays).toBeUndefined();
      expect(r.Transitions).toBeUndefined();
    }
  });

  it('tells the writers to tag objects (S3_LIFECYCLE_TAGS), and lets them', () => {
    for (const [, fn] of resourcesOf(template, 'AWS::Lambda::Function')) {
      expect(fn.Properties.Environment.Variables.S3_LIFECYCLE_TAGS).toBe('true');
    }
    for (const [, def] of resourcesOf(fleetTemplate, 'AWS::ECS::TaskDefinition')) {
      const env = def.Properties.ContainerDefinitions[0].Environment as Array<{
        Name: string;
        Value: unknown;
      }>;
      expect(env).toContainEqual({ Name: 'S3_LIFECYCLE_TAGS', Value: 'true' });
    }
    const backupRole = logicalId(fleet.tasks.byCluster.get('main')!.backup.taskRole);
    const put = statementsOf(backupRole).find((s) => actionsOf(s).includes('s3:PutObject'))!;
    expect(actionsOf(put)).toContain('s3:PutObjectTagging');
  });

  it('generates the passphrase at deploy, encrypted with the vault key, never in the template', () => {
    template.hasResourceProperties('AWS::SecretsManager::Secret', {
      GenerateSecretString: Match.objectLike({ PasswordLength: 48, ExcludePunctuation: true }),
      KmsKeyId: { 'Fn::GetAtt': [logicalId(stack.vault.key), 'Arn'] },
      SecretString: Match.absent(),
    });
  });
});

describe('Fargate tasks', () => {
  it('one backup and one restore task definition per cluster, ARM64, sized from the config', () => {
    // In the fleet stack; the shared stack has none.
    expect(resourcesOf(template, 'AWS::ECS::TaskDefinition')).toEqual([]);
    const defs = resourcesOf(fleetTemplate, 'AWS::ECS::TaskDefinition');
    const families = defs.map(([, d]) => d.Properties.Family).sort();
    expect(families).toEqual([
      'Pgvault-backup-main',
      'Pgvault-backup-orders',
      'Pgvault-restore-main',
      'Pgvault-restore-orders',
      'pgvault-wal-receive-orders',
    ]);
    fleetTemplate.hasResourceProperties('AWS::ECS::TaskDefinition', {
      Family: 'Pgvault-backup-main',
      Cpu: '1024',
      Memory: '4096',
      EphemeralStorage: { SizeInGiB: 50 },
      RequiresCompatibilities: ['FARGATE'],
      RuntimePlatform: { CpuArchitecture: 'ARM64', OperatingSystemFamily: 'LINUX' },
    });
    fleetTemplate.hasResourceProperties('AWS::ECS::TaskDefinition', {
      Family: 'Pgvault-restore-main',
      Cpu: '2048',
      Memory: '8192',
      EphemeralStorage: { SizeInGiB: 100 },
    });
  });

  it('container: env without secrets, secrets from Secrets Manager, logs with retention', () => {
    const [, def] = resourcesOf(fleetTemplate, 'AWS::ECS::TaskDefinition').find(
      ([, d]) => d.Properties.Family === 'Pgvault-backup-orders',
    )!;
    const container = def.Properties.ContainerDefinitions[0];
    expect(container.Name).toBe('pgvault');
    const env = Object.fromEntries(
      (container.Environment as Array<{ Name: string; Value: unknown }>).map((e) => [e.Name, e.Value]),
    );
    expect(env).toMatchObject({
      CLOUD_PROVIDER: 's3',
      // The shared stack's bucket, topic and bus, through its exports.
      CLOUD_BUCKET: imported(ref(logicalId(stack.vault.bucket))),
      CLOUD_PREFIX: 'pgvault',
      LOCAL_COPY: 'false',
      ENCRYPTION: 'true',
      RETENTION_DAYS: '7',
      RETENTION_WEEKS: '4',
      RETENTION_MONTHS: '6',
      RETENTION_CONFIG_COUNT: '10',
      RETENTION_INDEXES_COUNT: '5',
      RETENTION_WAL_DAYS: '7',
      COMPRESSION: 'zstd',
      STORAGE_QUOTA_GB: '500',
      RPO_TARGET_MINUTES: '1440',
      RTO_TARGET_MINUTES: '240',
      CLUSTER_NAME: 'orders',
      PGHOST: 'orders-leader.internal.example.com',
      PGPORT: '5432',
      PGDATABASE: 'orders',
      DEPLOYMENT_MODE: 'patroni',
      PATRONI_URL: 'http://orders-patroni.internal.example.com:8008',
    });
    expect(env.SNS_TOPIC_ARN).toEqual(imported(ref(logicalId(stack.alerts.topic))));
    expect(env.EVENT_BUS_NAME).toEqual(imported(ref(logicalId(stack.alerts.eventBus))));
    for (const k of ['ENCRYPTION_KEY', 'PGPASSWORD', 'PGUSER', 'ECS_CLUSTER_ARN', 'TASK_DEFINITION_ARN']) {
      expect(env[k]).toBeUndefined();
    }
    const secrets = Object.fromEntries(
      (container.Secrets as Array<{ Name: string; ValueFrom: unknown }>).map((s) => [s.Name, s.ValueFrom]),
    );
    const creds = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/orders-GhIjKl';
    expect(secrets).toEqual({
      ENCRYPTION_KEY: imported(ref(logicalId(stack.vault.passphrase))),
      PGUSER: `${creds}:username::`,
      PGPASSWORD: `${creds}:password::`,
    });
    expect(container.LogConfiguration).toMatchObject({
      LogDriver: 'awslogs',
      Options: {
        'awslogs-group': imported(ref(logicalId(stack.tasks.logGroup))),
        'awslogs-stream-prefix': 'backup-orders',
      },
    });
    template.hasResourceProperties('AWS::Logs::LogGroup', { RetentionInDays: 90 });
  });

  it('task roles: only their cluster folder of the vault and the vault key', () => {
    const main = fleet.tasks.byCluster.get('main')!;
    const backupRole = logicalId(main.backup.taskRole);
    const objectStatements = statementsOf(backupRole).filter((s) =>
      actionsOf(s).some((a) => a.startsWith('s3:')),
    );
    const text = JSON.stringify(objectStatements);
    expect(text).toContain('/pgvault/main/*');
    expect(text).not.toContain('orders');
    expect(allActions(backupRole)).toEqual(
      expect.arrayContaining([
        's3:GetObject',
        's3:PutObject',
        's3:DeleteObject',
        's3:ListBucket',
        's3:PutObjectRetention',
      ]),
    );
    const list = objectStatements.find((s) => actionsOf(s).includes('s3:ListBucket'))!;
    expect(list.Condition).toEqual({ StringLike: { 's3:prefix': ['pgvault/main/*'] } });
    // Restore: read its cluster, write only drill records, never delete.
    const restoreRole = logicalId(main.restore.taskRole);
    expect(allActions(restoreRole)).not.toContain('s3:DeleteObject');
    const puts = statementsOf(restoreRole).filter((s) => actionsOf(s).includes('s3:PutObject'));
    expect(JSON.stringify(puts)).toContain('/pgvault/main/drills/*');
    expect(JSON.stringify(statementsOf(restoreRole))).toContain(
      JSON.stringify(imported({ 'Fn::GetAtt': [logicalId(stack.vault.key), 'Arn'] })),
    );
    // Each kind's roles under the deployment's IAM path: the functions pass roles by that path.
    const roles = fleetTemplate.toJSON().Resources as CfnJson;
    expect(roles[backupRole].Properties.Path).toBe('/Pgvault/backup/');
    expect(roles[logicalId(main.backup.obtainExecutionRole())].Properties.Path).toBe('/Pgvault/backup/');
    expect(roles[restoreRole].Properties.Path).toBe('/Pgvault/restore/');
    expect(roles[logicalId(main.restore.obtainExecutionRole())].Properties.Path).toBe('/Pgvault/restore/');
  });

  it('wal receive: one service (desired count 1) for the cluster that asks, EFS staging, never two at once', () => {
    const services = resourcesOf(fleetTemplate, 'AWS::ECS::Service');
    expect(services).toHaveLength(1);
    expect(services[0]![1].Properties).toMatchObject({
      ServiceName: 'pgvault-wal-receive-orders',
      DesiredCount: 1,
      LaunchType: 'FARGATE',
      DeploymentConfiguration: { MinimumHealthyPercent: 0, MaximumPercent: 100 },
      NetworkConfiguration: {
        AwsvpcConfiguration: {
          AssignPublicIp: 'DISABLED',
          Subnets: ['subnet-0123456789abcdef0', 'subnet-0fedcba9876543210'],
          // The task security group the stack made (network.ts), from the shared stack.
          SecurityGroups: [imported(taskSecurityGroupId())],
        },
      },
    });
    const [, def] = resourcesOf(fleetTemplate, 'AWS::ECS::TaskDefinition').find(
      ([, d]) => d.Properties.Family === 'pgvault-wal-receive-orders',
    )!;
    const container = def.Properties.ContainerDefinitions[0];
    expect(container.Command).toEqual(['wal', 'receive']);
    expect(container.MountPoints).toEqual([
      { ContainerPath: '/var/lib/pgvault/wal-receive', SourceVolume: 'wal-receive', ReadOnly: false },
    ]);
    expect(def.Properties.Volumes[0].EFSVolumeConfiguration).toMatchObject({
      TransitEncryption: 'ENABLED',
      AuthorizationConfig: { IAM: 'ENABLED' },
    });
    template.hasResourceProperties('AWS::EFS::FileSystem', { Encrypted: true });
    template.resourceCountIs('AWS::EFS::MountTarget', 2);
    template.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      IpProtocol: 'tcp',
      FromPort: 2049,
      ToPort: 2049,
      SourceSecurityGroupId: taskSecurityGroupId(),
    });
    // The file system is the deployment's (shared stack); the access point is the cluster's.
    fleetTemplate.hasResourceProperties('AWS::EFS::AccessPoint', {
      FileSystemId: imported(ref(logicalId(stack.tasks.walFileSystem!))),
      RootDirectory: Match.objectLike({ Path: '/wal-receive/orders' }),
    });
    fleetTemplate.hasResourceProperties('AWS::CloudWatch::Alarm', {
      AlarmName: 'pgvault orders: wal receive is not running',
      TreatMissingData: 'breaching',
    });
  });
});

describe('Lambda functions', () => {
  const fnIds = () =>
    Object.fromEntries(Object.entries(stack.functions.functions).map(([k, f]) => [k, logicalId(f)]));

  it('five NodejsFunctions on Node 22, ARM64, with the contract environment', () => {
    const fns = resourcesOf(template, 'AWS::Lambda::Function');
    expect(fns).toHaveLength(5);
    for (const [, fn] of fns) {
      expect(fn.Properties).toMatchObject({
        Runtime: 'nodejs22.x',
        Architectures: ['arm64'],
        Handler: 'index.handler',
      });
      const env = fn.Properties.Environment.Variables;
      for (const key of [
        'CLOUD_PROVIDER',
        'CLOUD_BUCKET',
        'CLOUD_PREFIX',
        'LOCAL_COPY',
        'ENCRYPTION',
        'ENCRYPTION_KEY_SECRET_ARN',
        'RETENTION_DAYS',
        'RETENTION_WEEKS',
        'RETENTION_MONTHS',
        'RETENTION_CONFIG_COUNT',
        'RETENTION_INDEXES_COUNT',
        'RETENTION_WAL_DAYS',
        'COMPRESSION',
        'SNS_TOPIC_ARN',
        'STORAGE_QUOTA_GB',
        'RPO_TARGET_MINUTES',
        'RTO_TARGET_MINUTES',
        'EVENT_BUS_NAME',
        'ECS_CLUSTER_ARN',
        'TASK_DEFINITION_ARN',
        'RESTORE_TASK_DEFINITION_ARN',
        'TASK_CONTAINER_NAME',
        'SUBNET_IDS',
        'SECURITY_GROUP_IDS',
        'ASSIGN_PUBLIC_IP',
        'PGVAULT_CLUSTERS_FILE',
      ]) {
        expect(env, key).toHaveProperty(key);
      }
      expect(env).toMatchObject({
        LOCAL_COPY: 'false',
        ENCRYPTION: 'true',
        TASK_CONTAINER_NAME: 'pgvault',
        SUBNET_IDS: 'subnet-0123456789abcdef0,subnet-0fedcba9876543210',
        SECURITY_GROUP_IDS: taskSecurityGroupId(),
        ASSIGN_PUBLIC_IP: 'false',
        PGVAULT_CLUSTERS_FILE: '/opt/pgvault/clusters.json',
      });
      // The cluster list is in the cluster layer, not in the 4 KB environment.
      expect(env.PGVAULT_CLUSTERS).toBeUndefined();
      expect(env.ENCRYPTION_KEY).toBeUndefined();
      expect(env.ENCRYPTION_KEY_SECRET_ARN).toEqual(ref(logicalId(stack.vault.passphrase)));
    }
  });

  it('the cluster layer lists every cluster with its own task definition families', () => {
    const layerId = logicalId(stack.functions.clusterLayer);
    template.hasResourceProperties('AWS::Lambda::LayerVersion', {
      CompatibleRuntimes: ['nodejs22.x'],
      CompatibleArchitectures: ['arm64'],
    });
    for (const [, fn] of resourcesOf(template, 'AWS::Lambda::Function')) {
      expect(fn.Properties.Layers).toEqual([ref(layerId)]);
    }
    const file = join(stack.functions.clusterLayerFolder, 'pgvault', 'clusters.json');
    const clusters = JSON.parse(readFileSync(file, 'utf8')) as Array<Record<string, unknown>>;
    expect(clusters.map((c) => c.name)).toEqual(['main', 'orders']);
    expect(clusters[1]).toEqual({
      name: 'orders',
      mode: 'patroni',
      host: 'orders-leader.internal.example.com',
      port: 5432,
      database: 'orders',
      credentialsSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/orders-GhIjKl',
      patroniUrl: 'http://orders-patroni.internal.example.com:8008',
      taskDefinition: 'Pgvault-backup-orders',
      restoreTaskDefinition: 'Pgvault-restore-orders',
    });
    // The families are the task definitions' own, which the RunTask permissions name (by family pattern).
    const orders = fleet.tasks.byCluster.get('orders')!;
    expect(
      resourcesOf(fleetTemplate, 'AWS::ECS::TaskDefinition').map(([, d]) => d.Properties.Family),
    ).toEqual(expect.arrayContaining([orders.backup.family, orders.restore.family]));
  });

  /** An ARN the functions' policies name by pattern, as the template renders it. */
  const arn = (rest: string) => ({ 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, rest]] });

  it('dispatch runs only backup task definitions, in the pgvault cluster, and reads no bucket', () => {
    const role = logicalId(stack.functions.functions.dispatch.role!);
    const run = statementsOf(role).find((s) => actionsOf(s).includes('ecs:RunTask'))!;
    // The deployment's backup families, any revision: the definitions are in the fleet stacks, and the
    // pattern keeps this policy the same size for any fleet.
    expect(run.Resource).toEqual(arn(':ecs:eu-west-1:123456789012:task-definition/Pgvault-backup-*'));
    for (const t of fleet.tasks.byCluster.values()) expect(t.backup.family).toMatch(/^Pgvault-backup-/);
    expect(run.Condition).toEqual({
      ArnEquals: { 'ecs:cluster': { 'Fn::GetAtt': [logicalId(stack.tasks.cluster), 'Arn'] } },
    });
    const pass = statementsOf(role).find((s) => actionsOf(s).includes('iam:PassRole'))!;
    expect(pass.Condition).toEqual({ StringLike: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } });
    expect(pass.Resource).toEqual(arn(':iam::123456789012:role/Pgvault/backup/*'));
    expect(allActions(role).filter((a) => a.startsWith('s3:'))).toEqual([]);
    expect(allActions(role)).not.toContain('secretsmanager:GetSecretValue');
  });

  it('restore runs only the restore task definitions and passes only their roles', () => {
    const role = logicalId(stack.functions.functions.restore.role!);
    const run = statementsOf(role).find((s) => actionsOf(s).includes('ecs:RunTask'))!;
    expect(run.Resource).toEqual(arn(':ecs:eu-west-1:123456789012:task-definition/Pgvault-restore-*'));
    const pass = statementsOf(role).find((s) => actionsOf(s).includes('iam:PassRole'))!;
    expect(pass.Resource).toEqual(arn(':iam::123456789012:role/Pgvault/restore/*'));
    // Restore roles carry that path, backup roles do not: restore cannot pass a backup role.
    const resources = fleetTemplate.toJSON().Resources as CfnJson;
    for (const t of fleet.tasks.byCluster.values()) {
      for (const r of [t.restore.taskRole, t.restore.obtainExecutionRole()])
        expect(resources[logicalId(r)].Properties.Path).toBe('/Pgvault/restore/');
      for (const r of [t.backup.taskRole, t.backup.obtainExecutionRole()])
        expect(resources[logicalId(r)].Properties.Path).not.toBe('/Pgvault/restore/');
      expect(t.restore.family).toMatch(/^Pgvault-restore-/);
    }
    expect(allActions(role)).not.toContain('s3:DeleteObject');
    expect(allActions(role)).not.toContain('s3:PutObject');
  });

  it('retention may delete under the vault prefix; verify and report may not', () => {
    const ids = fnIds();
    const roleOf = (name: keyof typeof stack.functions.functions) =>
      logicalId(stack.functions.functions[name].role!);
    expect(ids.retention).toBeDefined();
    const del = statementsOf(roleOf('retention')).find((s) => actionsOf(s).includes('s3:DeleteObject'))!;
    expect(JSON.stringify(del.Resource)).toContain('/pgvault/*');
    for (const name of ['verify', 'report', 'dispatch', 'restore'] as const) {
      expect(allActions(roleOf(name))).not.toContain('s3:DeleteObject');
    }
    const reportPut = statementsOf(roleOf('report')).find((s) => actionsOf(s).includes('s3:PutObject'))!;
    expect(JSON.stringify(reportPut.Resource)).toContain('/pgvault/*/reports/*');
    expect(allActions(roleOf('verify'))).toContain('ecs:RunTask');
  });

  it('no IAM statement uses "*" as a resource except ecr:GetAuthorizationToken', () => {
    const policies = [template, fleetTemplate].flatMap((t) => resourcesOf(t, 'AWS::IAM::Policy'));
    for (const [id, policy] of policies) {
      for (const s of policy.Properties.PolicyDocument.Statement as Statement[]) {
        const resources = Array.isArray(s.Resource) ? s.Resource : [s.Resource];
        if (resources.includes('*'))
          expect({ id, actions: actionsOf(s) }).toEqual({ id, actions: ['ecr:GetAuthorizationToken'] });
      }
    }
    // Functions use their own roles: no AWS managed policy anywhere.
    for (const [, role] of [template, fleetTemplate].flatMap((t) => resourcesOf(t, 'AWS::IAM::Role'))) {
      expect(role.Properties.ManagedPolicyArns).toBeUndefined();
    }
  });
});

describe('schedules', () => {
  it('one schedule per cluster per job, in the time zone, with the guide crontab and the contract payloads', () => {
    // In the fleet stack, in the shared stack's group, invoking its functions through its role.
    expect(resourcesOf(template, 'AWS::Scheduler::Schedule')).toEqual([]);
    const schedules = resourcesOf(fleetTemplate, 'AWS::Scheduler::Schedule').map(([, s]) => s.Properties);
    expect(schedules).toHaveLength(18);
    const get = (name: string) => schedules.find((s) => s.Name === name)!;
    const expected: Record<string, [string, unknown, string]> = {
      'main-fullDaily': [
        'cron(0 2 * * ? *)',
        { cluster: 'main', command: ['backup', 'full', 'daily'] },
        'dispatch',
      ],
      'main-fullWeekly': [
        'cron(0 3 ? * SUN *)',
        { cluster: 'main', command: ['backup', 'full', 'weekly'] },
        'dispatch',
      ],
      'main-fullMonthly': [
        'cron(0 4 1 * ? *)',
        { cluster: 'main', command: ['backup', 'full', 'monthly'] },
        'dispatch',
      ],
      'main-config': ['cron(0 1 * * ? *)', { cluster: 'main', command: ['backup', 'config'] }, 'dispatch'],
      'main-indexes': ['cron(30 1 * * ? *)', { cluster: 'main', command: ['backup', 'indexes'] }, 'dispatch'],
      'main-baseWeekly': [
        'cron(30 3 ? * SUN *)',
        { cluster: 'main', command: ['backup', 'base', 'weekly'] },
        'dispatch',
      ],
      'main-retention': ['cron(0 5 * * ? *)', { cluster: 'main' }, 'retention'],
      'main-verify': ['cron(0 6 * * ? *)', { cluster: 'main', deep: true }, 'verify'],
      'orders-report': ['cron(0 7 * * ? *)', { cluster: 'orders' }, 'report'],
    };
    for (const [name, [expression, input, fn]] of Object.entries(expected)) {
      const s = get(name);
      expect(s.ScheduleExpression, name).toBe(expression);
      expect(s.ScheduleExpressionTimezone).toBe('Europe/Berlin');
      expect(s.FlexibleTimeWindow).toEqual({ Mode: 'FLEXIBLE', MaximumWindowInMinutes: 15 });
      expect(JSON.parse(s.Target.Input)).toEqual(input);
      expect(s.GroupName).toEqual(imported(ref(stack.getLogicalId(stack.schedules.group))));
      expect(s.Target.Arn).toEqual(
        imported({ 'Fn::GetAtt': [logicalId(stack.functions.functions[fn as 'dispatch']), 'Arn'] }),
      );
      expect(s.Target.RetryPolicy).toEqual({ MaximumRetryAttempts: 3, MaximumEventAgeInSeconds: 3600 });
      expect(s.Target.DeadLetterConfig).toEqual({
        Arn: imported({ 'Fn::GetAtt': [logicalId(stack.schedules.deadLetterQueue), 'Arn'] }),
      });
      expect(s.Target.RoleArn).toEqual(imported({ 'Fn::GetAtt': [logicalId(stack.schedules.role), 'Arn'] }));
    }
  });

  it('the scheduler role may invoke the scheduled functions (not restore) and send to the DLQ', () => {
    const role = logicalId(stack.schedules.role);
    const invoke = statementsOf(role).find((s) => actionsOf(s).includes('lambda:InvokeFunction'))!;
    const text = JSON.stringify(invoke.Resource);
    expect(text).not.toContain(logicalId(stack.functions.functions.restore));
    expect(text).toContain(logicalId(stack.functions.functions.dispatch));
    expect(allActions(role)).toContain('sqs:SendMessage');
    template.hasResourceProperties('AWS::IAM::Role', {
      AssumeRolePolicyDocument: {
        Statement: [
          Match.objectLike({
            Principal: { Service: 'scheduler.amazonaws.com' },
            Condition: { StringEquals: { 'aws:SourceAccount': '123456789012' } },
          }),
        ],
      },
    });
    template.hasResourceProperties('AWS::SQS::Queue', { SqsManagedSseEnabled: true });
  });
});

describe('alerts and monitoring', () => {
  it('SNS topic: KMS-encrypted, TLS only, one e-mail subscription per address', () => {
    template.hasResourceProperties('AWS::SNS::Topic', {
      KmsMasterKeyId: { 'Fn::GetAtt': [logicalId(stack.alerts.key), 'Arn'] },
    });
    template.hasResourceProperties('AWS::SNS::Subscription', {
      Protocol: 'email',
      Endpoint: 'dba-team@example.com',
    });
    template.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
        ]),
      },
    });
  });

  it('CloudWatch alarms and EventBridge may publish to the encrypted topic', () => {
    template.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Allow',
            Action: 'sns:Publish',
            Principal: { Service: 'cloudwatch.amazonaws.com' },
            Condition: { StringEquals: { 'aws:SourceAccount': '123456789012' } },
          }),
          Match.objectLike({
            Effect: 'Allow',
            Action: 'sns:Publish',
            Principal: { Service: 'events.amazonaws.com' },
          }),
        ]),
      },
    });
    template.hasResourceProperties('AWS::KMS::Key', {
      KeyPolicy: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Action: ['kms:Decrypt', 'kms:GenerateDataKey*'],
            Principal: { Service: ['cloudwatch.amazonaws.com', 'events.amazonaws.com'] },
          }),
        ]),
      },
    });
  });

  it('a task stopped with a non-zero exit, OOM or failed start becomes a message in the topic', () => {
    template.hasResourceProperties('AWS::Events::Rule', {
      EventPattern: {
        source: ['aws.ecs'],
        'detail-type': ['ECS Task State Change'],
        detail: {
          clusterArn: [{ 'Fn::GetAtt': [logicalId(stack.tasks.cluster), 'Arn'] }],
          lastStatus: ['STOPPED'],
          $or: [
            { containers: { exitCode: [{ 'anything-but': 0 }] } },
            { containers: { reason: [{ prefix: 'OutOfMemoryError' }] } },
            { stopCode: ['TaskFailedToStart'] },
          ],
        },
      },
      Targets: [
        Match.objectLike({ Arn: ref(logicalId(stack.alerts.topic)), InputTransformer: Match.anyValue() }),
      ],
    });
  });

  it('lifecycle event bus, named for the stack, with an archive', () => {
    template.hasResourceProperties('AWS::Events::EventBus', { Name: 'Pgvault-events' });
    template.resourceCountIs('AWS::Events::Archive', 1);
  });

  it('metric alarms per cluster into the topic, metric filters for the task EMF lines, a dashboard', () => {
    // Per-cluster alarms in the fleet stack, deployment-wide ones (DLQ, function errors) in the shared one.
    const sharedAlarms = resourcesOf(template, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
    const fleetAlarms = resourcesOf(fleetTemplate, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
    expect(sharedAlarms.filter((a) => JSON.stringify(a.Dimensions ?? []).includes('Cluster'))).toEqual([]);
    const alarms = [...sharedAlarms, ...fleetAlarms];
    const byName = (n: string) => alarms.find((a) => a.AlarmName === n)!;
    expect(byName('pgvault main: newest backup older than 48 h')).toMatchObject({
      MetricName: 'BackupAgeHours',
      Namespace: 'pgvault',
      Threshold: 48,
      Dimensions: [{ Name: 'Cluster', Value: 'main' }],
    });
    expect(byName('pgvault main: RPO over 1440 min')).toMatchObject({
      MetricName: 'RpoSeconds',
      Threshold: 86400,
    });
    expect(byName('pgvault orders: drill RTO over 240 min')).toMatchObject({
      MetricName: 'DrillRtoSeconds',
      Threshold: 14400,
    });
    expect(byName('pgvault main: backup took over 240 min')).toMatchObject({
      MetricName: 'BackupDurationSeconds',
      Threshold: 14400,
    });
    expect(byName('pgvault main: vault over 80% of 500 GB')).toMatchObject({
      MetricName: 'StorageUsedPercent',
      Threshold: 80,
    });
    expect(byName('pgvault main: backup size unusually small')).toMatchObject({
      ComparisonOperator: 'LessThanLowerThreshold',
      ThresholdMetricId: expect.any(String),
    });
    expect(byName('pgvault: a scheduled job could not be started (dead-letter queue)')).toBeDefined();
    expect(byName('pgvault: dispatch function failed')).toMatchObject({ MetricName: 'Errors' });
    for (const a of sharedAlarms) expect(a.AlarmActions).toEqual([ref(logicalId(stack.alerts.topic))]);
    for (const a of fleetAlarms)
      expect(a.AlarmActions).toEqual([imported(ref(logicalId(stack.alerts.topic)))]);

    const filters = resourcesOf(template, 'AWS::Logs::MetricFilter').map(([, f]) => f.Properties);
    const names = filters.map((f) => f.MetricTransformations[0].MetricName).sort();
    expect(names).toEqual(
      [
        'BackupAgeHours',
        'BackupDurationSeconds',
        'BackupFailed',
        'BackupStoredBytes',
        'BackupSucceeded',
        'DrillRtoSeconds',
        'RpoSeconds',
        'DrillFailed',
        'RestoreFailed',
        'VerificationFailed',
      ].sort(),
    );
    const duration = filters.find((f) => f.MetricTransformations[0].MetricName === 'BackupDurationSeconds')!;
    expect(duration.LogGroupName).toEqual(ref(logicalId(stack.tasks.logGroup)));
    expect(duration.MetricTransformations[0]).toMatchObject({
      MetricNamespace: 'pgvault',
      MetricValue: '$.BackupDurationSeconds',
      Dimensions: [{ Key: 'Cluster', Value: '$.Cluster' }],
    });
    expect(duration.FilterPattern).toContain('$._aws.CloudWatchMetrics[0].Namespace = "pgvault"');
    template.hasResourceProperties('AWS::CloudWatch::Dashboard', { DashboardName: 'Pgvault-pgvault' });
    fleetTemplate.hasResourceProperties('AWS::CloudWatch::Dashboard', {
      DashboardName: 'Pgvault-Fleet1-pgvault',
    });
    expect(resourcesOf(fleetTemplate, 'AWS::Logs::MetricFilter')).toEqual([]);
  });

  it('drill, restore and verification failures alarm into the topic at the first one, per cluster', () => {
    const alarms = resourcesOf(fleetTemplate, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
    const topic = imported(ref(logicalId(stack.alerts.topic)));
    for (const cluster of ['main', 'orders']) {
      for (const [metricName, what] of [
        ['DrillFailed', 'DR drill failed'],
        ['RestoreFailed', 'restore failed'],
        ['VerificationFailed', 'verification failed'],
      ] as const) {
        const matching = alarms.filter(
          (a) =>
            a.MetricName === metricName &&
            JSON.stringify(a.Dimensions) === JSON.stringify([{ Name: 'Cluster', Value: cluster }]),
        );
        expect(matching, `${cluster} ${metricName}`).toHaveLength(1);
        expect(matching[0]).toMatchObject({
          AlarmName: `pgvault ${cluster}: ${what}`,
          Namespace: 'pgvault',
          Statistic: 'Sum',
          Period: 300,
          Threshold: 1,
          ComparisonOperator: 'GreaterThanOrEqualToThreshold',
          EvaluationPeriods: 1,
          TreatMissingData: 'notBreaching',
          AlarmActions: [topic],
        });
      }
    }
    // The tasks' EMF lines reach the same metrics through a metric filter on the task log group
    // (Lambda extracts the functions' lines itself).
    const filters = resourcesOf(template, 'AWS::Logs::MetricFilter').map(([, f]) => f.Properties);
    for (const name of ['DrillFailed', 'RestoreFailed', 'VerificationFailed']) {
      const filter = filters.find((f) => f.MetricTransformations[0].MetricName === name)!;
      expect(filter.LogGroupName).toEqual(ref(logicalId(stack.tasks.logGroup)));
      expect(filter.MetricTransformations[0]).toMatchObject({
        MetricNamespace: 'pgvault',
        MetricValue: `$.${name}`,
        Dimensions: [{ Key: 'Cluster', Value: '$.Cluster' }],
        Unit: 'Count',
      });
    }
  });
});
