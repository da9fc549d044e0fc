import { spawn } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { createSampleData, startCluster } from '../helpers/pg';
import { isAllowed, type PolicyProxy, startPolicyProxy } from '../helpers/s3-policy';
import { startS3Server } from '../helpers/s3-server';
import { type TaskRole, taskRole } from '../helpers/task-role';
import { tempDir } from '../helpers/vault';

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
  const file = `${work.path}/cli-${++n}.env`;
  const settings = {
    CLUSTER_NAME: role.env.CLUSTER_NAME ?? 'main',
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    CLOUD_PREFIX: role.env.CLOUD_PREFIX ?? 'pgvault',
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
  return new Promise((done) => {
    const child = spawn(process.execPath, [BIN, '--config', file, ...args], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/root',
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      },
      cwd: work.path,
    });
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
