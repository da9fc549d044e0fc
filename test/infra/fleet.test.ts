import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ECSClient, RunTaskCommand } from '@aws-sdk/client-ecs';
import type { Template } from 'aws-cdk-lib/assertions';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handler as dispatch } from '../../functions/dispatch';
import {
  DEFAULT_CLUSTERS_FILE,
  deploymentClusters,
  findCluster,
  forgetCachedClusters,
  InvalidPayloadError,
} from '../../functions/env';
import type { DeployConfig } from '../../infra/config';
import { CLUSTERS_FILE } from '../../infra/constructs/functions';
import type { PgvaultStack } from '../../infra/stack';
import { type CfnJson, resourcesOf, synthTemplate, testConfig } from './synth';

/**
 * A fleet: 150 clusters. The functions' environment does not grow with the fleet (Lambda allows 4 KB
 * per function); the cluster list ships in a layer, and the handlers find any cluster by name in it.
 * One stack cannot hold the resources of 150 clusters (CloudFormation's 500), so the synth here lifts
 * CDK's resource limit to look at the functions, and the last test shows the default synth refusing
 * the fleet with one line.
 */

const FLEET = 150;

function fleetConfig(): DeployConfig {
  const base = testConfig();
  const [single, patroni] = base.clusters;
  const clusters = Array.from({ length: FLEET }, (_, i) => {
    const name = `cluster-${String(i).padStart(3, '0')}`;
    // Realistic lengths: long internal host names, Patroni URLs on every other cluster.
    return i % 2 === 0
      ? { ...single!, name, host: `${name}.db.eu-west-1.internal.example.com` }
      : {
          ...patroni!,
          name,
          host: `${name}-leader.db.eu-west-1.internal.example.com`,
          patroniUrl: `http://${name}-patroni.db.eu-west-1.internal.example.com:8008`,
          walReceive: false,
        };
  });
  return testConfig({ stackName: 'Fleet', clusters });
}

/** Bytes an environment takes once deployed: each reference counted as a long ARN (~100 characters). */
function deployedSize(variables: CfnJson): number {
  const length = (value: unknown): number => {
    if (typeof value === 'string') return value.length;
    const join = (value as { 'Fn::Join'?: [string, unknown[]] })['Fn::Join'];
    if (join)
      return join[1].reduce<number>((n, p) => n + length(p), 0) + join[0].length * (join[1].length - 1);
    return 100; // Ref, Fn::GetAtt
  };
  return Object.entries(variables).reduce((n, [key, value]) => n + key.length + length(value), 0);
}

function environments(template: Template): CfnJson[] {
  return resourcesOf(template, 'AWS::Lambda::Function').map(([, fn]) => fn.Properties.Environment.Variables);
}

let template: Template;
let stack: PgvaultStack;
let clusterFile: string;

beforeAll(() => {
  ({ template, stack } = synthTemplate(fleetConfig(), {
    context: { '@aws-cdk/core:stackResourceLimit': 0 },
  }));
  clusterFile = join(stack.functions.clusterLayerFolder, 'pgvault', 'clusters.json');
}, 180_000);

