import { randomBytes } from 'node:crypto';
import { undoOnInterrupt } from '../cleanup';
import type { Config } from '../config';
import { errorMessage, PostgresError } from '../errors';
import { describeServer } from '../pg/tools';
import type { Vault } from '../vault';
import { dropDatabase, MissingExtensionError } from './database';
import { restoreFull } from './full';
import { ON_SERVER_HINT, type RestoredOn, type RestoreTestTarget } from './scratch';
import { assertValid, type ValidationReport } from './validate';

export type { RestoredOn, RestoreTestTarget };

export interface RestoreTestResult {
  readonly backupId: string;
  readonly source: string;
  readonly temporaryDatabase: string;
  /** Measured time from start to validated data: an RTO sample. */
  readonly restoreMs: number;
  readonly validation: ValidationReport;
}

export interface RestoreTestOptions {
  readonly from?: string;
  /**
   * The sandbox to restore into (ScratchServer.configFor): owners and grants are left out there,
   * since the backup's roles do not exist in it. Absent: the configured server.
   */
  readonly sandbox?: { readonly config: Config; readonly description: string };
}

/**
 * One database of a backup (chosen as restore full chooses: a path's object, else `from`, else the
 * one user database) restored into a temporary database, validated against the manifest, always
 * dropped, with the measured restore time. `restore test` and `verify restore` run it for every
 * database of the backup (core/verify/restore.ts restoreAndValidate), into the sandbox by default.
 */
export async function restoreTest(
  vault: Vault,
  ref: string,
  options: RestoreTestOptions = {},
): Promise<RestoreTestResult> {
  const temporaryDatabase = `pgvault_test_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  const config = options.sandbox?.config ?? vault.config;
  const into = options.sandbox ? { ...vault, config } : vault;
  // On the configured server, an interrupted test must not leave its database there.
  const forget = options.sandbox
    ? () => {}
    : undoOnInterrupt(() => dropDatabase(config, temporaryDatabase).catch(() => {}));
  try {
    const result = await restoreFull(into, ref, {
      from: options.from,
      database: temporaryDatabase,
      noOwner: true,
      // The sandbox has none of the backup's roles; on the server they exist (as restore test always did).
      noAcl: options.sandbox !== undefined,
    }).catch((err: unknown) => {
      throw explain(err, config, options);
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
    await dropDatabase(config, temporaryDatabase).catch((err: unknown) =>
      vault.reporter.warn(
        `could not drop temporary database ${temporaryDatabase}${options.sandbox ? ' in the sandbox' : ''}: ${String(err)}${options.sandbox ? '' : '; drop it by hand'}`,
      ),
    );
    forget();
  }
}

/** The two failures that depend on where the test restores, said with what to do. */
function explain(err: unknown, config: Config, options: RestoreTestOptions): unknown {
  const what = options.from ? `database "${options.from}"` : 'the database';
  if (options.sandbox && err instanceof MissingExtensionError) {
    return new PostgresError(
      `${what} of the backup uses the extension "${err.extension}", which ${options.sandbox.description} lacks; install its package for that major version here (in the AWS task image too), or ${ON_SERVER_HINT}`,
      { cause: err },
    );
  }
  if (!options.sandbox && /permission denied to create database/.test(errorMessage(err))) {
    return new PostgresError(
      `a restore test on the configured server (${describeServer(config.pg)}) needs CREATEDB, which PGUSER ${config.pg.user ?? '(the OS user)'} lacks (permission denied to create database); grant it (ALTER ROLE … CREATEDB), or restore into the sandbox (the default: RESTORE_TEST_TARGET=sandbox, no --on-server)`,
      { cause: err },
    );
  }
  return err;
}
