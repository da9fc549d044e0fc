import { UsageError } from '../errors';
import { countUserRelations } from '../pg/server';
import type { Vault } from '../vault';
import { createDatabase, databaseExists, dropDatabase, runPgRestore } from './database';
import { fetchToLocalFile, openDatabaseBackup } from './fetch';
import { compareWithManifest, type ValidationReport } from './validate';

export interface FullRestoreOptions {
  /** Source database inside the backup (--from); see chooseSourceDatabase. */
  readonly from?: string;
  /** Target database name; the source's name when absent. */
  readonly database?: string;
  /** Replace a database that already holds objects (one transaction: all or nothing). */
  readonly clean?: boolean;
  readonly noOwner?: boolean;
  readonly noAcl?: boolean;
}

export interface FullRestoreResult {
  readonly backupId: string;
  readonly source: string;
  readonly database: string;
  readonly createdDatabase: boolean;
  readonly durationMs: number;
  readonly validation: ValidationReport;
}

/**
 * `restore full`: fetch and verify the dump into a private temporary file first (a corrupt or
 * wrongly keyed backup is refused before any database is touched), then pg_restore it. A database
 * this command created is dropped again if the restore fails.
 */
export async function restoreFull(
  vault: Vault,
  ref: string,
  options: FullRestoreOptions = {},
): Promise<FullRestoreResult> {
  const { config, reporter } = vault;
  const started = Date.now();
  const { entry, manifest, object } = await openDatabaseBackup(vault, ref, {
    from: options.from,
    target: options.database,
  });
  const database = options.database ?? object.database!;

  const exists = await databaseExists(config, database);
  if (exists && !options.clean && (await countUserRelations(config.pg, database)) > 0) {
    throw new UsageError(
      `database "${database}" is not empty; restore into another name, drop it, or pass --clean to replace its contents`,
    );
  }
  const copy = await fetchToLocalFile(entry, object, config, reporter);
  let created = false;
  try {
    if (!exists) {
      const { localeKept } = await createDatabase(config, database, object.databaseInfo);
      created = true;
      if (!localeKept)
        reporter.warn(
          `database "${database}" created with the server's default locale (the source's is not installed)`,
        );
    }
    reporter.info(`restoring ${object.database} from ${manifest.id} into "${database}"`);
    await runPgRestore(config, {
      file: copy.path,
      database,
      jobs: config.parallelJobs,
      // Replacing live contents: one transaction, so a failure leaves the old contents in place.
      clean: exists && options.clean,
      singleTransaction: exists && options.clean,
      noOwner: options.noOwner,
      noAcl: options.noAcl,
    });
  } catch (err) {
    if (created) await dropDatabase(config, database).catch(() => {});
    throw err;
  } finally {
    await copy.remove();
  }
  const validation = await compareWithManifest(config, database, object);
  return {
    backupId: manifest.id,
    source: object.database!,
    database,
    createdDatabase: created,
    durationMs: Date.now() - started,
    validation,
  };
}
