import type { StoredObject } from '../catalog/manifest';
import type { Config } from '../config';
import { errorMessage, PostgresError } from '../errors';
import { findPgBinary, pgEnv, quoteIdent, quoteLiteral, withClient } from '../pg/tools';
import { startTool } from '../stream/process';

/** libpq conninfo naming only the database: the rest comes from the environment, never argv. */
export function dbnameConninfo(database: string): string {
  return `dbname='${database.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

export async function databaseExists(config: Config, database: string): Promise<boolean> {
  return withClient(config.pg, maintenanceDb(config), async (c) => {
    const r = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    return (r.rowCount ?? 0) > 0;
  });
}

/** The database used for CREATE/DROP DATABASE: PGDATABASE unless that is the one being replaced. */
export function maintenanceDb(config: Config, avoid?: string): string {
  const configured = config.pg.database ?? 'postgres';
  return configured === avoid ? 'postgres' : configured;
}

/**
 * Creates the database a restore goes into, with the source's encoding and locale when the server
 * has them (else the server's defaults, with a warning from the caller).
 */
export async function createDatabase(
  config: Config,
  database: string,
  info: StoredObject['databaseInfo'],
): Promise<{ localeKept: boolean }> {
  return withClient(config.pg, maintenanceDb(config, database), async (c) => {
    const base = `CREATE DATABASE ${quoteIdent(database)} TEMPLATE template0`;
    if (info) {
      try {
        await c.query(
          `${base} ENCODING ${quoteLiteral(info.encoding)} LC_COLLATE ${quoteLiteral(info.collate)} LC_CTYPE ${quoteLiteral(info.ctype)}`,
        );
        return { localeKept: true };
      } catch (err) {
        const message = (err as Error).message;
        if (!/locale|collation|encoding/i.test(message))
          throw new PostgresError(`cannot create database "${database}": ${message}`, { cause: err });
      }
    }
    try {
      await c.query(base);
    } catch (err) {
      throw new PostgresError(`cannot create database "${database}": ${errorMessage(err)}`, { cause: err });
    }
    return { localeKept: info === undefined };
  });
}

export async function dropDatabase(config: Config, database: string): Promise<void> {
  await withClient(config.pg, maintenanceDb(config, database), async (c) => {
    await c.query(`DROP DATABASE IF EXISTS ${quoteIdent(database)} WITH (FORCE)`);
  });
}

export interface PgRestoreRun {
  readonly file: string;
  readonly database: string;
  readonly jobs?: number;
  readonly listFile?: string;
  readonly clean?: boolean;
  readonly singleTransaction?: boolean;
  readonly noOwner?: boolean;
  /** Leave out GRANT/REVOKE (pg_restore --no-privileges). */
  readonly noAcl?: boolean;
}

/** Runs pg_restore into a database, stopping at the first error so a failure is never silent. */
export async function runPgRestore(config: Config, run: PgRestoreRun): Promise<void> {
  const args = ['--exit-on-error', `--dbname=${dbnameConninfo(run.database)}`];
  if (run.singleTransaction) args.push('--single-transaction');
  else if (run.jobs && run.jobs > 1) args.push(`--jobs=${run.jobs}`);
  if (run.clean) args.push('--clean', '--if-exists');
  if (run.listFile) args.push(`--use-list=${run.listFile}`);
  if (run.noOwner) args.push('--no-owner');
  if (run.noAcl) args.push('--no-privileges');
  args.push(run.file);
  const proc = startTool(findPgBinary('pg_restore', config.pgBinDir), args, {
    env: pgEnv({ ...config.pg, database: run.database }),
    label: 'pg_restore',
    stdin: 'ignore',
    stdout: 'ignore',
  });
  try {
    await proc.exited;
  } catch (err) {
    // The common failure on a new server: the backup's roles were never created there.
    const said = `${errorMessage(err)}\n${(err as { stderr?: string }).stderr ?? ''}`;
    const role = /role "([^"]+)" does not exist/.exec(said)?.[1];
    if (role !== undefined) {
      throw new PostgresError(
        `role "${role}" does not exist on the target server; restore the roles first with \`pgvault restore globals <backup>\`, or pass --no-owner --no-acl`,
        { cause: err },
      );
    }
    const extension =
      /extension "([^"]+)" is not available/.exec(said)?.[1] ??
      /could not open extension control file "[^"]*\/([^/"]+)\.control"/.exec(said)?.[1];
    if (extension !== undefined) {
      throw new MissingExtensionError(
        extension,
        `extension "${extension}" is not installed on the target server; install its package there (for the server's major version) and retry`,
        { cause: err },
      );
    }
    throw err;
  }
}

/** pg_restore stopped at a CREATE EXTENSION whose files the target server lacks. */
export class MissingExtensionError extends PostgresError {
  constructor(
    readonly extension: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
