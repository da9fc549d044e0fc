import type { CatalogEntry } from '../catalog/catalog';
import type { StoredObject } from '../catalog/manifest';
import { type DrillRecord, writeDrillRecord } from '../catalog/records';
import { errorMessage, IntegrityError, UsageError } from '../errors';
import { exactRowCounts } from '../pg/server';
import { withClient } from '../pg/tools';
import { resolveBaseChain } from '../restore/chain';
import { openBackup, pickDatabaseObject } from '../restore/fetch';
import { describeTarget, type RecoveryTarget, recoverySettings } from '../restore/pitr';
import { type RecoveredPoint, RecoverySandbox } from '../restore/sandbox';
import { drillPlace, openRestorePlace } from '../restore/scratch';
import { type RestoredOn, type RestoreTestTarget, restoreTest } from '../restore/test';
import { databaseHealth, type TableCheck } from '../restore/validate';
import type { Vault } from '../vault';

/**
 * `verify restore <backup>`: the backup restored where it can do no harm (a temporary database per
 * dumped database in a sandbox server this process starts, or on the configured server when asked:
 * RESTORE_TEST_TARGET=server, --on-server; a recovery sandbox for a base backup), validated, removed,
 * and the measured time stored as an RTO sample (drills/ in the catalog). The pieces are shared
 * with `pgvault drill`.
 */

export interface RestoredDatabase {
  /** The database as the backup holds it. */
  readonly database: string;
  /** Where it was restored: a temporary database, or `sandbox` for a physical recovery. */
  readonly restoredAs: string;
  readonly tables: number;
  readonly rows: number;
  /** Tables whose row count differs from the manifest (logical backups; physical ones record none). */
  readonly mismatches: readonly TableCheck[];
  readonly invalidIndexes?: readonly string[];
  readonly note?: string;
}

export interface RestoreCheck {
  readonly backupId: string;
  readonly type: 'full' | 'base';
  readonly databases: readonly RestoredDatabase[];
  readonly tables: number;
  readonly rows: number;
  /** Start to validated data, whole backup: an RTO sample. */
  readonly restoreMs: number;
  /** The point the restored data stands at (ISO): the backup's end, or the recovery target. */
  readonly restoredTo: string;
  /** Physical recoveries: where recovery ended, from the server. */
  readonly recovered?: RecoveredPoint;
  /** Where it was restored: a sandbox server, or the configured server. */
  readonly restoredOn: RestoredOn;
}

export interface RestoreCheckOptions {
  /** Only this database of a full backup. */
  readonly from?: string;
  /** Where a full backup is restored. @default config.restoreTestTarget (RESTORE_TEST_TARGET) */
  readonly target?: RestoreTestTarget;
}

export interface VerifyRestoreResult extends RestoreCheck {
  readonly record: DrillRecord;
}

function totals(databases: readonly RestoredDatabase[]): { tables: number; rows: number } {
  return {
    tables: databases.reduce((n, d) => n + d.tables, 0),
    rows: databases.reduce((n, d) => n + d.rows, 0),
  };
}

/**
 * Restores every database of a full backup (or only the one a path names, or `from`) into its own
 * temporary database with `restore test`, one after the other, each validated against the
 * manifest's row counts and dropped: in one sandbox server started for the run (removed at the end,
 * whatever happens), or on the configured server when the target is 'server'.
 */
async function restoreLogical(
  vault: Vault,
  ref: string,
  entry: CatalogEntry,
  options: RestoreCheckOptions,
): Promise<RestoreCheck> {
  const started = Date.now();
  const manifest = entry.manifest;
  const names = manifest.objects.filter((o) => o.kind === 'database').map((o) => o.database!);
  if (names.length === 0) throw new UsageError(`backup ${manifest.id} holds no database dump`);
  const only =
    entry.namedObject !== undefined || options.from !== undefined
      ? pickDatabaseObject(manifest, { named: entry.namedObject, from: options.from }).database!
      : undefined;
  const place = await openRestorePlace(vault, options.target, Math.floor(manifest.server.versionNum / 10000));
  const { restoredOn } = place;
  const sandbox = place.scratch && { config: place.config, description: restoredOn.description };
  const databases: RestoredDatabase[] = [];
  try {
    for (const name of only !== undefined ? [only] : names) {
      vault.reporter.info(
        `restoring "${name}" from ${manifest.id} into a temporary database in ${restoredOn.description}`,
      );
      // `latest` is pinned to the backup resolved at the start, should a new one finish meanwhile.
      const r = await restoreTest(vault, ref.trim() === 'latest' ? manifest.id : ref, {
        from: name,
        sandbox,
      });
      databases.push({
        database: name,
        restoredAs: r.temporaryDatabase,
        tables: r.validation.tablesChecked,
        rows: r.validation.rowsChecked,
        mismatches: r.validation.mismatches,
        ...(r.validation.note ? { note: r.validation.note } : {}),
      });
    }
  } finally {
    await place.remove();
  }
  return {
    backupId: manifest.id,
    type: 'full',
    databases,
    ...totals(databases),
    restoreMs: Date.now() - started,
    restoredTo: manifest.finishedAt,
    restoredOn,
  };
}

export interface SandboxRecovery {
  readonly recovered: RecoveredPoint;
  /** Where: the recovery sandbox, with its server_version. */
  readonly restoredOn: RestoredOn;
  readonly databases: readonly RestoredDatabase[];
}

