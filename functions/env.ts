import { readFileSync } from 'node:fs';
import { ECSClient, RunTaskCommand, type RunTaskCommandInput } from '@aws-sdk/client-ecs';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { z } from 'zod';
import { commandFailedAlert } from '../core/alert/failure';
import { sendAlerts } from '../core/alert/notify';
import { type Config, DEPLOYMENT_MODES, loadConfig } from '../core/config';
import { ConfigError, errorMessage, PgVaultError, UsageError } from '../core/errors';
import {
  type LifecycleEvent,
  type LifecycleKind,
  type LifecycleRecord,
  type Metric,
  recordLifecycle,
} from '../core/events';
import { applyStartupSecrets } from '../core/pg/startup-secrets';
import type { Reporter } from '../core/vault';

/**
 * What every Lambda handler shares: the deployment's settings from the function's environment (the
 * clusters, the ECS task to start, the key's secret), payload validation, the per-cluster Config
 * (through core/config.ts loadConfig, the one config reader), starting a pgvault task on Fargate,
 * and recording outcomes (lifecycle event, metrics, failure alert). Handlers stay a page long.
 */

// ---------------------------------------------------------------------------------------------
// Errors

/** The event a handler was invoked with is not one it accepts; nothing was started or changed. */
export class InvalidPayloadError extends UsageError {}

/** ECS refused to start a task (capacity, a wrong task definition or network, permissions). */
export class TaskStartError extends PgVaultError {}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v = input;
  for (const key of path)
    v = v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[key] : undefined;
  return v;
}

/** One clear line naming the field, from zod's first issue. */
function payloadMessage(error: z.ZodError, input: unknown): string {
  const issue = error.issues[0]!;
  if (issue.code === 'unrecognized_keys') {
    const where = issue.path.length > 0 ? ` in "${issue.path.join('.')}"` : '';
    return `invalid payload: unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}${where}`;
  }
  const field = issue.path.length > 0 ? `"${issue.path.join('.')}"` : 'the payload';
  if (issue.code === 'invalid_type' && valueAt(input, issue.path) === undefined)
    return `invalid payload: ${field} is required`;
  return `invalid payload: ${field}: ${issue.message}`;
}

/** Validates an event against a schema (a JSON string is parsed first); throws InvalidPayloadError. */
export function parsePayload<T extends z.ZodType>(schema: T, event: unknown): z.infer<T> {
  let input = event;
  if (typeof event === 'string') {
    try {
      input = JSON.parse(event);
    } catch {
      throw new InvalidPayloadError('invalid payload: not a JSON object');
    }
  }
  const parsed = schema.safeParse(input);
  if (!parsed.success) throw new InvalidPayloadError(payloadMessage(parsed.error, input));
  return parsed.data;
}

/** A cluster name, as CLUSTER_NAME allows it. */
export const clusterNameSchema = z
  .string({ error: 'use the cluster name as a string' })
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'not a cluster name (letters, digits, ".", "_", "-")');

// ---------------------------------------------------------------------------------------------
// Deployment settings

/** What RunTask takes as taskDefinition: a family, family:revision, or a task definition ARN. */
const taskDefinitionSchema = z
  .string()
  .regex(/^(arn:[^\s]+|[A-Za-z0-9_-]{1,255}(:[0-9]+)?)$/, 'a task definition family, family:revision or ARN');

const clusterEntrySchema = z.object({
  name: clusterNameSchema,
  mode: z.enum(DEPLOYMENT_MODES),
  host: z.string().min(1),
  port: z.coerce.number().int().min(1).max(65535),
  database: z.string().min(1),
  credentialsSecretArn: z.string().startsWith('arn:'),
  patroniUrl: z.string().min(1).optional(),
  citusCoordinator: z.string().min(1).optional(),
  /**
   * This cluster's backup task definition (a task definition per cluster carries its secrets); the
   * stack writes the family, so RunTask starts its newest revision. Wins over TASK_DEFINITION_ARN.
   */
  taskDefinition: taskDefinitionSchema.optional(),
  /** This cluster's restore task definition; wins over RESTORE_TASK_DEFINITION_ARN. */
  restoreTaskDefinition: taskDefinitionSchema.optional(),
  /**
   * The secrets a restore payload may name as its target's credentials (`restoreTargets` of the
   * deployment config): the restore task role may read these and no other.
   */
  restoreTargetSecretArns: z.array(z.string().startsWith('arn:')).optional(),
  /** Earlier name of taskDefinition (an ARN), still accepted in PGVAULT_CLUSTERS. */
  taskDefinitionArn: z.string().startsWith('arn:').optional(),
  /** Earlier name of restoreTaskDefinition. */
  restoreTaskDefinitionArn: z.string().startsWith('arn:').optional(),
});

