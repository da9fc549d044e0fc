import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { createSampleData, startCluster } from '../helpers/pg';
import { isAllowed, type PolicyProxy, startPolicyProxy } from '../helpers/s3-policy';
import { startS3Server } from '../helpers/s3-server';
import { type TaskRole, taskRole } from '../helpers/task-role';
import { tempDir } from '../helpers/vault';
import { testConfig } from '../infra/synth';

/**
 * Issue 12: commands run under the IAM role the synthesized template gives their task, against
 * s3rver behind a proxy that answers AccessDenied to whatever the role's S3 statements do not allow.
 * Every scheduled backup failed in AWS because the probe wrote at the repository root
 * (`pgvault/.pgvault-probe-*`) while the backup task role may write only `pgvault/<cluster>/*`.
 */
const BIN = resolve(__dirname, '../../bin/pgvault.js');
let cluster: TempCluster;
let s3: Awaited<ReturnType<typeof startS3Server>>;
let work: Awaited<ReturnType<typeof tempDir>>;
let n = 0;

beforeAll(async () => {
  [cluster, s3, work] = await Promise.all([startCluster(), startS3Server(), tempDir()]);
  await createSampleData(cluster, 'app');
}, 120_000);

afterAll(async () => {
  await Promise.all([cluster?.stop(), s3?.stop(), work?.remove()]);
});

/** Runs the built CLI with the task's S3 settings, the endpoint being the enforcing proxy. */
function cli(
  role: TaskRole,
  proxy: PolicyProxy,
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return startCli(role, proxy, args).done;
}

