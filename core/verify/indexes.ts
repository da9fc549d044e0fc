import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { text } from 'node:stream/consumers';
import { parseIndexSql } from '../backup/indexes';
import type { CatalogEntry } from '../catalog/catalog';
import type { Config } from '../config';
import { errorMessage, UsageError } from '../errors';
import { readArchiveToc, type TocEntry } from '../pg/archive';
import { withClient } from '../pg/tools';
import { createDatabase, dropDatabase, MissingExtensionError, runPgRestore } from '../restore/database';
import { fetchToLocalFile, openBackup, readBackupObject } from '../restore/fetch';
import { applyIndexBuildSettings } from '../restore/indexes';
import {
  ON_SERVER_HINT,
  openRestorePlace,
  type RestoredOn,
  type RestorePlace,
  type RestoreTestTarget,
} from '../restore/scratch';
import type { Vault } from '../vault';

/**
 * `verify indexes <backup|latest>`: proves an index backup can rebuild its indexes. Per database
 * it holds, the schema of the newest full backup holding that database is restored into a temporary
 * database without data and without its plain indexes (constraint indexes come with their
 * constraints), the backup's CREATE INDEX statements are run there, and every index must end up
 * valid (pg_index.indisvalid). The temporary databases are always dropped. They are made in a
 * sandbox server this process starts (ScratchServer, as `restore test` does), so the configured
 * server gets nothing, not even for a moment; on the configured server only when asked
 * (RESTORE_TEST_TARGET=server, --on-server: PGUSER then needs CREATEDB).
 */

export interface VerifyIndexesOptions {
  /** Where the schemas are restored. @default config.restoreTestTarget (RESTORE_TEST_TARGET) */
  readonly target?: RestoreTestTarget;
}

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
  /** Where the temporary databases were made; absent when no database had a schema to restore. */
  readonly restoredOn?: RestoredOn;
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
  place: RestorePlace,
  database: string,
  statements: readonly string[],
  full: CatalogEntry,
): Promise<IndexDatabaseCheck> {
  const { reporter } = vault;
  // The sandbox's or the configured server; storage, keys and PG_BIN_DIR as configured.
  const config: Config = place.config;
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
    reporter.info(
      `restoring the schema of "${database}" from ${full.manifest.id} into "${temp}" in ${place.restoredOn.description}`,
    );
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
      await applyIndexBuildSettings(c, config);
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
    // In the sandbox, removing the server removes it anyway.
    await dropDatabase(config, temp).catch((err: unknown) =>
      reporter.warn(
        `could not drop temporary database ${temp}${place.scratch ? ' in the sandbox' : `: ${errorMessage(err)}; drop it by hand`}`,
      ),
    );
    await copy.remove();
  }
}

export async function verifyIndexes(
  vault: Vault,
  ref: string,
  options: VerifyIndexesOptions = {},
): Promise<IndexVerification> {
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
  const toCheck: Array<{ database: string; statements: string[]; full: CatalogEntry }> = [];
  for (const [database, statements] of parseIndexSql(sql)) {
    if (statements.length === 0) continue;
    const full = fulls.find((e) =>
      e.manifest.objects.some((o) => o.kind === 'database' && o.database === database),
    );
    if (full === undefined) {
      databases.push({
        ...unchecked(database, statements),
        error: `no full backup holds database "${database}", so there is no schema to build its indexes on; take one with \`pgvault backup full\``,
      });
      continue;
    }
    toCheck.push({ database, statements, full });
  }
  // One place for the run: a sandbox of the newest major among the dumps (it loads the older ones too).
  const majors = toCheck.map((c) => Math.floor(c.full.manifest.server.versionNum / 10000));
  const place =
    toCheck.length > 0 ? await openRestorePlace(vault, options.target, Math.max(...majors)) : undefined;
  try {
    for (const { database, statements, full } of toCheck) {
      try {
        // A wrong key or a tampered manifest is refused before anything is created.
        await openBackup(full, vault.config);
        databases.push(await checkDatabase(vault, place!, database, statements, full));
      } catch (err) {
        databases.push({
          ...unchecked(database, statements),
          schemaFrom: full.manifest.id,
          error: explain(err, place!),
        });
      }
    }
  } finally {
    await place?.remove();
  }
  return {
    ok: databases.every((d) => d.error === undefined && d.failed.length === 0 && d.invalid.length === 0),
    backupId: manifest.id,
    databases,
    durationMs: Date.now() - started,
    ...(place ? { restoredOn: place.restoredOn } : {}),
  };
}

function unchecked(database: string, statements: readonly string[]): IndexDatabaseCheck {
  return { database, statements: statements.length, created: 0, failed: [], invalid: [] };
}

/** One line; on the configured server, a missing CREATEDB says what to do. */
function explain(err: unknown, place: RestorePlace): string {
  const line = errorMessage(err).split('\n')[0] ?? '';
  if (place.scratch === undefined && /permission denied to create database/.test(line)) {
    return `${line}: checking an index backup on the configured server needs CREATEDB for PGUSER; grant it (ALTER ROLE … CREATEDB), or check in the sandbox (the default: RESTORE_TEST_TARGET=sandbox, no --on-server)`;
  }
  if (place.scratch !== undefined && err instanceof MissingExtensionError) {
    // The sandbox runs this machine's server binaries: the extension is missing here, not on the server.
    const major = /^(\d+)/.exec(place.restoredOn.serverVersion ?? '')?.[1] ?? 'its major';
    const debian =
      err.extension === 'vector' ? `pgvector: postgresql-${major}-pgvector` : `postgresql-${major}-…`;
    return `the sandbox (${place.restoredOn.description}) cannot load extension "${err.extension}" that the backup's schema needs; install it for PostgreSQL ${major} on this machine (Debian ${debian}; in the AWS task image too), or ${ON_SERVER_HINT}`;
  }
  return line;
}
