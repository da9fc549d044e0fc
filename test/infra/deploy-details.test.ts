import { Annotations, Match } from 'aws-cdk-lib/assertions';
import { describe, expect, it } from 'vitest';
import {
  DeployConfigError,
  deploymentEnv,
  EXAMPLE_CONFIG_PATH,
  loadDeployConfig,
  parseDeployConfig,
} from '../../infra/config';
import { type CfnJson, resourcesOf, synthTemplate, testConfig } from './synth';

/**
 * Issue 12, "Minor, do them": the multipart abort, EFS mount targets per zone, the WAL receiver's
 * health check, stop timeout and quiet deployments, and an explicit region.
 */

const example = () => JSON.parse(JSON.stringify(loadDeployConfig(EXAMPLE_CONFIG_PATH))) as CfnJson;

function vaultRules(template: ReturnType<typeof synthTemplate>['template']): CfnJson[] {
  const buckets = resourcesOf(template, 'AWS::S3::Bucket').filter(([, b]) => b.Properties.ObjectLockEnabled);
  expect(buckets).toHaveLength(1);
  return buckets[0]![1].Properties.LifecycleConfiguration.Rules as CfnJson[];
}

describe('multipart uploads left unfinished', () => {
  it('are aborted after 7 days by default, so a backup upload running over a day keeps its parts', () => {
    const { template } = synthTemplate(testConfig());

    const abort = vaultRules(template).find((r) => r.Id === 'abort-incomplete-multipart');

    expect(abort).toMatchObject({
      AbortIncompleteMultipartUpload: { DaysAfterInitiation: 7 },
      Status: 'Enabled',
    });
  });

  it('after bucket.abortIncompleteMultipartUploadDays when configured', () => {
    const { template } = synthTemplate(
      testConfig({ bucket: { ...example().bucket, abortIncompleteMultipartUploadDays: 3 } }),
    );

    const abort = vaultRules(template).find((r) => r.Id === 'abort-incomplete-multipart');

    expect(abort?.AbortIncompleteMultipartUpload).toEqual({ DaysAfterInitiation: 3 });
    expect(() =>
      testConfig({ bucket: { ...example().bucket, abortIncompleteMultipartUploadDays: 0 } }),
    ).toThrow(/^pgvault deploy config test: bucket\.abortIncompleteMultipartUploadDays: /);
  });
});

describe('WAL staging file system (EFS)', () => {
  const mountSubnets = (t: ReturnType<typeof synthTemplate>['template']) =>
    resourcesOf(t, 'AWS::EFS::MountTarget')
      .map(([, m]) => m.Properties.SubnetId as string)
      .sort();

  it('gets one mount target per availability zone of the task subnets', () => {
    // Three subnets, two of them in eu-west-1a: EFS refuses a second mount target in one zone.
    const network = {
      ...example().network,
      subnetIds: ['subnet-0000000000000000a', 'subnet-0000000000000000b', 'subnet-0000000000000000c'],
      subnetAvailabilityZones: ['eu-west-1a', 'eu-west-1a', 'eu-west-1b'],
    };

    const { template } = synthTemplate(testConfig({ network }));

    expect(mountSubnets(template)).toEqual(['subnet-0000000000000000a', 'subnet-0000000000000000c']);
  });

  it('without the zones: one per subnet, and synth says how to get one per zone', () => {
    const { subnetAvailabilityZones: _, ...network } = example().network;

    const { stack, template } = synthTemplate(testConfig({ network }));

    expect(mountSubnets(template)).toEqual(['subnet-0123456789abcdef0', 'subnet-0fedcba9876543210']);
    Annotations.fromStack(stack).hasWarning('*', Match.stringLikeRegexp('network.subnetAvailabilityZones'));
  });

  it('a zone list that does not match the subnets is one clear line', () => {
    const network = { ...example().network, subnetAvailabilityZones: ['eu-west-1a'] };

    expect(() => testConfig({ network })).toThrow(
      'pgvault deploy config test: network.subnetAvailabilityZones: 1 zone(s) for 2 subnet(s); give one zone per subnet, in the order of subnetIds',
    );
  });
});

