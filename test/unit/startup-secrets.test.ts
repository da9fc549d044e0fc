import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { commandFailedAlert } from '../../core/alert/failure';
import { redactAlert } from '../../core/alert/notify';
import { loadConfig } from '../../core/config';
import { applyStartupSecrets, forgetStartupSecrets } from '../../core/pg/startup-secrets';
import { type ClusterEntry, clusterConfig } from '../../functions/env';
import { tempDir } from '../helpers/vault';

/**
 * What the AWS deployment's tasks and functions read from Secrets Manager when they start, besides
 * the database credentials: the Patroni REST API's secret (PATRONI_SECRET_ARN: user, password, CA)
 * and a second repository's credentials (REPO<n>_SECRET_ARN: Azure or GCS). Secrets Manager is mocked
 * (control plane). Checked: the settings pgvault then runs with, the files it writes (0600, the GCS
 * key never in the environment), that the functions' reads stay out of process.env, and that no value
 * is in an error line, an alert, or the environment beyond the keys meant to hold it.
 */
const PATRONI_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/orders-patroni-AbCdEf';
const AZURE_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/azure-copy-GhIjKl';
const GCS_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/gcs-copy-MnOpQr';
const API_PASSWORD = 'patroni-api-password-7c1d';
const CA_PEM = '-----BEGIN CERTIFICATE-----\nMIIBtestCAcert\n-----END CERTIFICATE-----\n';
const AZURE_KEY = 'YXp1cmUtc3RvcmFnZS1hY2NvdW50LWtleS0wMTIz';
const GCS_PRIVATE_KEY = '-----BEGIN PRIVATE KEY-----\nMIIEgcsPrivateKey\n-----END PRIVATE KEY-----\n';
const GCS_KEY = {
  type: 'service_account',
  project_id: 'pgvault-copy',
  private_key_id: 'k1',
  private_key: GCS_PRIVATE_KEY,
  client_email: 'pgvault-writer@pgvault-copy.iam.gserviceaccount.com',
};

const sm = mockClient(SecretsManagerClient);
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  work = await tempDir('pgvault-startup-secrets-');
});

afterAll(async () => {
  sm.restore();
  await work?.remove();
});

beforeEach(() => {
  sm.reset();
  forgetStartupSecrets();
  sm.on(GetSecretValueCommand, { SecretId: PATRONI_ARN }).resolves({
    SecretString: JSON.stringify({ username: 'patroni', password: API_PASSWORD, cacert: CA_PEM }),
  });
  sm.on(GetSecretValueCommand, { SecretId: AZURE_ARN }).resolves({
    SecretString: JSON.stringify({ AZURE_STORAGE_ACCOUNT: 'pgvaultcopy', AZURE_STORAGE_KEY: AZURE_KEY }),
  });
  sm.on(GetSecretValueCommand, { SecretId: GCS_ARN }).resolves({
    SecretString: JSON.stringify({ GOOGLE_APPLICATION_CREDENTIALS_JSON: JSON.stringify(GCS_KEY) }),
  });
});

const client = () => new SecretsManagerClient({ region: 'eu-west-1' });
const mode = (path: string) => statSync(path).mode & 0o777;

