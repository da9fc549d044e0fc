import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { collectRawConfig, type LoadConfigOptions } from '../config';
import { ConfigError, errorMessage } from '../errors';
import { SECRET_ARN_PATTERN } from './credentials-secret';

/**
 * Secrets pgvault reads from AWS Secrets Manager itself when it starts, next to the database
 * credentials of credentials-secret.ts, for the AWS deployment (infra/README.md): only a secret's ARN
 * is in the task definition or the function's environment; the values are never in a template, a
 * payload, a RunTask call, a command line or a log.
 *
 * - PATRONI_SECRET_ARN: the Patroni REST API's secret, JSON `{"username", "password"}` and/or
 *   `{"cacert": "-----BEGIN CERTIFICATE-----..."}` -> PATRONI_USERNAME, PATRONI_PASSWORD, and
 *   PATRONI_CACERT naming a 0600 file in TMPDIR holding the CA.
 * - REPO<n>_SECRET_ARN: repository n's credentials (the AWS deployment's second repository, GCS or
 *   Azure), JSON with AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with
 *   AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN -> REPO<n>_AZURE_STORAGE_*; or
 *   GOOGLE_APPLICATION_CREDENTIALS_JSON (the service account key, a string or an object) -> a 0600
 *   file in TMPDIR named by REPO<n>_GOOGLE_APPLICATION_CREDENTIALS (the key never enters the
 *   environment).
 *
 * The values go into the given environment (process.env for the CLI, as PGUSER/PGPASSWORD do; a
 * function's per-invocation copy for the Lambdas), and every value read is kept for the redaction of
 * alerts and events (startupSecretValues).
 */

export const PATRONI_SECRET_SETTING = 'PATRONI_SECRET_ARN';
const REPO_SECRET_SETTING = /^REPO([1-9])_SECRET_ARN$/;

/** The keys a repository secret may hold that become REPO<n>_<KEY>. */
export const REPOSITORY_SECRET_KEYS = [
  'AZURE_STORAGE_CONNECTION_STRING',
  'AZURE_STORAGE_ACCOUNT',
  'AZURE_STORAGE_KEY',
  'AZURE_STORAGE_SAS_TOKEN',
] as const;
/** The GCS service account key (JSON), written to a file: REPO<n>_GOOGLE_APPLICATION_CREDENTIALS. */
export const GCS_KEY_JSON = 'GOOGLE_APPLICATION_CREDENTIALS_JSON';

/** Every secret value read in this process: alerts and events redact them. */
const readValues = new Set<string>();

/** The values read by this module, for the lists of values never sent in a message. */
export function startupSecretValues(): string[] {
  return [...readValues];
}

/** Per process (a Lambda container): what each secret put in the environment, by setting and ARN. */
const applied = new Map<string, Promise<Record<string, string>>>();

/** For tests: forget what earlier calls read (the next call reads the secret again). */
export function forgetStartupSecrets(): void {
  applied.clear();
}

/** The secret's JSON object; every failure is one line naming the setting and the ARN, never a value. */
async function readSecretObject(
  setting: string,
  arn: string,
  what: string,
  configKey: string,
  client?: SecretsManagerClient,
): Promise<Record<string, unknown>> {
  if (!SECRET_ARN_PATTERN.test(arn)) {
    throw new ConfigError(
      `${setting}=${arn} is not allowed; use the complete ARN of a Secrets Manager secret (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX)`,
    );
  }
  // Loaded here: only the processes that have such a secret pay for the SDK client.
  const sm = require('@aws-sdk/client-secrets-manager') as typeof import('@aws-sdk/client-secrets-manager');
  const sdk = client ?? new sm.SecretsManagerClient({ region: arn.split(':')[3] });
  let text: string | undefined;
  try {
    text = (await sdk.send(new sm.GetSecretValueCommand({ SecretId: arn }))).SecretString;
  } catch (err) {
    throw new ConfigError(
      `${what} cannot be read from ${arn} (${setting}; ${(err as Error).name}: ${errorMessage(err).split('\n')[0]}); check that the secret exists and that this role may read it (${configKey} in the deployment config)`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text ?? '');
  } catch {
    json = undefined;
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new ConfigError(
      `the secret ${arn} (${setting}) does not hold a JSON object; store ${what} as JSON`,
    );
  }
  return json as Record<string, unknown>;
}

