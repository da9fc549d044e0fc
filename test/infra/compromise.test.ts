import { Stack } from 'aws-cdk-lib';
import type { Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { DeployConfigError, parseDeployConfig } from '../../infra/config';
import type { FleetStack, PgvaultStack } from '../../infra/stack';
import { type CfnJson, resourcesOf, synthTemplate, testConfig } from './synth';

/**
 * "Backups that survive a compromised account" (infra/README.md "Threat model"): cross-account
 * replication, per-object Object Lock, the break-glass key policy and the passphrase's reachable copy,
 * as the templates say them. One synth with every option on, one with none.
 */
const DEST_BUCKET = 'arn:aws:s3:::pgvault-copy';
const DEST_KEY = 'arn:aws:kms:eu-central-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const BREAK_GLASS = 'arn:aws:iam::123456789012:role/pgvault-break-glass';
const READER = 'arn:aws:iam::210987654321:role/pgvault-restore';
const REPLICA_KEY = 'arn:aws:kms:eu-central-1:123456789012:key/abcd1234-12ab-34cd-56ef-1234567890ab';

function hardened(extra: Record<string, unknown> = {}) {
  const base = testConfig();
  return testConfig({
    bucket: {
      ...base.bucket,
      objectLock: { mode: 'compliance', days: 7, retain: 'gfs' },
      breakGlassRoleArn: BREAK_GLASS,
      replication: {
        destinationBucketArn: DEST_BUCKET,
        destinationAccount: '210987654321',
        replicaKmsKeyArn: DEST_KEY,
        replicationTimeControl: true,
        storageClass: 'STANDARD_IA',
      },
      passphraseCopy: {
        replicaRegions: [{ region: 'eu-central-1', kmsKeyArn: REPLICA_KEY }],
        readerRoleArn: READER,
      },
      ...extra,
    },
  });
}

let template: Template;
let stack: PgvaultStack;
let fleetTemplate: Template;
let fleet: FleetStack;
let plain: Template;
beforeAll(() => {
  const result = synthTemplate(hardened());
  ({ template, stack } = result);
  ({ template: fleetTemplate, stack: fleet } = result.fleets[0]!);
  plain = synthTemplate(testConfig()).template;
}, 240_000);

const logicalId = (c: { node: { defaultChild?: unknown } }) => {
  const child = c.node.defaultChild as Parameters<PgvaultStack['getLogicalId']>[0];
  return Stack.of(child).getLogicalId(child);
};
const keyPolicy = (t: Template) =>
  (resourcesOf(t, 'AWS::KMS::Key')[0]![1].Properties.KeyPolicy.Statement as CfnJson[]) ?? [];
const bucketProps = (t: Template, s: PgvaultStack) =>
  t.toJSON().Resources[logicalId(s.vault.bucket)].Properties;

describe('cross-account copy: S3 replication', () => {
  it('replicates the repository prefix to the other account, owned by it, under its key, without delete markers', () => {
    const props = bucketProps(template, stack);
    // Replication needs versioning; the vault bucket is always versioned.
    expect(props.VersioningConfiguration).toEqual({ Status: 'Enabled' });
    const roleId = logicalId(stack.vault.replicationRole!);
    expect(props.ReplicationConfiguration).toEqual({
      Role: { 'Fn::GetAtt': [roleId, 'Arn'] },
      Rules: [
        {
          Id: 'copy-to-other-account',
          Status: 'Enabled',
          Priority: 0,
          Filter: { Prefix: 'pgvault/' },
          DeleteMarkerReplication: { Status: 'Disabled' },
          SourceSelectionCriteria: { SseKmsEncryptedObjects: { Status: 'Enabled' } },
          Destination: {
            Bucket: DEST_BUCKET,
            Account: '210987654321',
            AccessControlTranslation: { Owner: 'Destination' },
            EncryptionConfiguration: { ReplicaKmsKeyID: DEST_KEY },
            StorageClass: 'STANDARD_IA',
            ReplicationTime: { Status: 'Enabled', Time: { Minutes: 15 } },
            Metrics: { Status: 'Enabled', EventThreshold: { Minutes: 15 } },
          },
        },
      ],
    });
  });

  it('gives the replication role least privilege: S3 only, these buckets and prefixes, KMS through S3 only', () => {
    const roleId = logicalId(stack.vault.replicationRole!);
    const role = template.toJSON().Resources[roleId];
    expect(role.Properties.RoleName).toBe('Pgvault-replication');
    expect(role.Properties.AssumeRolePolicyDocument.Statement).toEqual([
      {
        Action: 'sts:AssumeRole',
        Effect: 'Allow',
        Principal: { Service: 's3.amazonaws.com' },
        Condition: { StringEquals: { 'aws:SourceAccount': '123456789012' } },
      },
    ]);
    const statements = resourcesOf(template, 'AWS::IAM::Policy')
      .filter(([, p]) => JSON.stringify(p.Properties.Roles).includes(`"${roleId}"`))
      .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as CfnJson[]);
    const resolved = JSON.parse(JSON.stringify(statements)) as CfnJson[];
    const actions = resolved.flatMap((s) => (Array.isArray(s.Action) ? s.Action : [s.Action]));
    expect(actions.sort()).toEqual(
      [
        'kms:Decrypt',
        'kms:Encrypt',
        'kms:GenerateDataKey',
        's3:GetObjectLegalHold',
        's3:GetObjectRetention',
        's3:GetObjectVersionAcl',
        's3:GetObjectVersionForReplication',
        's3:GetObjectVersionTagging',
        's3:GetReplicationConfiguration',
        's3:ListBucket',
        's3:ObjectOwnerOverrideToBucketOwner',
        's3:ReplicateObject',
        's3:ReplicateTags',
      ].sort(),
    );
    // Never ReplicateDelete, never a wildcard action or resource.
    expect(JSON.stringify(resolved)).not.toMatch(/ReplicateDelete|"s3:\*"|"kms:\*"|"Resource":"\*"/);
    const write = resolved.find((s) => JSON.stringify(s.Action).includes('s3:ReplicateObject'))!;
    expect(write.Resource).toBe(`${DEST_BUCKET}/pgvault/*`);
    const encrypt = resolved.find((s) => JSON.stringify(s.Action).includes('kms:Encrypt'))!;
    expect(encrypt.Resource).toBe(DEST_KEY);
    expect(encrypt.Condition.StringEquals).toEqual({ 'kms:ViaService': 's3.eu-central-1.amazonaws.com' });
    expect(encrypt.Condition.StringLike).toEqual({
      'kms:EncryptionContext:aws:s3:arn': [DEST_BUCKET, `${DEST_BUCKET}/*`],
    });
    const decrypt = resolved.find((s) => JSON.stringify(s.Action) === '"kms:Decrypt"')!;
    expect(decrypt.Resource).toEqual({ 'Fn::GetAtt': [logicalId(stack.vault.key), 'Arn'] });
    expect(decrypt.Condition.StringEquals).toEqual({ 'kms:ViaService': 's3.eu-west-1.amazonaws.com' });
    expect(template.toJSON().Outputs.ReplicationRoleArn.Value).toEqual({ 'Fn::GetAtt': [roleId, 'Arn'] });
  });

  it('is absent by default', () => {
    expect(JSON.stringify(plain.toJSON())).not.toContain('ReplicationConfiguration');
  });
});