describe('PATRONI_SECRET_ARN', () => {
  it("becomes the REST API's user and password, and its CA in a 0600 file that DEPLOYMENT_MODE=patroni reads", async () => {
    // Prepare
    const env: NodeJS.ProcessEnv = {
      PATRONI_SECRET_ARN: PATRONI_ARN,
      TMPDIR: work.path,
      DEPLOYMENT_MODE: 'patroni',
      PATRONI_URL: 'https://10.0.1.10:8008,https://10.0.2.10:8008',
      CLUSTER_NAME: 'orders',
    };

    // Act
    const used = await applyStartupSecrets({ cwd: work.path }, env, client());
    const config = loadConfig({ env, cwd: work.path });

    // Assess
    expect(used).toEqual({ PATRONI_SECRET_ARN: PATRONI_ARN });
    expect(env).toMatchObject({ PATRONI_USERNAME: 'patroni', PATRONI_PASSWORD: API_PASSWORD });
    expect(readFileSync(env.PATRONI_CACERT!, 'utf8')).toBe(CA_PEM);
    expect(mode(env.PATRONI_CACERT!)).toBe(0o600);
    expect(mode(dirname(env.PATRONI_CACERT!))).toBe(0o700);
    expect(dirname(dirname(env.PATRONI_CACERT!))).toBe(work.path);
    expect(config.patroni).toMatchObject({ auth: `patroni:${API_PASSWORD}`, caFile: env.PATRONI_CACERT });
    expect(sm.commandCalls(GetSecretValueCommand).map((c) => c.args[0].input)).toEqual([
      { SecretId: PATRONI_ARN },
    ]);
  });

  it('a secret with only the CA sets no user', async () => {
    // Prepare
    sm.on(GetSecretValueCommand, { SecretId: PATRONI_ARN }).resolves({
      SecretString: JSON.stringify({ cacert: CA_PEM }),
    });
    const env: NodeJS.ProcessEnv = { PATRONI_SECRET_ARN: PATRONI_ARN, TMPDIR: work.path };

    // Act
    await applyStartupSecrets({ cwd: work.path }, env, client());

    // Assess
    expect(env.PATRONI_USERNAME).toBeUndefined();
    expect(readFileSync(env.PATRONI_CACERT!, 'utf8')).toBe(CA_PEM);
  });

  it('reads nothing when neither PATRONI_SECRET_ARN nor a REPO<n>_SECRET_ARN is set', async () => {
    // Prepare
    const env: NodeJS.ProcessEnv = { DEPLOYMENT_MODE: 'single-node', CLOUD_PROVIDER: 's3' };

    // Act
    const used = await applyStartupSecrets({ cwd: work.path }, env, client());

    // Assess
    expect(used).toEqual({});
    expect(env).toEqual({ DEPLOYMENT_MODE: 'single-node', CLOUD_PROVIDER: 's3' });
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(0);
  });
});

