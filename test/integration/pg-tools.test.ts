import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MissingToolError, PostgresError } from '../../core/errors';
import { TempCluster } from '../../core/pg/cluster';
import {
  clientConfig,
  findPgBinary,
  type PgToolName,
  parseToolVersion,
  pgEnv,
  quoteIdent,
  quoteLiteral,
  toolMajorVersion,
  withClient,
} from '../../core/pg/tools';
import { startCluster } from '../helpers/pg';

/** A port nothing listens on: bound, read, released. */
async function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 1));
    });
  });
}

describe('findPgBinary', () => {
  let emptyDir: string;
  beforeAll(async () => {
    emptyDir = await mkdtemp(join(tmpdir(), 'pgvault-bin-'));
  });
  afterAll(async () => {
    await rm(emptyDir, { recursive: true, force: true });
  });

  it('prefers the newest /usr/lib/postgresql/N/bin, and PG_BIN_DIR when given', () => {
    expect(findPgBinary('pg_dump')).toMatch(/^\/usr\/lib\/postgresql\/\d+\/bin\/pg_dump$/);
    const bin = findPgBinary('pg_dump').replace(/\/pg_dump$/, '');
    expect(findPgBinary('pg_ctl', bin)).toBe(`${bin}/pg_ctl`);
  });

  it('names the package to install when a program is missing', () => {
    expect(() => findPgBinary('pg_nothing' as PgToolName)).toThrow(MissingToolError);
    expect(() => findPgBinary('pg_nothing' as PgToolName)).toThrow(
      /^pg_nothing not found; install it with: apt-get install postgresql-client-\d+ \(or set PG_BIN_DIR\)$/,
    );
    expect(() => findPgBinary('pg_dump', emptyDir)).toThrow(
      new RegExp(`^pg_dump not found in PG_BIN_DIR=${emptyDir}; .*apt-get install postgresql-client-\\d+$`),
    );
    expect(() => findPgBinary('initdb', emptyDir)).toThrow(/apt-get install postgresql-\d+$/);
  });

  it('makes TempCluster say that the server binaries are missing, in one line', async () => {
    await expect(TempCluster.start({ binDir: emptyDir })).rejects.toThrow(
      /^PostgreSQL server binaries not found \(initdb\); install them with: apt-get install postgresql-\d+$/,
    );
  });

  it('reads the major version of a tool', async () => {
    await expect(toolMajorVersion(findPgBinary('pg_dump'))).resolves.toBeGreaterThanOrEqual(11);
    expect(parseToolVersion('pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)')).toBe(15);
    expect(parseToolVersion('pg_restore (PostgreSQL) 17beta1')).toBe(17);
    expect(parseToolVersion('pg_dump (PostgreSQL) 9.6.24')).toBe(9.6);
    expect(parseToolVersion('something else')).toBeUndefined();
    await expect(toolMajorVersion('/bin/true')).rejects.toThrow(PostgresError);
  });
});

describe('pgEnv and clientConfig', () => {
  it('hands the password over in the environment only, and names the application', () => {
    const env = pgEnv(
      { host: 'db.internal', port: 6432, user: 'backup', database: 'shop', password: 's3cret' },
      { PATH: '/usr/bin', PGPASSWORD: 'old' },
    );
    expect(env).toMatchObject({
      PATH: '/usr/bin',
      PGHOST: 'db.internal',
      PGPORT: '6432',
      PGUSER: 'backup',
      PGDATABASE: 'shop',
      PGPASSWORD: 's3cret',
      PGAPPNAME: 'pgvault',
      PGCONNECT_TIMEOUT: '10',
    });
  });

  it('keeps what the connection leaves out from the base environment', () => {
    const env = pgEnv({ host: 'h' }, { PGPASSWORD: 'from-env', PGCONNECT_TIMEOUT: '3' });
    expect(env.PGPASSWORD).toBe('from-env');
    expect(env.PGCONNECT_TIMEOUT).toBe('3');
    expect(env.PGPORT).toBeUndefined();
  });

  it('leaves the password undefined for node-postgres to find in PGPASSWORD or .pgpass', () => {
    const config = clientConfig({ host: 'h', port: 5433, user: 'u', database: 'a' }, 'b');
    expect(config).toMatchObject({
      host: 'h',
      port: 5433,
      user: 'u',
      database: 'b',
      application_name: 'pgvault',
    });
    expect(config.password).toBeUndefined();
    expect(config.connectionTimeoutMillis).toBe(10_000);
  });
});