export type ClusterEntry = z.infer<typeof clusterEntrySchema>;

/**
 * Where the stack puts the cluster list: a file in a Lambda layer (layers are unpacked under /opt),
 * so the list does not count against Lambda's 4 KB of environment and the fleet can grow.
 */
export const DEFAULT_CLUSTERS_FILE = '/opt/pgvault/clusters.json';

/** Per container: the cluster file is read and checked once, at the first invocation. */
let cachedClusterFile: { path: string; clusters: ClusterEntry[] } | undefined;

/** Reads the cluster file; a missing or unreadable file is one line naming it. */
function readClusterFile(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? errorMessage(err);
    throw new ConfigError(
      `the cluster list ${path} cannot be read (${code}) and PGVAULT_CLUSTERS is not set; the stack ships the list in the functions' cluster layer: deploy the stack again`,
    );
  }
}

function parseClusterList(text: string, source: string): ClusterEntry[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${source} is not JSON (${errorMessage(err)}); the stack writes it`);
  }
  const parsed = z.array(clusterEntrySchema).min(1).safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConfigError(
      `${source} is not allowed: ${issue.path.length > 0 ? `[${issue.path.join('.')}] ` : ''}${issue.message}`,
    );
  }
  return parsed.data;
}

/**
 * The clusters this deployment protects: PGVAULT_CLUSTERS (a JSON list) when set, else the file
 * PGVAULT_CLUSTERS_FILE (default /opt/pgvault/clusters.json, the stack's cluster layer), read once per
 * container. Other fields of an entry are ignored.
 */
export function deploymentClusters(env: NodeJS.ProcessEnv = process.env): ClusterEntry[] {
  const inline = env.PGVAULT_CLUSTERS;
  if (inline !== undefined && inline.trim() !== '') return parseClusterList(inline, 'PGVAULT_CLUSTERS');
  const path = env.PGVAULT_CLUSTERS_FILE?.trim() || DEFAULT_CLUSTERS_FILE;
  if (cachedClusterFile?.path === path) return cachedClusterFile.clusters;
  const clusters = parseClusterList(readClusterFile(path), path);
  cachedClusterFile = { path, clusters };
  return clusters;
}

/** For tests: forget the cluster file read by an earlier invocation. */
export function forgetCachedClusters(): void {
  cachedClusterFile = undefined;
}

/** Names an unknown cluster's alternatives in one line, however large the fleet. */
const LISTED_NAMES = 20;

/** The cluster a payload names; an unknown name lists the known ones (the first 20 of a large fleet). */
export function findCluster(name: string, env: NodeJS.ProcessEnv = process.env): ClusterEntry {
  const clusters = deploymentClusters(env);
  const found = clusters.find((c) => c.name === name);
  if (found === undefined) {
    const names = clusters.map((c) => c.name);
    const listed =
      names.length <= LISTED_NAMES
        ? names.join(', ')
        : `${names.slice(0, LISTED_NAMES).join(', ')} and ${names.length - LISTED_NAMES} more`;
    throw new InvalidPayloadError(
      `invalid payload: "cluster": ${name} is not a cluster of this deployment; use one of ${listed}`,
    );
  }
  return found;
}

export interface TaskSettings {
  readonly ecsClusterArn: string;
  readonly taskDefinitionArn: string;
  readonly restoreTaskDefinitionArn: string;
  readonly containerName: string;
  readonly subnets: string[];
  readonly securityGroups: string[];
  readonly assignPublicIp: boolean;
}

function required(env: NodeJS.ProcessEnv, key: string): string {
  const v = env[key]?.trim();
  if (v === undefined || v === '') throw new ConfigError(`${key} is not set; the stack sets it`);
  return v;
}

function idList(env: NodeJS.ProcessEnv, key: string): string[] {
  const ids = required(env, key)
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (ids.length === 0) throw new ConfigError(`${key} is empty; list the ids separated by commas`);
  return ids;
}

/** What starting a Fargate task needs (read only by the functions that start tasks). */
export function taskSettings(env: NodeJS.ProcessEnv = process.env): TaskSettings {
  const publicIp = (env.ASSIGN_PUBLIC_IP ?? 'false').trim().toLowerCase();
  if (publicIp !== 'true' && publicIp !== 'false')
    throw new ConfigError(`ASSIGN_PUBLIC_IP=${env.ASSIGN_PUBLIC_IP} is not allowed; use true or false`);
  return {
    ecsClusterArn: required(env, 'ECS_CLUSTER_ARN'),
    taskDefinitionArn: required(env, 'TASK_DEFINITION_ARN'),
    restoreTaskDefinitionArn: required(env, 'RESTORE_TASK_DEFINITION_ARN'),
    containerName: required(env, 'TASK_CONTAINER_NAME'),
    subnets: idList(env, 'SUBNET_IDS'),
    securityGroups: idList(env, 'SECURITY_GROUP_IDS'),
    assignPublicIp: publicIp === 'true',
  };
}

// ---------------------------------------------------------------------------------------------
// The encryption key and the Config

const secretsManagerClients = new Map<string, SecretsManagerClient>();
/** Per container: one GetSecretValue per cold start, not per invocation. */
let cachedPassphrase: { arn: string; value: Promise<string> } | undefined;

function regionOfArn(arn: string): string | undefined {
  return arn.split(':')[3] || undefined;
}

async function fetchPassphrase(arn: string): Promise<string> {
  const region = regionOfArn(arn) ?? '';
  let sm = secretsManagerClients.get(region);
  if (sm === undefined) {
    sm = new SecretsManagerClient(region === '' ? {} : { region });
    secretsManagerClients.set(region, sm);
  }
  let secret: string | undefined;
  try {
    secret = (await sm.send(new GetSecretValueCommand({ SecretId: arn }))).SecretString;
  } catch (err) {
    throw new ConfigError(
      `the encryption key cannot be read from ${arn} (${(err as Error).name}: ${errorMessage(err)}); check the secret and the function's permission to read it`,
    );
  }
  if (secret === undefined || secret === '')
    throw new ConfigError(`the secret ${arn} holds no string; store the passphrase as its SecretString`);
  // A secret created as JSON ({"passphrase": "..."}) is accepted as well as a plain string.
  if (secret.startsWith('{')) {
    try {
      const value = (JSON.parse(secret) as { passphrase?: unknown }).passphrase;
      if (typeof value === 'string' && value !== '') return value;
    } catch {
      // Not JSON after all: the whole string is the passphrase.
    }
  }
  return secret;
}

