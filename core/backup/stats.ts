import type { CatalogEntry } from '../catalog/catalog';
import type { Vault } from '../vault';

export interface TypeStats {
  readonly type: string;
  readonly count: number;
  readonly rawBytes: number;
  readonly storedBytes: number;
  /** stored / raw: 0.25 means the backups take a quarter of the dumped size. */
  readonly ratio: number;
  readonly lastSuccess?: string;
  readonly lastId?: string;
  readonly lastAgeHours?: number;
}

export interface BackupStats {
  readonly cluster: string;
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
  const byType = [...groups.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([type, list]): TypeStats => {
      const rawBytes = list.reduce((n, e) => n + e.manifest.rawSize, 0);
      const storedBytes = list.reduce((n, e) => n + e.manifest.storedSize, 0);
      const newest = list[0]!.manifest;
      return {
        type,
        count: list.length,
        rawBytes,
        storedBytes,
        ratio: rawBytes === 0 ? 0 : storedBytes / rawBytes,
        lastSuccess: newest.finishedAt,
        lastId: newest.id,
        lastAgeHours: (now.getTime() - Date.parse(newest.finishedAt)) / 3_600_000,
      };
    });
  return {
    cluster: vault.config.clusterName,
    targets: vault.targets.map((t) => t.location),
    total: {
      count: entries.length,
      rawBytes: entries.reduce((n, e) => n + e.manifest.rawSize, 0),
      storedBytes: entries.reduce((n, e) => n + e.manifest.storedSize, 0),
    },
    byType,
  };
}
