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
  /** Extensions that provide its access method or operator classes (vector for hnsw/ivfflat). */
  readonly extensions?: readonly string[];
}

/** One index statement of a backup, with the extensions it needs on the target. */
export interface IndexStatement {
  readonly statement: string;
  readonly extensions: readonly string[];
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
      exts: string[] | null;
    }>(
      `SELECT n.nspname AS schema, t.relname AS table, ic.relname AS index, am.amname AS method,
              pg_get_indexdef(i.indexrelid) AS def, con.conname AS con,
              (SELECT array_agg(DISTINCT e.extname::text ORDER BY e.extname::text) FROM pg_depend d
                 JOIN pg_extension e ON e.oid = d.refobjid
                WHERE d.deptype = 'e' AND d.refclassid = 'pg_extension'::regclass
                  AND ((d.classid = 'pg_am'::regclass AND d.objid = ic.relam)
                    OR (d.classid = 'pg_opclass'::regclass AND d.objid = ANY (i.indclass::oid[])))) AS exts
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
      ...(x.exts && x.exts.length > 0 ? { extensions: x.exts } : {}),
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
      // Read back by restore indexes, which checks the extensions before building anything.
      if (d.extensions && !d.constraint)
        lines.push(`-- needs extensions: ${d.extensions.map((e) => JSON.stringify(e)).join(' ')}`);
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
  return new Map([...parseIndexBackup(text)].map(([db, list]) => [db, list.map((s) => s.statement)]));
}

/**
 * Parses what renderIndexSql wrote: database → statements with the extensions each needs (none
 * recorded in backups taken before pgvault wrote them).
 */
export function parseIndexBackup(text: string): Map<string, IndexStatement[]> {
  const out = new Map<string, IndexStatement[]>();
  let current: IndexStatement[] | undefined;
  let needs: string[] = [];
  for (const line of text.split('\n')) {
    const db = /^-- database: (".*")$/.exec(line);
    const ext = /^-- needs extensions: (.*)$/.exec(line);
    if (db) {
      current = [];
      out.set(JSON.parse(db[1]!) as string, current);
    } else if (ext) {
      needs = (ext[1]!.match(/"(?:[^"\\]|\\.)*"/g) ?? []).map((q) => JSON.parse(q) as string);
    } else if (current && /^CREATE (UNIQUE )?INDEX /.test(line)) {
      current.push({ statement: line, extensions: needs });
      needs = [];
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
