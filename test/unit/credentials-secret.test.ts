import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { applyDatabaseSecret, readDatabaseSecret } from '../../core/pg/credentials-secret';
import { tempDir } from '../helpers/vault';

/**
 * PGVAULT_PG_SECRET_ARN: the database credentials a task reads from Secrets Manager when it starts (a
 * restore into another server). Secrets Manager is mocked (control plane); what is checked is what the
 * process then signs in with, and that no failure line carries a secret value.
 */
const ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/restore-db-StUvWx';
const PASSWORD = 'the-target-password-5e6f';
const sm = mockClient(SecretsManagerClient);
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  work = await tempDir('pgvault-secret-');
});

afterAll(async () => {
  sm.restore();
  await work?.remove();
});

beforeEach(() => {
  sm.reset();
  sm.on(GetSecretValueCommand, { SecretId: ARN }).resolves({
    SecretString: JSON.stringify({ username: 'restorer', password: PASSWORD, host: 'ignored' }),
  });
});

const client = () => new SecretsManagerClient({ region: 'eu-west-1' });

describe('PGVAULT_PG_SECRET_ARN', () => {
  it("sets PGUSER and PGPASSWORD from the secret, over the task definition's", async () => {
    // Prepare
    const env: NodeJS.ProcessEnv = { PGVAULT_PG_SECRET_ARN: ARN, PGUSER: 'pgvault_restore', PGPASSWORD: 'x' };

    // Act
    const used = await applyDatabaseSecret({ cwd: work.path }, env, client());

    // Assess
    expect(used).toBe(ARN);
    expect(env).toMatchObject({ PGUSER: 'restorer', PGPASSWORD: PASSWORD });
    expect(sm.commandCalls(GetSecretValueCommand).map((c) => c.args[0].input)).toEqual([{ SecretId: ARN }]);
  });

  it('is read from the --config file too, like every setting', async () => {
    // Prepare
    const file = join(work.path, 'restore.env');
    writeFileSync(file, `PGVAULT_PG_SECRET_ARN=${ARN}\n`);
    const env: NodeJS.ProcessEnv = {};

    // Act
    await applyDatabaseSecret({ configFile: file, cwd: work.path }, env, client());

    // Assess
    expect(env.PGUSER).toBe('restorer');
  });

  it('reads nothing when it is not set', async () => {
    // Prepare
    const env: NodeJS.ProcessEnv = { PGUSER: 'backup' };

    // Act
    const used = await applyDatabaseSecret({ cwd: work.path }, env, client());

    // Assess
    expect(used).toBeUndefined();
    expect(env).toEqual({ PGUSER: 'backup' });
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(0);
  });

  it.each([
    [
      'not an ARN',
      'restore-db',
      undefined,
      'PGVAULT_PG_SECRET_ARN=restore-db is not allowed; use the complete ARN of a Secrets Manager secret (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX)',
    ],
    [
      'a plain string secret',
      ARN,
      PASSWORD,
      `the secret ${ARN} does not hold JSON with "username" and "password" strings; store the database credentials in that form`,
    ],
    [
      'no password',
      ARN,
      JSON.stringify({ username: 'restorer', pass: PASSWORD }),
      `the secret ${ARN} does not hold JSON with "username" and "password" strings; store the database credentials in that form`,
    ],
  ])(
    '%s: exit 2, one line naming the setting or the ARN, never the value',
    async (_name, arn, secret, message) => {
      // Prepare
      if (secret !== undefined)
        sm.on(GetSecretValueCommand, { SecretId: ARN }).resolves({ SecretString: secret });

      // Act
      const err = (await readDatabaseSecret(arn, client()).catch((e: Error) => e)) as Error & {
        exitCode: number;
      };

      // Assess
      expect(err.message).toBe(message);
      expect(err.exitCode).toBe(2);
      expect(err.message).not.toContain(PASSWORD);
    },
  );

  it('a refused read names the ARN and what to check', async () => {
    // Prepare
    const denied = Object.assign(
      new Error('User is not authorized to perform: secretsmanager:GetSecretValue'),
      {
        name: 'AccessDeniedException',
      },
    );
    sm.on(GetSecretValueCommand, { SecretId: ARN }).rejects(denied);

    // Act
    const err = (await readDatabaseSecret(ARN, client()).catch((e: Error) => e)) as Error;

    // Assess
    expect(err.message).toBe(
      `the database credentials cannot be read from ${ARN} (AccessDeniedException: User is not authorized to perform: secretsmanager:GetSecretValue); check that the secret exists and that this task's role may read it (restoreTargets of the cluster in the deployment config)`,
    );
  });
});
