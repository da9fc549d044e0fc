import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Stack } from 'aws-cdk-lib';
import { Annotations, Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseDeployConfig } from '../../infra/config';
import type { FleetStack } from '../../infra/stack';
import { type CfnJson, resourcesOf, type SynthResult, synthTemplate, testConfig } from './synth';

/**
 * Issue 12, "Restores and drills never touch production": restore credentials are separate from backup
 * credentials (the backup user needs no write rights), and a restore into another server reads that
 * server's credentials secret itself, with a task role that may read only the cluster's listed
 * restore target secrets.
 */

const BACKUP_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/main-AbCdEf';
const RESTORE_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/main-restore-MnOpQr';
const TARGET_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/restore-db-StUvWx';
const SECOND_TARGET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:scratch/db-QwErTy';
const TARGET_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const ORDERS_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/orders-GhIjKl';

type Statement = { Action: string | string[]; Resource: unknown; Effect: string; Condition?: unknown };
const list = <T>(v: T | T[]) => (Array.isArray(v) ? v : [v]);

const logicalId = (c: { node: { defaultChild?: unknown } }) => {
  const child = c.node.defaultChild as Parameters<Stack['getLogicalId']>[0];
  return Stack.of(child).getLogicalId(child);
};

function statementsOf(template: Template, roleId: string): Statement[] {
  return resourcesOf(template, 'AWS::IAM::Policy')
    .filter(([, p]) => JSON.stringify(p.Properties.Roles).includes(`"${roleId}"`))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Statement[]);
}

/** The container's `secrets` of a task definition, name → ValueFrom. */
function containerSecrets(template: Template, defId: string): Record<string, unknown> {
  const def = template.toJSON().Resources[defId] as { Properties: CfnJson };
  const out: Record<string, unknown> = {};
  for (const s of def.Properties.ContainerDefinitions[0].Secrets ?? []) out[s.Name] = s.ValueFrom;
  return out;
}

function roles(fleet: FleetStack, cluster: string) {
  const set = fleet.tasks.byCluster.get(cluster)!;
  return {
    backupDef: logicalId(set.backup),
    restoreDef: logicalId(set.restore),
    backupTask: logicalId(set.backup.taskRole as unknown as { node: { defaultChild?: unknown } }),
    restoreTask: logicalId(set.restore.taskRole as unknown as { node: { defaultChild?: unknown } }),
    restoreExecution: logicalId(
      set.restore.obtainExecutionRole() as unknown as { node: { defaultChild?: unknown } },
    ),
    walTask: set.walReceiver
      ? logicalId(set.walReceiver.taskDefinition.taskRole as unknown as { node: { defaultChild?: unknown } })
      : undefined,
  };
}

const secretActions = (statements: Statement[]) =>
  statements.filter((s) => list(s.Action).some((a) => a.startsWith('secretsmanager:')));

describe('restore credentials and restore target secrets (example config)', () => {
  let synth: SynthResult;
  let fleet: { stack: FleetStack; template: Template };
  beforeAll(() => {
    const c = testConfig();
    synth = synthTemplate(
      testConfig({
        clusters: c.clusters.map((cl) =>
          cl.name === 'main'
            ? {
                ...cl,
                restoreTargets: [
                  ...cl.restoreTargets,
                  { credentialsSecretArn: SECOND_TARGET, credentialsKmsKeyArn: TARGET_KEY },
                ],
              }
            : cl,
        ),
      }),
    );
    fleet = synth.fleets[0]!;
  }, 120_000);

  it('the restore task definition signs in with the restore secret, the backup task with the backup secret', () => {
    // Prepare
    const ids = roles(fleet.stack, 'main');

    // Act
    const backup = containerSecrets(fleet.template, ids.backupDef);
    const restore = containerSecrets(fleet.template, ids.restoreDef);

    // Assess
    expect(backup.PGUSER).toBe(`${BACKUP_SECRET}:username::`);
    expect(backup.PGPASSWORD).toBe(`${BACKUP_SECRET}:password::`);
    expect(restore.PGUSER).toBe(`${RESTORE_SECRET}:username::`);
    expect(restore.PGPASSWORD).toBe(`${RESTORE_SECRET}:password::`);
    expect(restore.ENCRYPTION_KEY).toEqual(backup.ENCRYPTION_KEY);
    // The restore execution role fetches the restore secret and not the backup user's.
    const execution = JSON.stringify(statementsOf(fleet.template, ids.restoreExecution));
    expect(execution).toContain(RESTORE_SECRET);
    expect(execution).not.toContain(BACKUP_SECRET);
  });

  it("the restore task role may read exactly the cluster's restore target secrets, nothing else", () => {
    // Prepare
    const ids = roles(fleet.stack, 'main');

    // Act
    const statements = secretActions(statementsOf(fleet.template, ids.restoreTask));

    // Assess: one statement, GetSecretValue only, on the listed complete ARNs (no wildcard).
    expect(statements).toEqual([
      { Effect: 'Allow', Action: 'secretsmanager:GetSecretValue', Resource: [TARGET_SECRET, SECOND_TARGET] },
    ]);
    // A target secret with its own key: kms:Decrypt on it, through Secrets Manager only.
    expect(statementsOf(fleet.template, ids.restoreTask)).toContainEqual({
      Effect: 'Allow',
      Action: 'kms:Decrypt',
      Resource: TARGET_KEY,
      Condition: { StringEquals: { 'kms:ViaService': 'secretsmanager.eu-west-1.amazonaws.com' } },
    });
  });

  it('task roles of clusters without restore targets, and every backup and WAL task role, read no secret', () => {
    // Prepare
    const main = roles(fleet.stack, 'main');
    const orders = roles(fleet.stack, 'orders');

    // Assess
    for (const roleId of [main.backupTask, orders.backupTask, orders.restoreTask, orders.walTask!]) {
      expect(secretActions(statementsOf(fleet.template, roleId)), roleId).toEqual([]);
    }
  });

  it("ships each cluster's restore target secrets to the restore function (its allow-list)", () => {
    // Act
    const clusters = JSON.parse(
      readFileSync(join(synth.stack.functions.clusterLayerFolder, 'pgvault', 'clusters.json'), 'utf8'),
    ) as Array<{ name: string; restoreTargetSecretArns?: string[] }>;

    // Assess
    expect(clusters.find((c) => c.name === 'main')?.restoreTargetSecretArns).toEqual([
      TARGET_SECRET,
      SECOND_TARGET,
    ]);
    expect(clusters.find((c) => c.name === 'orders')).not.toHaveProperty('restoreTargetSecretArns');
  });

  it('synthesizes without the restore-credentials warning when every cluster has its own', () => {
    // Assess
    Annotations.fromStack(fleet.stack).hasNoWarning(
      '*',
      Match.stringLikeRegexp('restoreCredentialsSecretArn'),
    );
  });
});

