import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { backupFull } from '../../core/backup/full';
import type { TempCluster } from '../../core/pg/cluster';
import { type ClusterEntry, runTaskRequest, type TaskSettings } from '../../functions/env';
import { type RestorePayload, restoreArgv, targetEnvironment } from '../../functions/restore';
import { startCluster } from '../helpers/pg';
import { type PolicyProxy, startPolicyProxy } from '../helpers/s3-policy';
import { startS3Server } from '../helpers/s3-server';
import { type TaskRole, taskRole } from '../helpers/task-role';
import { tempDir } from '../helpers/vault';
import {
  type ArchivingCluster,
  type Batch,
  batchesIn,
  between,
  commitBatch,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * Issue 12, "Restores and drills never touch production": a restore into another server, end to end
 * as the deployment runs it. The restore function's mapping (restoreArgv, targetEnvironment,
 * runTaskRequest) gives the command and the container override; tasks/entry.sh runs it with the
 * restore task definition's environment (the restore credentials as ECS would inject them), under the
 * restore task role's S3 statements from the synthesized template (a proxy answering AccessDenied to
 * anything else), with a stand-in Secrets Manager (AWS_ENDPOINT_URL_SECRETS_MANAGER) holding the
 * target's credentials. The target is a real PostgreSQL on another port that asks for passwords.
 */

const ENTRY = resolve(__dirname, '../../tasks/entry.sh');
const TARGET_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/restore-db-StUvWx';
const DENIED_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/other-db-AaBbCc';
const TARGET_USER = 'restorer';
const TARGET_PASSWORD = 'target-password-from-the-secret-7c1d';
/** What ECS injects as the restore task's own credentials: a user the target does not know. */
const TASK_USER = 'pgvault_restore';
const TASK_PASSWORD = 'restore-task-password-4b2a';

let s3: Awaited<ReturnType<typeof startS3Server>>;
let source: ArchivingCluster;
let target: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
let secretsManager: Server;
let role: TaskRole;
let fullId: string;
const batches: Batch[] = [];
const secretRequests: { target: string; secretId: string }[] = [];

function body(req: IncomingMessage): Promise<string> {
  return new Promise((ok) => {
    let text = '';
    req.on('data', (c: Buffer) => {
      text += c.toString();
    });
    req.on('end', () => ok(text));
  });
}

