import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { tempDir } from '../helpers/vault';

/**
 * The CLI as an operator runs it: a config file, the guide's command forms, one line on failure,
 * --json for machines. Runs the built CLI (npm test builds first).
 */
const BIN = resolve(__dirname, '../../bin/pgvault.js');
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
let configFile: string;
const KEY = 'cli test passphrase';
/** Everything the CLI printed, to prove the key never appears in it. */
const transcript: string[] = [];

function pgvault(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, '--config', configFile, ...args], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', ...env },
    cwd: work.path,
  });
  transcript.push(r.stdout, r.stderr);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function json(args: string[]) {
  const r = pgvault([...args, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir()]);
  await createSampleData(cluster, 'app');
  writeFileSync(`${work.path}/key`, `${KEY}\n`, { mode: 0o600 });
  configFile = `${work.path}/pgvault.env`;
  writeFileSync(
    configFile,
    [
      `BACKUP_DIR=${work.path}/backups`,
      'COMPRESSION=zstd',
      'ENCRYPTION=true',
      `ENCRYPTION_KEY_FILE=${work.path}/key`,
      'ENCRYPTION_ITERATIONS=20000',
      `PGHOST=${cluster.host}`,
      `PGPORT=${cluster.port}`,
      `PGUSER=${cluster.superuser}`,
      'PGDATABASE=postgres',
      'CLUSTER_NAME=main',
    ].join('\n'),
  );
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

describe('pgvault CLI', () => {
  it('init, back up, list, verify, test-restore and report stats', () => {
    // Act
    const init = json(['backup', 'init']);
    const backup = json(['backup', 'full', 'daily']);
    const list = json(['restore', 'list']);
    const verify = json(['verify', 'file', 'latest']);
    const test = json(['restore', 'test', 'latest', '--from', 'app']);
    const stats = json(['backup', 'stats']);

    // Assess
    expect(init.ok).toBe(true);
    expect(backup.manifest.id).toMatch(/^full-daily-\d{8}-\d{6}$/);
    expect(
      backup.manifest.objects.map((o: { kind: string; database?: string }) => o.database ?? o.kind),
    ).toEqual(expect.arrayContaining(['globals', 'app', 'postgres']));
    expect(list.backups[0].id).toBe(backup.manifest.id);
    expect(list.backups[0].encrypted).toBe(true);
    expect(verify.objects.length).toBe(backup.manifest.objects.length);
    expect(test.databases.map((d: { database: string }) => d.database)).toEqual(['app']);
    expect(test.databases[0].mismatches).toEqual([]);
    expect(test.restoreMs).toBeGreaterThan(0);
    expect(stats.byType.find((t: { type: string }) => t.type === 'full/daily').count).toBe(1);
  });

  it('keeps secrets out of manifests and output', () => {
    // grep exits 1 when nothing matches: the key is in no stored file.
    const grep = spawnSync('grep', ['-rl', KEY, `${work.path}/backups`], { encoding: 'utf8' });
    expect(grep.status, grep.stdout).toBe(1);
    expect(transcript.length).toBeGreaterThan(10);
    expect(transcript.filter((t) => t.includes(KEY))).toEqual([]);
  });

  it("restores a database from a path, in the guide's form", () => {
    // Prepare
    const list = json(['restore', 'list']);
    const id = list.backups[0].id as string;
    const path = `${work.path}/backups/main/full/daily/${id}.app.dump.zst.enc`;

    // Act
    const r = pgvault(['restore', 'full', path, 'app_copy', '--from', 'app']);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/restored app from full-daily-.* into "app_copy"/);
  });

  it('restored data equals the source', async () => {
    for (const t of Object.keys(SAMPLE_TABLES)) {
      expect(await tableContents(cluster, 'app_copy', t)).toBe(await tableContents(cluster, 'app', t));
    }
  });

  it('refuses bad input with one line and a non-zero exit', () => {
    const badCompression = pgvault(['backup', 'full'], { COMPRESSION: 'brotli' });
    expect(badCompression.code).toBe(2);
    expect(badCompression.stderr.trim()).toBe(
      'pgvault: COMPRESSION=brotli is not allowed; use one of gzip, bzip2, xz, zstd, lz4, none',
    );

    const badSchedule = pgvault(['backup', 'full', 'hourly']);
    expect(badSchedule.code).toBe(2);
    expect(badSchedule.stderr.trim().split('\n')).toHaveLength(1);

    const unknown = pgvault(['restore', 'full', 'full-daily-20000101-000000']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/backup full-daily-20000101-000000 not found/);

    const notEmpty = pgvault(['restore', 'full', 'latest', 'app', '--from', 'app']);
    expect(notEmpty.code).toBe(2);
    expect(notEmpty.stderr).toMatch(/"app" is not empty/);
  });

  it('an interrupted backup removes what it stored and exits 130', async () => {
    // Prepare: enough data, compressed hard enough, that the backup is still running after a moment.
    await cluster.psql(
      'CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 400000) g',
      'app',
    );
    const dir = `${work.path}/backups/main/full/manual`;
    const child = spawn(process.execPath, [BIN, '--config', configFile, 'backup', 'full', 'manual'], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/root',
        COMPRESSION: 'xz',
        COMPRESSION_LEVEL: '9',
        PARALLEL_JOBS: '1',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    // Wait until the first object (globals) is stored, then a little more, then interrupt.
    for (let i = 0; i < 100 && !/dump app/.test(stderr); i++) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 300));

    // Act
    child.kill('SIGINT');
    const code = await exited;

    // Assess
    expect(stderr).toMatch(/dump app/);
    expect(code).toBe(130);
    expect(stderr).toMatch(/interrupted by SIGINT/);
    const left = existsSync(dir) ? readdirSync(dir) : [];
    expect(left).toEqual([]);
    await cluster.psql('DROP TABLE big', 'app');
  });

  it('prints the guide crontab with absolute paths and the config file', () => {
    const r = pgvault(['backup', 'schedule']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      `0 2 * * * ${process.execPath} ${BIN} --config ${configFile} backup full daily`,
    );
    expect(r.stdout).toContain('0 6 * * * ');
    expect(r.stdout).toContain('verify all');
  });
});