/** The passphrase from ENCRYPTION_KEY_SECRET_ARN, cached per container. Never logged. */
export function encryptionPassphrase(arn: string): Promise<string> {
  if (cachedPassphrase?.arn !== arn) {
    const value = fetchPassphrase(arn);
    cachedPassphrase = { arn, value };
    // A failed read is not cached: the next invocation asks again.
    value.catch(() => {
      if (cachedPassphrase?.value === value) cachedPassphrase = undefined;
    });
  }
  return cachedPassphrase.value;
}

/** For tests: forget the cached passphrase. */
export function forgetCachedPassphrase(): void {
  cachedPassphrase = undefined;
}

/** What the task's container is told about its cluster (the same keys the CLI reads). */
export function clusterEnvironment(cluster: ClusterEntry): Record<string, string> {
  return {
    CLUSTER_NAME: cluster.name,
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGDATABASE: cluster.database,
    DEPLOYMENT_MODE: cluster.mode,
    ...(cluster.patroniUrl !== undefined ? { PATRONI_URL: cluster.patroniUrl } : {}),
    ...(cluster.citusCoordinator !== undefined ? { CITUS_COORDINATOR: cluster.citusCoordinator } : {}),
  };
}

/**
 * The cluster's Config, through loadConfig with the function's environment plus the cluster's keys.
 * `withKey`: the passphrase from Secrets Manager goes into that env object as ENCRYPTION_KEY, in
 * memory only. Functions that only start tasks never read the key (and are not allowed to): their
 * Config is loaded with ENCRYPTION off, as they encrypt and decrypt nothing.
 */
export async function clusterConfig(
  cluster: ClusterEntry,
  options: {
    withKey: boolean;
    /** Reads the repositories (REPO<n>_SECRET_ARN's credentials, in `merged` only). @default withKey */
    readsBackups?: boolean;
  },
  env: NodeJS.ProcessEnv = process.env,
): Promise<Config> {
  const merged: NodeJS.ProcessEnv = { ...env, ...clusterEnvironment(cluster) };
  // A second repository's credentials (core/pg/startup-secrets.ts), read once per container, into this
  // invocation's copy of the environment: never process.env, never the payload.
  if (options.readsBackups ?? options.withKey)
    await applyStartupSecrets({ env: merged, only: 'repositories' }, merged);
  if (!options.withKey) {
    merged.ENCRYPTION = 'false';
    delete merged.ENCRYPTION_KEY;
    delete merged.ENCRYPTION_KEY_FILE;
  } else if (env.ENCRYPTION_KEY_SECRET_ARN && !env.ENCRYPTION_KEY && !env.ENCRYPTION_KEY_FILE) {
    merged.ENCRYPTION_KEY = await encryptionPassphrase(env.ENCRYPTION_KEY_SECRET_ARN);
  }
  return loadConfig({ env: merged });
}

