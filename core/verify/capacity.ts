import { statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { errorMessage } from '../errors';
import type { StorageTarget } from '../storage/target';
import type { Vault } from '../vault';

/**
 * `verify capacity`: per target, what the cluster's objects take, how full the place is (the local
 * disk for a file target, STORAGE_QUOTA_GB for cloud targets), how fast it fills and when it is full.
 *
 * The growth rate is what the catalog shows was written in the last GROWTH_WINDOW_DAYS (every object
 * under `{cluster}/`: backups, WAL, drill records, reports, by modification time). Deleted objects
 * leave no trace in a write-once catalog, so this is the rate the space fills if retention frees
 * nothing: the forecast errs early, never late.
 */

export const GROWTH_WINDOW_DAYS = 7;
const DAY_MS = 86_400_000;

export interface TargetCapacity {
  readonly location: string;
  readonly kind: StorageTarget['kind'];
  /** Bytes of this cluster's objects in the target. */
  readonly usedBytes: number;
  readonly objects: number;
  /** disk: statfs of the file target's folder; quota: STORAGE_QUOTA_GB; none: no limit known. */
  readonly basis: 'disk' | 'quota' | 'none';
  /** Size of the disk, or the quota. */
  readonly limitBytes?: number;
  /** Bytes taken on that disk by anything (df's "Used"), or usedBytes against a quota. */
  readonly occupiedBytes?: number;
  readonly freeBytes?: number;
  /** occupied / (occupied + free), as df computes Use%. */
  readonly percent?: number;
  /** Bytes written per day over the window (see above). */
  readonly writtenBytesPerDay: number;
  /** Days the window really covers (shorter when the catalog is younger; at least 1). */
  readonly windowDays: number;
  readonly daysUntilFull?: number;
  readonly fullBy?: string;
  /** Why the target could not be measured, when it could not. */
  readonly error?: string;
}

export interface CapacityReport {
  readonly ok: boolean;
  readonly cluster: string;
  readonly checkedAt: string;
  readonly thresholdPercent: number;
  readonly targets: readonly TargetCapacity[];
}

export interface DiskUsage {
  readonly totalBytes: number;
  readonly usedBytes: number;
  readonly availableBytes: number;
}

/** statfs of the folder, or of its nearest existing parent (BACKUP_DIR may not exist yet). */
export async function diskUsage(path: string): Promise<DiskUsage> {
  let dir = path;
  for (;;) {
    try {
      const s = await statfs(dir);
      const bsize = Number(s.bsize);
      return {
        totalBytes: Number(s.blocks) * bsize,
        usedBytes: (Number(s.blocks) - Number(s.bfree)) * bsize,
        availableBytes: Number(s.bavail) * bsize,
      };
    } catch (err) {
      const parent = dirname(dir);
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === dir) throw err;
      dir = parent;
    }
  }
}

export interface ListingSummary {
  readonly usedBytes: number;
  readonly objects: number;
  readonly writtenInWindow: number;
  readonly oldest?: Date;
}

/** One streamed pass over the cluster's objects in a target: total size and recent writes. */
export async function summariseListing(
  target: StorageTarget,
  prefix: string,
  now: Date,
): Promise<ListingSummary> {
  const windowStart = now.getTime() - GROWTH_WINDOW_DAYS * DAY_MS;
  let usedBytes = 0;
  let objects = 0;
  let writtenInWindow = 0;
  let oldest: number | undefined;
  for await (const info of target.list(prefix)) {
    usedBytes += info.size;
    objects++;
    const t = info.modified.getTime();
    if (t > windowStart) writtenInWindow += info.size;
    if (oldest === undefined || t < oldest) oldest = t;
  }
  return {
    usedBytes,
    objects,
    writtenInWindow,
    ...(oldest === undefined ? {} : { oldest: new Date(oldest) }),
  };
}

/** Pure: the numbers of one target from its listing and its limit. */
export function targetCapacity(
  target: Pick<StorageTarget, 'location' | 'kind'>,
  listing: ListingSummary,
  limit: { basis: 'disk'; disk: DiskUsage } | { basis: 'quota'; quotaBytes: number } | { basis: 'none' },
  now: Date,
): TargetCapacity {
  const age = listing.oldest === undefined ? 0 : (now.getTime() - listing.oldest.getTime()) / DAY_MS;
  const windowDays = Math.max(1, Math.min(GROWTH_WINDOW_DAYS, age));
  const writtenBytesPerDay = listing.writtenInWindow / windowDays;
  const base = {
    location: target.location,
    kind: target.kind,
    usedBytes: listing.usedBytes,
    objects: listing.objects,
    writtenBytesPerDay,
    windowDays: Math.round(windowDays * 100) / 100,
  };
  let limitBytes: number;
  let occupiedBytes: number;
  let freeBytes: number;
  if (limit.basis === 'disk') {
    limitBytes = limit.disk.totalBytes;
    occupiedBytes = limit.disk.usedBytes;
    freeBytes = limit.disk.availableBytes;
  } else if (limit.basis === 'quota') {
    limitBytes = limit.quotaBytes;
    occupiedBytes = listing.usedBytes;
    freeBytes = Math.max(0, limit.quotaBytes - listing.usedBytes);
  } else {
    return { ...base, basis: 'none' };
  }
  const percent = occupiedBytes + freeBytes === 0 ? 100 : (100 * occupiedBytes) / (occupiedBytes + freeBytes);
  const daysUntilFull = writtenBytesPerDay > 0 ? freeBytes / writtenBytesPerDay : undefined;
  return {
    ...base,
    basis: limit.basis,
    limitBytes,
    occupiedBytes,
    freeBytes,
    percent: Math.round(percent * 10) / 10,
    ...(daysUntilFull === undefined
      ? {}
      : {
          daysUntilFull: Math.round(daysUntilFull * 10) / 10,
          fullBy: new Date(now.getTime() + daysUntilFull * DAY_MS).toISOString(),
        }),
  };
}

export async function verifyCapacity(vault: Vault, now = new Date()): Promise<CapacityReport> {
  const { config } = vault;
  const prefix = `${config.clusterName}/`;
  const targets = await Promise.all(
    vault.targets.map(async (target): Promise<TargetCapacity> => {
      try {
        const listing = await summariseListing(target, prefix, now);
        const root = (target as { root?: unknown }).root;
        if (target.kind === 'file' && typeof root === 'string') {
          return targetCapacity(target, listing, { basis: 'disk', disk: await diskUsage(root) }, now);
        }
        const quota = config.alerts.storageQuotaBytes;
        return targetCapacity(
          target,
          listing,
          quota === undefined ? { basis: 'none' } : { basis: 'quota', quotaBytes: quota },
          now,
        );
      } catch (err) {
        vault.reporter.warn(`cannot measure ${target.location}: ${errorMessage(err)}`);
        return {
          location: target.location,
          kind: target.kind,
          usedBytes: 0,
          objects: 0,
          basis: 'none',
          writtenBytesPerDay: 0,
          windowDays: 0,
          error: errorMessage(err),
        };
      }
    }),
  );
  const threshold = config.alerts.capacityPercent;
  return {
    ok: targets.every((t) => t.error === undefined && (t.percent === undefined || t.percent < threshold)),
    cluster: config.clusterName,
    checkedAt: now.toISOString(),
    thresholdPercent: threshold,
    targets,
  };
}
