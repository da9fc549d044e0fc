import { App, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { expect } from 'vitest';
import {
  type DeployConfig,
  type DeployConfigInput,
  EXAMPLE_CONFIG_PATH,
  loadDeployConfig,
  parseDeployConfig,
} from '../../infra/config';
import {
  createDeployment,
  type FleetStack,
  type PgvaultDeployment,
  type PgvaultStack,
} from '../../infra/stack';

/** A test config: the example's with overrides (top-level keys replaced). */
export function testConfig(overrides: Partial<DeployConfigInput> = {}): DeployConfig {
  const example = loadDeployConfig(EXAMPLE_CONFIG_PATH);
  return parseDeployConfig({ ...JSON.parse(JSON.stringify(example)), ...overrides }, 'test');
}

export interface SynthOptions {
  /** Bundle the functions with esbuild and build the image asset (slow); default: skipped. */
  readonly bundle?: boolean;
  /** Run CDK's built-in CloudFormation validation (slow, wasm). @default false */
  readonly cfnValidation?: boolean;
  /** More CDK context (e.g. `@aws-cdk/core:stackResourceLimit`). */
  readonly context?: Readonly<Record<string, unknown>>;
}

/**
 * Builds the deployment (shared stack and fleet stacks) as `cdk synth` does, but fast: Lambda bundling
 * skipped (placeholder assets), a registry image instead of the Dockerfile asset, CDK's own template
 * validation off. `stack` is the shared stack.
 */
export function buildStack(
  config: DeployConfig,
  options: SynthOptions = {},
): { app: App; stack: PgvaultStack; deployment: PgvaultDeployment } {
  const app = new App({
    builtinCloudFormationValidation: options.cfnValidation ?? false,
    context: { ...(options.bundle ? {} : { 'aws:cdk:bundling-stacks': [] }), ...options.context },
  });
  const deployment = createDeployment(app, {
    config,
    env: { account: '123456789012', region: 'eu-west-1' },
    image: options.bundle ? undefined : ecs.ContainerImage.fromRegistry('public.ecr.aws/pgvault/test:latest'),
  });
  return { app, stack: deployment.shared, deployment };
}

export interface SynthResult {
  /** The shared stack and its template. */
  readonly stack: PgvaultStack;
  readonly template: Template;
  readonly deployment: PgvaultDeployment;
  /** The fleet stacks' templates, in order. */
  readonly fleets: ReadonlyArray<{ readonly stack: FleetStack; readonly template: Template }>;
}

export function synthTemplate(config: DeployConfig, options: SynthOptions = {}): SynthResult {
  const { stack, deployment } = buildStack(config, options);
  return {
    stack,
    template: Template.fromStack(stack),
    deployment,
    fleets: deployment.fleets.map((f) => ({ stack: f, template: Template.fromStack(f) })),
  };
}

/** Template JSON as the assertions read it (CloudFormation is untyped). */
// biome-ignore lint/suspicious/noExplicitAny: synthesized CloudFormation JSON has no static type
export type CfnJson = Record<string, any>;

/** Resources of one type as [logicalId, resource] pairs. */
export function resourcesOf(template: Template, type: string): Array<[string, { Properties: CfnJson }]> {
  return Object.entries(template.findResources(type)) as Array<[string, { Properties: CfnJson }]>;
}

/**
 * What a fleet stack holds for a value of the shared stack: a reference to its template parameter
 * (type AWS::SSM::Parameter::Value<String>) that reads the SSM parameter the shared stack writes with
 * that value (SharedValues; no CloudFormation exports between the stacks).
 */
export function sharedValueIn(shared: Template, fleet: Template, value: unknown): CfnJson {
  const parameter = Object.values(shared.toJSON().Resources as CfnJson).find(
    (r) => r.Type === 'AWS::SSM::Parameter' && JSON.stringify(r.Properties.Value) === JSON.stringify(value),
  );
  if (!parameter) throw new Error(`the shared stack writes no SSM parameter with ${JSON.stringify(value)}`);
  const name = parameter.Properties.Name as string;
  const entry = Object.entries((fleet.toJSON().Parameters ?? {}) as CfnJson).find(
    ([, p]) => p.Type === 'AWS::SSM::Parameter::Value<String>' && p.Default === name,
  );
  if (!entry) throw new Error(`the fleet stack does not read the SSM parameter ${name}`);
  return { Ref: entry[0] };
}

/** An IAM policy statement as the templates hold it. */
export type Statement = { Action: string | string[]; Resource: unknown; Effect: string; Condition?: unknown };

/** A value or a list of values as a list (IAM's Action and Resource take either). */
export const list = <T>(v: T | T[]): T[] => (Array.isArray(v) ? v : [v]);

/** The logical id of a construct's CloudFormation resource (its default child). */
export function logicalId(c: unknown): string {
  const child = (c as { node: { defaultChild?: unknown } }).node.defaultChild as Parameters<
    Stack['getLogicalId']
  >[0];
  return Stack.of(child).getLogicalId(child);
}

/** Every statement of the IAM policies attached to a role (by its logical id) in a template. */
export function statementsOf(template: Template, roleId: string): Statement[] {
  return resourcesOf(template, 'AWS::IAM::Policy')
    .filter(([, p]) => JSON.stringify(p.Properties.Roles).includes(`"${roleId}"`))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Statement[]);
}

/** Whether any statement allows secretsmanager:GetSecretValue on `arn`. */
export const readsSecret = (statements: Statement[], arn: string): boolean =>
  statements.some(
    (s) => list(s.Action).includes('secretsmanager:GetSecretValue') && list(s.Resource).includes(arn),
  );

/** Asserts the statement that lets a role decrypt a secret's KMS key, only through Secrets Manager. */
export function expectDecryptsThroughSecretsManager(statements: Statement[], keyArn: string): void {
  expect(statements).toContainEqual({
    Effect: 'Allow',
    Action: 'kms:Decrypt',
    Resource: keyArn,
    Condition: { StringEquals: { 'kms:ViaService': 'secretsmanager.eu-west-1.amazonaws.com' } },
  });
}

/** The environment of a task definition's (first) container, name → value. */
export function containerEnvironment(template: Template, defId: string): Record<string, unknown> {
  const def = template.toJSON().Resources[defId] as { Properties: CfnJson };
  const out: Record<string, unknown> = {};
  for (const e of def.Properties.ContainerDefinitions[0].Environment ?? []) out[e.Name] = e.Value;
  return out;
}

/**
 * A fleet stack's task definitions (each cluster's backup, restore and WAL receive, in that order;
 * only `cluster`'s if named) with their task and execution roles, as logical ids.
 */
export function taskDefinitions(
  fleet: FleetStack,
  cluster?: string,
): { def: string; taskRole: string; executionRole: string }[] {
  const sets =
    cluster === undefined ? [...fleet.tasks.byCluster.values()] : [fleet.tasks.byCluster.get(cluster)!];
  return sets.flatMap((set) =>
    [set.backup, set.restore, ...(set.walReceiver ? [set.walReceiver.taskDefinition] : [])].map((d) => ({
      def: logicalId(d),
      taskRole: logicalId(d.taskRole),
      executionRole: logicalId(d.obtainExecutionRole()),
    })),
  );
}