describe('compliance-mode Object Lock, each object until its GFS expiry', () => {
  it('keeps the bucket default as the floor and tells every writer the mode, gfs and the floor', () => {
    expect(bucketProps(template, stack).ObjectLockConfiguration).toEqual({
      ObjectLockEnabled: 'Enabled',
      Rule: { DefaultRetention: { Mode: 'COMPLIANCE', Days: 7 } },
    });
    const expected = {
      S3_OBJECT_LOCK_MODE: 'compliance',
      S3_OBJECT_LOCK_RETAIN: 'gfs',
      S3_OBJECT_LOCK_MIN_DAYS: '7',
    };
    const functions = resourcesOf(template, 'AWS::Lambda::Function').filter(
      ([, fn]) => fn.Properties.Environment?.Variables?.CLOUD_BUCKET,
    );
    expect(functions.length).toBeGreaterThan(3);
    for (const [, fn] of functions) expect(fn.Properties.Environment.Variables).toMatchObject(expected);
    const defs = resourcesOf(fleetTemplate, 'AWS::ECS::TaskDefinition');
    expect(defs.length).toBeGreaterThan(0);
    for (const [, def] of defs) {
      const env = Object.fromEntries(
        (def.Properties.ContainerDefinitions[0].Environment as Array<{ Name: string; Value: unknown }>).map(
          (e) => [e.Name, e.Value],
        ),
      );
      expect(env).toMatchObject(expected);
    }
    // The writers may set a retention on what they put.
    const backupRole = fleet.tasks.byCluster.get('main')!.backup.taskRole;
    const text = JSON.stringify(fleetTemplate.toJSON());
    expect(text).toContain('s3:PutObjectRetention');
    expect(backupRole).toBeDefined();
  });

  it('retain: bucket sends no per-object lock (the default retention only)', () => {
    const c = hardened({ objectLock: { mode: 'governance', days: 7, retain: 'bucket' } });
    expect(c.bucket.objectLock?.retain).toBe('bucket');
    const base = testConfig();
    expect(base.bucket.objectLock?.retain).toBe('gfs');
  });
});