describe('withClient against a real server', () => {
  let cluster: TempCluster;
  beforeAll(async () => {
    cluster = await startCluster();
    await cluster.query("CREATE ROLE pw_user LOGIN PASSWORD 'right-password'");
    // Password authentication for this one role; everything else keeps trust.
    const hba = join(cluster.dataDir, 'pg_hba.conf');
    await writeFile(hba, `host all pw_user 127.0.0.1/32 scram-sha-256\n${await readFile(hba, 'utf8')}`);
    await cluster.query('SELECT pg_reload_conf()');
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('runs the function and closes the connection even when the function fails', async () => {
    const boom = new Error('boom');
    await expect(
      withClient(cluster.connection(), 'postgres', async (c) => {
        await c.query('SELECT 1');
        throw boom;
      }),
    ).rejects.toBe(boom);
    // A backend leaves pg_stat_activity a moment after its client hung up.
    let others = '';
    for (let attempt = 0; attempt < 50 && others !== '0'; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, 50));
      const rows = await cluster.query<{ n: string }>(
        "SELECT count(*)::text AS n FROM pg_stat_activity WHERE application_name = 'pgvault' AND pid <> pg_backend_pid()",
      );
      others = rows[0]?.n ?? '';
    }
    expect(others).toBe('0');
  });

  it('explains a refused connection', async () => {
    const port = await closedPort();
    await expect(withClient({ host: '127.0.0.1', port }, undefined, async () => 1)).rejects.toThrow(
      `cannot connect to PostgreSQL at 127.0.0.1:${port} (ECONNREFUSED); check PGHOST/PGPORT and that the server is running`,
    );
  });

  it('explains a wrong password, and works with the right one', async () => {
    const conn = { ...cluster.connection(), user: 'pw_user' };
    await expect(withClient({ ...conn, password: 'wrong' }, 'postgres', async () => 1)).rejects.toThrow(
      /password authentication failed for user "pw_user"; check PGUSER\/PGPASSWORD or \.pgpass$/,
    );
    const who = await withClient({ ...conn, password: 'right-password' }, 'postgres', async (c) => {
      const r = await c.query<{ u: string }>('SELECT current_user AS u');
      return r.rows[0]?.u;
    });
    expect(who).toBe('pw_user');
  });

  it('explains a missing database', async () => {
    const err = await withClient(cluster.connection(), 'no_such_db', async () => 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PostgresError);
    expect((err as Error).message).toMatch(/^database "no_such_db" does not exist on 127\.0\.0\.1:\d+/);
  });

  it('quotes identifiers and literals so the server reads them back unchanged', async () => {
    const awkward = `it's a "name" with \\ back\\slash, ünïcode and ;semicolons`;
    const rows = await cluster.query<{ v: string }>(`SELECT ${quoteLiteral(awkward)} AS v`);
    expect(rows[0]?.v).toBe(awkward);
    await cluster.query(`CREATE TABLE ${quoteIdent(awkward)} (${quoteIdent('Mixed Case')} int)`);
    const tables = await cluster.query<{ relname: string }>(
      'SELECT relname FROM pg_class WHERE relname = $1',
      [awkward.slice(0, 63)],
    );
    expect(tables).toHaveLength(1);
    expect(quoteIdent('a"b')).toBe('"a""b"');
    expect(quoteLiteral("o'k")).toBe("'o''k'");
    expect(quoteLiteral('a\\b')).toBe("E'a\\\\b'");
    expect(() => quoteLiteral('nul\0')).toThrow(PostgresError);
  });
});
