import { type DrillRecord, writeDrillRecord } from '../catalog/records';
import { UsageError } from '../errors';
import {
  parseRecoveryTarget,
  planPitr,
  type TargetTime,
  targetTimeLine,
  targetTimeOf,
} from '../restore/pitr';
import { drillPlace } from '../restore/scratch';
import type { RestoredOn, RestoreTestTarget } from '../restore/test';
import type { Vault } from '../vault';
import { oneLine, type RestoredDatabase, recoverInSandbox, restoreAndValidate } from '../verify/restore';

/**
 * `pgvault drill [--pitr]`: the guide's disaster-recovery drills as one command. The monthly drill
 * restores the newest full backup into temporary databases of a sandbox server (or of the configured
 * server when asked: RESTORE_TEST_TARGET=server, --on-server) and validates it against the manifest;
 * the quarterly one (--pitr) recovers the newest base backup that ends before one hour ago, rolled
 * forward through the WAL archive, in a sandbox server. Either way the time from start to
 * validated data is measured, the result (RTO and RPO samples) is stored under drills/, everything
 * is removed, and a failed drill is stored as well before the error is passed on.
 */

export interface DrillOptions {
  /** Point-in-time recovery from a base backup and the WAL archive instead of the newest full backup. */
  readonly pitr?: boolean;
  /** With pitr: the target time (ISO 8601 or PostgreSQL's format). @default one hour before the start */
  readonly targetTime?: string;
  /** Without pitr: where the full backup is restored. @default config.restoreTestTarget */
  readonly target?: RestoreTestTarget;
}

export interface DrillResult {
  readonly kind: 'drill' | 'pitr';
  readonly backupId: string;
  /** For pitr: which base backup and why (the planner's words). */
  readonly choice?: string;
  readonly databases: readonly RestoredDatabase[];
  readonly tables: number;
  readonly rows: number;
  /** Start to validated data. */
  readonly rtoMs: number;
  readonly rpoMs?: number;
  readonly restoredTo: string;
  /** For pitr: the target in UTC and in pgvault's local time zone. */
  readonly targetTime?: TargetTime;
  readonly record: DrillRecord;
  readonly warnings: readonly string[];
  /** Where it was restored: a sandbox server (always for pitr), or the configured server. */
  readonly restoredOn: RestoredOn;
}

const HOUR_MS = 3_600_000;

interface DrillOutcome {
  readonly databases: readonly RestoredDatabase[];
  readonly tables: number;
  readonly rows: number;
  readonly restoredTo: string;
  readonly rpoMs?: number;
  readonly choice?: string;
  readonly warnings: readonly string[];
  readonly restoredOn: RestoredOn;
}

export async function runDrill(vault: Vault, options: DrillOptions = {}): Promise<DrillResult> {
  if (options.pitr && options.target === 'server') {
    throw new UsageError(
      '--on-server applies to the drill of a full backup; drill --pitr always recovers in a sandbox server',
    );
  }
  const kind = options.pitr ? 'pitr' : 'drill';
  // Where it restores, known before anything runs, so a failed drill's record says it too.
  const where: RestoreTestTarget = options.pitr
    ? 'sandbox'
    : (options.target ?? vault.config.restoreTestTarget);
  const started = Date.now();
  const startedAt = new Date(started).toISOString();
  let backupId = 'none';
  let outcome: DrillOutcome;
  let targetTime: TargetTime | undefined;
  try {
    if (options.pitr) {
      const target = parseRecoveryTarget({
        time: options.targetTime ?? new Date(started - HOUR_MS).toISOString(),
      });
      if (target.kind !== 'time') throw new UsageError('a PITR drill needs a target time');
      targetTime = targetTimeOf(target);
      vault.reporter.info(`drill: ${targetTimeLine(target)}`);
      const plan = await planPitr(vault, 'auto', target);
      backupId = plan.manifest.id;
      for (const w of plan.warnings) vault.reporter.warn(w);
      vault.reporter.info(`drill: recovering ${plan.choice} to ${target.text} in a sandbox`);
      const { databases, restoredOn } = await recoverInSandbox(
        vault,
        plan.reach.entry,
        plan.object,
        target,
        'pgvault drill --pitr (sandbox)',
      );
      outcome = {
        databases,
        tables: databases.reduce((n, d) => n + d.tables, 0),
        rows: databases.reduce((n, d) => n + d.rows, 0),
        restoredTo: target.time.toISOString(),
        // What a disaster at the start would have lost: everything after the end of the WAL
        // continuously archived from this backup, the newest point this recovery could have reached.
        ...(plan.reach.endTime ? { rpoMs: Math.max(0, started - plan.reach.endTime.getTime()) } : {}),
        choice: plan.choice,
        warnings: plan.warnings,
        restoredOn,
      };
    } else {
      const entry = await vault.catalog.resolve('latest', 'full');
      backupId = entry.manifest.id;
      vault.reporter.info(`drill: restoring ${backupId}, the newest full backup`);
      const check = await restoreAndValidate(vault, backupId, entry, { target: where });
      outcome = {
        databases: check.databases,
        tables: check.tables,
        rows: check.rows,
        restoredTo: check.restoredTo,
        rpoMs: Math.max(0, started - Date.parse(check.restoredTo)),
        warnings: [],
        restoredOn: check.restoredOn,
      };
    }
  } catch (err) {
    await writeDrillRecord(vault, {
      kind,
      backupId,
      startedAt,
      finishedAt: new Date().toISOString(),
      ok: false,
      error: oneLine(err),
      restoredOn: drillPlace(vault.config, where),
    });
    throw err;
  }
  const rtoMs = Date.now() - started;
  const { choice, warnings, databases, restoredOn, ...measured } = outcome;
  const record = await writeDrillRecord(vault, {
    kind,
    backupId,
    startedAt,
    finishedAt: new Date().toISOString(),
    ok: true,
    rtoMs,
    ...measured,
    restoredOn: drillPlace(vault.config, restoredOn.kind, restoredOn),
  });
  return {
    kind,
    backupId,
    ...(choice ? { choice } : {}),
    databases,
    ...measured,
    ...(targetTime ? { targetTime } : {}),
    rtoMs,
    record,
    warnings,
    restoredOn,
  };
}