describe('a cluster without restoreCredentialsSecretArn', () => {
  it("falls back to the backup secret and says so in synth's warnings", () => {
    // Prepare
    const c = testConfig();
    const config = testConfig({
      clusters: c.clusters.map((cl) =>
        cl.name === 'orders' ? { ...cl, restoreCredentialsSecretArn: undefined } : cl,
      ),
    });

    // Act
    const { fleets } = synthTemplate(config);
    const fleet = fleets[0]!;

    // Assess
    const ids = roles(fleet.stack, 'orders');
    expect(containerSecrets(fleet.template, ids.restoreDef).PGUSER).toBe(`${ORDERS_SECRET}:username::`);
    const warnings = Annotations.fromStack(fleet.stack).findWarning(
      '*',
      Match.stringLikeRegexp('restoreCredentialsSecretArn'),
    );
    expect(warnings.map((w) => w.entry.data)).toEqual([
      expect.stringContaining(
        'cluster orders has no restoreCredentialsSecretArn: its restore task signs in with the backup credentials (credentialsSecretArn)',
      ),
    ]);
  }, 120_000);
});

describe('deploy config: restore credentials and targets', () => {
  const base = () => JSON.parse(JSON.stringify(testConfig())) as CfnJson;
  it.each([
    [
      (c: CfnJson) => {
        c.clusters[0].restoreTargets = [
          { credentialsSecretArn: 'arn:aws:secretsmanager:eu-west-1:1:secret:x' },
        ];
      },
      'pgvault deploy config test: clusters[0].restoreTargets[0].credentialsSecretArn: the complete secret ARN (ending in -XXXXXX)',
    ],
    [
      (c: CfnJson) => {
        c.clusters[0].restoreTargets = [
          { credentialsSecretArn: TARGET_SECRET },
          { credentialsSecretArn: TARGET_SECRET },
        ];
      },
      `pgvault deploy config test: clusters[0].restoreTargets[1].credentialsSecretArn: ${TARGET_SECRET} is listed twice`,
    ],
    [
      (c: CfnJson) => {
        c.clusters[1].restoreCredentialsSecretArn = undefined;
        c.clusters[1].restoreCredentialsKmsKeyArn = TARGET_KEY;
      },
      "pgvault deploy config test: clusters[1].restoreCredentialsKmsKeyArn: set restoreCredentialsSecretArn too (the key is that secret's)",
    ],
    [
      (c: CfnJson) => {
        c.clusters[0].restoreCredentialsSecretArn = 'pgvault/main-restore';
      },
      'pgvault deploy config test: clusters[0].restoreCredentialsSecretArn: the complete secret ARN (ending in -XXXXXX)',
    ],
  ])('refuses a bad restore setting with one line naming the field (%#)', (change, message) => {
    // Prepare
    const input = base();
    change(input);

    // Act
    const err = (() => {
      try {
        parseDeployConfig(input, 'test');
      } catch (e) {
        return e as Error;
      }
    })();

    // Assess
    expect(err?.message).toBe(message);
  });
});