/** A string field of the secret, trimmed; undefined when absent or empty. A non-string is refused. */
function field(obj: Record<string, unknown>, key: string, arn: string): string | undefined {
  const v = obj[key];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string')
    throw new ConfigError(`the secret ${arn} holds ${key} as a ${typeof v}; store it as a string`);
  readValues.add(v);
  return v;
}

/** Directories of files written for this process's own environment, removed when it exits. */
const ownFiles = new Set<string>();

/**
 * A file only this user may read (0600, in a 0700 directory of its own under TMPDIR). Written for
 * process.env (the CLI), it is removed when the process exits: the commands that read these secrets
 * start no pgvault process that outlives them (the per-segment commands, which do, read none). A
 * function's copy stays for the container's next invocations.
 */
function writePrivateFile(env: NodeJS.ProcessEnv, name: string, content: string): string {
  const dir = mkdtempSync(join(env.TMPDIR?.trim() || tmpdir(), 'pgvault-secret-'));
  const path = join(dir, name);
  writeFileSync(path, content, { mode: 0o600 });
  if (env === process.env) {
    if (ownFiles.size === 0)
      process.once('exit', () => {
        for (const d of ownFiles) rmSync(d, { recursive: true, force: true });
      });
    ownFiles.add(dir);
  }
  return path;
}

/** PATRONI_SECRET_ARN's secret as the settings it becomes. */
async function patroniSettings(
  arn: string,
  env: NodeJS.ProcessEnv,
  client?: SecretsManagerClient,
): Promise<Record<string, string>> {
  const what = 'the Patroni REST API credentials';
  const obj = await readSecretObject(
    PATRONI_SECRET_SETTING,
    arn,
    what,
    'patroniCredentialsSecretArn',
    client,
  );
  const username = field(obj, 'username', arn);
  const password = field(obj, 'password', arn);
  const cacert = field(obj, 'cacert', arn);
  const form =
    'JSON with "username" and "password" (restapi.authentication) and/or "cacert" (the PEM of the CA that signs an https API)';
  if (
    (username === undefined) !== (password === undefined) ||
    (username === undefined && cacert === undefined)
  ) {
    throw new ConfigError(
      `the secret ${arn} (${PATRONI_SECRET_SETTING}) does not hold ${form}; store it in that form`,
    );
  }
  if (cacert !== undefined && !cacert.includes('-----BEGIN CERTIFICATE-----')) {
    throw new ConfigError(
      `the secret ${arn} (${PATRONI_SECRET_SETTING}) holds a "cacert" that is not a PEM certificate; store the CA's PEM (-----BEGIN CERTIFICATE-----...)`,
    );
  }
  return {
    ...(username !== undefined && password !== undefined
      ? { PATRONI_USERNAME: username, PATRONI_PASSWORD: password }
      : {}),
    ...(cacert !== undefined ? { PATRONI_CACERT: writePrivateFile(env, 'patroni-ca.pem', cacert) } : {}),
  };
}

