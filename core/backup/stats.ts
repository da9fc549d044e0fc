import type { CatalogEntry } from '../catalog/catalog';
import type { Vault } from '../vault';
import { verifyWalArchive } from '../wal/archive';

export interface TypeStats {
  readonly type: string;
  readonly count: number;
  readonly rawBytes: number;
  readonly storedBytes: number;
  /** stored / raw: 0.25 means the backups take a quarter of the dumped size. */
  readonly ratio: number;
  /** The newest whole backup of the type (every data object there, not only its manifest). */
  readonly lastSuccess?: string;
  readonly lastId?: string;
  readonly lastAgeHours?: number;
  /** Newer backups of the type whose manifest is listed but whose data objects are gone. */
  readonly incomplete?: readonly { readonly id: string; readonly missing: string }[];
}

/** Point-in-time recovery reach: from the oldest base backup's end to the last unbroken WAL. */
export interface RecoverableWindow {
  /** Earliest time PITR can reach: when the oldest usable base backup finished. */
  readonly from?: string;
  /** Latest time: when the last segment of unbroken WAL from a base backup was archived. */
  readonly to?: string;
  /** Seconds since the newest archived WAL object (the current RPO). */
  readonly rpoSeconds?: number;
  /** WAL files missing between a base backup and the newest segment. */
  readonly missingWal: number;
}

export interface BackupStats {
  readonly cluster: string;
  /** Present once there is a base backup or archived WAL. */
  readonly recoverable?: RecoverableWindow;
  readonly targets: readonly string[];
  readonly total: { readonly count: number; readonly rawBytes: number; readonly storedBytes: number };
  readonly byType: readonly TypeStats[];
}

/** `backup stats`: counts, sizes, compression ratio and last success per type (full per schedule). */
export async function backupStats(vault: Vault, now = new Date()): Promise<BackupStats> {
  const entries = await vault.catalog.list();
  const groups = new Map<string, CatalogEntry[]>();
  for (const e of entries) {
    const m = e.manifest;
    const type = m.schedule ? `${m.type}/${m.schedule}` : m.type;
    groups.set(type, [...(groups.get(type) ?? []), e]);
  }
  // The last success of each type is its newest whole backup: the objects of the newest ones only
  // are stat'ed, until one is whole (catalog.newestWhole), never every backup's.
  const byType = await Promise.all(
    [...groups.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(async ([type, list]): Promise<TypeStats> => {
        const rawBytes = list.reduce((n, e) => n + e.manifest.rawSize, 0);
        const storedBytes = list.reduce((n, e) => n + e.manifest.storedSize, 0);
        const { whole, broken } = await vault.catalog.newestWhole(list);
        const newest = whole?.manifest;
        return {
          type,
          count: list.length,
          rawBytes,
          storedBytes,
          ratio: rawBytes === 0 ? 0 : storedBytes / rawBytes,
          ...(newest
            ? {
                lastSuccess: newest.finishedAt,
                lastId: newest.id,
                lastAgeHours: (now.getTime() - Date.parse(newest.finishedAt)) / 3_600_000,
              }
            : {}),
          ...(broken.length > 0
            ? { incomplete: broken.map((b) => ({ id: b.entry.manifest.id, missing: b.problem })) }
            : {}),
        };
      }),
  );
  return {
    cluster: vault.config.clusterName,
    recoverable: await recoverableWindow(vault, entries, now),
    targets: vault.targets.map((t) => t.location),
    total: {
      count: entries.length,
      rawBytes: entries.reduce((n, e) => n + e.manifest.rawSize, 0),
      storedBytes: entries.reduce((n, e) => n + e.manifest.storedSize, 0),
    },
    byType,
  };
}

/** The PITR window from the catalog's base backups and the WAL archive; undefined without either. */
export async function recoverableWindow(
  vault: Vault,
  entries: readonly CatalogEntry[],
  now = new Date(),
): Promise<RecoverableWindow | undefined> {
  const bases = entries.filter((e) => e.manifest.type === 'base' && e.manifest.physical);
  const report = await verifyWalArchive(vault, now);
  if (bases.length === 0 && report.timelines.length === 0) return undefined;
  const reached = report.backups.filter((b) => b.recoverableToTime !== undefined);
  const oldest = bases
    .filter((b) => reached.some((r) => r.id === b.manifest.id))
    .map((b) => b.manifest.physical?.stopTime ?? b.manifest.finishedAt)
    .sort()[0];
  const latest = reached
    .map((r) => r.recoverableToTime!)
    .sort()
    .pop();
  return {
    from: oldest,
    to: latest,
    rpoSeconds: report.rpoSeconds,
    missingWal: report.backups.reduce((n, b) => n + b.missingCount, 0),
  };
}
