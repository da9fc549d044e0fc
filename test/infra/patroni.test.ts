import { Annotations, Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { type DeployConfigInput, parseDeployConfig } from '../../infra/config';
import { PATRONI_CA_WARNING, PATRONI_SLOT_WARNING } from '../../infra/constructs/tasks';
import type { FleetStack } from '../../infra/stack';
import {
  type CfnJson,
  containerEnvironment,
  expectDecryptsThroughSecretsManager,
  readsSecret,
  resourcesOf,
  type SynthResult,
  statementsOf,
  synthTemplate,
  taskDefinitions,
  testConfig,
} from './synth';

/**
 * Issue 13, "AWS deployment": the Fargate tasks of a Patroni cluster get what the core's topology
 * needs (PATRONI_URL with every node, BACKUP_FROM, REPLICA_MAX_LAG, and the REST API's secret by ARN,
 * read by pgvault at start: core/pg/startup-secrets.ts), their task roles may read exactly that
 * secret, the task security group reaches every node's REST API port, and the WAL receiver's slot
 * (a Patroni permanent slot) is a synth warning. A single-node cluster's template does not change.
 */

const PATRONI_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/orders-patroni-AbCdEf';
const PATRONI_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const URLS = 'https://10.0.1.10:8008, https://10.0.2.10:8008,https://10.0.3.10:8443';

/** The cluster's task definitions and their task and execution roles (logical ids). */
function definitions(fleet: FleetStack, cluster: string) {
  const sets = taskDefinitions(fleet, cluster);
  return {
    defs: sets.map((s) => s.def),
    taskRoles: sets.map((s) => s.taskRole),
    executionRoles: sets.map((s) => s.executionRole),
  };
}

/** The example's clusters: `main` (single-node) in fleet stack 1, `orders` (Patroni) in 2, with `orders` changed. */
function config(orders: Partial<DeployConfigInput['clusters'][number]> = {}) {
  const c = testConfig();
  return testConfig({
    clusters: c.clusters.map((cl) =>
      cl.name === 'orders' ? { ...cl, shard: 2, ...orders } : { ...cl, shard: 1 },
    ) as DeployConfigInput['clusters'],
  });
}

describe('a Patroni cluster on AWS', () => {
  let synth: SynthResult;
  let baseline: SynthResult;
  let orders: { stack: FleetStack; template: Template };
  beforeAll(() => {
    baseline = synthTemplate(config());
    synth = synthTemplate(
      config({
        patroniUrl: URLS,
        backupFrom: 'replica',
        replicaMaxLag: '32MB',
        patroniCredentialsSecretArn: PATRONI_SECRET,
        patroniCredentialsKmsKeyArn: PATRONI_KEY,
      }),
    );
    orders = synth.fleets.find((f) => f.stack.clusterNames.includes('orders'))!;
  }, 180_000);

  it('its backup, restore and WAL receive tasks get every node, BACKUP_FROM, REPLICA_MAX_LAG and the secret by ARN', () => {
    // Prepare
    const { defs } = definitions(orders.stack, 'orders');

    // Act
    const envs = defs.map((id) => containerEnvironment(orders.template, id));

    // Assess
    expect(defs).toHaveLength(3);
    for (const env of envs) {
      expect(env).toMatchObject({
        DEPLOYMENT_MODE: 'patroni',
        PATRONI_URL: URLS,
        BACKUP_FROM: 'replica',
        REPLICA_MAX_LAG: '32MB',
        PATRONI_SECRET_ARN: PATRONI_SECRET,
      });
      // The user, password and CA are read by pgvault at start, never set in the template.
      expect(Object.keys(env).filter((k) => /^PATRONI_(USERNAME|PASSWORD|CACERT)$/.test(k))).toEqual([]);
    }
  });

  it("each of its task roles may read exactly the Patroni secret and decrypt its key through Secrets Manager; execution roles and other clusters' roles may not", () => {
    // Prepare
    const ids = definitions(orders.stack, 'orders');
    const main = synth.fleets.find((f) => f.stack.clusterNames.includes('main'))!;
    const mainIds = definitions(main.stack, 'main');

    // Act
    const taskStatements = ids.taskRoles.map((id) => statementsOf(orders.template, id));

    // Assess
    for (const statements of taskStatements) {
      expect(statements).toContainEqual({
        Effect: 'Allow',
        Action: 'secretsmanager:GetSecretValue',
        Resource: PATRONI_SECRET,
      });
      expectDecryptsThroughSecretsManager(statements, PATRONI_KEY);
    }
    for (const id of ids.executionRoles)
      expect(JSON.stringify(statementsOf(orders.template, id))).not.toContain(PATRONI_SECRET);
    expect(JSON.stringify(main.template.toJSON())).not.toContain(PATRONI_SECRET);
    expect(mainIds.taskRoles.some((id) => readsSecret(statementsOf(main.template, id), PATRONI_SECRET))).toBe(
      false,
    );
  });

  it("the task security group reaches every node's REST API port (8008 and 8443) in the database network", () => {
    // Act
    const egress = resourcesOf(synth.template, 'AWS::EC2::SecurityGroup').flatMap(
      ([, sg]) => (sg.Properties.SecurityGroupEgress ?? []) as CfnJson[],
    );
    const ports = (e: CfnJson[]) =>
      e.filter((r) => r.CidrIp === '10.0.0.0/16').map((r) => r.FromPort as number);

    // Assess
    expect(ports(egress)).toEqual(expect.arrayContaining([5432, 8008, 8443]));
    const before = resourcesOf(baseline.template, 'AWS::EC2::SecurityGroup').flatMap(
      ([, sg]) => (sg.Properties.SecurityGroupEgress ?? []) as CfnJson[],
    );
    expect(ports(before)).not.toContain(8443);
  });

  it('its WAL receiver carries the permanent-slot warning; an https API without a CA secret warns that only public CAs are trusted', () => {
    // Prepare
    const withoutSecret = synthTemplate(config({ patroniUrl: URLS }));
    const stackOf = (s: SynthResult) => s.fleets.find((f) => f.stack.clusterNames.includes('orders'))!.stack;

    // Act
    const slot = Annotations.fromStack(orders.stack).findWarning(
      '*',
      Match.stringLikeRegexp('receives WAL from a Patroni cluster'),
    );
    const ca = Annotations.fromStack(stackOf(withoutSecret)).findWarning(
      '*',
      Match.stringLikeRegexp('trust only public CAs'),
    );

    // Assess
    expect(slot.map((w) => w.entry.data)).toEqual([
      `cluster orders receives WAL from a Patroni cluster: declare the slot as a Patroni permanent slot (dynamic configuration: slots: {pgvault: {type: physical}}), or wal receive exits 2 (infra/README.md "Patroni clusters") [ack: ${PATRONI_SLOT_WARNING}]`,
    ]);
    expect(ca.map((w) => w.entry.data)).toEqual([
      `cluster orders's Patroni REST API is https and has no patroniCredentialsSecretArn: the tasks trust only public CAs; put the CA's PEM as "cacert" in a secret and name it in patroniCredentialsSecretArn [ack: ${PATRONI_CA_WARNING}]`,
    ]);
    expect(
      Annotations.fromStack(orders.stack).findWarning('*', Match.stringLikeRegexp('trust only public CAs')),
    ).toEqual([]);
  });

  it("a single-node cluster's fleet stack is the same with or without the Patroni settings of another cluster", () => {
    // Prepare
    const mainOf = (s: SynthResult) => s.fleets.find((f) => f.stack.clusterNames.includes('main'))!;

    // Act
    const before = mainOf(baseline).template.toJSON();
    const after = mainOf(synth).template.toJSON();

    // Assess
    expect(after).toEqual(before);
    const env = containerEnvironment(
      mainOf(synth).template,
      definitions(mainOf(synth).stack, 'main').defs[0]!,
    );
    expect(Object.keys(env).filter((k) => /^(BACKUP_FROM|REPLICA_MAX_LAG|PATRONI_)/.test(k))).toEqual([]);
  });
});

describe('Patroni settings in the deployment config', () => {
  const base = JSON.parse(JSON.stringify(testConfig())) as { clusters: Record<string, unknown>[] };
  const orders = base.clusters.find((c) => c.name === 'orders')!;
  const main = base.clusters.find((c) => c.name === 'main')!;
  const parse = (cluster: Record<string, unknown>) =>
    parseDeployConfig({ ...base, clusters: [cluster] }, 'test.json');

  it.each([
    [
      'a URL list with a bad entry',
      { ...orders, patroniUrl: 'https://10.0.1.10:8008,10.0.2.10:8008' },
      'pgvault deploy config test.json: clusters[0].patroniUrl: entry 2 of 2 is not an http:// or https:// URL; list the REST API of every Patroni node, comma-separated (like https://10.0.0.1:8008,https://10.0.0.2:8008)',
    ],
    [
      'a password in a URL',
      { ...orders, patroniUrl: 'https://patroni:s3cret@10.0.1.10:8008' },
      'pgvault deploy config test.json: clusters[0].patroniUrl: entry 1 of 1 holds a user or password, which would be in the template; put them in patroniCredentialsSecretArn',
    ],
    [
      'an empty list',
      { ...orders, patroniUrl: ' , ' },
      'pgvault deploy config test.json: clusters[0].patroniUrl: empty; list the REST API of every Patroni node, comma-separated (like https://10.0.0.1:8008,https://10.0.0.2:8008)',
    ],
    [
      'backupFrom on a single-node cluster',
      { ...main, backupFrom: 'replica' },
      'pgvault deploy config test.json: clusters[0].backupFrom: applies only to mode patroni (this cluster is single-node); remove it',
    ],
    [
      'backupFrom not replica or leader',
      { ...orders, backupFrom: 'standby' },
      'pgvault deploy config test.json: clusters[0].backupFrom: Invalid option: expected one of "replica"|"leader"',
    ],
    [
      'a lag without a unit it knows',
      { ...orders, replicaMaxLag: '16 megs' },
      'pgvault deploy config test.json: clusters[0].replicaMaxLag: an amount of WAL like 16MB or a time like 30s',
    ],
    [
      'the secret as a name',
      { ...orders, patroniCredentialsSecretArn: 'pgvault/orders-patroni' },
      'pgvault deploy config test.json: clusters[0].patroniCredentialsSecretArn: the complete secret ARN (ending in -XXXXXX)',
    ],
    [
      'a key without its secret',
      { ...orders, patroniCredentialsKmsKeyArn: PATRONI_KEY },
      "pgvault deploy config test.json: clusters[0].patroniCredentialsKmsKeyArn: set patroniCredentialsSecretArn too (the key is that secret's)",
    ],
  ])('%s: one line naming the field', (_name, cluster, message) => {
    expect(() => parse(cluster)).toThrow(message);
  });

  it('accepts http and https lists, with spaces, and the lag in seconds', () => {
    // Act
    const c = parse({
      ...orders,
      patroniUrl: 'http://a:8008, https://b',
      replicaMaxLag: '30s',
      backupFrom: 'leader',
    });

    // Assess
    expect(c.clusters[0]).toMatchObject({ backupFrom: 'leader', replicaMaxLag: '30s' });
  });
});