describe('WAL receiver service', () => {
  const { template, fleets } = synthTemplate(testConfig());
  const [, def] = resourcesOf(fleets[0]!.template, 'AWS::ECS::TaskDefinition').find(([, d]) =>
    (d.Properties.ContainerDefinitions[0].Command as string[]).includes('receive'),
  )!;
  const container = def.Properties.ContainerDefinitions[0] as CfnJson;

  it('has a health check on the heartbeat `wal receive --heartbeat` writes while streaming', () => {
    expect(container.Command).toEqual(['wal', 'receive', '--heartbeat', '/tmp/pgvault-wal-receive.alive']);
    expect(container.HealthCheck).toEqual({
      Command: ['CMD-SHELL', '[ $(( $(date +%s) - $(stat -c %Y /tmp/pgvault-wal-receive.alive) )) -lt 60 ]'],
      Interval: 30,
      Timeout: 5,
      Retries: 3,
      StartPeriod: 120,
    });
  });

  it('gets 120 s (Fargate’s maximum) between SIGTERM and SIGKILL for its clean-up', () => {
    expect(container.StopTimeout).toBe(120);
  });

  it('a deployment stopping the old task sends no task-failure alert; a failed health check does', () => {
    const rules = resourcesOf(template, 'AWS::Events::Rule').filter(([, r]) =>
      JSON.stringify(r.Properties.EventPattern ?? {}).includes('ECS Task State Change'),
    );
    expect(rules).toHaveLength(1);
    const branches = rules[0]![1].Properties.EventPattern.detail.$or as CfnJson[];

    // The exit-code branch skips the deployment's stops; every other branch is unchanged or added.
    expect(branches).toContainEqual({
      containers: { exitCode: [{ 'anything-but': 0 }] },
      stoppedReason: [{ 'anything-but': { prefix: 'Scaling activity initiated by (deployment' } }],
    });
    expect(branches).toContainEqual({ stoppedReason: [{ prefix: 'Task failed container health checks' }] });
    expect(branches).toContainEqual({ stopCode: ['TaskFailedToStart'] });
    expect(branches.filter((b) => JSON.stringify(b).includes('exitCode'))).toHaveLength(1);
  });
});

describe('region', () => {
  it('the example configuration names its region', () => {
    expect(loadDeployConfig(EXAMPLE_CONFIG_PATH).region).toBe('eu-west-1');
  });

  it('the configuration’s region wins, else the CLI profile’s, else one clear line', () => {
    const { region: _, ...noRegion } = example();
    const config = parseDeployConfig(noRegion, 'x.json');

    expect(deploymentEnv(testConfig(), 'x.json', { CDK_DEFAULT_REGION: 'us-east-2' })).toEqual({
      region: 'eu-west-1',
    });
    expect(
      deploymentEnv(config, 'x.json', {
        CDK_DEFAULT_REGION: 'us-east-2',
        CDK_DEFAULT_ACCOUNT: '111111111111',
      }),
    ).toEqual({
      account: '111111111111',
      region: 'us-east-2',
    });
    expect(() => deploymentEnv(config, 'x.json', {})).toThrow(DeployConfigError);
    expect(() => deploymentEnv(config, 'x.json', {})).toThrow(
      'pgvault deploy config x.json: region: not set, and the AWS CLI profile names none (CDK_DEFAULT_REGION); set "region" (e.g. "eu-west-1")',
    );
  });
});

describe('schedules and daylight saving time', () => {
  it('synth says in one line what EventBridge Scheduler does with a run in the skipped or repeated hour', () => {
    const config = testConfig({
      timeZone: 'Europe/Berlin',
      schedules: { ...example().schedules, fullDaily: '30 2 * * *' },
    });

    const { stack } = synthTemplate(config);

    const warnings = Annotations.fromStack(stack)
      .findWarning('*', Match.stringLikeRegexp('^schedules\\.fullDaily'))
      .map((w) => String(w.entry.data));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(
      /^schedules\.fullDaily '30 2 \* \* \*' \(Europe\/Berlin\): 02:30 does not exist on \d{4}-03-\d\d \(02:00–03:00 is skipped\): EventBridge Scheduler skips that run; 02:30 happens twice on \d{4}-10-\d\d \(02:00–03:00 is repeated\): EventBridge Scheduler runs it once/,
    );
  });

  it('says nothing in a zone without DST', () => {
    const { stack } = synthTemplate(testConfig({ timeZone: 'UTC' }));

    expect(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('^schedules\\.'))).toEqual(
      [],
    );
  });
});
