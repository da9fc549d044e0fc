import type { Manifest } from '../catalog/manifest';
import { MANIFEST_SUFFIX, parseBackupId } from '../catalog/naming';
import type { ObjectInfo } from '../storage/target';
import type { RetentionBackup, RetentionLeftover } from './plan';

/**
 * What the planner is given, derived from listings: pure, so the property tests build catalogs as
 * plain listings and run the same derivation the executor runs.
 */

/** One target's listing of the backup folders ({cluster}/{full,base,config,indexes}/). */
export interface TargetListing {
  readonly location: string;
  readonly objects: readonly ObjectInfo[];
}

/** A parsed manifest and the targets whose listing holds it. */
export interface ManifestCopy {
  readonly manifest: Pick<
    Manifest,
    | 'id'
    | 'type'
    | 'schedule'
    | 'startedAt'
    | 'finishedAt'
    | 'server'
    | 'objects'
    | 'storedSize'
    | 'physical'
    | 'incrementalOf'
  >;
  readonly manifestKey: string;
}

export function inventory(
  listings: readonly TargetListing[],
  manifests: readonly ManifestCopy[],
): { backups: RetentionBackup[]; leftovers: RetentionLeftover[] } {
  const byTarget = listings.map((l) => ({
    location: l.location,
    objects: new Map(l.objects.map((o) => [o.key, o])),
  }));

  const backups: RetentionBackup[] = manifests.flatMap(({ manifest: m, manifestKey }) => {
    const holders = byTarget.filter((t) => t.objects.has(manifestKey));
    // A manifest no listing holds was written after the listings were taken: a backup that has just
    // completed, not an incomplete one. It is left alone (its objects stay young leftovers) until the
    // next run lists it.
    if (holders.length === 0) return [];
    let missing: string[] = m.objects.map((o) => o.key);
    for (const t of holders) {
      const absent = m.objects.filter((o) => t.objects.get(o.key)?.size !== o.storedSize).map((o) => o.key);
      if (absent.length < missing.length) missing = absent;
    }
    return {
      id: m.id,
      type: m.type,
      schedule: m.schedule,
      startedAt: m.startedAt,
      finishedAt: m.physical?.stopTime ?? m.finishedAt,
      complete: missing.length === 0,
      ...(missing.length > 0 ? { missing } : {}),
      lineage: `${m.server.systemIdentifier}/${Math.floor(m.server.versionNum / 10000)}`,
      ...(m.incrementalOf !== undefined ? { incrementalOf: m.incrementalOf } : {}),
      storedSize: m.storedSize,
      manifestKey,
      objectKeys: m.objects.map((o) => o.key),
      ...(m.physical
        ? {
            physical: {
              timeline: m.physical.timeline,
              startWal: m.physical.startWal,
              stopWal: m.physical.stopWal,
              stopLsn: m.physical.stopLsn,
            },
          }
        : {}),
    } satisfies RetentionBackup;
  });

  // Objects whose target holds no manifest for their id: a backup that failed, is still being
  // written, or whose deletion stopped after its manifest went.
  const leftovers = new Map<
    string,
    { keys: Set<string>; targets: Set<string>; newest: Date; size: number }
  >();
  for (const t of byTarget) {
    for (const o of t.objects.values()) {
      if (o.key.endsWith(MANIFEST_SUFFIX)) continue;
      const slash = o.key.lastIndexOf('/');
      const name = o.key.slice(slash + 1);
      const id = name.split('.')[0] ?? '';
      if (!parseBackupId(id)) continue; // not ours (a temp file, something copied in by hand)
      if (t.objects.has(`${o.key.slice(0, slash + 1)}${id}${MANIFEST_SUFFIX}`)) continue;
      const entry = leftovers.get(id);
      if (entry) {
        if (!entry.keys.has(o.key)) entry.size += o.size;
        entry.keys.add(o.key);
        entry.targets.add(t.location);
        if (o.modified > entry.newest) entry.newest = o.modified;
      } else {
        leftovers.set(id, {
          keys: new Set([o.key]),
          targets: new Set([t.location]),
          newest: o.modified,
          size: o.size,
        });
      }
    }
  }
  return {
    backups,
    leftovers: [...leftovers.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([id, l]) => ({
        id,
        keys: [...l.keys].sort(),
        targets: [...l.targets],
        newestModified: l.newest,
        storedSize: l.size,
      })),
  };
}
