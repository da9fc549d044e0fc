import type { ManifestBody } from '../catalog/manifest';
import type { PgConnection } from '../config';
import { listDatabases, serverInfo } from '../pg/server';
import { quoteIdent, withClient } from '../pg/tools';
import { chooseReadSource, readWithRetry } from '../topology';
import type { Vault } from '../vault';
import { inMemorySource, probeTargets, runBackup } from './run';

export interface IndexDefinition {
  readonly schema: string;
  readonly table: string;
  readonly index: string;
  readonly method: string;
  /** CREATE INDEX IF NOT EXISTS ..., ready to run. */
  readonly statement: string;
  /** Backs a primary key, unique or exclusion constraint: rebuilt with the constraint, not alone. */
  readonly constraint?: string;
}

/** Every index of every user table in one database, extension index types (vector, gin, ...) included. */
export async function indexDefinitions(
  vault: Vault,
  database: string,
  conn: PgConnection = vault.config.pg,
): Promise<IndexDefinition[]> {
  return withClient(conn, database, async (c) => {
    const r = await c.query<{
      schema: string;
      table: string;
      index: string;
      method: string;
      def: string;
      con: string | null;
    }>(
      `SELECT n.nspname AS schema, t.relname AS table, ic.relname AS index, am.amname AS method,
              pg_get_indexdef(i.indexrelid) AS def, con.conname AS con
         FROM pg_index i
         JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = ic.relnamespace
         JOIN pg_am am ON am.oid = ic.relam
         LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x')
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
        ORDER BY 1, 2, 3`,
    );
    return r.rows.map((x) => ({
      schema: x.schema,
      table: x.table,
      index: x.index,
      method: x.method,
      statement: `${x.def.replace(/^CREATE (UNIQUE )?INDEX /, 'CREATE $1INDEX IF NOT EXISTS ')};`,
      constraint: x.con ?? undefined,
    }));
  });
}

/**
 * The index backup's SQL: psql can run it as it is (`\connect` per database), and
 * `restore indexes` reads it back section by section.
 */
export function renderIndexSql(
  byDatabase: ReadonlyMap<string, readonly IndexDefinition[]>,
  when: Date,
): string {
  const lines = [`-- pgvault index backup, ${when.toISOString()}`, ''];
  for (const [db, defs] of byDatabase) {
    lines.push(`-- database: ${JSON.stringify(db)}`, `\\connect ${quoteIdent(db)}`);
    for (const d of defs) {
      lines.push(
        d.constraint
          ? `-- constraint ${quoteIdent(d.constraint)} on ${quoteIdent(d.schema)}.${quoteIdent(d.table)} (rebuilt with the constraint): ${d.statement}`
          : d.statement,
      );
    }
    lines.push('');
  }
  return `${lines.join('\n')}\n`;
}

/** Parses what renderIndexSql wrote: database → runnable CREATE INDEX statements. */
export function parseIndexSql(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of text.split('\n')) {
    const db = /^-- database: (".*")$/.exec(line);
    if (db) {
      current = [];
      out.set(JSON.parse(db[1]!) as string, current);
    } else if (current && /^CREATE (UNIQUE )?INDEX /.test(line)) {
      current.push(line);
    }
  }
  return out;
}

/**
 * `backup indexes`: the definitions of every index in every database, as one SQL object. Read where
 * BACKUP_FROM says (with Patroni, a healthy replica, else the leader with a warning), as full backups.
 */
export async function backupIndexes(vault: Vault, options: { now?: Date } = {}): Promise<ManifestBody> {
  const { config } = vault;
  const probe = (conn: PgConnection) => Promise.all([serverInfo(conn), listDatabases(conn)]);
  const warn = (line: string) => vault.reporter.warn(line);
  const [, first] = await Promise.all([probeTargets(vault), chooseReadSource(config, probe, warn)]);
  // A replica that fails while it is read: once more on the next candidate, as full backups.
  return readWithRetry(
    config,
    probe,
    warn,
    async (source) => {
      const [server, databases] = source.probed;
      const byDatabase = new Map<string, IndexDefinition[]>();
      for (const db of databases)
        byDatabase.set(db.name, await indexDefinitions(vault, db.name, source.conn));
      const sql = Buffer.from(renderIndexSql(byDatabase, options.now ?? new Date()), 'utf8');
      return runBackup(vault, {
        node: source.node,
        type: 'indexes',
        schedule: 'manual',
        server,
        tools: {},
        now: options.now,
        sources: [inMemorySource('indexes', 'sql', 'index definitions', sql)],
      });
    },
    first,
  );
}
