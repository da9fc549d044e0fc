import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { collectRawConfig, type LoadConfigOptions } from '../config';
import { ConfigError, errorMessage } from '../errors';

/**
 * Database credentials from AWS Secrets Manager, read by pgvault itself when it starts: the setting
 * PGVAULT_PG_SECRET_ARN names a secret holding JSON `{"username": ..., "password": ...}` (the form
 * the AWS deployment's credential secrets and RDS's own secrets have), and its values become PGUSER
 * and PGPASSWORD of this process, over any others. The restore function sets it for a restore into
 * another server, whose credentials are then never in a payload, a RunTask call, a command line or a
 * log: only the secret's ARN travels, and only the restore task role may read the secret.
 *
 * The values go into the process environment on purpose: every PostgreSQL tool pgvault starts and its
 * own connections read PGUSER/PGPASSWORD from there (core/config.ts, pgEnv), and the alert redaction
 * removes PGPASSWORD from whatever leaves the machine.
 */

/** The setting naming the secret (environment or config file). */
export const PG_SECRET_SETTING = 'PGVAULT_PG_SECRET_ARN';

/** A complete Secrets Manager secret ARN (with the 6-character suffix), as IAM resources name it. */
export const SECRET_ARN_PATTERN =
  /^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$/;

export interface DatabaseCredentials {
  readonly user: string;
  readonly password: string;
}

/** Reads and checks the secret; every failure is one line naming the ARN, never a value. */
export async function readDatabaseSecret(
  arn: string,
  client?: SecretsManagerClient,
): Promise<DatabaseCredentials> {
  if (!SECRET_ARN_PATTERN.test(arn)) {
    throw new ConfigError(
      `${PG_SECRET_SETTING}=${arn} is not allowed; use the complete ARN of a Secrets Manager secret (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX)`,
    );
  }
  // Loaded here: only the commands that need the secret pay for the SDK client.
  const sm = require('@aws-sdk/client-secrets-manager') as typeof import('@aws-sdk/client-secrets-manager');
  const sdk = client ?? new sm.SecretsManagerClient({ region: arn.split(':')[3] });
  let text: string | undefined;
  try {
    text = (await sdk.send(new sm.GetSecretValueCommand({ SecretId: arn }))).SecretString;
  } catch (err) {
    throw new ConfigError(
      `the database credentials cannot be read from ${arn} (${(err as Error).name}: ${errorMessage(err).split('\n')[0]}); check that the secret exists and that this task's role may read it (restoreTargets of the cluster in the deployment config)`,
    );
  }
  const bad = `the secret ${arn} does not hold JSON with "username" and "password" strings; store the database credentials in that form`;
  let json: unknown;
  try {
    json = JSON.parse(text ?? '');
  } catch {
    throw new ConfigError(bad);
  }
  const { username, password } = (json ?? {}) as { username?: unknown; password?: unknown };
  if (typeof username !== 'string' || username === '' || typeof password !== 'string')
    throw new ConfigError(bad);
  return { user: username, password };
}

/**
 * When PGVAULT_PG_SECRET_ARN is set (environment, then the --config / PGVAULT_CONFIG file, then .env,
 * as every setting), reads the secret and sets PGUSER and PGPASSWORD in `env` (process.env) from it.
 * Returns the ARN used, or undefined when the setting is absent (nothing is read then).
 */
export async function applyDatabaseSecret(
  options: LoadConfigOptions = {},
  env: NodeJS.ProcessEnv = process.env,
  client?: SecretsManagerClient,
): Promise<string | undefined> {
  const arn = collectRawConfig({ ...options, env }).raw[PG_SECRET_SETTING]?.trim();
  if (arn === undefined || arn === '') return undefined;
  const credentials = await readDatabaseSecret(arn, client);
  env.PGUSER = credentials.user;
  env.PGPASSWORD = credentials.password;
  return arn;
}
