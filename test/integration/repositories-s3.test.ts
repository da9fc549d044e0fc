import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { S3Target } from '../../core/storage/s3';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { tempDir } from '../helpers/vault';
import {
  CLUSTER_NAME,
  readSegment,
  sha256,
  startWalFixture,
  type WalFixture,
  walKeyPath,
} from './wal-fixture';

/**
 * Issue 14, "Repositories", with a file repository and an S3 one (s3rver behind the fault proxy,
 * through the built CLI): the S3 repository answering 503 to every upload during a backup, then back
 * and caught up by `repo sync`; a restore reading from S3 when the file copy is gone; WAL archived by
 * PostgreSQL's archiver into both and read back by restore_command from S3 when the file copy is gone.
 */
let s3: S3TestServer;
let proxy: FaultProxy;
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [s3, cluster, work] = await Promise.all([
    startS3Server('pgvault-repos'),
    startCluster(),
    tempDir('pgvault-repos-s3-'),
  ]);
  proxy = await startFaultProxy(s3.endpoint);
  await createSampleData(cluster, 'shop');
}, 120_000);

afterAll(async () => {
  await Promise.all([cluster?.stop(), proxy?.stop(), work?.remove()]);
  await s3?.stop();
});

function s3Settings(prefix: string, endpoint = proxy.endpoint): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    REPO2_TYPE: 's3',
    REPO2_BUCKET: s3.bucket,
    REPO2_PREFIX: prefix,
    REPO2_S3_ENDPOINT: endpoint,
    REPO2_S3_MAX_ATTEMPTS: '2',
    REPO2_HOLDS: 'full,wal,config,reports',
  };
}

function bucket(prefix: string): S3Target {
  return new S3Target({
    bucket: s3.bucket,
    prefix,
    region: s3.region,
    endpoint: s3.endpoint,
    credentials: s3.credentials,
  });
}

async function keysIn(target: S3Target, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of target.list(prefix)) keys.push(o.key);
  return keys;
}

describe('file + s3 repositories', () => {
  it('an S3 repository failing every upload: exit non-zero naming it, the file copy whole; repo sync fills S3, a restore then reads it', async () => {
    // Prepare
    const repo1 = join(work.path, 'local');
    const settings = {
      CLUSTER_NAME: 'main',
      PGHOST: cluster.host,
      PGPORT: String(cluster.port),
      PGUSER: cluster.superuser,
      PGDATABASE: 'postgres',
      ENCRYPTION: 'true',
      ENCRYPTION_KEY: 'repositories round trip key, long enough',
      ENCRYPTION_ITERATIONS: '1000',
      REPO1_TYPE: 'file',
      REPO1_PATH: repo1,
      ...s3Settings('cloud'),
    };
    const file = join(work.path, 'pgvault.conf');
    await writeFile(
      file,
      `${Object.entries(settings)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
      { mode: 0o600 },
    );
    const pgvault = (args: string[]) =>
      runPgvault(
        ['--config', file, ...args],
        { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
        work.path,
      );
    const cloud = bucket('cloud');
    const down = proxy.addRule({
      method: 'PUT',
      key: /^cloud\/main\/full\/daily\/.*\.shop\.dump/,
      action: { kind: 'status', status: 503 },
    });

    // Act
    const backup = await pgvault(['--json', 'backup', 'full', 'daily', '--database', 'shop']);
    const inCloudAfterFailure = await keysIn(cloud, 'main/full/');
    const hits = proxy.hits(down);
    proxy.clearRules();
    const sync = await pgvault(['--json', 'repo', 'sync', '--from', '1', '--to', '2']);
    const inCloudAfterSync = await keysIn(cloud, 'main/full/');
    rmSync(join(repo1, 'main', 'full'), { recursive: true });
    const restore = await pgvault(['--json', 'restore', 'full', 'latest', 'shop_from_s3', '--from', 'shop']);

    // Assess
    expect(hits, backup.stderr).toBeGreaterThan(0);
    expect(backup.code).not.toBe(0);
    expect(backup.stderr).toMatch(/but not in repo2 \(s3:\/\/pgvault-repos\/cloud\)/);
    expect(backup.stderr).not.toContain(s3.credentials.secretAccessKey);
    expect(inCloudAfterFailure).toEqual([]);
    expect(sync.code, sync.stderr).toBe(0);
    const copied = JSON.parse(sync.stdout).copied as { kind: string; name: string }[];
    expect(copied.filter((c) => c.kind === 'backup')).toHaveLength(1);
    expect(inCloudAfterSync.filter((k) => k.endsWith('.manifest.json'))).toHaveLength(1);
    expect(restore.code, restore.stderr).toBe(0);
    for (const table of Object.keys(SAMPLE_TABLES)) {
      expect(await tableContents(cluster, 'shop_from_s3', table), table).toBe(
        await tableContents(cluster, 'shop', table),
      );
    }
  });
});

describe('WAL with a file and an S3 repository', () => {
  let fx: WalFixture;

  beforeAll(async () => {
    // s3rver itself, not the proxy: the fixture runs the CLI synchronously, and the proxy lives in
    // this process. The credentials are in the config file (the server's environment lacks them).
    fx = await startWalFixture({ ...s3Settings('pitr', s3.endpoint) }, { archiveCommand: '' });
  }, 120_000);

  afterAll(async () => {
    await fx?.stop();
  });

  it('archive_command stores each segment in both; restore wal falls back to S3 when the file copy is gone', async () => {
    // Prepare: repo1 is the fixture's vault folder (BACKUP_DIR there stays shared, as allowed).
    const { appendFileSync } = await import('node:fs');
    appendFileSync(fx.configFile, `REPO1_TYPE=file\nREPO1_PATH=${fx.vaultDir}\n`);
    await fx.setArchiveCommand(
      `${join(__dirname, '../../bin/pgvault')} --config ${fx.configFile} backup wal %p`,
    );
    const names = await fx.makeSegments(2);
    await fx.waitArchived(names[names.length - 1]!, 60_000);
    const cloud = bucket('pitr');
    const restoreDir = join(fx.work, 'restore');
    mkdirSync(join(restoreDir, 'pg_wal'), { recursive: true });

    // Act
    const inCloud = await keysIn(cloud, `${CLUSTER_NAME}/wal/`);
    const local = names.map((n) => existsSync(walKeyPath(fx.vaultDir, n)));
    rmSync(walKeyPath(fx.vaultDir, names[0]!));
    const fetched = fx.pgvault(['restore', 'wal', names[0]!, 'pg_wal/RECOVERYXLOG'], { cwd: restoreDir });

    // Assess
    expect(local).toEqual([true, true]);
    for (const n of names) expect(inCloud.some((k) => k.includes(n))).toBe(true);
    expect(fetched.code, fetched.stderr).toBe(0);
    expect(fetched.stderr).toMatch(
      new RegExp(`${names[0]} is not in file://.*; read it from s3://pgvault-repos/pitr`),
    );
    const bytes = readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG'));
    expect(sha256(bytes)).toBe(sha256(readSegment(fx.cluster, names[0]!)));
    expect(readdirSync(join(restoreDir, 'pg_wal'))).toContain('RECOVERYXLOG');
  });
});