describe('vault key: only the break-glass role may delete or disable it', () => {
  it('denies kms:ScheduleKeyDeletion and kms:DisableKey to every other principal, root included', () => {
    const deny = keyPolicy(template).filter((s) => s.Effect === 'Deny');
    expect(deny).toEqual([
      {
        Sid: 'OnlyBreakGlassDestroysKey',
        Effect: 'Deny',
        Principal: { AWS: '*' },
        Action: ['kms:DisableKey', 'kms:ScheduleKeyDeletion'],
        Resource: '*',
        Condition: { ArnNotEquals: { 'aws:PrincipalArn': BREAK_GLASS } },
      },
    ]);
    // CloudFormation can still update the key policy (kms:PutKeyPolicy is not denied by default).
    expect(JSON.stringify(deny)).not.toContain('kms:PutKeyPolicy');
    // The key is kept when the stack goes (a stack deletion would schedule its deletion and be refused).
    expect(resourcesOf(template, 'AWS::KMS::Key')[0]![1]).toMatchObject({ DeletionPolicy: 'Retain' });
  });

  it('with protectKeyPolicy, kms:PutKeyPolicy too', () => {
    const { template: t } = synthTemplate(hardened({ protectKeyPolicy: true }));
    const deny = keyPolicy(t).find((s) => s.Effect === 'Deny')!;
    expect(deny.Action).toEqual(['kms:DisableKey', 'kms:PutKeyPolicy', 'kms:ScheduleKeyDeletion']);
  }, 120_000);

  it('no Deny by default', () => {
    expect(keyPolicy(plain).filter((s) => s.Effect === 'Deny')).toEqual([]);
  });
});