/** REPO<n>_SECRET_ARN's secret as the settings it becomes (REPO<n>_AZURE_*, REPO<n>_GOOGLE_APPLICATION_CREDENTIALS). */
async function repositorySettings(
  n: string,
  arn: string,
  type: string | undefined,
  env: NodeJS.ProcessEnv,
  client?: SecretsManagerClient,
): Promise<Record<string, string>> {
  const setting = `REPO${n}_SECRET_ARN`;
  const what = `repository ${n}'s credentials`;
  const obj = await readSecretObject(setting, arn, what, 'secondRepository.credentialsSecretArn', client);
  const out: Record<string, string> = {};
  for (const key of REPOSITORY_SECRET_KEYS) {
    const v = field(obj, key, arn);
    if (v !== undefined) out[`REPO${n}_${key}`] = v;
  }
  const gcsRaw = obj[GCS_KEY_JSON];
  if (gcsRaw !== undefined && gcsRaw !== null && gcsRaw !== '') {
    let key: unknown = gcsRaw;
    if (typeof gcsRaw === 'string') {
      try {
        key = JSON.parse(gcsRaw);
      } catch {
        key = undefined;
      }
    }
    if (key === null || typeof key !== 'object' || Array.isArray(key)) {
      throw new ConfigError(
        `the secret ${arn} (${setting}) holds a ${GCS_KEY_JSON} that is not a JSON object; store the service account key file's JSON there`,
      );
    }
    const text = JSON.stringify(key);
    readValues.add(text);
    const privateKey = (key as { private_key?: unknown }).private_key;
    if (typeof privateKey === 'string' && privateKey !== '') readValues.add(privateKey);
    out[`REPO${n}_GOOGLE_APPLICATION_CREDENTIALS`] = writePrivateFile(env, `repo${n}-gcs-key.json`, text);
  }
  const has = (key: string) => out[`REPO${n}_${key}`] !== undefined;
  const azure =
    has('AZURE_STORAGE_CONNECTION_STRING') ||
    (has('AZURE_STORAGE_ACCOUNT') && (has('AZURE_STORAGE_KEY') || has('AZURE_STORAGE_SAS_TOKEN')));
  const gcs = has('GOOGLE_APPLICATION_CREDENTIALS');
  const forAzure = `${REPOSITORY_SECRET_KEYS[0]}, or ${REPOSITORY_SECRET_KEYS[1]} with ${REPOSITORY_SECRET_KEYS[2]} or ${REPOSITORY_SECRET_KEYS[3]}`;
  if (type === 'azure' && !azure) {
    throw new ConfigError(
      `the secret ${arn} (${setting}) is for an azure repository and holds none of ${forAzure}; store one of them`,
    );
  }
  if (type === 'gcs' && !gcs) {
    throw new ConfigError(
      `the secret ${arn} (${setting}) is for a gcs repository and holds no ${GCS_KEY_JSON}; store the service account key file's JSON there`,
    );
  }
  if (!azure && !gcs) {
    throw new ConfigError(
      `the secret ${arn} (${setting}) holds neither ${forAzure} nor ${GCS_KEY_JSON}; store the repository's credentials`,
    );
  }
  return out;
}

/**
 * Reads PATRONI_SECRET_ARN and every REPO<n>_SECRET_ARN that is set (environment, then the --config /
 * PGVAULT_CONFIG file, then .env, as every setting) and puts their settings into `env`, over any
 * others. `only: 'repositories'` reads the repositories' alone (the functions, which never ask Patroni).
 * Returns the settings it read, by name (the ARNs, never a value); empty when none is set.
 */
export async function applyStartupSecrets(
  options: LoadConfigOptions & { only?: 'repositories' } = {},
  env: NodeJS.ProcessEnv = process.env,
  client?: SecretsManagerClient,
): Promise<Record<string, string>> {
  const raw = collectRawConfig({ ...options, env }).raw;
  const wanted: Array<[setting: string, arn: string, read: () => Promise<Record<string, string>>]> = [];
  const patroni = raw[PATRONI_SECRET_SETTING]?.trim();
  if (patroni && options.only !== 'repositories')
    wanted.push([PATRONI_SECRET_SETTING, patroni, () => patroniSettings(patroni, env, client)]);
  for (const key of Object.keys(raw).sort()) {
    const m = REPO_SECRET_SETTING.exec(key);
    const arn = raw[key]?.trim();
    if (!m || !arn) continue;
    const type = raw[`REPO${m[1]}_TYPE`]?.trim().toLowerCase();
    wanted.push([key, arn, () => repositorySettings(m[1]!, arn, type, env, client)]);
  }
  const used: Record<string, string> = {};
  for (const [setting, arn, read] of wanted) {
    const id = `${setting}=${arn}`;
    let settings = applied.get(id);
    if (settings === undefined) {
      settings = read();
      applied.set(id, settings);
      // A failed read is not kept: the next start (or invocation) asks again.
      settings.catch(() => applied.delete(id));
    }
    Object.assign(env, await settings);
    used[setting] = arn;
  }
  return used;
}
