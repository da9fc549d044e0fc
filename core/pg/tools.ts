import { accessSync, constants, readdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { Client, ClientConfig } from 'pg';
import { LIBPQ_KEYS, type PgConnection } from '../config';
import { ConfigError, errorMessage, MissingToolError, PostgresError } from '../errors';
import { toolVersionOutput } from '../stream/process';
import { resolveConnection, resolvedConnection } from '../topology';
import { connectTimeoutSeconds, type NodePgSsl, refuseUnsupported, sslAttempts } from './libpq';

export type PgToolName =
  | 'pg_dump'
  | 'pg_dumpall'
  | 'pg_restore'
  | 'psql'
  | 'pg_basebackup'
  | 'pg_receivewal'
  | 'pg_verifybackup'
  | 'pg_combinebackup'
  | 'initdb'
  | 'pg_ctl'
  | 'postgres'
  | 'pg_controldata';

/** Where Debian and Ubuntu install each major version side by side (/usr/lib/postgresql/15/bin, ...). */
const VERSIONED_ROOT = '/usr/lib/postgresql';

/** Binaries the Debian package postgresql-NN ships; the rest come with postgresql-client-NN. */
const SERVER_TOOLS: ReadonlySet<PgToolName> = new Set(['initdb', 'pg_ctl', 'postgres', 'pg_controldata']);

export const PG_APPLICATION_NAME = 'pgvault';

/** Connection attempts give up after this long, so an unreachable host fails in seconds, not minutes. */
export const CONNECT_TIMEOUT_SECONDS = 10;

const binaryCache = new Map<string, string>();

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Installed major versions under /usr/lib/postgresql, newest first. */
export function installedMajors(): string[] {
  let names: string[];
  try {
    names = readdirSync(VERSIONED_ROOT);
  } catch {
    return [];
  }
  return names.filter((n) => /^\d+(\.\d+)?$/.test(n)).sort((a, b) => Number(b) - Number(a));
}

/**
 * The package that brings a missing program: the installed major's own package, else the
 * release's default major through Debian's `postgresql` / `postgresql-client` (15 on Debian 12,
 * 17 on Debian 13), never a pinned major that the release may not have.
 */
export function installHint(name: PgToolName): string {
  const major = installedMajors()[0]?.split('.')[0];
  const suffix = major === undefined ? '' : `-${major}`;
  return SERVER_TOOLS.has(name)
    ? `apt-get install postgresql${suffix}`
    : `apt-get install postgresql-client${suffix}`;
}

/**
 * Finds a PostgreSQL program: in PG_BIN_DIR when given; else the newest /usr/lib/postgresql/N/bin
 * that has it (so a newer pg_dump can read an older server); else on PATH. Cached per process.
 */
export function findPgBinary(name: PgToolName, binDir?: string): string {
  const key = `${binDir ?? ''}\0${name}`;
  const cached = binaryCache.get(key);
  if (cached !== undefined) return cached;
  let found: string | undefined;
  if (binDir !== undefined && binDir !== '') {
    const candidate = join(binDir, name);
    if (!isExecutable(candidate)) {
      throw new MissingToolError(
        `${name} not found in PG_BIN_DIR=${binDir}; point PG_BIN_DIR at the directory holding ${name}, or install it with: ${installHint(name)}`,
      );
    }
    found = candidate;
  } else {
    for (const major of installedMajors()) {
      const candidate = join(VERSIONED_ROOT, major, 'bin', name);
      if (isExecutable(candidate)) {
        found = candidate;
        break;
      }
    }
    if (found === undefined) {
      for (const dir of (process.env.PATH ?? '').split(delimiter)) {
        if (dir === '') continue;
        const candidate = join(dir, name);
        if (isExecutable(candidate)) {
          found = candidate;
          break;
        }
      }
    }
    if (found === undefined) {
      throw new MissingToolError(
        `${name} not found; install it with: ${installHint(name)} (or set PG_BIN_DIR)`,
      );
    }
  }
  binaryCache.set(key, found);
  return found;
}

/** Forgets found binaries; for tests that change PATH or PG_BIN_DIR. */
export function clearPgBinaryCache(): void {
  binaryCache.clear();
}

/**
 * The environment for a PostgreSQL child process. The password travels as PGPASSWORD here and
 * never on a command line, where `ps` would show it. Fields the connection leaves out keep the
 * base environment's value, as libpq itself would. libpq's other settings (conn.libpq: PGSSLMODE,
 * ...; from a config file too) go in as they are; PGAPPNAME is pgvault unless one is set.
 */
export function pgEnv(routed: PgConnection, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  // DEPLOYMENT_MODE=patroni: the leader a connection of this process already looked up (core/topology).
  const conn = resolvedConnection(routed);
  const env: NodeJS.ProcessEnv = {
    ...(conn.isolated ? withoutLibpq(base) : base),
    ...conn.libpq,
    PGAPPNAME: conn.libpq?.PGAPPNAME ?? PG_APPLICATION_NAME,
  };
  if (conn.host !== undefined) env.PGHOST = conn.host;
  if (conn.port !== undefined) env.PGPORT = String(conn.port);
  if (conn.user !== undefined) env.PGUSER = conn.user;
  if (conn.database !== undefined) env.PGDATABASE = conn.database;
  if (conn.password !== undefined) env.PGPASSWORD = conn.password;
  if (env.PGCONNECT_TIMEOUT === undefined) env.PGCONNECT_TIMEOUT = String(CONNECT_TIMEOUT_SECONDS);
  return env;
}

/** libpq's variables, which name the configured server: none may reach a client of a private server. */
const LIBPQ_VARIABLES = ['PGHOST', 'PGPORT', 'PGUSER', 'PGDATABASE', 'PGPASSWORD', ...LIBPQ_KEYS];

/** The environment without libpq's variables (PGHOSTADDR, PGSSLMODE, PGPASSWORD, ...). */
export function withoutLibpq(base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env = { ...base };
  for (const k of LIBPQ_VARIABLES) delete env[k];
  return env;
}

/**
 * node-postgres settings for a connection, libpq's settings (conn.libpq) mapped onto them:
 * PGAPPNAME, PGCONNECT_TIMEOUT, PGOPTIONS, PGHOSTADDR (dialled; PGHOST still names the server for
 * TLS), PGSSLNEGOTIATION, and the TLS settings of `ssl` (the first of sslAttempts; withClient tries
 * the others). An absent password stays undefined so node-postgres falls back to PGPASSWORD and
 * ~/.pgpass like the command-line tools do. Settings it cannot honour are refused (ConfigError).
 */
export function clientConfig(conn: PgConnection, database?: string, ssl?: NodePgSsl): ClientConfig {
  const libpq = conn.libpq ?? {};
  refuseUnsupported(libpq);
  const timeout = connectTimeoutSeconds(libpq, CONNECT_TIMEOUT_SECONDS);
  const negotiation = libpq.PGSSLNEGOTIATION?.trim();
  const options = libpq.PGOPTIONS?.trim();
  return {
    host: libpq.PGHOSTADDR?.trim() || conn.host,
    port: conn.port,
    user: conn.user,
    database: database ?? conn.database,
    password: conn.password,
    application_name: libpq.PGAPPNAME ?? PG_APPLICATION_NAME,
    connectionTimeoutMillis: timeout === undefined ? 0 : timeout * 1000,
    ssl: ssl ?? sslAttempts(libpq, conn.host)[0],
    ...(options ? { options } : {}),
    ...(negotiation === 'direct' || negotiation === 'postgres' ? { sslnegotiation: negotiation } : {}),
  };
}

/** Errors after which libpq tries its next sslmode attempt: any but an unreachable server. */
function worthAnotherAttempt(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return (
    !['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT'].includes(
      code ?? '',
    ) && !/timeout/i.test(errorMessage(err))
  );
}

/** An attempt's error that says only that the other attempt was needed (server without TLS, hba). */
function isFallbackNoise(err: unknown): boolean {
  return /does not support SSL|no encryption|SSL off|SSL on/i.test(errorMessage(err));
}

/** host:port as libpq would resolve it, for messages. */
export function describeServer(conn: PgConnection): string {
  const host = conn.host ?? process.env.PGHOST ?? 'localhost';
  const port = conn.port ?? process.env.PGPORT ?? 5432;
  return host.startsWith('/') ? `${host} (socket, port ${port})` : `${host}:${port}`;
}

/** Turns a failed connection attempt into one line that says what to check. */
export function connectionError(
  err: unknown,
  conn: PgConnection,
  database: string | undefined,
): PostgresError {
  const where = describeServer(conn);
  const e = err as { code?: string; message?: string };
  const message = errorMessage(err);
  const prefix = `cannot connect to PostgreSQL at ${where}`;
  switch (e.code) {
    case 'ECONNREFUSED':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ETIMEDOUT':
    case 'ECONNRESET':
    case 'ENOENT':
      return new PostgresError(`${prefix} (${e.code}); check PGHOST/PGPORT and that the server is running`, {
        cause: err,
      });
    case '28P01':
      return new PostgresError(`${prefix}: ${message}; check PGUSER/PGPASSWORD or .pgpass`, { cause: err });
    case '28000':
      return new PostgresError(
        `${prefix}: ${message}; check PGUSER, and pg_hba.conf on the server for this host, user and database`,
        { cause: err },
      );
    case '3D000':
      return new PostgresError(
        `${message} on ${where}; check the database name${database === undefined ? ' (PGDATABASE)' : ''}`,
        { cause: err },
      );
    case '53300':
      return new PostgresError(`${prefix}: ${message}; retry later or raise max_connections`, { cause: err });
    case '57P03':
      return new PostgresError(`${prefix}: ${message}; wait for the server to finish starting`, {
        cause: err,
      });
  }
  if (
    /certificate|altnames|CERT_|SELF_SIGNED|Hostname\/IP does not match/i.test(`${e.code ?? ''} ${message}`)
  ) {
    return new PostgresError(
      `${prefix}: ${message}; check PGSSLROOTCERT (the CA that signed the server's certificate) and PGSSLMODE (verify-full also checks the host name)`,
      { cause: err },
    );
  }
  if (/timeout/i.test(message)) {
    return new PostgresError(
      `${prefix} (timed out after ${CONNECT_TIMEOUT_SECONDS}s); check PGHOST/PGPORT, firewalls and that the server is running`,
      { cause: err },
    );
  }
  if (/client password must be a string|password.*(required|supplied)/i.test(message)) {
    return new PostgresError(
      `${prefix}: the server asks for a password and none is set; set PGPASSWORD or add it to .pgpass`,
      { cause: err },
    );
  }
  return new PostgresError(`${prefix}: ${message}`, { cause: err });
}

/**
 * Runs fn with a connected client and always closes it. Connection failures become PostgresError
 * one-liners; errors from fn itself pass through untouched.
 */
export async function withClient<T>(
  routed: PgConnection,
  database: string | undefined,
  fn: (c: Client) => Promise<T>,
): Promise<T> {
  // DEPLOYMENT_MODE=patroni: the leader, asked of the REST API once per process (core/topology);
  // otherwise the connection as it is, at no cost.
  const conn = await resolveConnection(routed);
  // Loaded here, not at the top, so CLI commands that never talk to PostgreSQL don't pay for it.
  const pg = require('pg') as typeof import('pg');
  const libpq = conn.libpq ?? {};
  // node-postgres's .pgpass lookup reads PGPASSFILE from the process environment only.
  if (libpq.PGPASSFILE !== undefined && process.env.PGPASSFILE === undefined) {
    process.env.PGPASSFILE = libpq.PGPASSFILE;
  }
  clientConfig(conn, database); // refuses unsupported settings before any attempt
  const errors: unknown[] = [];
  let client: Client | undefined;
  for (const ssl of sslAttempts(libpq, conn.host)) {
    const attempt = new pg.Client(clientConfig(conn, database, ssl));
    // A server that goes away between queries emits 'error' on the client; without a listener that
    // would crash the process instead of failing the next query.
    attempt.on('error', () => {});
    try {
      await attempt.connect();
      client = attempt;
      break;
    } catch (err) {
      await attempt.end().catch(() => {});
      errors.push(err);
      if (!worthAnotherAttempt(err)) break;
    }
  }
  if (client === undefined) {
    throw connectionError(errors.find((e) => !isFallbackNoise(e)) ?? errors.at(-1), conn, database);
  }
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Parses "pg_dump (PostgreSQL) 15.18 (Debian ...)"; 9.6 and older report two-part majors (9.6). */
export function parseToolVersion(output: string): number | undefined {
  const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(output);
  if (!m) return undefined;
  const first = Number(m[1]);
  return first >= 10 || m[2] === undefined ? first : Number(`${m[1]}.${m[2]}`);
}

/** One installed copy of a client program and its major version. */
export interface ClientCandidate {
  readonly path: string;
  readonly major: number;
}

/**
 * Which of the installed copies of a client program reads a server of `serverMajor`: the newest
 * (a newer pg_dump or pg_basebackup reads older servers; an older one refuses a newer server or
 * writes what the server's own tools cannot read). Undefined when every copy is older.
 */
export function pickClient(
  candidates: readonly ClientCandidate[],
  serverMajor: number,
): ClientCandidate | undefined {
  const newest = [...candidates].sort((a, b) => b.major - a.major)[0];
  return newest !== undefined && newest.major >= serverMajor ? newest : undefined;
}

/**
 * A client program for this server, never older than it: PG_BIN_DIR's when set, else the newest
 * /usr/lib/postgresql/N/bin copy (or PATH's). Refuses with ConfigError (exit 2), in one line naming
 * both versions, when the server is newer than every client this machine has; so nothing is run.
 */
export async function clientForServer(
  name: PgToolName,
  server: { readonly major: number; readonly version: string },
  binDir?: string,
): Promise<ClientCandidate> {
  const path = findPgBinary(name, binDir);
  const candidate = { path, major: await toolMajorVersion(path) };
  refuseOlderClient(name, candidate, server, binDir);
  return candidate;
}

/** Throws ConfigError when `client` (the newest copy found) is older than the server; see clientForServer. */
export function refuseOlderClient(
  name: PgToolName,
  client: ClientCandidate,
  server: { readonly major: number; readonly version: string },
  binDir?: string,
): void {
  if (pickClient([client], server.major) !== undefined) return;
  const fix =
    binDir !== undefined && binDir !== ''
      ? `point PG_BIN_DIR (now ${binDir}) at the bin directory of a PostgreSQL ${server.major} or newer client`
      : `install postgresql-client-${server.major} or set PG_BIN_DIR to its bin directory`;
  throw new ConfigError(
    `the server runs PostgreSQL ${server.version}, newer than ${name} ${client.major} (${client.path}), the newest ${name} found; ${fix}`,
  );
}

/** The major version of a PostgreSQL program, from `<binary> --version`. */
export async function toolMajorVersion(binaryPath: string): Promise<number> {
  const { text, error } = await toolVersionOutput(binaryPath);
  if (error) {
    throw new PostgresError(
      `cannot run ${binaryPath} --version (${errorMessage(error)}); check the installation`,
      { cause: error },
    );
  }
  const major = parseToolVersion(text);
  if (major === undefined) {
    throw new PostgresError(
      `cannot read the version of ${binaryPath} from "${text.trim()}"; check that it is a PostgreSQL program`,
    );
  }
  return major;
}

/** An SQL identifier, always quoted so case and odd characters survive. */
export function quoteIdent(name: string): string {
  if (name.includes('\0'))
    throw new PostgresError('identifier contains a NUL character; PostgreSQL cannot store it');
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * An SQL string literal that means the same whatever standard_conforming_strings says: with a
 * backslash in it, the E'' form with doubled backslashes (as PostgreSQL's quote_literal does).
 */
export function quoteLiteral(value: string): string {
  if (value.includes('\0'))
    throw new PostgresError('string contains a NUL character; PostgreSQL cannot store it');
  const quoted = value.replace(/'/g, "''");
  return value.includes('\\') ? `E'${quoted.replace(/\\/g, '\\\\')}'` : `'${quoted}'`;
}