/**
 * Recovers a base backup in a sandbox server (as `restore pitr` does, nothing copied out), then
 * checks every database the recovered cluster holds: it opens, its tables are counted, its indexes
 * are listed when invalid. The sandbox is always removed.
 */
export async function recoverInSandbox(
  vault: Vault,
  entry: CatalogEntry,
  object: StoredObject,
  target: RecoveryTarget,
  why: string,
): Promise<SandboxRecovery> {
  const { config, reporter } = vault;
  // An incremental: its whole chain, checked before the sandbox is made.
  const chain = await resolveBaseChain(vault, entry);
  const sandbox = await RecoverySandbox.create(config, reporter);
  try {
    await sandbox.layDown(
      entry,
      object,
      (restoreCommand) => ({
        settings: recoverySettings(restoreCommand, target),
        comment: `${why} from ${entry.manifest.id} to ${describeTarget(target)}`,
      }),
      chain,
    );
    await sandbox.start();
    const recovered = await sandbox.waitForPromotion();
    const { names, version } = await withClient(sandbox.connection('template1'), 'template1', async (c) => {
      const r = await c.query<{ datname: string }>(
        'SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY 1',
      );
      const v = await c.query<{ v: string }>("SELECT current_setting('server_version') AS v");
      return { names: r.rows.map((x) => x.datname), version: v.rows[0]?.v };
    });
    const databases: RestoredDatabase[] = [];
    for (const database of names) {
      const conn = sandbox.connection(database);
      const counts = await exactRowCounts(conn, database);
      const health = await databaseHealth({ ...config, pg: conn }, database);
      databases.push({
        database,
        restoredAs: 'sandbox',
        tables: counts.length,
        rows: counts.reduce((n, t) => n + t.rows, 0),
        mismatches: [],
        invalidIndexes: health.invalidIndexes,
        note: 'a base backup records no row counts: the database opened and every table was counted',
      });
    }
    return {
      recovered,
      databases,
      restoredOn: {
        kind: 'sandbox',
        description: `a recovery sandbox server${version ? ` (PostgreSQL ${version.split(' ')[0]})` : ''}`,
        ...(version ? { serverVersion: version } : {}),
      },
    };
  } finally {
    await sandbox.remove();
  }
}

/** A base backup recovered to its own end (recovery_target = 'immediate'): the WAL inside suffices. */
async function restorePhysical(vault: Vault, entry: CatalogEntry): Promise<RestoreCheck> {
  const started = Date.now();
  const manifest = entry.manifest;
  const object = manifest.objects.find((o) => o.kind === 'base');
  if (object === undefined || manifest.physical === undefined) {
    throw new IntegrityError(`backup ${manifest.id} lists no base backup object`);
  }
  const { recovered, databases, restoredOn } = await recoverInSandbox(
    vault,
    entry,
    object,
    { kind: 'immediate' },
    'pgvault verify restore (sandbox)',
  );
  return {
    backupId: manifest.id,
    type: 'base',
    databases,
    ...totals(databases),
    restoreMs: Date.now() - started,
    restoredTo: manifest.physical.stopTime ?? manifest.finishedAt,
    recovered,
    restoredOn,
  };
}

/** Restores and validates one full or base backup; throws a ValidationError on differing counts. */
export async function restoreAndValidate(
  vault: Vault,
  ref: string,
  entry: CatalogEntry,
  options: RestoreCheckOptions = {},
): Promise<RestoreCheck> {
  // A wrong key or a tampered manifest is refused before anything is created.
  await openBackup(entry, vault.config);
  const type = entry.manifest.type;
  if (type === 'full') return restoreLogical(vault, ref, entry, options);
  if (type === 'base') return restorePhysical(vault, entry);
  throw new UsageError(
    `backup ${entry.manifest.id} is a ${type} backup; verify restore takes a full or base backup (verify ${type === 'indexes' ? 'indexes' : 'file'} checks this one)`,
  );
}

/** The first line of an error, as a drill record keeps it. */
export function oneLine(err: unknown): string {
  return errorMessage(err).split('\n')[0] ?? '';
}

/**
 * `verify restore <backup|latest>`: restoreAndValidate, then the measured time stored as an RTO
 * sample (kind 'verify-restore'). A failure once the backup is known is stored too (ok false).
 */
export async function verifyRestore(
  vault: Vault,
  ref: string,
  options: RestoreCheckOptions = {},
): Promise<VerifyRestoreResult> {
  const entry = await vault.catalog.resolve(ref);
  const startedAt = new Date();
  let check: RestoreCheck;
  try {
    check = await restoreAndValidate(vault, ref, entry, options);
  } catch (err) {
    await writeDrillRecord(vault, {
      kind: 'verify-restore',
      backupId: entry.manifest.id,
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      ok: false,
      error: oneLine(err),
      restoredOn: drillPlace(
        vault.config,
        entry.manifest.type === 'full' ? (options.target ?? vault.config.restoreTestTarget) : 'sandbox',
      ),
    });
    throw err;
  }
  const record = await writeDrillRecord(vault, {
    kind: 'verify-restore',
    backupId: check.backupId,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    ok: true,
    rtoMs: check.restoreMs,
    restoredTo: check.restoredTo,
    tables: check.tables,
    rows: check.rows,
    restoredOn: drillPlace(vault.config, check.restoredOn.kind, check.restoredOn),
  });
  return { ...check, record };
}
