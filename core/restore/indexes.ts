import { parseIndexBackup } from '../backup/indexes';
import type { Config } from '../config';
import { errorMessage, UsageError } from '../errors';
import { withClient } from '../pg/tools';
import type { Vault } from '../vault';
import { openBackup, readBackupObject } from './fetch';

/** One index `restore indexes` built, and how long its CREATE INDEX took (to plan a rebuild). */
export interface IndexBuild {
  readonly index: string;
  readonly seconds: number;
  /** `created` (missing, built from the backup) or `reindexed` (there, rebuilt by --reindex). */
  readonly kind: 'created' | 'reindexed';
}

export interface IndexRebuildResult {
  readonly backupId: string;
  readonly database: string;
  readonly created: readonly string[];
  /** Build time per created (and, with --reindex, reindexed) index, in the order built. */
  readonly builds: readonly IndexBuild[];
  /** Sum of the builds' seconds. */
  readonly totalSeconds: number;
  /** maintenance_work_mem and max_parallel_maintenance_workers the builds ran with. */
  readonly settings: { readonly maintenanceWorkMem: string; readonly parallelWorkers: number };
  readonly existing: number;
  readonly reindexed: number;
  readonly failed: ReadonlyArray<{ statement: string; error: string }>;
}

/** SETs the session's index-build settings (INDEX_BUILD_*), and returns what the builds run with. */
export async function applyIndexBuildSettings(
  c: { query: <R>(sql: string) => Promise<{ rows: R[] }> },
  config: Config,
): Promise<IndexRebuildResult['settings']> {
  const { maintenanceWorkMem, parallelWorkers } = config.indexBuild ?? {};
  if (maintenanceWorkMem !== undefined)
    await c.query(`SET maintenance_work_mem = '${maintenanceWorkMem.replace(/'/g, '')}'`);
  if (parallelWorkers !== undefined)
    await c.query(`SET max_parallel_maintenance_workers = ${Math.trunc(parallelWorkers)}`);
  const [row] = (
    await c.query<{ mem: string; workers: string }>(
      `SELECT current_setting('maintenance_work_mem') AS mem, current_setting('max_parallel_maintenance_workers') AS workers`,
    )
  ).rows;
  return { maintenanceWorkMem: row!.mem, parallelWorkers: Number(row!.workers) };
}

const round = (n: number) => Math.round(n * 1000) / 1000;

/** Access methods and types of extensions whose name differs from what a user sees in the index. */
const PROVIDED_BY: Record<string, string> = { hnsw: 'vector', ivfflat: 'vector', vector: 'vector' };

/**
 * A build's error, with the CREATE EXTENSION to run when it says an access method, operator class
 * or type is missing: index backups taken before they recorded extensions are only checked this way.
 */
export function explainBuildError(error: string, database: string): string {
  const am = /access method "([^"]+)" does not exist/.exec(error)?.[1];
  const type = /type "([^"]+)" does not exist/.exec(error)?.[1];
  const opclass = /operator class "(vector|halfvec|sparsevec|bit)_[a-z0-9_]+_ops" does not exist/.exec(
    error,
  )?.[1];
  const what = am ?? type ?? (opclass ? 'vector' : undefined);
  if (what === undefined) return error;
  const extension = PROVIDED_BY[what];
  return extension
    ? `${error}; extension "${extension}" is missing in "${database}": run CREATE EXTENSION ${extension}; there, then restore indexes again`
    : `${error}; the extension that provides "${what}" is missing in "${database}": CREATE EXTENSION it there, then restore indexes again`;
}

/**
 * `restore indexes <database>`: runs every index definition of the newest index backup that the
 * database lacks (CREATE INDEX IF NOT EXISTS), and with --reindex rebuilds the existing ones too.
 * An index whose extension (its access method's or operator class's: vector for hnsw/ivfflat) is
 * not in the database is refused before anything is built, naming the CREATE EXTENSION to run.
 */
export async function restoreIndexes(
  vault: Vault,
  database: string,
  options: { backup?: string; reindex?: boolean } = {},
): Promise<IndexRebuildResult> {
  const entry = await vault.catalog.resolve(options.backup ?? 'latest', 'indexes');
  const manifest = await openBackup(entry, vault.config);
  const object = manifest.objects[0]!;
  const raw = await readBackupObject(vault, entry, object);
  const chunks: Buffer[] = [];
  for await (const c of raw) chunks.push(c as Buffer);
  const statements = parseIndexBackup(Buffer.concat(chunks).toString('utf8')).get(database);
  if (!statements) {
    throw new UsageError(
      `index backup ${manifest.id} has no database "${database}"; it was taken before the database existed`,
    );
  }
  return withClient(vault.config.pg, database, async (c) => {
    const needed = [...new Set(statements.flatMap((s) => s.extensions))];
    if (needed.length > 0) {
      const present = new Set(
        (
          await c.query<{ extname: string }>('SELECT extname FROM pg_extension WHERE extname = ANY($1)', [
            needed,
          ])
        ).rows.map((r) => r.extname),
      );
      const missing = needed.filter((e) => !present.has(e));
      if (missing.length > 0) {
        const count = statements.filter((s) => s.extensions.some((e) => missing.includes(e))).length;
        throw new UsageError(
          `database "${database}" lacks extension${missing.length > 1 ? 's' : ''} ${missing.map((e) => `"${e}"`).join(', ')} that ${count} index(es) of ${manifest.id} need; nothing was built: run ${missing.map((e) => `CREATE EXTENSION ${e};`).join(' ')} in "${database}" (its package installed on the server), then restore indexes again`,
        );
      }
    }
    const settings = await applyIndexBuildSettings(c, vault.config);
    const created: string[] = [];
    const builds: IndexBuild[] = [];
    const failed: Array<{ statement: string; error: string }> = [];
    let existing = 0;
    let reindexed = 0;
    for (const { statement } of statements) {
      const m = /INDEX IF NOT EXISTS (.+?) ON (?:ONLY )?(.+?) USING/.exec(statement);
      const name = m?.[1] ?? statement;
      const schema = /^(.+?)\./.exec(m?.[2] ?? '')?.[1];
      const found = await c.query(
        `SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('i', 'I') AND quote_ident(c.relname) = $1 AND ($2::text IS NULL OR quote_ident(n.nspname) = $2)`,
        [name, schema ?? null],
      );
      if ((found.rowCount ?? 0) > 0) {
        existing++;
        if (options.reindex) {
          const started = process.hrtime.bigint();
          await c.query(`REINDEX INDEX ${schema ? `${schema}.` : ''}${name}`);
          const seconds = round(Number(process.hrtime.bigint() - started) / 1e9);
          builds.push({ index: schema ? `${schema}.${name}` : name, seconds, kind: 'reindexed' });
          reindexed++;
        }
        continue;
      }
      try {
        const started = process.hrtime.bigint();
        await c.query(statement);
        const seconds = round(Number(process.hrtime.bigint() - started) / 1e9);
        const index = schema ? `${schema}.${name}` : name;
        created.push(index);
        builds.push({ index, seconds, kind: 'created' });
      } catch (err) {
        failed.push({ statement, error: explainBuildError(errorMessage(err), database) });
      }
    }
    const totalSeconds = round(builds.reduce((sum, b) => sum + b.seconds, 0));
    return {
      backupId: manifest.id,
      database,
      created,
      builds,
      totalSeconds,
      settings,
      existing,
      reindexed,
      failed,
    };
  });
}
