import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { text } from 'node:stream/consumers';
import { parseIndexSql } from '../backup/indexes';
import type { CatalogEntry } from '../catalog/catalog';
import { errorMessage, UsageError } from '../errors';
import { readArchiveToc, type TocEntry } from '../pg/archive';
import { withClient } from '../pg/tools';
import { createDatabase, dropDatabase, runPgRestore } from '../restore/database';
import { fetchToLocalFile, openBackup, readBackupObject } from '../restore/fetch';
import type { Vault } from '../vault';

/**
 * `verify indexes <backup|latest>`: proves an index backup can rebuild its indexes. Per database
 * it holds, the schema of the newest full backup holding that database is restored into a temporary
 * database without data and without its plain indexes (constraint indexes come with their
 * constraints), the backup's CREATE INDEX statements are run there, and every index must end up
 * valid (pg_index.indisvalid). The temporary databases are always dropped.
 */

export interface IndexDatabaseCheck {
  readonly database: string;
  /** The full backup whose schema was restored. */
  readonly schemaFrom?: string;
  readonly statements: number;
  /** Indexes the statements built (the restored schema holds only constraint indexes before). */
  readonly created: number;
  readonly failed: ReadonlyArray<{ readonly statement: string; readonly error: string }>;
  readonly invalid: readonly string[];
  /** Why the database could not be checked at all. */
  readonly error?: string;
}

export interface IndexVerification {
  readonly ok: boolean;
  readonly backupId: string;
  readonly databases: readonly IndexDatabaseCheck[];
  readonly durationMs: number;
}

/** Archive entries of a schema-only restore without plain indexes, nor anything that hangs off them. */
export function schemaWithoutIndexes(entries: readonly TocEntry[]): TocEntry[] {
  const left = new Set<number>();
  for (const e of entries) {
    if (e.section === 'data' || e.desc === 'INDEX' || e.desc === 'INDEX ATTACH') left.add(e.dumpId);
  }
  // Comments, statistics and the like on a left-out index go too (pg_dump lists their dependency).
  for (let grew = true; grew; ) {
    grew = false;
    for (const e of entries) {
      if (!left.has(e.dumpId) && e.dependencies.some((d) => left.has(d))) {
        left.add(e.dumpId);
        grew = true;
      }
    }
  }
  return entries.filter((e) => !left.has(e.dumpId));
}

async function checkDatabase(
  vault: Vault,
  database: string,
  statements: readonly string[],
  full: CatalogEntry,
): Promise<IndexDatabaseCheck> {
  const { config, reporter } = vault;
  const object = full.manifest.objects.find((o) => o.kind === 'database' && o.database === database)!;
  const temp = `pgvault_idx_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
  const copy = await fetchToLocalFile(full, object, config, reporter);
  try {
    await createDatabase(config, temp, object.databaseInfo);
    const { entries } = await readArchiveToc(copy.path);
    const listFile = join(dirname(copy.path), 'schema.list');
    await writeFile(
      listFile,
      `${schemaWithoutIndexes(entries)
        .map((e) => `${e.dumpId}; ${e.desc} ${e.namespace ?? '-'} ${e.tag.replace(/\n/g, ' ')}`)
        .join('\n')}\n`,
    );
    reporter.info(`restoring the schema of "${database}" from ${full.manifest.id} into "${temp}"`);
    await runPgRestore(config, {
      file: copy.path,
      database: temp,
      listFile,
      singleTransaction: true,
      noOwner: true,
      noAcl: true,
    });
    return await withClient(config.pg, temp, async (c) => {
      // Counted, not assumed: IF NOT EXISTS succeeds without building anything when the index is there.
      const countIndexes = async () =>
        Number(
          (
            await c.query<{ n: string }>(
              `SELECT count(*)::text AS n FROM pg_class ic JOIN pg_namespace n ON n.oid = ic.relnamespace
                WHERE ic.relkind IN ('i', 'I') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND n.nspname NOT LIKE 'pg\\_toast%'`,
            )
          ).rows[0]?.n ?? 0,
        );
      const before = await countIndexes();
      const failed: Array<{ statement: string; error: string }> = [];
      for (const statement of statements) {
        try {
          await c.query(statement);
        } catch (err) {
          failed.push({ statement, error: errorMessage(err) });
        }
      }
      const invalid = await c.query<{ name: string }>(
        `SELECT n.nspname || '.' || ic.relname AS name FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = ic.relnamespace WHERE NOT i.indisvalid ORDER BY 1`,
      );
      return {
        database,
        schemaFrom: full.manifest.id,
        statements: statements.length,
        created: (await countIndexes()) - before,
        failed,
        invalid: invalid.rows.map((r) => r.name),
      };
    });
  } finally {
    await dropDatabase(config, temp).catch((err: unknown) =>
      reporter.warn(`could not drop temporary database ${temp}: ${errorMessage(err)}; drop it by hand`),
    );
    await copy.remove();
  }
}

export async function verifyIndexes(vault: Vault, ref: string): Promise<IndexVerification> {
  const started = Date.now();
  const entry = await vault.catalog.resolve(ref, 'indexes');
  if (entry.manifest.type !== 'indexes') {
    throw new UsageError(
      `backup ${entry.manifest.id} is a ${entry.manifest.type} backup; verify indexes takes an index backup (see \`pgvault restore list\`, or latest)`,
    );
  }
  const manifest = await openBackup(entry, vault.config);
  const sql = await text(await readBackupObject(vault, entry, manifest.objects[0]!));
  const fulls = await vault.catalog.list('full');
  const databases: IndexDatabaseCheck[] = [];
  for (const [database, statements] of parseIndexSql(sql)) {
    if (statements.length === 0) continue;
    const full = fulls.find((e) =>
      e.manifest.objects.some((o) => o.kind === 'database' && o.database === database),
    );
    const empty = { database, statements: statements.length, created: 0, failed: [], invalid: [] };
    if (full === undefined) {
      databases.push({
        ...empty,
        error: `no full backup holds database "${database}", so there is no schema to build its indexes on; take one with \`pgvault backup full\``,
      });
      continue;
    }
    try {
      await openBackup(full, vault.config);
      databases.push(await checkDatabase(vault, database, statements, full));
    } catch (err) {
      databases.push({ ...empty, schemaFrom: full.manifest.id, error: errorMessage(err).split('\n')[0] });
    }
  }
  return {
    ok: databases.every((d) => d.error === undefined && d.failed.length === 0 && d.invalid.length === 0),
    backupId: manifest.id,
    databases,
    durationMs: Date.now() - started,
  };
}