describe(`a fleet of ${FLEET} clusters`, () => {
  it('keeps every function environment well under 4 KB, the same size as for two clusters', () => {
    const fleet = environments(template);
    expect(fleet).toHaveLength(5);
    const small = environments(synthTemplate(testConfig()).template);
    for (const env of fleet) {
      expect(env.PGVAULT_CLUSTERS).toBeUndefined();
      expect(env.PGVAULT_CLUSTERS_FILE).toBe(CLUSTERS_FILE);
      expect(deployedSize(env)).toBeLessThan(2048);
      expect(deployedSize(env)).toBe(deployedSize(small[0]!));
    }
  }, 120_000);

  it('ships the list in one layer every function carries, at the path the handlers read', () => {
    expect(CLUSTERS_FILE).toBe(DEFAULT_CLUSTERS_FILE);
    template.resourceCountIs('AWS::Lambda::LayerVersion', 1);
    const layer = { Ref: stack.getLogicalId(stack.functions.clusterLayer.node.defaultChild as never) };
    for (const [, fn] of resourcesOf(template, 'AWS::Lambda::Function')) {
      expect(fn.Properties.Layers).toEqual([layer]);
    }
    const clusters = JSON.parse(readFileSync(clusterFile, 'utf8')) as Array<Record<string, unknown>>;
    expect(clusters).toHaveLength(FLEET);
    expect(clusters[137]).toEqual({
      name: 'cluster-137',
      mode: 'patroni',
      host: 'cluster-137-leader.db.eu-west-1.internal.example.com',
      port: 5432,
      database: 'orders',
      credentialsSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/orders-GhIjKl',
      patroniUrl: 'http://cluster-137-patroni.db.eu-west-1.internal.example.com:8008',
      taskDefinition: 'Fleet-backup-cluster-137',
      restoreTaskDefinition: 'Fleet-restore-cluster-137',
    });
  });

  it('is refused by the default synth with one line: CloudFormation holds 500 resources per stack', () => {
    let message = '';
    try {
      synthTemplate(fleetConfig());
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(
      /^pgvault deploy config: clusters: 150 clusters need about \d+ CloudFormation resources, more than the 500 one stack may hold; deploy the fleet as several stacks of at most about \d+ clusters \(one config file each, its own stackName\)$/,
    );
  }, 120_000);
});

describe('the handlers, reading the synthesized cluster list', () => {
  const ecs = mockClient(ECSClient);
  const savedEnv = { ...process.env };
  const TASK_ARN = 'arn:aws:ecs:eu-west-1:123456789012:task/pgvault/0123456789abcdef';

  beforeEach(() => {
    ecs.reset();
    ecs.on(RunTaskCommand).resolves({ tasks: [{ taskArn: TASK_ARN }], failures: [] });
    forgetCachedClusters();
    const { PGVAULT_CLUSTERS: _inline, ...rest } = savedEnv;
    process.env = {
      ...rest,
      AWS_REGION: 'eu-west-1',
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: 'pgvault-vault',
      LOCAL_COPY: 'false',
      PGVAULT_METRICS: 'off',
      ECS_CLUSTER_ARN: 'arn:aws:ecs:eu-west-1:123456789012:cluster/pgvault',
      TASK_DEFINITION_ARN: 'arn:aws:ecs:eu-west-1:123456789012:task-definition/Fleet-backup-cluster-000:1',
      RESTORE_TASK_DEFINITION_ARN:
        'arn:aws:ecs:eu-west-1:123456789012:task-definition/Fleet-restore-cluster-000:1',
      TASK_CONTAINER_NAME: 'pgvault',
      SUBNET_IDS: 'subnet-0123456789abcdef0',
      SECURITY_GROUP_IDS: 'sg-0123456789abcdef0',
      PGVAULT_CLUSTERS_FILE: clusterFile,
    };
  });

  afterAll(() => {
    process.env = savedEnv;
    ecs.restore();
    forgetCachedClusters();
  });

  it('find any cluster by name', () => {
    expect(deploymentClusters()).toHaveLength(FLEET);
    expect(findCluster('cluster-000')).toMatchObject({
      host: 'cluster-000.db.eu-west-1.internal.example.com',
    });
    expect(findCluster('cluster-149')).toMatchObject({
      mode: 'patroni',
      taskDefinition: 'Fleet-backup-cluster-149',
      restoreTaskDefinition: 'Fleet-restore-cluster-149',
    });
  });

  it('dispatch starts the named cluster’s own task definition (by family: its newest revision)', async () => {
    const result = await dispatch({ cluster: 'cluster-137', command: ['backup', 'full', 'daily'] });
    expect(result).toEqual({
      cluster: 'cluster-137',
      command: ['backup', 'full', 'daily'],
      taskArn: TASK_ARN,
    });
    const calls = ecs.commandCalls(RunTaskCommand);
    expect(calls).toHaveLength(1);
    const input = calls[0]!.args[0].input;
    expect(input.taskDefinition).toBe('Fleet-backup-cluster-137');
    expect(input.overrides?.containerOverrides?.[0]?.environment).toEqual(
      expect.arrayContaining([
        { name: 'CLUSTER_NAME', value: 'cluster-137' },
        { name: 'PGHOST', value: 'cluster-137-leader.db.eu-west-1.internal.example.com' },
        { name: 'PATRONI_URL', value: 'http://cluster-137-patroni.db.eu-west-1.internal.example.com:8008' },
      ]),
    );
  });

  it('refuse an unknown cluster with one short line and start nothing', async () => {
    const refusal = dispatch({ cluster: 'cluster-150', command: ['backup', 'full', 'daily'] });
    await expect(refusal).rejects.toBeInstanceOf(InvalidPayloadError);
    const message = await refusal.catch((err: Error) => err.message);
    expect(message).toBe(
      `invalid payload: "cluster": cluster-150 is not a cluster of this deployment; use one of ${Array.from(
        { length: 20 },
        (_, i) => `cluster-${String(i).padStart(3, '0')}`,
      ).join(', ')} and 130 more`,
    );
    expect(ecs.commandCalls(RunTaskCommand)).toHaveLength(0);
  });

  it('read the file once per container (cold start), and name it when it is missing', () => {
    const folder = mkdtempSync(join(tmpdir(), 'pgvault-fleet-'));
    try {
      const file = join(folder, 'clusters.json');
      writeFileSync(file, readFileSync(clusterFile));
      process.env.PGVAULT_CLUSTERS_FILE = file;
      expect(findCluster('cluster-042').name).toBe('cluster-042');
      // A warm container keeps the list it read: the file is not read again.
      writeFileSync(file, 'not json');
      expect(findCluster('cluster-043').name).toBe('cluster-043');
      forgetCachedClusters();
      expect(() => deploymentClusters()).toThrow(`${file} is not JSON`);
      rmSync(file);
      expect(() => deploymentClusters()).toThrow(
        `the cluster list ${file} cannot be read (ENOENT) and PGVAULT_CLUSTERS is not set; the stack ships the list in the functions' cluster layer: deploy the stack again`,
      );
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
