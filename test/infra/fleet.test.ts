import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ECSClient, RunTaskCommand } from '@aws-sdk/client-ecs';
import { App, CfnOutput, CfnResource, Validations } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as ecs from 'aws-cdk-lib/aws-ecs';
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
import { type DeployConfig, DeployConfigError } from '../../infra/config';
import { CLUSTERS_FILE } from '../../infra/constructs/functions';
import { SCHEDULED_JOBS } from '../../infra/constructs/schedules';
import { shardOfName } from '../../infra/fleet';
import {
  CLUSTERS_PER_FLEET_STACK,
  createDeployment,
  LEGACY_EXPORTS_CONTEXT,
  type PgvaultDeployment,
  type PgvaultStack,
} from '../../infra/stack';
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
/** Fleet stacks the names are hashed over: 150 names land 12 at most in each of 20 (fleet.shards). */
const FLEET_SHARDS = 20;

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
  return testConfig({ stackName: 'Fleet', clusters, fleet: { layout: 'name', shards: FLEET_SHARDS } });
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
    expect(fleets).toHaveLength(FLEET_SHARDS);
    expect(fleets.map((f) => f.stack.stackName)).toEqual(fleets.map((_, i) => `Fleet-Fleet${i + 1}`));
    for (const f of fleets) expect(f.stack.clusterNames.length).toBeLessThanOrEqual(CLUSTERS_PER_FLEET_STACK);
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

  it('reaches the config’s limit: 500 clusters in 42 fleet stacks (explicit shards), every stack under 450 resources', () => {
    const base = testConfig();
    const clusters = Array.from({ length: 500 }, (_, i) => ({
      ...base.clusters[i % 2]!,
      name: `db-${String(i).padStart(3, '0')}`,
      walReceive: false,
      shard: Math.floor(i / CLUSTERS_PER_FLEET_STACK) + 1,
    }));
    const { app, deployment } = buildStack(testConfig({ clusters }));
    const assembly = app.synth();
    expect(deployment.fleets).toHaveLength(42);
    for (const s of deployment.stacks) {
      const t = assembly.getStackByName(s.stackName).template as CfnJson;
      expect(Object.keys(t.Resources).length, s.stackName).toBeLessThan(450);
      // CloudFormation allows 200 outputs and 200 parameters (the SSM values a fleet stack reads) per stack.
      expect(Object.keys(t.Outputs ?? {}).length, s.stackName).toBeLessThan(200);
      expect(Object.keys(t.Parameters ?? {}).length, s.stackName).toBeLessThan(200);
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

/** One synthesized deployment: each stack's template, and each resource's construct path by logical id. */
interface Synthesized {
  readonly app: App;
  readonly deployment: PgvaultDeployment;
  readonly templates: ReadonlyMap<string, CfnJson>;
  /** stack name → logical id → construct path (below the stack). */
  readonly paths: ReadonlyMap<string, ReadonlyMap<string, string>>;
}

function synthesize(config: DeployConfig, app?: App): Synthesized {
  const built = app ? { app, deployment: createTestDeployment(app, config) } : buildStack(config);
  const assembly = built.app.synth();
  const templates = new Map<string, CfnJson>();
  const paths = new Map<string, Map<string, string>>();
  for (const stack of built.deployment.stacks) {
    templates.set(stack.stackName, assembly.getStackByName(stack.stackName).template as CfnJson);
    const ids = new Map<string, string>();
    for (const c of stack.node.findAll()) {
      if (CfnResource.isCfnResource(c))
        ids.set(stack.getLogicalId(c), c.node.path.slice(stack.node.path.length + 1));
    }
    paths.set(stack.stackName, ids);
  }
  return { app: built.app, deployment: built.deployment, templates, paths };
}

function createTestDeployment(app: App, config: DeployConfig): PgvaultDeployment {
  return createDeployment(app, {
    config,
    env: { account: '123456789012', region: 'eu-west-1' },
    image: ecs.ContainerImage.fromRegistry('public.ecr.aws/pgvault/test:latest'),
  });
}

/** Whether a construct path (below its stack) belongs to cluster `name`: a path segment names it. */
function ownedBy(path: string, name: string): boolean {
  const re = new RegExp(`(^|-)${name}($|-|[A-Z])`);
  return path.split('/').some((segment) => re.test(segment));
}

/** Each cluster's fleet stack and the logical ids of its resources there. */
function placement(s: Synthesized): Map<string, { stack: string; ids: string[] }> {
  const out = new Map<string, { stack: string; ids: string[] }>();
  for (const fleet of s.deployment.fleets) {
    const paths = s.paths.get(fleet.stackName)!;
    for (const name of fleet.clusterNames) {
      const ids = [...paths].filter(([, path]) => ownedBy(path, name)).map(([id]) => id);
      out.set(name, { stack: fleet.stackName, ids: ids.sort() });
    }
  }
  return out;
}

/**
 * What changed for the clusters of `before` still in `after`, beyond `changed` (the cluster added or
 * removed): a cluster that moved to another stack or whose resources changed logical id, and a fleet
 * stack whose template changed in anything but its dashboard and the changed cluster's own resources.
 */
function disturbed(before: Synthesized, after: Synthesized, changed?: string): string[] {
  const out: string[] = [];
  const was = placement(before);
  const is = placement(after);
  for (const [name, p] of was) {
    if (name === changed) continue;
    const now = is.get(name);
    if (!now) out.push(`${name}: gone`);
    else if (now.stack !== p.stack) out.push(`${name}: moved from ${p.stack} to ${now.stack}`);
    else if (JSON.stringify(now.ids) !== JSON.stringify(p.ids)) out.push(`${name}: other logical ids`);
  }
  for (const fleet of before.deployment.fleets) {
    const a = before.templates.get(fleet.stackName)!;
    const b = after.templates.get(fleet.stackName);
    if (!b) continue; // reported above, through its clusters
    const paths = new Map([...before.paths.get(fleet.stackName)!, ...after.paths.get(fleet.stackName)!]);
    const ids = new Set([...Object.keys(a.Resources), ...Object.keys(b.Resources)]);
    for (const id of ids) {
      const path = paths.get(id) ?? id;
      if (path === 'Monitoring/Dashboard/Resource' || (changed && ownedBy(path, changed))) continue;
      if (JSON.stringify(a.Resources[id]) !== JSON.stringify(b.Resources[id]))
        out.push(`${fleet.stackName}: ${path} changed`);
    }
    if (JSON.stringify(a.Parameters) !== JSON.stringify(b.Parameters))
      out.push(`${fleet.stackName}: parameters changed`);
  }
  return out;
}

describe('fleet stacks that stay put (stable shards)', () => {
  const base = testConfig();
  /** 26 clusters c0..c25 (every fifth receives WAL) over 3 fleet stacks by name. */
  const clusters = Array.from({ length: 26 }, (_, i) => ({
    ...base.clusters[i % 2]!,
    name: `c${i}`,
    walReceive: i % 5 === 0,
  }));
  const config = (
    list: DeployConfig['clusters'],
    fleet: DeployConfig['fleet'] = { layout: 'name', shards: 3 },
  ) => testConfig({ clusters: list, fleet });
  let original: Synthesized;
  beforeAll(() => {
    original = synthesize(config(clusters));
  }, 300_000);

  it('the name hash is fixed: these clusters land in these stacks, in every build', () => {
    // Every deployed cluster's stack depends on shardOfName: a change here would move whole fleets.
    expect(['main', 'orders', 'c0', 'c13', 'db-042'].map((n) => shardOfName(n, 16))).toEqual([
      4, 11, 4, 6, 11,
    ]);
    expect(['main', 'orders', 'c0', 'c13', 'db-042'].map((n) => shardOfName(n, 100))).toEqual([
      100, 38, 4, 52, 70,
    ]);
    expect(shardOfName('anything', 1)).toBe(1);
    // Raising the stack count moves a cluster only into the new stacks (jump consistent hash).
    for (let i = 0; i < 200; i++) {
      const name = `db-${i}`;
      const [from, to] = [shardOfName(name, 8), shardOfName(name, 12)];
      if (from !== to) expect(to).toBeGreaterThan(8);
    }
    expect(original.deployment.fleets.map((f) => f.stackName)).toEqual([
      'Pgvault-Fleet1',
      'Pgvault-Fleet2',
      'Pgvault-Fleet3',
    ]);
  });

  it('removing a cluster from the middle of the list leaves every other cluster where it was', () => {
    const removed = synthesize(config(clusters.filter((c) => c.name !== 'c13')));
    expect(disturbed(original, removed, 'c13')).toEqual([]);
    // The removed cluster's resources are gone from its stack, and only they.
    const stack = placement(original).get('c13')!.stack;
    const gone = Object.keys(original.templates.get(stack)!.Resources).filter(
      (id) => !(id in removed.templates.get(stack)!.Resources),
    );
    expect(gone.sort()).toEqual(placement(original).get('c13')!.ids);
    expect(gone.length).toBeGreaterThan(20);
  }, 300_000);

  it('reordering the list changes no fleet stack at all', () => {
    const reordered = synthesize(config([...clusters].reverse()));
    expect(disturbed(original, reordered)).toEqual([]);
    for (const [name, template] of original.templates) {
      if (name !== 'Pgvault') expect(reordered.templates.get(name), name).toEqual(template);
    }
  }, 300_000);

  it('adding a cluster (even first in the list) moves none and only adds its own resources', () => {
    const added = { ...base.clusters[0]!, name: 'c99', walReceive: true };
    const grown = synthesize(config([added, ...clusters]));
    expect(disturbed(original, grown, 'c99')).toEqual([]);
    const stack = placement(grown).get('c99')!.stack;
    const before = Object.keys(original.templates.get(stack)!.Resources);
    const now = Object.keys(grown.templates.get(stack)!.Resources);
    expect(now).toEqual(expect.arrayContaining(before));
    expect(now.filter((id) => !before.includes(id)).sort()).toEqual(placement(grown).get('c99')!.ids);
  }, 300_000);

  it('the position layout of earlier builds (compatibility) moves later clusters on a removal: what shards avoid', () => {
    const position = { layout: 'position', shards: 1 } as const;
    const before = synthesize(config(clusters, position));
    const after = synthesize(
      config(
        clusters.filter((c) => c.name !== 'c5'),
        position,
      ),
    );
    // c12 was the first of Fleet2 and slides into Fleet1: the conflict of issue 12.
    expect(disturbed(before, after, 'c5')).toContain('c12: moved from Pgvault-Fleet2 to Pgvault-Fleet1');
    // Explicit shards reproduce that layout exactly (the migration path: pin, then remove or reorder freely).
    const pinned = clusters.map((c, i) => ({ ...c, shard: Math.floor(i / 12) + 1 }));
    const migrated = synthesize(config(pinned));
    for (const [name, template] of before.templates) {
      if (name !== 'Pgvault') expect(migrated.templates.get(name), name).toEqual(template);
    }
    const pinnedAfter = synthesize(config(pinned.filter((c) => c.name !== 'c5')));
    expect(disturbed(migrated, pinnedAfter, 'c5')).toEqual([]);
  }, 300_000);

  it('refuses synth with one line when a fleet stack would hold more than 12 clusters, naming it and one with room', () => {
    const thirteen = Array.from({ length: 13 }, (_, i) => ({ ...base.clusters[0]!, name: `db${i}` }));
    const refusal = (list: DeployConfig['clusters'], fleet?: DeployConfig['fleet']) => {
      try {
        buildStack(config(list, fleet));
      } catch (err) {
        expect(err).toBeInstanceOf(DeployConfigError);
        return (err as Error).message;
      }
      throw new Error('synth did not refuse');
    };
    // The default (one fleet stack by name) holds 12; the 13th needs a pin or more stacks.
    const message = refusal(thirteen, { layout: 'name', shards: 1 });
    expect(message.split('\n')).toHaveLength(1);
    expect(message).toBe(
      'pgvault deploy config: fleet stack Pgvault-Fleet1 would hold 13 clusters (fleet.shards is 1), ' +
        'more than the 12 a fleet stack holds: db0, db1, db10, db11, db12, db2 and 7 more; ' +
        'give the clusters you are adding "shard": 2 (Pgvault-Fleet2 has room), or raise fleet.shards before the first deployment; ' +
        'a deployment made before fleet shards keeps its stacks with fleet.layout "position" (infra/README.md "Fleet stacks")',
    );
    // Following it: the 13th pinned to Fleet2.
    const fixed = synthesize(
      config([...thirteen.slice(0, 12), { ...thirteen[12]!, shard: 2 }], { layout: 'name', shards: 1 }),
    );
    expect(fixed.deployment.fleets.map((f) => [f.stackName, f.clusterNames.length])).toEqual([
      ['Pgvault-Fleet1', 12],
      ['Pgvault-Fleet2', 1],
    ]);
    // Pins count too: a thirteenth pinned into a full stack is refused the same way.
    const full = refusal(
      thirteen.map((c) => ({ ...c, shard: 5 })),
      { layout: 'position', shards: 1 },
    );
    expect(full).toMatch(
      /^pgvault deploy config: fleet stack Pgvault-Fleet5 would hold 13 clusters, more than the 12 .*"shard": 1 \(Pgvault-Fleet1 has room\)$/,
    );
  }, 300_000);
});

describe('no CloudFormation exports between the stacks (SSM parameters instead)', () => {
  it('fleet stacks import nothing; the shared stack exports nothing and writes the values to SSM', () => {
    const s = synthesize(fleetConfigSmall());
    const shared = s.templates.get('Pgvault')!;
    expect(Object.values(shared.Outputs ?? {}).filter((o) => (o as CfnJson).Export)).toEqual([]);
    const parameters = Object.values(shared.Resources as CfnJson).filter(
      (r) => r.Type === 'AWS::SSM::Parameter',
    );
    expect(parameters.length).toBeGreaterThan(10);
    for (const p of parameters) expect(p.Properties.Name).toMatch(/^\/Pgvault\/shared\/[A-Za-z0-9_.-]+$/);
    for (const fleet of s.deployment.fleets) {
      const text = JSON.stringify(s.templates.get(fleet.stackName));
      expect(text, fleet.stackName).not.toContain('Fn::ImportValue');
      // Each value is a template parameter resolved from SSM at every deployment of the fleet stack.
      const read = Object.values(s.templates.get(fleet.stackName)!.Parameters as CfnJson).filter(
        (p) => p.Type === 'AWS::SSM::Parameter::Value<String>' && !p.Default.startsWith('/cdk-bootstrap/'),
      );
      expect(read.length).toBeGreaterThan(10);
      for (const p of read) expect(parameters.map((x) => x.Properties.Name)).toContain(p.Default);
    }
  }, 300_000);

  it('a construct that references the shared stack directly fails synth with one line saying what to use', () => {
    const { app, deployment } = buildStack(fleetConfigSmall());
    new CfnOutput(deployment.fleets[0]!, 'Direct', { value: deployment.shared.vault.bucket.bucketName });
    expect(() => app.synth()).toThrow(
      /pgvault: stack Pgvault exports 1 value\(s\) to other stacks \(.*\); pass shared values to fleet stacks through SharedValues/,
    );
  }, 300_000);
});

describe('upgrading a deployment of an earlier build (its fleet stacks import exports)', () => {
  it('with -c pgvault:legacyExports=true the shared stack keeps every export those fleet stacks import', () => {
    // What the fleet stack of the example configuration imported, as an earlier build synthesized it
    // (CloudFormation refuses to delete an export still imported: the shared stack keeps them for the
    // deployment in which the fleet stacks switch to the SSM parameters).
    const importedBefore = [
      'ExportsOutputRefAlertsTopicCF7C81C9D535FDD6',
      'ExportsOutputFnGetAttAlertsKey9E1197AFArnFA6D5CA7',
      'ExportsOutputFnGetAttAlertsEventBus18DE4707Arn047933D7',
      'ExportsOutputFnGetAttVaultBucket0925C477Arn4A5F93F5',
      'ExportsOutputFnGetAttVaultKeyCB88EF1AArnE801FEE6',
      'ExportsOutputFnGetAttTasksLogs30A06F1FArn1345A701',
      'ExportsOutputRefVaultPassphrase08350C782804DB71',
      'ExportsOutputRefVaultBucket0925C4774D106923',
      'ExportsOutputRefAlertsEventBus18DE47077B3278B6',
      'ExportsOutputRefTasksLogs30A06F1FB97415F2',
      'ExportsOutputRefTasksWalFs29DC0502BAC42FBE',
      'ExportsOutputFnGetAttTasksWalFs29DC0502ArnE919DF30',
      'ExportsOutputRefTasksCluster3733B20A24F498A7',
      'ExportsOutputRefSchedulesGroupC7F6730891363701',
      'ExportsOutputFnGetAttFunctionsdispatchFCB7E6B8ArnBCDB5635',
      'ExportsOutputFnGetAttSchedulesDeadLetterQueue84E31400Arn7F544BA9',
      'ExportsOutputFnGetAttSchedulesRole523D57EEArn985B7CE7',
      'ExportsOutputFnGetAttFunctionsretentionD8F2EE05Arn9BBB153C',
      'ExportsOutputFnGetAttFunctionsverify1AFCAF2EArn23B9EEA3',
      'ExportsOutputFnGetAttFunctionsreport6BA1E361Arn382E20DB',
    ].map((id) => `Pgvault:${id}`);
    const upgrade = synthTemplate(fleetConfigSmall(), { context: { [LEGACY_EXPORTS_CONTEXT]: true } });
    const exported = Object.values(upgrade.template.toJSON().Outputs as CfnJson)
      .filter((o) => o.Export)
      .map((o) => o.Export.Name);
    expect(exported).toEqual(expect.arrayContaining(importedBefore));
    // The fleet stacks already read the SSM parameters; the next deployment without the flag drops the exports.
    for (const f of upgrade.fleets)
      expect(JSON.stringify(f.template.toJSON())).not.toContain('Fn::ImportValue');
    const after = synthTemplate(fleetConfigSmall()).template.toJSON();
    expect(Object.values(after.Outputs as CfnJson).filter((o) => o.Export)).toEqual([]);
  }, 300_000);
});

/** The example's two clusters, on one fleet stack. */
function fleetConfigSmall(): DeployConfig {
  return testConfig();
}

describe('two deployments in one account and region', () => {
  /**
   * A physical name as the account sees it: plain text as it is; a reference to a resource (Ref, GetAtt)
   * stands for that resource of that stack, whose name CloudFormation generates (unique); a fleet stack's
   * SSM parameter stands for the shared stack's value it reads; pseudo parameters are the same everywhere.
   */
  function identity(
    value: unknown,
    stack: string,
    all: ReadonlyMap<string, CfnJson>,
    shared: string,
  ): string {
    if (typeof value === 'string' || typeof value === 'number') return String(value);
    const v = value as CfnJson;
    if (Array.isArray(v)) return v.map((x) => identity(x, stack, all, shared)).join(',');
    if (v['Fn::Join']) {
      const [sep, parts] = v['Fn::Join'] as [string, unknown[]];
      return parts.map((p) => identity(p, stack, all, shared)).join(sep);
    }
    const ref = v.Ref as string | undefined;
    if (ref?.startsWith('AWS::')) return `<${ref}>`;
    const parameter = ref ? all.get(stack)!.Parameters?.[ref] : undefined;
    if (parameter?.Type === 'AWS::SSM::Parameter::Value<String>') {
      const written = Object.values(all.get(shared)!.Resources as CfnJson).find(
        (r) => r.Type === 'AWS::SSM::Parameter' && r.Properties.Name === parameter.Default,
      );
      return identity(written!.Properties.Value, shared, all, shared);
    }
    if (ref) return `<${stack}/${ref}>`;
    if (v['Fn::GetAtt']) return `<${stack}/${(v['Fn::GetAtt'] as string[]).join('.')}>`;
    return JSON.stringify(v);
  }

  /** Names unique within a parent only: the property that names the parent. */
  const SCOPED: Record<string, string> = {
    'AWS::Scheduler::Schedule': 'GroupName', // a schedule's name is unique in its group
    'AWS::ECS::Service': 'Cluster', // a service's name is unique in its ECS cluster
    'AWS::IAM::Policy': 'Roles', // an inline policy's name is unique on its role
  };

  /** Properties named *Name that name something else than the resource (a metric, a display text). */
  const NOT_NAMES = new Set(['MetricName', 'DisplayName']);

  /** Every physical name (a property named *Name or Family) of every resource of a deployment's stacks. */
  function physicalNames(stacks: readonly string[], all: ReadonlyMap<string, CfnJson>): Map<string, string> {
    const shared = stacks[0]!;
    const names = new Map<string, string>();
    for (const stack of stacks) {
      for (const [id, r] of Object.entries(all.get(stack)!.Resources as CfnJson)) {
        for (const [key, value] of Object.entries((r.Properties ?? {}) as CfnJson)) {
          if ((!/Name$/.test(key) && key !== 'Family') || NOT_NAMES.has(key)) continue;
          const scopeKey = SCOPED[r.Type as string];
          const scope = scopeKey ? `${identity(r.Properties[scopeKey], stack, all, shared)}/` : '';
          names.set(`${r.Type} ${key} ${scope}${identity(value, stack, all, shared)}`, `${stack}/${id}`);
        }
      }
    }
    return names;
  }

  it('share no physical name: alarms, task families, schedules, SSM parameters, dashboards, buses', () => {
    // The same clusters (main, orders), two stack names, one account and region, one CDK app.
    const app = new App({
      builtinCloudFormationValidation: false,
      context: { 'aws:cdk:bundling-stacks': [] },
    });
    const a = createTestDeployment(app, testConfig({ stackName: 'PgvaultA' }));
    const b = createTestDeployment(app, testConfig({ stackName: 'PgvaultB' }));
    const assembly = app.synth();
    const all = new Map<string, CfnJson>();
    for (const s of [...a.stacks, ...b.stacks])
      all.set(s.stackName, assembly.getStackByName(s.stackName).template);
    const namesA = physicalNames(
      a.stacks.map((s) => s.stackName),
      all,
    );
    const namesB = physicalNames(
      b.stacks.map((s) => s.stackName),
      all,
    );
    // The walk does find the names that matter (it would miss nothing silently).
    const kinds = new Set([...namesA.keys()].map((k) => k.split(' ').slice(0, 2).join(' ')));
    for (const kind of [
      'AWS::CloudWatch::Alarm AlarmName',
      'AWS::ECS::TaskDefinition Family',
      'AWS::Scheduler::Schedule Name',
      'AWS::SSM::Parameter Name',
      'AWS::CloudWatch::Dashboard DashboardName',
      'AWS::Events::EventBus Name',
      'AWS::ECS::Service ServiceName',
    ])
      expect(kinds, kind).toContain(kind);
    const collisions = [...namesA.keys()].filter((k) => namesB.has(k)).map((k) => `${k} (${namesA.get(k)})`);
    expect(collisions).toEqual([]);
  }, 300_000);
});