/** Secrets Manager's JSON protocol, for one secret; any other is refused as IAM would refuse it. */
function startSecretsManager(): Promise<Server> {
  const server = createServer((req, res) => {
    void body(req).then((text) => {
      const { SecretId } = JSON.parse(text) as { SecretId: string };
      secretRequests.push({ target: String(req.headers['x-amz-target']), secretId: SecretId });
      res.setHeader('content-type', 'application/x-amz-json-1.1');
      if (SecretId !== TARGET_SECRET) {
        res.statusCode = 400;
        res.end(
          JSON.stringify({
            __type: 'AccessDeniedException',
            Message: `User is not authorized to perform: secretsmanager:GetSecretValue on resource: ${SecretId}`,
          }),
        );
        return;
      }
      res.end(
        JSON.stringify({
          ARN: TARGET_SECRET,
          Name: 'pgvault/restore-db',
          VersionId: 'v1',
          SecretString: JSON.stringify({ username: TARGET_USER, password: TARGET_PASSWORD }),
        }),
      );
    });
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

/** The cluster entry the restore function reads (the stack writes it from the deployment config). */
function clusterEntry(): ClusterEntry {
  return {
    name: 'main',
    mode: 'single-node',
    host: source.cluster.host,
    port: source.cluster.port,
    database: 'postgres',
    credentialsSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:pgvault/main-AbCdEf',
    restoreTargetSecretArns: [TARGET_SECRET],
  };
}

const SETTINGS: TaskSettings = {
  ecsClusterArn: 'arn:aws:ecs:eu-west-1:123456789012:cluster/pgvault',
  taskDefinitionArn: 'Pgvault-backup-main',
  restoreTaskDefinitionArn: 'Pgvault-restore-main',
  containerName: 'pgvault',
  subnets: ['subnet-0123456789abcdef0'],
  securityGroups: ['sg-0123456789abcdef0'],
  assignPublicIp: false,
};

/** The command and container variables the restore function would send to RunTask for the payload. */
function runTaskOf(payload: RestorePayload): { argv: string[]; environment: Record<string, string> } {
  const entry = clusterEntry();
  const argv = restoreArgv(payload);
  const to = 'target' in payload ? payload.target : undefined;
  const request = runTaskRequest(SETTINGS, entry, {
    argv,
    startedBy: 'pgvault-restore',
    definition: 'restore',
    environment: to === undefined ? undefined : targetEnvironment(entry, to),
  });
  const override = request.overrides!.containerOverrides![0]!;
  const environment: Record<string, string> = {};
  for (const e of override.environment ?? []) environment[e.name!] = e.value!;
  return { argv: override.command!, environment };
}

/** tasks/entry.sh with the restore task definition's environment, the override, and the proxy as S3. */
function runTask(
  run: { argv: string[]; environment: Record<string, string> },
  proxy: PolicyProxy,
): Promise<{ code: number | null; output: string }> {
  // The template's plain settings (CLOUD_PREFIX, RETENTION_*, COMPRESSION, ...); those naming AWS
  // resources are replaced by the test's, and nothing here sends events or alerts.
  const fromTemplate = { ...role.env };
  for (const key of ['EVENT_BUS_NAME', 'SNS_TOPIC_ARN']) delete fromTemplate[key];
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/root',
    ...fromTemplate,
    CLOUD_BUCKET: s3.bucket,
    S3_ENDPOINT: proxy.endpoint,
    S3_LIFECYCLE_TAGS: 'false',
    BACKUP_DIR: join(work.path, 'task'),
    // The restore task definition's secrets (ENCRYPTION_KEY as a file here, the restore credentials).
    ENCRYPTION_KEY_FILE: source.settings.ENCRYPTION_KEY_FILE!,
    ENCRYPTION_ITERATIONS: '1000',
    PGUSER: TASK_USER,
    PGPASSWORD: TASK_PASSWORD,
    AWS_REGION: 'eu-west-1',
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_ENDPOINT_URL_SECRETS_MANAGER: `http://127.0.0.1:${(secretsManager.address() as AddressInfo).port}`,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    PGVAULT_METRICS: 'off',
    ...run.environment,
  };
  return new Promise((ok, fail) => {
    const child = spawn(ENTRY, run.argv, { env, cwd: work.path, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => {
      output += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      output += c.toString();
    });
    child.on('error', fail);
    child.on('close', (code) => ok({ code, output }));
  });
}

async function databases(cluster: TempCluster): Promise<string[]> {
  const rows = await cluster.query<{ datname: string }>(
    'SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1',
  );
  return rows.map((r) => r.datname);
}

/** A target server that asks every user but its bootstrap superuser for a password. */
async function startPasswordTarget(): Promise<TempCluster> {
  const cluster = await startCluster();
  const hba = join(cluster.dataDir, 'pg_hba.conf');
  const superuser = cluster.superuser;
  await writeFile(
    hba,
    `local all all trust\nhost all ${superuser} 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n`,
  );
  await cluster.query(`CREATE ROLE ${TARGET_USER} LOGIN CREATEDB PASSWORD '${TARGET_PASSWORD}'`);
  // Restored objects keep their owner (the source's ${superuser}): the restore user may set it.
  await cluster.query(`GRANT ${superuser} TO ${TARGET_USER}`);
  await cluster.query('SELECT pg_reload_conf()');
  return cluster;
}

beforeAll(async () => {
  [s3, work, secretsManager] = await Promise.all([startS3Server(), tempDir(), startSecretsManager()]);
  // The source server's archive_command (pgvault backup wal) stores WAL in s3rver with these.
  process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey;
  [source, target] = await Promise.all([
    startAppCluster({
      cluster: 'main',
      extra: {
        CLOUD_PROVIDER: 's3',
        CLOUD_BUCKET: s3.bucket,
        CLOUD_PREFIX: 'pgvault',
        S3_ENDPOINT: s3.endpoint,
        LOCAL_COPY: 'false',
      },
    }),
    startPasswordTarget(),
  ]);
  // The restore task's own user on the cluster's server (restoreCredentialsSecretArn): it may create databases.
  await source.cluster.query(`CREATE ROLE ${TASK_USER} LOGIN CREATEDB`);
  await source.cluster.query(`GRANT ${source.cluster.superuser} TO ${TASK_USER}`);
  role = taskRole('restore', 'main', s3.bucket);
  batches.push(await commitBatch(source.cluster, 0));
  fullId = (await backupFull(source.vault(), { schedule: 'daily', databases: ['app'] })).id;
  await backupBase(source.vault(), { schedule: 'weekly' });
  batches.push(await commitBatch(source.cluster, 1));
  await sleep(1100);
  batches.push(await commitBatch(source.cluster, 2));
  await switchAndWaitArchived(source.cluster);
  // restore partial goes into an existing database: the target's, made by its restore user.
  await target.query(`CREATE DATABASE app_part OWNER ${TARGET_USER}`);
}, 180_000);

afterAll(async () => {
  await Promise.all([
    source?.stop(),
    target?.stop(),
    s3?.stop(),
    work?.remove(),
    new Promise((ok) => secretsManager?.close(ok)),
  ]);
});

describe('restore into another server, as the restore function starts it, under the restore task role', () => {
  const TARGET = () => ({
    host: target.host,
    port: target.port,
    database: 'postgres',
    credentialsSecretArn: TARGET_SECRET,
  });

  it.each([
    [
      'full',
      (): RestorePayload => ({
        type: 'full',
        cluster: 'main',
        backup: fullId,
        database: 'app',
        targetDatabase: 'app_copy',
        target: TARGET(),
      }),
      'app_copy',
      { 0: 50 },
    ],
    [
      'partial',
      (): RestorePayload => ({
        type: 'partial',
        cluster: 'main',
        backup: fullId,
        database: 'app',
        table: 'public.t',
        targetDatabase: 'app_part',
        target: TARGET(),
      }),
      'app_part',
      { 0: 50 },
    ],
    [
      'pitr',
      (): RestorePayload => ({
        type: 'pitr',
        cluster: 'main',
        backup: 'auto',
        database: 'app',
        targetDatabase: 'app_pitr',
        time: between(batches[1]!.commitTime, batches[2]!.commitTime),
        target: TARGET(),
      }),
      'app_pitr',
      { 0: 50, 1: 50 },
    ],
  ])(
    '%s: the data lands in the target server, nothing in the source, no secret in the output',
    async (_name, payload, database, expected) => {
      // Prepare
      const proxy = await startPolicyProxy(s3.endpoint, role.statements);
      const sourceBefore = await databases(source.cluster);
      secretRequests.length = 0;

      try {
        // Act
        const run = await runTask(runTaskOf(payload()), proxy);

        // Assess: done, into the target, signed in as the secret's user.
        expect(`exit ${run.code}`, run.output).toBe('exit 0');
        expect(run.output).toContain(`(single-node at ${target.host}:${target.port})`);
        expect(await batchesIn(target, database)).toEqual(expected);
        const owner = await target.query<{ owner: string }>(
          'SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1',
          [database],
        );
        expect(owner[0]?.owner).toBe(TARGET_USER);
        // The source server is untouched.
        expect(await databases(source.cluster)).toEqual(sourceBefore);
        expect(sourceBefore).not.toContain(database);
        // The task read the secret itself, once; no credential is in its output.
        expect(secretRequests).toEqual([
          { target: 'secretsmanager.GetSecretValue', secretId: TARGET_SECRET },
        ]);
        expect(run.output).not.toContain(TARGET_PASSWORD);
        expect(run.output).not.toContain(TASK_PASSWORD);
        // Every S3 request was one the restore task role allows.
        expect(proxy.denied).toEqual([]);
        expect(proxy.seen.some((r) => r.action === 's3:GetObject' && r.key.startsWith('pgvault/main/'))).toBe(
          true,
        );
      } finally {
        await proxy.stop();
      }
    },
    300_000,
  );

  it('restore test (no target: temporary databases) runs under the restore task role too', async () => {
    // Prepare
    const proxy = await startPolicyProxy(s3.endpoint, role.statements);

    try {
      // Act
      const run = await runTask(runTaskOf({ type: 'test', cluster: 'main', backup: fullId }), proxy);

      // Assess
      expect(`exit ${run.code}`, run.output).toBe('exit 0');
      expect(proxy.denied).toEqual([]);
    } finally {
      await proxy.stop();
    }
  }, 300_000);

  it('a secret the task may not read stops it with one line naming the secret, and restores nothing', async () => {
    // Prepare: the function would refuse this ARN; a task started with it (by hand) must fail cleanly.
    const proxy = await startPolicyProxy(s3.endpoint, role.statements);
    const run = runTaskOf({
      type: 'full',
      cluster: 'main',
      backup: fullId,
      database: 'app',
      targetDatabase: 'app_denied',
      target: { host: target.host, port: target.port },
    });
    run.environment.PGVAULT_PG_SECRET_ARN = DENIED_SECRET;

    try {
      // Act
      const r = await runTask(run, proxy);

      // Assess
      expect(r.code).toBe(2);
      const failure = r.output
        .split('\n')
        .filter((l) => l.startsWith('pgvault: ') && !l.startsWith('pgvault: warning'));
      expect(failure).toEqual([
        expect.stringMatching(
          new RegExp(
            `^pgvault: the database credentials cannot be read from ${DENIED_SECRET.replace(/[/.]/g, '\\$&')} \\(AccessDeniedException: User is not authorized .*\\); check that the secret exists and that this task's role may read it \\(restoreTargets of the cluster in the deployment config\\)$`,
          ),
        ),
      ]);
      expect(await databases(target)).not.toContain('app_denied');
      expect(r.output).not.toContain(TASK_PASSWORD);
    } finally {
      await proxy.stop();
    }
  }, 120_000);
});