describe('REPO<n>_SECRET_ARN', () => {
  it('Azure: the account and key become REPO2_AZURE_STORAGE_*', async () => {
    // Prepare
    const env: NodeJS.ProcessEnv = { REPO2_TYPE: 'azure', REPO2_SECRET_ARN: AZURE_ARN };

    // Act
    const used = await applyStartupSecrets({ cwd: work.path }, env, client());

    // Assess
    expect(used).toEqual({ REPO2_SECRET_ARN: AZURE_ARN });
    expect(env).toEqual({
      REPO2_TYPE: 'azure',
      REPO2_SECRET_ARN: AZURE_ARN,
      REPO2_AZURE_STORAGE_ACCOUNT: 'pgvaultcopy',
      REPO2_AZURE_STORAGE_KEY: AZURE_KEY,
    });
  });

  it('GCS: the service account key goes to a 0600 file in TMPDIR, named by REPO2_GOOGLE_APPLICATION_CREDENTIALS; the environment never holds it', async () => {
    // Prepare
    const env: NodeJS.ProcessEnv = { REPO2_TYPE: 'gcs', REPO2_SECRET_ARN: GCS_ARN, TMPDIR: work.path };

    // Act
    await applyStartupSecrets({ cwd: work.path }, env, client());

    // Assess
    const file = env.REPO2_GOOGLE_APPLICATION_CREDENTIALS!;
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual(GCS_KEY);
    expect(mode(file)).toBe(0o600);
    expect(dirname(dirname(file))).toBe(work.path);
    expect(Object.keys(env).sort()).toEqual([
      'REPO2_GOOGLE_APPLICATION_CREDENTIALS',
      'REPO2_SECRET_ARN',
      'REPO2_TYPE',
      'TMPDIR',
    ]);
    expect(JSON.stringify(env)).not.toContain('PRIVATE KEY');
  });

  it('a key object (not a string) is accepted too', async () => {
    // Prepare
    sm.on(GetSecretValueCommand, { SecretId: GCS_ARN }).resolves({
      SecretString: JSON.stringify({ GOOGLE_APPLICATION_CREDENTIALS_JSON: GCS_KEY }),
    });
    const env: NodeJS.ProcessEnv = { REPO2_TYPE: 'gcs', REPO2_SECRET_ARN: GCS_ARN, TMPDIR: work.path };

    // Act
    await applyStartupSecrets({ cwd: work.path }, env, client());

    // Assess
    expect(JSON.parse(readFileSync(env.REPO2_GOOGLE_APPLICATION_CREDENTIALS!, 'utf8'))).toEqual(GCS_KEY);
  });

  it.each([
    [
      'not an ARN',
      { REPO2_SECRET_ARN: 'gcs-copy' },
      undefined,
      'REPO2_SECRET_ARN=gcs-copy is not allowed; use the complete ARN of a Secrets Manager secret (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX)',
    ],
    [
      'a plain string',
      { REPO2_TYPE: 'azure', REPO2_SECRET_ARN: AZURE_ARN },
      AZURE_KEY,
      `the secret ${AZURE_ARN} (REPO2_SECRET_ARN) does not hold a JSON object; store repository 2's credentials as JSON`,
    ],
    [
      'an Azure account without its key',
      { REPO2_TYPE: 'azure', REPO2_SECRET_ARN: AZURE_ARN },
      JSON.stringify({ AZURE_STORAGE_ACCOUNT: 'pgvaultcopy', AZURE_STORAGE_KEYS: AZURE_KEY }),
      `the secret ${AZURE_ARN} (REPO2_SECRET_ARN) is for an azure repository and holds none of AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN; store one of them`,
    ],
    [
      'a GCS repository with Azure credentials',
      { REPO2_TYPE: 'gcs', REPO2_SECRET_ARN: AZURE_ARN },
      JSON.stringify({ AZURE_STORAGE_ACCOUNT: 'pgvaultcopy', AZURE_STORAGE_KEY: AZURE_KEY }),
      `the secret ${AZURE_ARN} (REPO2_SECRET_ARN) is for a gcs repository and holds no GOOGLE_APPLICATION_CREDENTIALS_JSON; store the service account key file's JSON there`,
    ],
    [
      'a GCS key that is not JSON',
      { REPO2_TYPE: 'gcs', REPO2_SECRET_ARN: AZURE_ARN },
      JSON.stringify({ GOOGLE_APPLICATION_CREDENTIALS_JSON: `{${GCS_PRIVATE_KEY}` }),
      `the secret ${AZURE_ARN} (REPO2_SECRET_ARN) holds a GOOGLE_APPLICATION_CREDENTIALS_JSON that is not a JSON object; store the service account key file's JSON there`,
    ],
    [
      'a Patroni secret with a user and no password',
      { PATRONI_SECRET_ARN: AZURE_ARN },
      JSON.stringify({ username: 'patroni', pass: API_PASSWORD }),
      `the secret ${AZURE_ARN} (PATRONI_SECRET_ARN) does not hold JSON with "username" and "password" (restapi.authentication) and/or "cacert" (the PEM of the CA that signs an https API); store it in that form`,
    ],
    [
      'a CA that is not PEM',
      { PATRONI_SECRET_ARN: AZURE_ARN },
      JSON.stringify({ cacert: `${API_PASSWORD}-not-a-certificate` }),
      `the secret ${AZURE_ARN} (PATRONI_SECRET_ARN) holds a "cacert" that is not a PEM certificate; store the CA's PEM (-----BEGIN CERTIFICATE-----...)`,
    ],
  ])(
    '%s: exit 2, one line naming the setting and the ARN, never a value',
    async (_name, env, secret, message) => {
      // Prepare
      if (secret !== undefined)
        sm.on(GetSecretValueCommand, { SecretId: AZURE_ARN }).resolves({ SecretString: secret });

      // Act
      const err = (await applyStartupSecrets(
        { cwd: work.path },
        { ...env, TMPDIR: work.path },
        client(),
      ).catch((e: Error) => e)) as Error & { exitCode: number };

      // Assess
      expect(err.message).toBe(message);
      expect(err.exitCode).toBe(2);
      for (const value of [AZURE_KEY, API_PASSWORD, 'PRIVATE KEY']) expect(err.message).not.toContain(value);
    },
  );

  it('a refused read names the ARN, the setting and the deployment key to check; the next start asks again', async () => {
    // Prepare
    const denied = Object.assign(
      new Error('User is not authorized to perform: secretsmanager:GetSecretValue'),
      {
        name: 'AccessDeniedException',
      },
    );
    sm.on(GetSecretValueCommand, { SecretId: AZURE_ARN })
      .rejectsOnce(denied)
      .resolves({
        SecretString: JSON.stringify({ AZURE_STORAGE_ACCOUNT: 'pgvaultcopy', AZURE_STORAGE_KEY: AZURE_KEY }),
      });
    const env = () => ({ REPO2_TYPE: 'azure', REPO2_SECRET_ARN: AZURE_ARN });

    // Act
    const err = (await applyStartupSecrets({ cwd: work.path }, env(), client()).catch(
      (e: Error) => e,
    )) as Error;
    const retried = env();
    await applyStartupSecrets({ cwd: work.path }, retried, client());

    // Assess
    expect(err.message).toBe(
      `repository 2's credentials cannot be read from ${AZURE_ARN} (REPO2_SECRET_ARN; AccessDeniedException: User is not authorized to perform: secretsmanager:GetSecretValue); check that the secret exists and that this role may read it (secondRepository.credentialsSecretArn in the deployment config)`,
    );
    expect(retried).toMatchObject({ REPO2_AZURE_STORAGE_KEY: AZURE_KEY });
  });

  it('a value read is redacted from the failure alert', async () => {
    // Prepare
    await applyStartupSecrets(
      { cwd: work.path },
      { REPO2_TYPE: 'azure', REPO2_SECRET_ARN: AZURE_ARN },
      client(),
    );
    const config = loadConfig({ env: { CLUSTER_NAME: 'main' }, cwd: work.path });
    const alert = commandFailedAlert({
      cluster: 'main',
      commandPath: 'backup full',
      argv: ['backup', 'full', 'daily'],
      error: new Error(
        `AuthenticationFailed: Server failed to authenticate the request with key ${AZURE_KEY}`,
      ),
      startedAt: new Date(),
    });

    // Act
    const clean = redactAlert(alert, config);

    // Assess
    expect(JSON.stringify(alert)).toContain(AZURE_KEY);
    expect(JSON.stringify(clean)).not.toContain(AZURE_KEY);
  });
});

