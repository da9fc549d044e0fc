import { Stack } from 'aws-cdk-lib';
import { beforeAll, describe, expect, it } from 'vitest';
import type { DeployConfigInput } from '../../infra/config';
import type { FleetStack } from '../../infra/stack';
import { type CfnJson, type SynthResult, synthTemplate, testConfig } from './synth';

/**
 * Issue 15 on AWS: a cluster's incremental base backups (BASE_INCREMENTAL, INCREMENTAL_CHAIN_MAX) are
 * per-cluster keys of the deploy configuration (`baseIncremental`, `incrementalChainMax`, checked
 * against `postgresMajor`, `physicalBackups` and the image's client major), passed to that cluster's
 * Fargate tasks, and only to them.
 */

type Cluster = DeployConfigInput['clusters'][number];
type WithChild = { node: { defaultChild?: unknown } };
const logicalId = (c: unknown) => {
  const child = (c as WithChild).node.defaultChild as Parameters<Stack['getLogicalId']>[0];
  return Stack.of(child).getLogicalId(child);
};

/** The example's clusters: `main` in fleet stack 1, `orders` in 2, with `main` changed. */
function config(main: Partial<Cluster> = {}, top: Partial<DeployConfigInput> = {}) {
  const c = testConfig();
  return testConfig({
    ...top,
    clusters: c.clusters.map((cl) =>
      cl.name === 'main' ? { ...cl, shard: 1, ...main } : { ...cl, shard: 2 },
    ) as DeployConfigInput['clusters'],
  });
}

function environments(synth: SynthResult, cluster: string): Record<string, unknown>[] {
  const fleet = synth.fleets.find((f) => f.stack.clusterNames.includes(cluster))!;
  const set = (fleet.stack as FleetStack).tasks.byCluster.get(cluster)!;
  const defs = [set.backup, set.restore, ...(set.walReceiver ? [set.walReceiver.taskDefinition] : [])];
  return defs.map((d) => {
    const def = fleet.template.toJSON().Resources[logicalId(d)] as { Properties: CfnJson };
    const out: Record<string, unknown> = {};
    for (const e of def.Properties.ContainerDefinitions[0].Environment ?? []) out[e.Name] = e.Value;
    return out;
  });
}

describe('incremental base backups in the deploy configuration', () => {
  it('are refused, one line naming the cluster and key, where they cannot be taken', () => {
    const cases: Array<[Partial<Cluster>, Partial<DeployConfigInput>, RegExp]> = [
      [
        { baseIncremental: true, postgresMajor: 15 },
        {},
        /^pgvault deploy config test: clusters\[0\]\.baseIncremental: incremental base backups need PostgreSQL 17 or newer and this cluster's postgresMajor is 15; remove baseIncremental/,
      ],
      [
        { baseIncremental: true },
        {},
        /^pgvault deploy config test: clusters\[0\]\.baseIncremental: needs PostgreSQL 17 or newer: set postgresMajor to the cluster's server major/,
      ],
      [
        { baseIncremental: true, postgresMajor: 17 },
        { physicalBackups: false },
        /^pgvault deploy config test: clusters\[0\]\.baseIncremental: incrementals are of the scheduled base backups, and physicalBackups is false/,
      ],
      [
        { baseIncremental: true, postgresMajor: 17 },
        { postgresClientVersion: 16, postgresServerVersions: [16] },
        /^pgvault deploy config test: clusters\[0\]\.baseIncremental: the image's pg_basebackup is PostgreSQL 16 \(postgresClientVersion\)/,
      ],
      [
        { incrementalChainMax: 4 },
        {},
        /^pgvault deploy config test: clusters\[0\]\.incrementalChainMax: applies only with baseIncremental: true/,
      ],
      [
        { baseIncremental: true, postgresMajor: 17, incrementalChainMax: 0 },
        {},
        /^pgvault deploy config test: clusters\[0\]\.incrementalChainMax: /,
      ],
    ];
    for (const [main, top, message] of cases) {
      let thrown: unknown;
      try {
        config(main, top);
      } catch (err) {
        thrown = err;
      }
      expect(thrown, JSON.stringify(main)).toBeInstanceOf(Error);
      const text = (thrown as Error).message;
      expect(text, JSON.stringify(main)).toMatch(message);
      expect(text.split('\n')).toHaveLength(1);
    }
  });

  describe('a cluster with baseIncremental', () => {
    let synth: SynthResult;
    beforeAll(() => {
      synth = synthTemplate(config({ baseIncremental: true, postgresMajor: 17, incrementalChainMax: 4 }));
    }, 180_000);

    it("its tasks get BASE_INCREMENTAL and INCREMENTAL_CHAIN_MAX; another cluster's tasks get neither", () => {
      const main = environments(synth, 'main');
      expect(main.length).toBeGreaterThanOrEqual(2);
      for (const env of main) {
        expect(env).toMatchObject({
          CLUSTER_NAME: 'main',
          BASE_INCREMENTAL: 'true',
          INCREMENTAL_CHAIN_MAX: '4',
        });
      }
      for (const env of environments(synth, 'orders')) {
        expect(env.CLUSTER_NAME).toBe('orders');
        expect(env).not.toHaveProperty('BASE_INCREMENTAL');
        expect(env).not.toHaveProperty('INCREMENTAL_CHAIN_MAX');
      }
    });

    it('without incrementalChainMax the core default applies (no INCREMENTAL_CHAIN_MAX in the tasks)', () => {
      const other = synthTemplate(config({ baseIncremental: true, postgresMajor: 18 }));
      for (const env of environments(other, 'main')) {
        expect(env.BASE_INCREMENTAL).toBe('true');
        expect(env).not.toHaveProperty('INCREMENTAL_CHAIN_MAX');
      }
    }, 180_000);
  });
});
