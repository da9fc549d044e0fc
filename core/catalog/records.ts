import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Readable } from 'node:stream';
import { errorMessage } from '../errors';
import { targetsHolding } from '../storage';
import type { StorageTarget } from '../storage/target';
import type { Vault } from '../vault';
import { formatStamp } from './naming';

/**
 * Drill and restore-test results, kept in the catalog under `{cluster}/drills/` so reports, alerts
 * and the next drill read the measured RTO and RPO from the same place the backups live. One small
 * JSON object per run, written once to every target (like a manifest), never updated in place.
 */
export interface DrillRecord {
  readonly format: 'pgvault-drill/1';
  /** `drill` restores the newest backup; `pitr` a point in time; `verify-restore` is `verify restore`. */
  readonly kind: 'drill' | 'pitr' | 'verify-restore';
  /** The backup restored (a full or base backup id). */
  readonly backupId: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  /** True only when the data was restored and validated. */
  readonly ok: boolean;
  /** One line: what failed, when not ok. */
  readonly error?: string;
  /** Measured recovery time: from start to validated data (an RTO sample). */
  readonly rtoMs?: number;
  /**
   * Data loss had this been a real disaster at start: start time minus the restored point in time
   * (logical drills). A PITR drill restores to a chosen past point, so its sample is start time minus
   * the end of the WAL continuously archived from its base backup, the newest point it could reach.
   */
  readonly rpoMs?: number;
  /** The point in time restored to (ISO), for PITR drills; the backup's end for logical ones. */
  readonly restoredTo?: string;
  readonly tables?: number;
  readonly rows?: number;
  /**
   * Where the backup was restored: a sandbox server pgvault started (with its server_version, once
   * it ran), or the configured server (host:port). Absent in records written before pgvault kept it.
   */
  readonly restoredOn?: DrillPlace;
  readonly host: string;
}

export interface DrillPlace {
  readonly kind: 'sandbox' | 'server';
  /** The sandbox's server_version, e.g. "15.10 (Debian 15.10-0+deb12u1)". */
  readonly serverVersion?: string;
  /** The configured server, host:port. */
  readonly server?: string;
}

/** "sandbox (PostgreSQL 15.10)", "server db1:5432", "-" for an older record: a report's cell. */
export function describeDrillPlace(place: DrillPlace | undefined): string {
  if (place === undefined) return '-';
  if (place.kind === 'server') return `server${place.server ? ` ${place.server}` : ''}`;
  return `sandbox${place.serverVersion ? ` (PostgreSQL ${place.serverVersion.split(' ')[0]})` : ''}`;
}

export const DRILLS_FOLDER = 'drills';

/**
 * `{cluster}/drills/YYYYMMDD-HHMMSS-<kind>-<8 hex>.json`: the second sorts them, the random suffix
 * keeps two runs started in the same second (two hosts, a retry beside cron) from sharing a key.
 */
export function drillRecordKey(
  cluster: string,
  record: Pick<DrillRecord, 'kind' | 'startedAt'>,
  suffix = uniqueSuffix(),
): string {
  return `${cluster}/${DRILLS_FOLDER}/${formatStamp(new Date(record.startedAt))}-${record.kind}-${suffix}.json`;
}

/** A random suffix for keys made from a time (drill records, reports): unique, not only per second. */
export function uniqueSuffix(): string {
  return randomBytes(4).toString('hex');
}

/**
 * Writes a small object create-only (PutOptions.ifAbsent): it never replaces another run's object
 * under the same key, and fails with ObjectExistsError instead.
 */
export async function putNew(target: StorageTarget, key: string, text: string): Promise<void> {
  await target.put(key, Readable.from([Buffer.from(text)]), { ifAbsent: true });
}

/**
 * Stores one record on every target, create-only under a key of its own (never over another run's
 * record); a target that fails is warned about, not fatal.
 */
export async function writeDrillRecord(
  vault: Vault,
  record: Omit<DrillRecord, 'format' | 'host'>,
): Promise<DrillRecord> {
  const full: DrillRecord = { format: 'pgvault-drill/1', host: hostname(), ...record };
  const key = drillRecordKey(vault.config.clusterName, full);
  const text = `${JSON.stringify(full, null, 2)}\n`;
  // Several repositories: the ones whose REPO<n>_HOLDS takes reports.
  const targets = targetsHolding(vault.targets, 'reports');
  const results = await Promise.allSettled(targets.map((t) => putNew(t, key, text)));
  results.forEach((r, i) => {
    if (r.status === 'rejected') {
      vault.reporter.warn(`drill record not stored in ${targets[i]?.location}: ${errorMessage(r.reason)}`);
    }
  });
  return full;
}

/** Every stored record, newest first, from the first target that can be listed. */
export async function listDrillRecords(vault: Vault): Promise<DrillRecord[]> {
  const prefix = `${vault.config.clusterName}/${DRILLS_FOLDER}/`;
  for (const target of vault.targets) {
    try {
      const records: DrillRecord[] = [];
      for await (const info of target.list(prefix)) {
        if (!info.key.endsWith('.json')) continue;
        try {
          const parsed = JSON.parse((await target.getBytes(info.key)).toString('utf8')) as DrillRecord;
          if (parsed.format === 'pgvault-drill/1') records.push(parsed);
        } catch (err) {
          vault.reporter.warn(`skipping drill record ${info.key}: ${errorMessage(err)}`);
        }
      }
      return records.sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : 0));
    } catch (err) {
      vault.reporter.warn(`cannot list drill records in ${target.location}: ${errorMessage(err)}`);
    }
  }
  return [];
}