/** Core's progress and warnings as log lines (CloudWatch Logs). */
export const logReporter: Reporter = {
  info: (line) => console.info(line),
  warn: (line) => console.warn(`warning: ${line}`),
  progress: () => {},
};

// ---------------------------------------------------------------------------------------------
// Starting a pgvault task on Fargate

let ecsClient: ECSClient | undefined;

export interface StartedTask {
  readonly taskArn: string;
  /** The pgvault arguments the task runs. */
  readonly command: readonly string[];
}

/** The RunTask request for a pgvault command (exported for the tests' eyes and for docs). */
export function runTaskRequest(
  settings: TaskSettings,
  cluster: ClusterEntry,
  task: {
    argv: readonly string[];
    startedBy: string;
    definition: 'task' | 'restore';
    /** Variables over the cluster's (a restore to another server: its PGHOST, PGPORT, ...). No secret. */
    environment?: Readonly<Record<string, string>>;
  },
): RunTaskCommandInput {
  const taskDefinition =
    task.definition === 'restore'
      ? (cluster.restoreTaskDefinition ??
        cluster.restoreTaskDefinitionArn ??
        settings.restoreTaskDefinitionArn)
      : (cluster.taskDefinition ?? cluster.taskDefinitionArn ?? settings.taskDefinitionArn);
  return {
    cluster: settings.ecsClusterArn,
    taskDefinition,
    launchType: 'FARGATE',
    startedBy: task.startedBy,
    networkConfiguration: {
      awsvpcConfiguration: {
        subnets: settings.subnets,
        securityGroups: settings.securityGroups,
        assignPublicIp: settings.assignPublicIp ? 'ENABLED' : 'DISABLED',
      },
    },
    overrides: {
      containerOverrides: [
        {
          name: settings.containerName,
          command: [...task.argv],
          environment: Object.entries({ ...clusterEnvironment(cluster), ...task.environment }).map(
            ([name, value]) => ({ name, value }),
          ),
        },
      ],
    },
  };
}

/** Starts `pgvault <argv>` for the cluster; a response with failures is an error naming the reason. */
export async function startPgvaultTask(
  cluster: ClusterEntry,
  task: Parameters<typeof runTaskRequest>[2],
  env: NodeJS.ProcessEnv = process.env,
): Promise<StartedTask> {
  const request = runTaskRequest(taskSettings(env), cluster, task);
  ecsClient ??= new ECSClient({});
  const out = await ecsClient.send(new RunTaskCommand(request));
  const failure = out.failures?.[0];
  const taskArn = out.tasks?.[0]?.taskArn;
  if (failure !== undefined || taskArn === undefined) {
    const reason = failure
      ? `${failure.reason ?? 'no reason given'}${failure.detail ? ` (${failure.detail})` : ''}${failure.arn ? ` for ${failure.arn}` : ''}`
      : 'no task in the response';
    throw new TaskStartError(
      `ECS did not start pgvault ${task.argv.join(' ')} for cluster ${cluster.name}: ${reason}; check the task definition, subnets and capacity, then invoke again`,
    );
  }
  return { taskArn, command: [...task.argv] };
}

// ---------------------------------------------------------------------------------------------
// Outcomes

/** The lifecycle event and metrics of a function's outcome; never throws. */
export async function recordOutcome(
  config: Config,
  fn: string,
  event: Omit<LifecycleEvent, 'origin'>,
  metrics: readonly Metric[] = [],
): Promise<void> {
  const record: LifecycleRecord = { event: { ...event, origin: `lambda:${fn}` }, metrics };
  await recordLifecycle(config, record, { warn: (line) => console.warn(line) });
}

/**
 * A function that failed: its failure event, the `<Kind>Failed` metric and the failure alert (as the
 * CLI sends for the same command), then the error goes on to Lambda. Never throws by itself.
 */
export async function recordFailure(
  config: Config,
  fn: string,
  failure: {
    kind: LifecycleKind;
    commandPath: string;
    argv: readonly string[];
    error: unknown;
    startedAt: Date;
  },
): Promise<void> {
  const metric = `${failure.kind[0]!.toUpperCase()}${failure.kind.slice(1)}Failed`;
  await recordOutcome(
    config,
    fn,
    {
      kind: failure.kind,
      outcome: 'failed',
      cluster: config.clusterName,
      command: failure.argv.join(' '),
      startedAt: failure.startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      durationMs: Date.now() - failure.startedAt.getTime(),
      error: errorMessage(failure.error).split('\n')[0],
    },
    [{ name: metric, value: 1, unit: 'Count' }],
  );
  const alert = commandFailedAlert({
    cluster: config.clusterName,
    commandPath: failure.commandPath,
    argv: failure.argv,
    error: failure.error,
    startedAt: failure.startedAt,
  });
  await sendAlerts(config, [alert], { write: (line) => console.warn(line) });
}
