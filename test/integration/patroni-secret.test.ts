import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runPgvault } from '../helpers/cli';
import { type GcsStandIn, startGcsStandIn } from '../helpers/gcs-server';
import { API_PASSWORD, API_USER, PatroniCluster } from '../helpers/patroni';
import { type StandInSecretsManager, startSecretsManager } from '../helpers/secrets-manager';

/*
 * Issue 13, the AWS tasks of a Patroni cluster: the task definition holds only PATRONI_SECRET_ARN;
 * `pgvault` reads the REST API's user, password and CA from Secrets Manager when it starts
 * (core/pg/startup-secrets.ts, applied in cli/main.ts run()). Here against a real Patroni cluster whose
 * REST APIs serve https with a test CA (test/helpers/patroni.ts) and a stand-in Secrets Manager (the
 * SDK's real client over http): without the CA the API is not trusted, with the secret it is. The
 * second repository's secret (REPO2_SECRET_ARN) is read by the same step: a refused read stops the
 * command with one line before anything runs.
 */

const PATRONI_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/shop-patroni-AbCdEf';
const REPO_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/gcs-copy-MnOpQr';
const DENIED_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/other-copy-QwErTy';
const GCS_PRIVATE_KEY = '-----BEGIN PRIVATE KEY-----\nMIIEgcsStandInKey\n-----END PRIVATE KEY-----\n';

let cluster: PatroniCluster;
let secrets: StandInSecretsManager;
let gcs: GcsStandIn;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'pgvault-patroni-secret-'));
  cluster = await PatroniCluster.start({ scope: 'shop-secret', tls: true });
  gcs = await startGcsStandIn('pgvault-copy');
  secrets = await startSecretsManager({
    [PATRONI_ARN]: JSON.stringify({
      username: API_USER,
      password: API_PASSWORD,
      cacert: readFileSync(cluster.caFile!, 'utf8'),
    }),
    [REPO_ARN]: JSON.stringify({
      GOOGLE_APPLICATION_CREDENTIALS_JSON: JSON.stringify({
        type: 'service_account',
        private_key: GCS_PRIVATE_KEY,
      }),
    }),
  });
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
  await secrets?.close();
  await gcs?.stop();
  await rm(work, { recursive: true, force: true });
});

/** The task's environment: the cluster's, without the CA file (the secret brings it), plus `extra`. */
function pgvault(args: string[], extra: NodeJS.ProcessEnv): Promise<CliRun> {
  const env = cluster.env({
    CLUSTER_NAME: 'shop',
    BACKUP_DIR: join(work, 'vault'),
    TMPDIR: work,
    ...secrets.env,
    ...extra,
  });
  delete env.PATRONI_CACERT;
  return runPgvault(args, env, work);
}

/** Repository 1 the vault folder, repository 2 the GCS stand-in (the secret brings its key file). */
const repositories = () => ({
  REPO1_TYPE: 'file',
  REPO1_PATH: join(work, 'vault'),
  REPO2_TYPE: 'gcs',
  REPO2_BUCKET: gcs.bucket,
  STORAGE_EMULATOR_HOST: gcs.endpoint,
});

const leftovers = () => readdirSync(work).filter((f) => f.startsWith('pgvault-secret-'));

describe('PATRONI_SECRET_ARN in the CLI', () => {
  it('without it the https REST API is not trusted (the test CA is private)', async () => {
    // Act
    const r = await pgvault(['--json', 'topology'], {});

    // Assess
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/certificate|self.signed|CERT/i);
  });

  it('with it pgvault reads the CA and credentials at start, asks the https API, and leaves no file and no value behind', async () => {
    // Act
    const r = await pgvault(['--json', 'topology'], {
      PATRONI_SECRET_ARN: PATRONI_ARN,
      REPO2_SECRET_ARN: REPO_ARN,
      ...repositories(),
    });

    // Assess
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as {
      mode: string;
      scope: string;
      nodes: { name: string; role: string }[];
    };
    expect(plan).toMatchObject({ mode: 'patroni', scope: 'shop-secret' });
    expect(plan.nodes.map((n) => n.role).sort()).toEqual(['leader', 'replica']);
    expect(secrets.requests.map((q) => q.secretId).filter((id) => id !== DENIED_ARN)).toEqual(
      expect.arrayContaining([PATRONI_ARN, REPO_ARN]),
    );
    expect(secrets.requests.every((q) => q.target === 'secretsmanager.GetSecretValue')).toBe(true);
    for (const value of [API_PASSWORD, 'PRIVATE KEY', 'BEGIN CERTIFICATE'])
      expect(r.stdout + r.stderr).not.toContain(value);
    // The CA and the GCS key were written 0600 under TMPDIR for the run and removed at its end.
    expect(leftovers()).toEqual([]);
  });

  it('a backup taken with them records the node, and no file of the vault holds a secret value', async () => {
    // Act
    const r = await pgvault(['--json', 'backup', 'full', 'daily'], {
      PATRONI_SECRET_ARN: PATRONI_ARN,
      REPO2_SECRET_ARN: REPO_ARN,
      ...repositories(),
    });

    // Assess
    expect(r.code, r.stderr).toBe(0);
    const manifest = (JSON.parse(r.stdout) as { manifest: { node?: { role?: string } } }).manifest;
    expect(manifest.node?.role).toBe('replica');
    const ca = readFileSync(cluster.caFile!, 'utf8').split('\n')[1]!;
    const files = readdirSync(join(work, 'vault'), { recursive: true, withFileTypes: true }).filter((f) =>
      f.isFile(),
    );
    expect(files.length).toBeGreaterThan(2);
    for (const f of files) {
      const bytes = readFileSync(join(f.parentPath, f.name)).toString('latin1');
      for (const value of [API_PASSWORD, 'MIIEgcsStandInKey', ca]) expect(bytes, f.name).not.toContain(value);
    }
    expect(gcs.objects.size).toBeGreaterThan(2);
    for (const value of [API_PASSWORD, 'PRIVATE KEY', ca]) expect(r.stdout + r.stderr).not.toContain(value);
    expect(leftovers()).toEqual([]);
  });

  it('a secret the role may not read: exit 2, one line naming the ARN, nothing run', async () => {
    // Act
    const r = await pgvault(['--json', 'topology'], {
      PATRONI_SECRET_ARN: PATRONI_ARN,
      REPO2_SECRET_ARN: DENIED_ARN,
    });

    // Assess
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      `repository 2's credentials cannot be read from ${DENIED_ARN} (REPO2_SECRET_ARN; AccessDeniedException: User is not authorized to perform: secretsmanager:GetSecretValue on resource: ${DENIED_ARN})`,
    );
    expect(r.stdout).not.toContain('leader');
  });
});
