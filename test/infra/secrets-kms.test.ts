import { App, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { beforeAll, describe, expect, it } from 'vitest';
import { createDeployment, type FleetStack, type PgvaultStack } from '../../infra/stack';
import { type CfnJson, resourcesOf, synthTemplate, testConfig } from './synth';

// The passphrase secret is encrypted with the vault key, and a cluster's credentials secret may have
// its own key (credentialsKmsKeyArn). ECS fetches container `secrets` with the execution role and
// Secrets Manager decrypts them on its behalf: without kms:Decrypt on the key (via Secrets Manager)
// no task starts (ResourceInitializationError). The Lambdas read the passphrase at run time with their
// own roles (functions/env.ts); task code reads no secret but a restore target's (restore-credentials.test.ts).

const CREDENTIALS_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';

type Statement = { Action: string | string[]; Resource: unknown; Effect: string; Condition?: unknown };
const actionsOf = (s: Statement) => (Array.isArray(s.Action) ? s.Action : [s.Action]);
const resourcesOfStatement = (s: Statement) => (Array.isArray(s.Resource) ? s.Resource : [s.Resource]);
const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

function statementsOf(templates: Template[], roleLogicalId: string): Statement[] {
  return templates
    .flatMap((t) => resourcesOf(t, 'AWS::IAM::Policy'))
    .filter(([, p]) => JSON.stringify(p.Properties.Roles).includes(`"${roleLogicalId}"`))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Statement[]);
}

/** Does some Allow statement grant kms:Decrypt on `key`, with exactly `condition` (undefined: none)? */
function allowsDecrypt(statements: Statement[], key: unknown, condition: unknown): boolean {
  return statements.some(
    (s) =>
      s.Effect === 'Allow' &&
      actionsOf(s).some((a) => a === 'kms:Decrypt' || a === 'kms:*') &&
      resourcesOfStatement(s).some((r) => same(r, key)) &&
      same(s.Condition, condition),
  );
}

const logicalId = (c: { node: { defaultChild?: unknown } }) => {
  const child = c.node.defaultChild as Parameters<PgvaultStack['getLogicalId']>[0];
  return Stack.of(child).getLogicalId(child);
};
const viaSecretsManager = (region: unknown) => ({ StringEquals: { 'kms:ViaService': region } });
const REGION_JOIN = { 'Fn::Join': ['', ['secretsmanager.', { Ref: 'AWS::Region' }, '.amazonaws.com']] };

/** The example config, "main"'s credentials secret encrypted with its own key. */
function config() {
  const c = testConfig();
  return testConfig({
    clusters: c.clusters.map((cl) =>
      cl.name === 'main' ? { ...cl, credentialsKmsKeyArn: CREDENTIALS_KEY } : cl,
    ),
  });
}

/** Every task definition's execution role in a fleet stack, with the cluster it belongs to. */
function executionRoles(fleet: FleetStack): Array<{ cluster: string; what: string; roleId: string }> {
  const out: Array<{ cluster: string; what: string; roleId: string }> = [];
  for (const [cluster, set] of fleet.tasks.byCluster) {
    out.push({ cluster, what: 'backup', roleId: logicalId(set.backup.obtainExecutionRole()) });
    out.push({ cluster, what: 'restore', roleId: logicalId(set.restore.obtainExecutionRole()) });
    if (set.walReceiver)
      out.push({
        cluster,
        what: 'wal receive',
        roleId: logicalId(set.walReceiver.taskDefinition.obtainExecutionRole()),
      });
  }
  return out;
}

