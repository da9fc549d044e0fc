import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { startCluster } from '../helpers/pg';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { tempDir } from '../helpers/vault';

/**
 * A stored object that fails to decode is corruption: `verify file` exits 3 (integrity) and names
 * the object, whatever program noticed first (zstd's "Data corruption detected"), and says when
 * another target holds an intact copy. Run through the CLI, as a user would.
 */

const BIN = resolve(__dirname, '../../bin/pgvault');

let cluster: TempCluster;
let s3: S3TestServer;
let work: { path: string; remove(): Promise<void> };

function pgvault(configFile: string, args: string[]) {
  const r = spawnSync(BIN, ['--config', configFile, ...args], {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH ?? '',
      HOME: '/root',
      AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    },
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function writeConfig(name: string, settings: Record<string, string>): string {
  const path = join(work.path, name);
  writeFileSync(
    path,
    `${Object.entries({
      PGHOST: cluster.host,
      PGPORT: String(cluster.port),
      PGUSER: cluster.superuser,
      PGDATABASE: 'decode_src',
      COMPRESSION: 'zstd',
      PARALLEL_JOBS: '1',
      ...settings,
    })
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    { mode: 0o600 },
  );
  return path;
}

/** Every file under dir whose name ends with `suffix`. */
function filesEnding(dir: string, suffix: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...filesEnding(path, suffix));
    else if (entry.name.endsWith(suffix)) found.push(path);
  }
  return found;
}

/**
 * Flips one byte early in the zstd frame (past its header, long before its checksum): zstd reports
 * "Data corruption detected" while the stored sha256 is still being computed.
 */
function flipEarlyByte(path: string): void {
  const data = readFileSync(path);
  const at = Math.floor(data.length / 20);
  data[at] = data[at]! ^ 0xff;
  writeFileSync(path, data);
}

beforeAll(async () => {
  cluster = await startCluster();
  await cluster.query('CREATE DATABASE decode_src');
  await cluster.query(
    'CREATE TABLE t AS SELECT g AS id, md5(g::text) AS note, md5((g * 7)::text) AS other FROM generate_series(1, 300000) g',
    [],
    'decode_src',
  );
  s3 = await startS3Server('pgvault-decode');
  work = await tempDir('pgvault-decode-');
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  await s3?.stop();
  await work?.remove();
});

describe('a stored object that cannot be decoded', () => {
  it('verify file exits 3 naming the object (one target)', async () => {
    // Prepare
    const backupDir = join(work.path, 'one');
    const config = writeConfig('one.env', { BACKUP_DIR: backupDir });
    const backup = pgvault(config, ['--json', 'backup', 'full', 'manual', '--database', 'decode_src']);
    expect(backup.code, backup.stderr).toBe(0);
    const id = (JSON.parse(backup.stdout) as { manifest: { id: string } }).manifest.id;
    const [dump] = filesEnding(backupDir, '.dump.zst');
    expect(dump).toBeDefined();
    expect(statSync(dump!).size).toBeGreaterThan(1000);
    flipEarlyByte(dump!);

    // Act
    const verify = pgvault(config, ['verify', 'file', id]);

    // Assert
    expect(verify.stderr).toMatch(/corrupt/);
    expect(verify.stderr).toContain(dump!.slice(backupDir.length + 1));
    expect(verify.code).toBe(3);
  });

  it('restore full refuses the damaged object with exit 3 naming it, and creates nothing', async () => {
    // Prepare: the damaged backup of the test above.
    const backupDir = join(work.path, 'one');
    const config = join(work.path, 'one.env');
    const [dump] = filesEnding(backupDir, '.dump.zst');

    // Act
    const restore = pgvault(config, ['restore', 'full', 'latest', 'decode_one', '--from', 'decode_src']);

    // Assert
    expect(restore.code).toBe(3);
    expect(restore.stderr).toContain(dump!.slice(backupDir.length + 1));
    const [exists] = await cluster.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_database WHERE datname = 'decode_one'",
    );
    expect(exists!.n).toBe(0);
  });

  it('verify file names the target holding an intact copy', async () => {
    // Prepare
    const backupDir = join(work.path, 'two');
    const config = writeConfig('two.env', {
      BACKUP_DIR: backupDir,
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      CLOUD_PREFIX: 'two',
      S3_ENDPOINT: s3.endpoint,
      LOCAL_COPY: 'true',
    });
    const backup = pgvault(config, ['--json', 'backup', 'full', 'manual', '--database', 'decode_src']);
    expect(backup.code, backup.stderr).toBe(0);
    const id = (JSON.parse(backup.stdout) as { manifest: { id: string } }).manifest.id;
    const [dump] = filesEnding(backupDir, '.dump.zst');
    flipEarlyByte(dump!);

    // Act
    const verify = pgvault(config, ['verify', 'file', id]);

    // Assert
    expect(verify.code).toBe(3);
    expect(verify.stderr).toContain(dump!.slice(backupDir.length + 1));
    expect(verify.stderr).toMatch(/intact copy is in s3:\/\/pgvault-decode\/two/);

    // And a restore takes the intact copy, saying which one was damaged.
    const restore = pgvault(config, ['restore', 'full', id, 'decode_two', '--from', 'decode_src']);
    expect(restore.code, restore.stderr).toBe(0);
    expect(restore.stderr).toContain(`file://${backupDir}`);
    const [rows] = await cluster.query<{ n: number }>('SELECT count(*)::int AS n FROM t', [], 'decode_two');
    expect(rows!.n).toBe(300000);
  });
});