describe('passphrase where the copy owner can reach it', () => {
  it('is replicated to another region under that region key', () => {
    const [, secret] = resourcesOf(template, 'AWS::SecretsManager::Secret')[0]!;
    expect(secret.Properties.ReplicaRegions).toEqual([{ Region: 'eu-central-1', KmsKeyId: REPLICA_KEY }]);
    expect(
      resourcesOf(plain, 'AWS::SecretsManager::Secret')[0]![1].Properties.ReplicaRegions,
    ).toBeUndefined();
  });

  it('the reader role may GetSecretValue, and Decrypt with the vault key through Secrets Manager only', () => {
    const [, policy] = resourcesOf(template, 'AWS::SecretsManager::ResourcePolicy')[0]!;
    expect(policy.Properties.SecretId).toEqual({ Ref: logicalId(stack.vault.passphrase) });
    expect(policy.Properties.ResourcePolicy.Statement).toEqual([
      {
        Sid: 'CopyOwnerReadsPassphrase',
        Effect: 'Allow',
        Principal: { AWS: READER },
        Action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'],
        Resource: '*',
      },
    ]);
    const grant = keyPolicy(template).find((s) => s.Sid === 'CopyOwnerDecryptsPassphrase')!;
    expect(grant).toMatchObject({
      Effect: 'Allow',
      Principal: { AWS: READER },
      Action: 'kms:Decrypt',
      Resource: '*',
      Condition: { StringEquals: { 'kms:ViaService': 'secretsmanager.eu-west-1.amazonaws.com' } },
    });
    expect(JSON.stringify(grant.Condition.StringLike)).toContain('kms:EncryptionContext:SecretARN');
    // The reader's own account names the key in the role's IAM policy: the stack says which.
    expect(template.toJSON().Outputs.VaultKeyArn.Value).toEqual({
      'Fn::GetAtt': [logicalId(stack.vault.key), 'Arn'],
    });
    expect(resourcesOf(plain, 'AWS::SecretsManager::ResourcePolicy')).toEqual([]);
  });
});

describe('configuration checks, one line each', () => {
  const reject = (bucket: Record<string, unknown>, extra: Record<string, unknown> = {}): string => {
    const base = testConfig();
    try {
      parseDeployConfig(
        { ...JSON.parse(JSON.stringify(base)), ...extra, bucket: { ...base.bucket, ...bucket } },
        'cfg.json',
      );
    } catch (err) {
      expect(err).toBeInstanceOf(DeployConfigError);
      expect((err as Error).message.split('\n')).toHaveLength(1);
      return (err as Error).message;
    }
    throw new Error('accepted');
  };
  const replication = {
    destinationBucketArn: DEST_BUCKET,
    destinationAccount: '210987654321',
    replicaKmsKeyArn: DEST_KEY,
  };

  it('names the field and what to do', () => {
    expect(reject({ breakGlassRoleArn: 'admin' })).toContain('bucket.breakGlassRoleArn: an IAM role ARN');
    expect(reject({ breakGlassRoleArn: BREAK_GLASS }, { retainData: false })).toBe(
      'pgvault deploy config cfg.json: bucket.breakGlassRoleArn: needs retainData: true (the key policy denies the key deletion a stack deletion would schedule)',
    );
    expect(reject({ protectKeyPolicy: true })).toContain(
      'bucket.protectKeyPolicy: needs bucket.breakGlassRoleArn',
    );
    expect(reject({ replication: { ...replication, destinationBucketArn: 's3://copy' } })).toContain(
      'bucket.replication.destinationBucketArn: an S3 bucket ARN',
    );
    expect(
      reject(
        { replication: { ...replication, destinationAccount: '123456789012' } },
        { account: '123456789012' },
      ),
    ).toContain(
      "bucket.replication.destinationAccount: 123456789012 is this deployment's account; the copy must live in another account",
    );
    expect(
      reject({
        replication: { ...replication, replicaKmsKeyArn: DEST_KEY.replace('210987654321', '111111111111') },
      }),
    ).toContain(
      'bucket.replication.replicaKmsKeyArn: belongs to account 111111111111, not the destination account',
    );
    expect(
      reject({ passphraseCopy: { replicaRegions: [{ region: 'eu-west-1' }] } }, { region: 'eu-west-1' }),
    ).toContain("bucket.passphraseCopy.replicaRegions[0].region: eu-west-1 is the deployment's own region");
    expect(
      reject({ passphraseCopy: { replicaRegions: [{ region: 'us-east-1', kmsKeyArn: REPLICA_KEY }] } }),
    ).toContain("kmsKeyArn: is in eu-central-1, not us-east-1; a replica's key must be in its region");
    expect(reject({ passphraseCopy: {} })).toContain(
      'bucket.passphraseCopy: names neither replicaRegions nor readerRoleArn',
    );
    expect(reject({ objectLock: { mode: 'compliance', days: 7, retain: 'forever' } })).toContain(
      'bucket.objectLock.retain',
    );
  });
});