/** As cli(), but hands back the child too (for a command that runs until stopped). */
function startCli(
  role: TaskRole,
  proxy: PolicyProxy,
  args: string[],
): { child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const file = `${work.path}/cli-${++n}.env`;
  const settings = {
    CLUSTER_NAME: role.env.CLUSTER_NAME ?? 'main',
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    CLOUD_PREFIX: role.env.CLOUD_PREFIX ?? 'pgvault',
    // As deployed: every write carries its lifecycle tag (S3 authorizes it as s3:PutObjectTagging).
    S3_LIFECYCLE_TAGS: role.env.S3_LIFECYCLE_TAGS ?? 'false',
    S3_ENDPOINT: proxy.endpoint,
    LOCAL_COPY: 'false',
    BACKUP_DIR: `${work.path}/local-${n}`,
    COMPRESSION: 'zstd',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: 'role scoped test passphrase',
    ENCRYPTION_ITERATIONS: '1000',
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: 'postgres',
  };
  const lines = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
  writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
  const child = spawn(process.execPath, [BIN, '--config', file, ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/root',
      AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    },
    cwd: work.path,
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
  return { child, done };
}

describe('S3 statements evaluator', () => {
  it('allows only what the backup task role of the example config allows', () => {
    // Prepare
    const role = taskRole('backup', 'main', 'vault');
    const objects = (action: string, key: string) => ({ action, resource: `arn:aws:s3:::vault/${key}` });

    // Assess: the cluster's folder yes, the repository root and another cluster no.
    expect(role.env.CLUSTER_NAME).toBe('main');
    expect(isAllowed(role.statements, objects('s3:PutObject', 'pgvault/main/full/daily/x'))).toBe(true);
    expect(isAllowed(role.statements, objects('s3:PutObject', 'pgvault/.pgvault-probe-1'))).toBe(false);
    expect(isAllowed(role.statements, objects('s3:GetObject', 'pgvault/orders/keys.json'))).toBe(false);
    const listing = (prefix: string) => ({ action: 's3:ListBucket', resource: 'arn:aws:s3:::vault', prefix });
    expect(isAllowed(role.statements, listing('pgvault/main/full/'))).toBe(true);
    expect(isAllowed(role.statements, listing('pgvault/'))).toBe(false);
  });
});

describe('commands under their task role (issue 12)', () => {
  it('runs the dispatched backup and verify commands under the backup task role, touching only keys it allows', async () => {
    // Prepare
    const role = taskRole('backup', 'main', s3.bucket);
    const proxy = await startPolicyProxy(s3.endpoint, role.statements);
    const commands = [
      ['backup', 'full', 'daily'],
      ['backup', 'base', 'daily'],
      ['backup', 'config'],
      ['backup', 'indexes'],
      ['verify', 'restore', 'latest'],
      ['drill'],
    ];

    try {
      // Act
      const outcomes: string[] = [];
      for (const command of commands) {
        const run = await cli(role, proxy, [...command, '--json']);
        outcomes.push(
          `${command.join(' ')}: exit ${run.code}${run.code === 0 ? '' : ` ${run.stderr.trim()}`}`,
        );
      }

      // Assess: every command succeeds, and no request was refused (a refusal survived is a bug too).
      expect(outcomes).toEqual(commands.map((c) => `${c.join(' ')}: exit 0`));
      expect(proxy.denied).toEqual([]);
      expect(
        proxy.seen.some((r) => r.action === 's3:PutObject' && r.key.startsWith('pgvault/main/full/')),
      ).toBe(true);
    } finally {
      await proxy.stop();
    }
  }, 300_000);

  it('archives a WAL segment under the WAL receiver task role, touching only keys it allows', async () => {
    // Prepare: the receiver's role (cluster `orders` receives WAL in the example) and one segment.
    const role = taskRole('wal-receive', 'orders', s3.bucket);
    const proxy = await startPolicyProxy(s3.endpoint, role.statements);
    const walDir = join(cluster.dataDir, 'pg_wal');
    await cluster.psql('CREATE TABLE IF NOT EXISTS walmark (v int); INSERT INTO walmark VALUES (1)', 'app');
    await cluster.psql('SELECT pg_switch_wal()', 'postgres');
    const segment = readdirSync(walDir)
      .filter((f) => /^[0-9A-F]{24}$/.test(f))
      .sort()[0]!;
    // The server archives nothing here (archive_mode off): mark the finished segment as PostgreSQL would.
    writeFileSync(join(walDir, 'archive_status', `${segment}.ready`), '');

    try {
      // Act
      const run = await cli(role, proxy, ['backup', 'wal', join(walDir, segment)]);

      // Assess
      expect(`exit ${run.code} ${run.stderr.trim()}`).toBe('exit 0 ');
      expect(proxy.denied).toEqual([]);
      expect(
        proxy.seen.some((r) => r.action === 's3:PutObject' && r.key.startsWith('pgvault/orders/wal/')),
      ).toBe(true);
    } finally {
      await proxy.stop();
    }
  }, 120_000);
});

describe('PITR under the deployment’s roles (issue 12, leftover)', () => {
  it('backup init and a base backup (backup task role), wal receive (its receiver role), then drill --pitr (backup task role): nothing refused', async () => {
    // Prepare: every cluster receives WAL, so `main` has a receiver role; its backup role is the same.
    const config = testConfig({ walReceive: { enabled: true, cpu: 512, memoryMiB: 1024 } });
    const backupRole = taskRole('backup', 'main', s3.bucket, config);
    const receiverRole = taskRole('wal-receive', 'main', s3.bucket, config);
    expect(receiverRole.env.CLUSTER_NAME).toBe('main');
    const backupProxy = await startPolicyProxy(s3.endpoint, backupRole.statements);
    const receiverProxy = await startPolicyProxy(s3.endpoint, receiverRole.statements);
    const heartbeat = join(work.path, 'receiver.alive');
    const outcome = (command: string[], run: { code: number | null; stderr: string }) =>
      `${command.join(' ')}: exit ${run.code}${run.code === 0 ? '' : ` ${run.stderr.trim()}`}`;

    try {
      // Act: the receiver streams from before the base backup, so the archive holds its WAL.
      const receiver = startCli(receiverRole, receiverProxy, [
        'wal',
        'receive',
        '--slot',
        'pgvault_roles',
        '--heartbeat',
        heartbeat,
      ]);
      const outcomes: string[] = [];
      for (const command of [
        ['backup', 'init'],
        ['backup', 'base', 'daily'],
      ]) {
        outcomes.push(outcome(command, await cli(backupRole, backupProxy, [...command, '--json'])));
      }
      await cluster.psql(
        'CREATE TABLE IF NOT EXISTS pitr_mark (v int); INSERT INTO pitr_mark VALUES (1)',
        'app',
      );
      await sleep(1100);
      const target = new Date().toISOString();
      await sleep(1100);
      await cluster.psql('INSERT INTO pitr_mark VALUES (2)', 'app');
      const [row] = await cluster.query<{ name: string }>(
        'SELECT pg_walfile_name(pg_current_wal_lsn()) AS name',
      );
      const name = row!.name;
      await cluster.psql('SELECT pg_switch_wal()', 'postgres');
      const stored = () =>
        receiverProxy.seen.some(
          (r) => r.action === 's3:PutObject' && r.key.includes(`/wal/`) && r.key.includes(name),
        );
      const deadline = Date.now() + 60_000;
      while (!stored() && receiver.child.exitCode === null && Date.now() < deadline) await sleep(200);
      receiver.child.kill('SIGTERM');
      const received = await receiver.done;
      outcomes.push(outcome(['wal', 'receive'], received));
      const drill = ['drill', '--pitr', '--target-time', target];
      const drilled = await cli(backupRole, backupProxy, [...drill, '--json']);
      outcomes.push(outcome(drill, drilled));

      // Assess: each command succeeds under its own role and no request was refused.
      expect(outcomes).toEqual([
        'backup init: exit 0',
        'backup base daily: exit 0',
        'wal receive: exit 0',
        `${drill.join(' ')}: exit 0`,
      ]);
      expect(backupProxy.denied).toEqual([]);
      expect(receiverProxy.denied).toEqual([]);
      expect(stored()).toBe(true);
      expect(receiverProxy.seen.every((r) => r.key === '' || r.key.startsWith('pgvault/main/'))).toBe(true);
      expect(JSON.parse(drilled.stdout)).toMatchObject({ ok: true, kind: 'pitr' });
      expect(
        backupProxy.seen.some((r) => r.action === 's3:PutObject' && r.key.startsWith('pgvault/main/drills/')),
      ).toBe(true);
    } finally {
      await Promise.all([backupProxy.stop(), receiverProxy.stop()]);
    }
  }, 420_000);
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
