import { spawnSync } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config';
import { chownToServerUser, TempCluster } from '../../core/pg/cluster';
import { findPgBinary, pgEnv } from '../../core/pg/tools';
import { tempDir } from '../helpers/vault';

/**
 * Issue 11: libpq settings written in a config file (PGSSLMODE, PGSSLROOTCERT, ...) were ignored:
 * only the process environment reached pg_dump & co., and node-postgres never saw them, so
 * `PGSSLMODE=verify-full` in /etc/pgvault.env gave no TLS and no warning. The server here accepts
 * TLS only (pg_hba: hostssl trust, host reject); the CLI runs with no PG* variable in its environment.
 */
const BIN = resolve(__dirname, '../../bin/pgvault.js');
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
let serverDir: string;

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

/** A self-signed CA in dir: <name>.crt and <name>.key. */
function makeCa(dir: string, name: string): void {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`,
    '-keyout', `${name}.key`, '-out', `${name}.crt`], dir); // biome-ignore format: argv
}

function pgvault(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '', HOME: work.path },
    cwd: work.path,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function configFile(name: string, lines: string[]): string {
  const path = join(work.path, `${name}.env`);
  const text = [
    `BACKUP_DIR=${join(work.path, name)}`,
    'CLUSTER_NAME=main',
    'ENCRYPTION=false',
    'PGHOST=127.0.0.1',
    `PGPORT=${cluster.port}`,
    `PGUSER=${cluster.superuser}`,
    'PGDATABASE=postgres',
    ...lines,
  ].join('\n');
  writeFileSync(path, `${text}\n`);
  return path;
}

/** psql over TCP with the given libpq environment; exit code and stderr. */
function psql(env: Record<string, string>, sql: string) {
  const r = spawnSync(findPgBinary('psql'), ['-X', '-A', '-t', '-c', sql], {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH ?? '',
      PGHOST: '127.0.0.1',
      PGPORT: String(cluster.port),
      PGUSER: cluster.superuser,
      PGDATABASE: 'postgres',
      ...env,
    },
  });
  return { code: r.status, stdout: r.stdout.trim(), stderr: r.stderr };
}

beforeAll(async () => {
  work = await tempDir('pgvault-config-libpq-');
  // The server's files: readable by the postgres user, the key 0600 and owned by it.
  serverDir = await mkdtemp(join(tmpdir(), 'pgvault-tls-'));
  makeCa(work.path, 'ca');
  makeCa(work.path, 'other-ca');
  await writeFile(join(serverDir, 'san.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1',
    '-keyout', join(serverDir, 'server.key'), '-out', join(serverDir, 'server.csr')], serverDir); // biome-ignore format: argv
  openssl(['x509', '-req', '-in', join(serverDir, 'server.csr'), '-CA', join(work.path, 'ca.crt'),
    '-CAkey', join(work.path, 'ca.key'), '-CAcreateserial', '-days', '2',
    '-extfile', join(serverDir, 'san.cnf'), '-out', join(serverDir, 'server.crt')], serverDir); // biome-ignore format: argv
  await writeFile(
    join(serverDir, 'pg_hba.conf'),
    [
      'local all all trust',
      'hostssl all all 127.0.0.1/32 trust',
      'host all all 127.0.0.1/32 reject',
      '',
    ].join('\n'),
  );
  for (const f of ['', 'server.key', 'server.crt', 'pg_hba.conf'])
    await chownToServerUser(join(serverDir, f));
  chmodSync(join(serverDir, 'server.key'), 0o600);
  cluster = await TempCluster.start({
    settings: {
      ssl: 'on',
      ssl_cert_file: join(serverDir, 'server.crt'),
      ssl_key_file: join(serverDir, 'server.key'),
      hba_file: join(serverDir, 'pg_hba.conf'),
    },
  });
  const made = psql({ PGSSLMODE: 'require' }, 'CREATE DATABASE app');
  if (made.code !== 0) throw new Error(made.stderr);
  const filled = psql(
    { PGSSLMODE: 'require', PGDATABASE: 'app' },
    "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g",
  );
  if (filled.code !== 0) throw new Error(filled.stderr);
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  await work?.remove();
  if (serverDir) await rm(serverDir, { recursive: true, force: true });
});

describe('libpq settings from the config file', () => {
  it('the server refuses connections without TLS (the premise of the tests below)', () => {
    // Act
    const plain = psql({ PGSSLMODE: 'disable' }, 'SELECT 1');
    const tls = psql({ PGSSLMODE: 'require' }, 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');

    // Assess
    expect(plain.code).not.toBe(0);
    expect(plain.stderr).toMatch(/no encryption|reject/i);
    expect(tls).toMatchObject({ code: 0, stdout: 't' });
  });

  it('a config-file PGSSLMODE reaches the environment of pg_dump & co., the process environment still winning', () => {
    // Prepare
    const file = configFile('env', ['PGSSLMODE=verify-full', `PGSSLROOTCERT=${join(work.path, 'ca.crt')}`]);

    // Act
    const fromFile = pgEnv(loadConfig({ configFile: file, env: {}, cwd: work.path }).pg, {});
    const envWins = pgEnv(
      loadConfig({ configFile: file, env: { PGSSLMODE: 'require' }, cwd: work.path }).pg,
      { PGSSLMODE: 'require' },
    );

    // Assess
    expect(fromFile).toMatchObject({ PGSSLMODE: 'verify-full', PGSSLROOTCERT: join(work.path, 'ca.crt') });
    expect(envWins.PGSSLMODE).toBe('require');
  });

  it('backup full and restore init succeed over verified TLS with PGSSLMODE=verify-full in the file', () => {
    // Prepare
    const file = configFile('verified', [
      'PGSSLMODE=verify-full',
      `PGSSLROOTCERT=${join(work.path, 'ca.crt')}`,
      'PGAPPNAME=pgvault-tls-test',
    ]);

    // Act
    const backup = pgvault(['--config', file, '--json', 'backup', 'full', 'daily']);
    const init = pgvault(['--config', file, '--json', 'restore', 'init']);
    const restored = pgvault([
      '--config',
      file,
      '--json',
      'restore',
      'full',
      'latest',
      'app_copy',
      '--from',
      'app',
    ]);
    const copy = psql({ PGSSLMODE: 'require', PGDATABASE: 'app_copy' }, 'SELECT count(*), sum(id) FROM t');

    // Assess
    expect(backup.code, backup.stderr).toBe(0);
    const objects = JSON.parse(backup.stdout).manifest.objects.map(
      (o: { kind: string; database?: string }) => o.database ?? o.kind,
    );
    expect(objects).toEqual(expect.arrayContaining(['globals', 'app', 'postgres']));
    expect(init.code, init.stderr).toBe(0);
    expect(restored.code, restored.stderr).toBe(0);
    expect(copy.stdout).toBe('100|5050');
  });

  it('a root certificate of another CA fails in one clear line, non-zero', () => {
    // Prepare
    const file = configFile('wrong-ca', [
      'PGSSLMODE=verify-full',
      `PGSSLROOTCERT=${join(work.path, 'other-ca.crt')}`,
    ]);

    // Act
    const backup = pgvault(['--config', file, 'backup', 'full', 'daily']);
    const init = pgvault(['--config', file, 'restore', 'init']);

    // Assess
    expect(backup.code).toBe(1);
    const lines = backup.stderr.trim().split('\n');
    expect(lines, backup.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^pgvault: cannot connect to PostgreSQL at 127\.0\.0\.1:\d+: unable to verify .*; check PGSSLROOTCERT/,
    );
    expect(init.code).not.toBe(0);
    expect(init.stdout).toMatch(/FAIL +server connection: .*certificate.*check PGSSLROOTCERT/);
  });

  it('verify-ca checks the chain only, verify-full also the host name (PGHOST, with PGHOSTADDR dialled)', () => {
    // Prepare
    const lines = (mode: string) => [
      `PGSSLMODE=${mode}`,
      `PGSSLROOTCERT=${join(work.path, 'ca.crt')}`,
      'PGHOSTADDR=127.0.0.1',
    ];
    const ca = configFile('verify-ca', [...lines('verify-ca')]);
    const full = configFile('verify-full', [...lines('verify-full')]);
    for (const f of [ca, full])
      writeFileSync(f, readFileSync(f, 'utf8').replace('PGHOST=127.0.0.1', 'PGHOST=db.example'));

    // Act
    const chainOnly = pgvault(['--config', ca, '--json', 'backup', 'full', 'daily']);
    const withName = pgvault(['--config', full, 'backup', 'full', 'daily']);

    // Assess
    expect(chainOnly.code, chainOnly.stderr).toBe(0);
    expect(withName.code).toBe(1);
    expect(withName.stderr.trim()).toMatch(
      /^pgvault: cannot connect to PostgreSQL at db\.example:\d+: .*db\.example.*; check PGSSLROOTCERT/,
    );
  });

  it('settings pgvault cannot honour are refused in one line: PGSERVICE, a PGSSLMODE libpq does not know', () => {
    // Prepare
    const service = configFile('service', ['PGSERVICE=prod']);
    const badMode = configFile('bad-mode', ['PGSSLMODE=verify']);

    // Act
    const r1 = pgvault(['--config', service, 'backup', 'full', 'daily']);
    const r2 = pgvault(['--config', badMode, 'backup', 'full', 'daily']);

    // Assess
    expect(r1.code).toBe(2);
    expect(r1.stderr.trim()).toMatch(/^.*PGSERVICE is set, but pgvault's own connections .* set PGHOST/);
    expect(r2.code).toBe(2);
    expect(r2.stderr.trim()).toMatch(/PGSSLMODE=verify is not allowed; use one of disable, allow/);
  });
});