describe('secrets encrypted with customer-managed keys can be read (config with a region)', () => {
  let template: Template;
  let stack: PgvaultStack;
  let fleetTemplate: Template;
  let fleet: FleetStack;
  let vaultKeyImport: CfnJson;
  beforeAll(() => {
    const result = synthTemplate(config());
    ({ template, stack } = result);
    ({ template: fleetTemplate, stack: fleet } = result.fleets[0]!);
    const keyArn = { 'Fn::GetAtt': [logicalId(stack.vault.key), 'Arn'] };
    const outputs = Object.values(template.toJSON().Outputs as Record<string, CfnJson>);
    const output = outputs.find((o) => o.Export && same(o.Value, keyArn));
    expect(output, 'an export of the vault key ARN').toBeDefined();
    vaultKeyImport = { 'Fn::ImportValue': output!.Export.Name };
  }, 120_000);

  it('every ECS execution role may decrypt the passphrase (vault key) via Secrets Manager only', () => {
    const roles = executionRoles(fleet);
    // Every task definition of the fleet stack is covered (backup, restore for both, wal receive for orders).
    expect(roles).toHaveLength(resourcesOf(fleetTemplate, 'AWS::ECS::TaskDefinition').length);
    expect(roles).toHaveLength(5);
    for (const { cluster, what, roleId } of roles) {
      const statements = statementsOf([fleetTemplate], roleId);
      // It reads the passphrase secret (as before) ...
      expect(JSON.stringify(statements), `${what} ${cluster}`).toContain('secretsmanager:GetSecretValue');
      // ... and may now decrypt it, through Secrets Manager in the stack's region only.
      expect(
        allowsDecrypt(
          statements,
          vaultKeyImport,
          viaSecretsManager('secretsmanager.eu-west-1.amazonaws.com'),
        ),
        `${what} execution role of ${cluster}: kms:Decrypt on the vault key via secretsmanager.eu-west-1`,
      ).toBe(true);
      // Never an unconditioned decrypt on the vault key: the execution role reads no backup object.
      expect(allowsDecrypt(statements, vaultKeyImport, undefined), `${what} ${cluster}`).toBe(false);
    }
  });

  it('execution roles of a cluster with credentialsKmsKeyArn may decrypt with that key, the others not', () => {
    for (const { cluster, what, roleId } of executionRoles(fleet)) {
      const statements = statementsOf([fleetTemplate], roleId);
      const allowed = allowsDecrypt(
        statements,
        CREDENTIALS_KEY,
        viaSecretsManager('secretsmanager.eu-west-1.amazonaws.com'),
      );
      // Restores sign in with their own secret (restoreCredentialsSecretArn), not the backup's.
      const readsIt = cluster === 'main' && what !== 'restore';
      expect(allowed, `${what} execution role of ${cluster}`).toBe(readsIt);
      if (!readsIt) expect(JSON.stringify(statements)).not.toContain(CREDENTIALS_KEY);
    }
  });

  it("the vault key's policy lets IAM policies grant its use and denies no decrypt", () => {
    const key = template.toJSON().Resources[logicalId(stack.vault.key)].Properties.KeyPolicy;
    const statements = key.Statement as Array<Statement & { Principal?: unknown }>;
    // The account root holds kms:* without conditions: identity policies in the account are honoured.
    expect(
      statements.some(
        (s) =>
          s.Effect === 'Allow' &&
          actionsOf(s).includes('kms:*') &&
          s.Condition === undefined &&
          JSON.stringify(s.Principal).includes(':iam::123456789012:root'),
      ),
    ).toBe(true);
    for (const s of statements.filter((x) => x.Effect === 'Deny')) {
      expect(actionsOf(s).some((a) => a === 'kms:Decrypt' || a === 'kms:*' || a === 'kms:Decrypt*')).toBe(
        false,
      );
    }
  });

  it('the functions that read the passphrase at run time may decrypt it; dispatch reads no secret', () => {
    const keyArn = { 'Fn::GetAtt': [logicalId(stack.vault.key), 'Arn'] };
    for (const name of ['retention', 'verify', 'report', 'restore'] as const) {
      const roleId = logicalId(
        stack.functions.functions[name].role as unknown as { node: { defaultChild?: unknown } },
      );
      const statements = statementsOf([template], roleId);
      expect(JSON.stringify(statements), name).toContain('secretsmanager:GetSecretValue');
      expect(
        allowsDecrypt(statements, keyArn, undefined) ||
          allowsDecrypt(statements, keyArn, viaSecretsManager('secretsmanager.eu-west-1.amazonaws.com')),
        `${name} function: kms:Decrypt on the vault key`,
      ).toBe(true);
    }
    const dispatch = logicalId(
      stack.functions.functions.dispatch.role as unknown as { node: { defaultChild?: unknown } },
    );
    const text = JSON.stringify(statementsOf([template], dispatch));
    expect(text).not.toContain('secretsmanager:');
    expect(text).not.toContain(logicalId(stack.vault.key));
  });
});

describe('secrets encrypted with customer-managed keys can be read (environment-agnostic stacks)', () => {
  it('the execution roles name the region as CloudFormation resolves it', () => {
    const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
    const deployment = createDeployment(app, {
      config: config(),
      image: ecs.ContainerImage.fromRegistry('public.ecr.aws/pgvault/test:latest'),
    });
    const shared = Template.fromStack(deployment.shared);
    const fleet = deployment.fleets[0]!;
    const fleetTemplate = Template.fromStack(fleet);
    const keyArn = { 'Fn::GetAtt': [logicalId(deployment.shared.vault.key), 'Arn'] };
    const outputs = Object.values(shared.toJSON().Outputs as Record<string, CfnJson>);
    const output = outputs.find((o) => o.Export && same(o.Value, keyArn))!;
    const vaultKeyImport = { 'Fn::ImportValue': output.Export.Name };
    for (const { cluster, what, roleId } of executionRoles(fleet)) {
      const statements = statementsOf([fleetTemplate], roleId);
      expect(
        allowsDecrypt(statements, vaultKeyImport, viaSecretsManager(REGION_JOIN)),
        `${what} ${cluster}`,
      ).toBe(true);
      // The credentials secret's region is in its ARN (a key decrypts only secrets of its own region).
      if (cluster === 'main' && what !== 'restore')
        expect(
          allowsDecrypt(
            statements,
            CREDENTIALS_KEY,
            viaSecretsManager('secretsmanager.eu-west-1.amazonaws.com'),
          ),
        ).toBe(true);
    }
  }, 120_000);
});
