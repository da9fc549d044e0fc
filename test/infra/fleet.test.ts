import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ECSClient, RunTaskCommand } from '@aws-sdk/client-ecs';
import { type App, Validations } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { mockClient } from 'aws-sdk-client-mock';
import { AwsSolutionsChecks } from 'cdk-nag';
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
import { SCHEDULED_JOBS } from '../../infra/constructs/schedules';
import { CLUSTERS_PER_FLEET_STACK, type PgvaultStack } from '../../infra/stack';
import { buildStack, type CfnJson, resourcesOf, type SynthResult, synthTemplate, testConfig } from './synth';

/**
 * A fleet: 150 clusters, synthesized with CloudFormation's normal 500-resource check on. The deployment
 * splits into a shared stack (vault, functions, alerts: the same size for any fleet) and fleet stacks of
 * at most CLUSTERS_PER_FLEET_STACK clusters each. The functions' environment does not grow with the
 * fleet (Lambda allows 4 KB per function): the cluster list ships in a layer, and the handlers find any
 * cluster by name in it. Nothing else grows with it either: the bucket's lifecycle rules and every IAM
 * policy are the same size for two clusters or 150.
 */

const FLEET = 150;

function fleetConfig(): DeployConfig {
  const base = testConfig();
  const [single, patroni] = base.clusters;
  const clusters = Array.from({ length: FLEET }, (_, i) => {
    const name = `cluster-${String(i).padStart(3, '0')}`;
    // Realistic lengths: long internal host names, Patroni URLs on every other cluster; every tenth
    // cluster receives WAL (the most resources a cluster brings).
    return i % 2 === 0
      ? { ...single!, name, host: `${name}.db.eu-west-1.internal.example.com`, walReceive: i % 10 === 0 }
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

/** Every IAM policy document of a template, as JSON text (inline policies of roles included). */
function policyDocuments(template: Template): string[] {
  const policies = resourcesOf(template, 'AWS::IAM::Policy').map(([, p]) => p.Properties.PolicyDocument);
  const inline = resourcesOf(template, 'AWS::IAM::Role').flatMap(([, r]) =>
    ((r.Properties.Policies ?? []) as CfnJson[]).map((p) => p.PolicyDocument),
  );
  return [...policies, ...inline].map((d) => JSON.stringify(d));
}

let app: App;
let template: Template;
let stack: PgvaultStack;
let fleets: SynthResult['fleets'];
let clusterFile: string;

beforeAll(() => {
  const config = fleetConfig();
  const built = buildStack(config);
  app = built.app;
  stack = built.stack;
  // Cross-stack references become exports and imports at synth: the templates are read after it.
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  // Synth throws the list of cdk-nag findings that are not acknowledged, in any stack.
  app.synth();
  template = Template.fromStack(stack);
  fleets = built.deployment.fleets.map((f) => ({ stack: f, template: Template.fromStack(f) }));
  clusterFile = join(stack.functions.clusterLayerFolder, 'pgvault', 'clusters.json');
}, 300_000);

describe(`a fleet of ${FLEET} clusters`, () => {
  it('synthesizes with the normal resource check on: a shared stack and fleet stacks, each well under 500', () => {
    expect(fleets).toHaveLength(Math.ceil(FLEET / CLUSTERS_PER_FLEET_STACK));
    expect(fleets.map((f) => f.stack.stackName)).toEqual(fleets.map((_, i) => `Fleet-Fleet${i + 1}`));
    const count = (t: Template) => Object.keys(t.toJSON().Resources).length;
    expect(count(template)).toBeLessThan(450);
    for (const f of fleets) expect(count(f.template), f.stack.stackName).toBeLessThan(450);
    // The shared stack does not grow with the fleet: the same resources as for two clusters.
    const small = synthTemplate(testConfig({ stackName: 'Fleet' })).template;
    const types = (t: Template) =>
      Object.values(t.toJSON().Resources as CfnJson)
        .map((r) => r.Type as string)
        .filter((type) => type !== 'AWS::Lambda::LayerVersion')
        .sort();
    expect(types(template)).toEqual(types(small));
    // The fleet stacks depend on the shared one (deployed first by `cdk deploy --all`), never the reverse.
    for (const f of fleets) expect(f.stack.dependencies).toEqual([stack]);
    expect(stack.dependencies).toEqual([]);
  });

  it('holds the worst case too: a fleet stack of clusters that all receive WAL stays under 470', () => {
    const base = testConfig();
    const clusters = Array.from({ length: CLUSTERS_PER_FLEET_STACK }, (_, i) => ({
      ...base.clusters[1]!,
      name: `worst-${i}`,
      walReceive: true,
    }));
    // Every schedule on (physical backups), the storage alarm on (a quota): the most each cluster brings.
    const worst = synthTemplate(testConfig({ clusters, physicalBackups: true, storageQuotaGb: 100 }));
    expect(worst.fleets).toHaveLength(1);
    const resources = Object.keys(worst.fleets[0]!.template.toJSON().Resources).length;
    // 457 with the two heartbeat alarms per cluster (issue 12): still 43 under CloudFormation's 500.
    expect(resources).toBeLessThan(470);
    expect(resources).toBeGreaterThan(CLUSTERS_PER_FLEET_STACK * 30);
  }, 120_000);

  it('reaches the config’s limit: 500 clusters in 42 fleet stacks, every stack under 450 resources', () => {
    const base = testConfig();
    const clusters = Array.from({ length: 500 }, (_, i) => ({
      ...base.clusters[i % 2]!,
      name: `db-${String(i).padStart(3, '0')}`,
      walReceive: false,
    }));
    const { app, deployment } = buildStack(testConfig({ clusters }));
    const assembly = app.synth();
    expect(deployment.fleets).toHaveLength(42);
    for (const s of deployment.stacks) {
      const t = assembly.getStackByName(s.stackName).template as CfnJson;
      expect(Object.keys(t.Resources).length, s.stackName).toBeLessThan(450);
      // CloudFormation allows 200 outputs (the shared stack's exports among them) per stack.
      expect(Object.keys(t.Outputs ?? {}).length, s.stackName).toBeLessThan(200);
    }
  }, 300_000);

  it('keeps the bucket lifecycle rules a constant number', () => {
    const rules = (t: Template) =>
      Object.values(t.toJSON().Resources as CfnJson).find(
        (r) =>
          r.Type === 'AWS::S3::Bucket' &&
          r.Properties.LifecycleConfiguration?.Rules?.some((x: CfnJson) => x.TagFilters),
      )!.Properties.LifecycleConfiguration.Rules as CfnJson[];
    const small = synthTemplate(testConfig({ stackName: 'Fleet' })).template;
    expect(rules(template)).toHaveLength(7);
    expect(rules(template)).toEqual(rules(small));
  });

  it('gives every cluster its schedules exactly once, across the fleet stacks', () => {
    expect(resourcesOf(template, 'AWS::Scheduler::Schedule')).toEqual([]);
    const names = fleets.flatMap((f) =>
      resourcesOf(f.template, 'AWS::Scheduler::Schedule').map(([, s]) => s.Properties.Name as string),
    );
    expect(new Set(names).size).toBe(names.length);
    const jobs = SCHEDULED_JOBS.map((j) => j.schedule);
    expect(names).toHaveLength(FLEET * jobs.length);
    for (let i = 0; i < FLEET; i++) {
      const cluster = `cluster-${String(i).padStart(3, '0')}`;
      for (const job of jobs) expect(names, `${cluster}-${job}`).toContain(`${cluster}-${job}`);
    }
    // Each cluster's task definitions, alarms and schedules are in one fleet stack only.
    const owner = new Map<string, string>();
    for (const f of fleets) {
      for (const name of f.stack.clusterNames) {
        expect(owner.get(name)).toBeUndefined();
        owner.set(name, f.stack.stackName);
        const families = resourcesOf(f.template, 'AWS::ECS::TaskDefinition').map(
          ([, d]) => d.Properties.Family,
        );
        expect(families).toEqual(expect.arrayContaining([`Fleet-backup-${name}`, `Fleet-restore-${name}`]));
      }
    }
    expect(owner.size).toBe(FLEET);
  });

  it('keeps every IAM policy the same size whatever the fleet (no statement lists the clusters)', () => {
    const small = synthTemplate(testConfig({ stackName: 'Fleet' }));
    const largest = (t: Template) => Math.max(...policyDocuments(t).map((d) => d.length));
    // The shared stack's policies (functions, scheduler) do not depend on the cluster count.
    expect(
      policyDocuments(template)
        .map((d) => d.length)
        .sort(),
    ).toEqual(
      policyDocuments(small.template)
        .map((d) => d.length)
        .sort(),
    );
    // A fleet stack's policies are per cluster role: no larger than those of a two-cluster deployment,
    // and far under IAM's 10,240 characters per role.
    const smallest = largest(small.fleets[0]!.template);
    for (const f of fleets) expect(largest(f.template)).toBeLessThanOrEqual(smallest + 200);
    expect(largest(template)).toBeLessThan(6000);
  });

  it('keeps every function environment well under 4 KB, the same size as for two clusters', () => {
    const fleet = environments(template);
    expect(fleet).toHaveLength(5);
    // Two clusters named as the fleet's first two (TASK_DEFINITION_ARN names the first one's family).
    const small = environments(
      synthTemplate(testConfig({ stackName: 'Fleet', clusters: fleetConfig().clusters.slice(0, 2) }))
        .template,
    );
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
    // Every cluster of every fleet stack is in the list, with the families its fleet stack created.
    const listed = new Map(clusters.map((c) => [c.name as string, c]));
    for (const f of fleets) {
      for (const [name, t] of f.stack.tasks.byCluster) {
        expect(listed.get(name)).toMatchObject({
          taskDefinition: t.backup.family,
          restoreTaskDefinition: t.restore.family,
        });
      }
    }
  });

  it('passes cdk-nag in every stack (the synth above ran AwsSolutions on all of them)', () => {
    // app.synth() threw on any unacknowledged finding; the checks did run on the fleet stacks.
    const acknowledged = fleets[0]!.stack.node
      .findAll()
      .flatMap((c) => c.node.metadata.filter((m) => m.type === 'aws:cdk:acknowledged-rules'));
    expect(acknowledged.length).toBeGreaterThan(0);
  });
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
