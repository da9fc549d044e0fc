import { randomBytes } from 'node:crypto';
import type { Vault } from '../vault';
import { dropDatabase } from './database';
import { restoreFull } from './full';
import { assertValid, type ValidationReport } from './validate';

export interface RestoreTestResult {
  readonly backupId: string;
  readonly source: string;
  readonly temporaryDatabase: string;
  /** Measured time from start to validated data: an RTO sample. */
  readonly restoreMs: number;
  readonly validation: ValidationReport;
}

/**
 * One database of a backup (chosen as restore full chooses: a path's object, else `from`, else the
 * one user database) restored into a temporary database, validated against the manifest, always
 * dropped, with the measured restore time. `restore test` and `verify restore` run it for every
 * database of the backup (core/verify/restore.ts restoreAndValidate).
 */
export async function restoreTest(
  vault: Vault,
  ref: string,
  options: { from?: string } = {},
): Promise<RestoreTestResult> {
  const temporaryDatabase = `pgvault_test_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  try {
    const result = await restoreFull(vault, ref, {
      from: options.from,
      database: temporaryDatabase,
      noOwner: true,
    });
    assertValid(result.validation);
    return {
      backupId: result.backupId,
      source: result.source,
      temporaryDatabase,
      restoreMs: result.durationMs,
      validation: result.validation,
    };
  } finally {
    await dropDatabase(vault.config, temporaryDatabase).catch((err: unknown) =>
      vault.reporter.warn(
        `could not drop temporary database ${temporaryDatabase}: ${String(err)}; drop it by hand`,
      ),
    );
  }
}
