import { App, Validations } from 'aws-cdk-lib';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { describe, expect, it } from 'vitest';
import { createDeployment } from '../../infra/stack';
import { buildStack, testConfig } from './synth';

const ACKNOWLEDGED = 'aws:cdk:acknowledged-rules';

function acknowledgements(root: IConstruct): Array<{ path: string; id: string; reason: unknown }> {
  return root.node.findAll().flatMap((c) =>
    c.node.metadata
      .filter((m) => m.type === ACKNOWLEDGED)
      // Each entry maps a rule id to its reason: { "Annotation::AwsSolutions-S1": "why" }.
      .flatMap((m) => Object.entries(m.data as Record<string, unknown>))
      .map(([id, reason]) => ({ path: c.node.path, id, reason })),
  );
}

describe('cdk-nag AwsSolutions', () => {
  it('runs at synth and throws on an unacknowledged finding (the check below is real)', () => {
    const { app, stack } = buildStack(testConfig());
    new sqs.Queue(stack, 'Unacknowledged');
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    expect(() => app.synth()).toThrow(/AwsSolutions-SQS[34]/);
  }, 120_000);

  it('checks the fleet stacks too: an unacknowledged finding there fails the synth', () => {
    const { app, deployment } = buildStack(testConfig());
    new sqs.Queue(deployment.fleets[0]!, 'Unacknowledged');
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    expect(() => app.synth()).toThrow(/AwsSolutions-SQS[34]/);
  }, 120_000);

  it('the example configuration has no unacknowledged finding, and every acknowledgement has its reason', () => {
    const { app } = buildStack(testConfig());
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    // Synth throws the list of findings that are not acknowledged.
    expect(() => app.synth()).not.toThrow();
    const acks = acknowledgements(app);
    expect(acks.length).toBeGreaterThan(10);
    for (const a of acks) {
      expect(typeof a.reason, `${a.path} ${a.id}`).toBe('string');
      expect((a.reason as string).length, `${a.path} ${a.id}`).toBeGreaterThan(30);
    }
    // Nothing is acknowledged wholesale on the stack or app: each finding on the construct it concerns.
    expect(acks.filter((a) => !a.path.includes('/'))).toEqual([]);
  }, 120_000);

  it('also holds for a single cluster, no Object Lock, no WAL receiving, no prefix', () => {
    const base = testConfig();
    const { app } = buildStack(
      testConfig({
        clusters: [base.clusters[0]!],
        bucket: { ...base.bucket, prefix: '', objectLock: null },
        walReceive: { ...base.walReceive, enabled: false },
        physicalBackups: false,
        storageQuotaGb: undefined,
        alerts: { ...base.alerts, emails: [] },
      }),
    );
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    expect(() => app.synth()).not.toThrow();
  }, 120_000);

  it('also holds with every compromised-account option on (replication, break-glass key, passphrase copy)', () => {
    const base = testConfig();
    const { app } = buildStack(
      testConfig({
        bucket: {
          ...base.bucket,
          objectLock: { mode: 'compliance', days: 7, retain: 'gfs' },
          breakGlassRoleArn: 'arn:aws:iam::123456789012:role/pgvault-break-glass',
          protectKeyPolicy: true,
          replication: {
            destinationBucketArn: 'arn:aws:s3:::pgvault-copy',
            destinationAccount: '210987654321',
            replicaKmsKeyArn:
              'arn:aws:kms:eu-central-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab',
            replicationTimeControl: true,
          },
          passphraseCopy: {
            replicaRegions: [{ region: 'eu-central-1' }],
            readerRoleArn: 'arn:aws:iam::210987654321:role/pgvault-restore',
          },
        },
      }),
    );
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    expect(() => app.synth()).not.toThrow();
  }, 120_000);

  it('holds in every stack of an environment-agnostic deployment (`cdk synth` without credentials), several fleet stacks', () => {
    // As infra/app.ts builds it with no account or region: ARNs and acknowledgements then carry
    // AWS::Region / AWS::AccountId, and the fleet stacks import the shared values.
    const base = testConfig();
    const clusters = Array.from({ length: 26 }, (_, i) => ({
      ...base.clusters[i % 2]!,
      name: `c${i}`,
      walReceive: i % 5 === 0,
    }));
    const app = new App({
      builtinCloudFormationValidation: false,
      context: { 'aws:cdk:bundling-stacks': [] },
    });
    const deployment = createDeployment(app, {
      config: testConfig({ clusters }),
      description: 'pgvault',
      image: ecs.ContainerImage.fromRegistry('public.ecr.aws/pgvault/test:latest'),
    });
    expect(deployment.fleets).toHaveLength(3);
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    expect(() => app.synth()).not.toThrow();
    for (const a of acknowledgements(app)) expect(typeof a.reason, `${a.path} ${a.id}`).toBe('string');
  }, 120_000);
});
