import type { PgConnection } from '../config';
import { PostgresError } from '../errors';
import { quoteIdent, withClient } from './tools';

/** What a backup records about the server it read from. */
export interface ServerInfo {
  readonly version: string;
  readonly versionNum: number;
  readonly major: number;
  readonly systemIdentifier: string;
  /** Whether the connected role is a superuser (role password hashes need it). */
  readonly superuser: boolean;
  /** Set on a copy laid down by restore pitr --pgdata: the original's CLUSTER_NAME (core/restore/copy.ts). */
  readonly copyOf?: string;
  /** The copy's own CLUSTER_NAME. */
  readonly lineage?: string;
}

export interface DatabaseInfo {
  readonly name: string;
  readonly encoding: string;
  readonly collate: string;
  readonly ctype: string;
  readonly sizeBytes: number;
}

export async function serverInfo(conn: PgConnection): Promise<ServerInfo> {
  return withClient(conn, conn.database ?? 'postgres', async (c) => {
    const v = await c.query<{
      version: string;
      num: string;
      su: boolean;
      copy_of: string | null;
      lineage: string | null;
    }>(
      `SELECT current_setting('server_version') AS version, current_setting('server_version_num') AS num,
              (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS su,
              current_setting('pgvault.copy_of', true) AS copy_of, current_setting('pgvault.lineage', true) AS lineage`,
    );
    let systemIdentifier = 'unknown';
    try {
      // Needs superuser or pg_read_all_settings on some versions; the identifier is informative here.
      const s = await c.query<{ id: string }>(
        'SELECT system_identifier::text AS id FROM pg_control_system()',
      );
      systemIdentifier = s.rows[0]?.id ?? 'unknown';
    } catch {
      // Not allowed for this role: keep 'unknown' rather than failing a logical backup over it.
    }
    const row = v.rows[0]!;
    const versionNum = Number(row.num);
    return {
      version: row.version,
      versionNum,
      major: Math.floor(versionNum / 10000),
      systemIdentifier,
      superuser: row.su === true,
      copyOf: row.copy_of || undefined,
      lineage: row.lineage || undefined,
    };
  });
}

/** Every database a logical backup covers: not a template, and accepting connections. */
export async function listDatabases(conn: PgConnection): Promise<DatabaseInfo[]> {
  return withClient(conn, conn.database ?? 'postgres', async (c) => {
    const r = await c.query<{ name: string; encoding: string; collate: string; ctype: string; size: string }>(
      `SELECT datname AS name, pg_encoding_to_char(encoding) AS encoding, datcollate AS collate,
              datctype AS ctype, pg_database_size(oid)::text AS size
         FROM pg_database
        WHERE NOT datistemplate AND datallowconn
        ORDER BY datname`,
    );
    return r.rows.map((x) => ({ ...x, sizeBytes: Number(x.size) }));
  });
}

/** Resolves --database names against the server, refusing unknown ones by name. */
export function pickDatabases(all: readonly DatabaseInfo[], wanted: readonly string[]): DatabaseInfo[] {
  if (wanted.length === 0) return [...all];
  const byName = new Map(all.map((d) => [d.name, d]));
  const missing = wanted.filter((w) => !byName.has(w));
  if (missing.length > 0) {
    throw new PostgresError(
      `database ${missing.map((m) => `"${m}"`).join(', ')} not found on the server; it has ${all.map((d) => d.name).join(', ')}`,
    );
  }
  return [...new Set(wanted)].map((w) => byName.get(w)!);
}

/** The user relations of a database (tables, views, sequences...), to tell an empty database from a used one. */
export async function countUserRelations(conn: PgConnection, database: string): Promise<number> {
  return withClient(conn, database, async (c) => {
    const r = await c.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
          AND n.nspname NOT LIKE 'pg\\_temp%'`,
    );
    return Number(r.rows[0]?.n ?? 0);
  });
}

/**
 * Exact row counts of every ordinary table, for validation against a manifest. COPY (and so the
 * manifest) counts a table's own rows only, hence ONLY; partitioned parents hold no rows themselves.
 */
export async function exactRowCounts(
  conn: PgConnection,
  database: string,
  options: { readonly jobs?: number } = {},
): Promise<Array<{ schema: string; table: string; rows: number }>> {
  // Largest first over `jobs` connections, so the biggest table does not start last.
  const tables = await withClient(conn, database, async (c) => {
    const r = await c.query<{ schema: string; table: string }>(
      `SELECT n.nspname AS schema, c.relname AS table FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
        ORDER BY pg_relation_size(c.oid) DESC, 1, 2`,
    );
    return r.rows;
  });
  const counts = new Map<(typeof tables)[number], number>();
  let next = 0;
  const worker = () =>
    withClient(conn, database, async (c) => {
      for (let t = tables[next++]; t !== undefined; t = tables[next++]) {
        const q = `SELECT count(*)::text AS n FROM ONLY ${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
        const r = await c.query<{ n: string }>(q);
        counts.set(t, Number(r.rows[0]?.n ?? 0));
      }
    });
  const jobs = Math.max(1, Math.min(options.jobs ?? 1, tables.length));
  await Promise.all(Array.from({ length: jobs }, worker));
  return tables
    .map((t) => ({ schema: t.schema, table: t.table, rows: counts.get(t) ?? 0 }))
    .sort((a, b) => (a.schema === b.schema ? cmp(a.table, b.table) : cmp(a.schema, b.schema)));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