describe('the functions (functions/env.ts clusterConfig)', () => {
  const cluster: ClusterEntry = {
    name: 'main',
    mode: 'single-node',
    host: 'db.internal',
    port: 5432,
    database: 'postgres',
    credentialsSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/main-AbCdEf',
  };
  const lambdaEnv = (): NodeJS.ProcessEnv => ({
    REPO1_TYPE: 's3',
    REPO1_BUCKET: 'vault',
    REPO2_TYPE: 'gcs',
    REPO2_BUCKET: 'pgvault-copy',
    REPO2_SECRET_ARN: GCS_ARN,
    TMPDIR: work.path,
    AWS_REGION: 'eu-west-1',
    PGVAULT_METRICS: 'off',
  });

  it('the readers get the credentials in their own copy of the environment, once per container; process.env stays clean', async () => {
    // Prepare
    sm.on(GetSecretValueCommand, { SecretId: GCS_ARN }).resolves({
      SecretString: JSON.stringify({ GOOGLE_APPLICATION_CREDENTIALS_JSON: JSON.stringify(GCS_KEY) }),
    });
    const before = { ...process.env };

    // Act
    const first = await clusterConfig(cluster, { withKey: false, readsBackups: true }, lambdaEnv());
    const second = await clusterConfig(cluster, { withKey: false, readsBackups: true }, lambdaEnv());

    // Assess
    expect(first.clusterName).toBe('main');
    expect(second.clusterName).toBe('main');
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(1);
    expect(process.env).toEqual(before);
    expect(Object.keys(process.env).filter((k) => k.startsWith('REPO'))).toEqual([]);
  });

  it('the dispatch function (no key, reads no backup) reads no repository secret', async () => {
    // Act
    await clusterConfig(cluster, { withKey: false }, lambdaEnv());

    // Assess
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(0);
  });
});
