import type { CatalogEntry } from '../catalog/catalog';
import type { Vault } from '../vault';

/**
 * `verify sizes`: backup sizes over time per series, their trend, and sudden shrinks. A series is
 * one database's dumps (`full/app`, whatever the schedule: a daily and a weekly dump of the same
 * database are the same data), or one single-object type (`base`, `config`, `indexes`).
 *
 * Shrinks are judged on the raw (dumped) size, so switching COMPRESSION does not look like lost
 * data; the stored size is used only when no raw size was recorded.
 */

export interface SizePoint {
  readonly id: string;
  /** When the backup finished (ISO). */
  readonly at: string;
  readonly rawBytes: number;
  readonly storedBytes: number;
  /** stored / raw (0 when nothing was dumped). */
  readonly ratio: number;
  /** Change of the compared size against the previous point, in percent (negative: smaller). */
  readonly changePercent?: number;
  /** Much smaller than the previous point (more than ALERT_SHRINK_PERCENT). */
  readonly suspect: boolean;
}

export interface SizeTrend {
  /** Least-squares slope of the compared size over time, bytes per day. */
  readonly bytesPerDay: number;
  /** The slope relative to the mean size, percent per day. */
  readonly percentPerDay: number;
  /** growing / shrinking when the fitted change over the series' span is beyond 5% of its mean size. */
  readonly direction: 'growing' | 'shrinking' | 'flat' | 'single';
}

export interface SizeSeries {
  /** `full/app`, `base`, `config`, `indexes`. */
  readonly key: string;
  readonly type: string;
  readonly database?: string;
  /** Oldest first. */
  readonly points: readonly SizePoint[];
  readonly trend: SizeTrend;
}

export interface SizeSuspect {
  readonly series: string;
  readonly id: string;
  readonly at: string;
  readonly previousId: string;
  readonly bytes: number;
  readonly previousBytes: number;
  /** How much smaller, in percent of the previous size. */
  readonly shrinkPercent: number;
}

export interface SizesReport {
  readonly ok: boolean;
  readonly cluster: string;
  readonly shrinkPercent: number;
  readonly series: readonly SizeSeries[];
  /** Every flagged shrink, newest first. */
  readonly suspects: readonly SizeSuspect[];
}

interface Sample {
  readonly id: string;
  readonly at: string;
  readonly rawBytes: number;
  readonly storedBytes: number;
}

const DAY_MS = 86_400_000;

function compared(s: Pick<Sample, 'rawBytes' | 'storedBytes'>): number {
  return s.rawBytes > 0 ? s.rawBytes : s.storedBytes;
}

/** Series keyed as documented above, samples in no particular order. */
export function sizeSamples(entries: readonly CatalogEntry[]): Map<string, Sample[]> {
  const out = new Map<string, Sample[]>();
  const add = (key: string, sample: Sample) => out.set(key, [...(out.get(key) ?? []), sample]);
  for (const { manifest: m } of entries) {
    if (m.type === 'full') {
      for (const o of m.objects) {
        if (o.kind !== 'database' || o.database === undefined) continue;
        add(`full/${o.database}`, {
          id: m.id,
          at: m.finishedAt,
          rawBytes: o.rawSize,
          storedBytes: o.storedSize,
        });
      }
    } else {
      add(m.type, { id: m.id, at: m.finishedAt, rawBytes: m.rawSize, storedBytes: m.storedSize });
    }
  }
  return out;
}

export function sizeTrend(points: readonly Pick<Sample, 'at' | 'rawBytes' | 'storedBytes'>[]): SizeTrend {
  if (points.length < 2) return { bytesPerDay: 0, percentPerDay: 0, direction: 'single' };
  const xs = points.map((p) => Date.parse(p.at) / DAY_MS);
  const ys = points.map(compared);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let sxx = 0;
  let sxy = 0;
  for (let i = 0; i < xs.length; i++) {
    sxx += (xs[i]! - mx) ** 2;
    sxy += (xs[i]! - mx) * (ys[i]! - my);
  }
  const slope = sxx === 0 ? 0 : sxy / sxx;
  const span = Math.max(...xs) - Math.min(...xs);
  const fittedChange = my === 0 ? 0 : (slope * span) / my;
  return {
    bytesPerDay: slope,
    percentPerDay: my === 0 ? 0 : (100 * slope) / my,
    direction: fittedChange > 0.05 ? 'growing' : fittedChange < -0.05 ? 'shrinking' : 'flat',
  };
}

/** Pure: sizes, trends and shrinks from catalog entries. */
export function analyseSizes(
  cluster: string,
  entries: readonly CatalogEntry[],
  shrinkPercent: number,
): SizesReport {
  const series: SizeSeries[] = [];
  const suspects: SizeSuspect[] = [];
  for (const [key, samples] of [...sizeSamples(entries)].sort(([a], [b]) => a.localeCompare(b))) {
    const sorted = [...samples].sort((a, b) =>
      a.at < b.at ? -1 : a.at > b.at ? 1 : a.id.localeCompare(b.id),
    );
    const points: SizePoint[] = sorted.map((s, i) => {
      const prev = sorted[i - 1];
      const bytes = compared(s);
      const before = prev === undefined ? undefined : compared(prev);
      const changePercent = before ? (100 * (bytes - before)) / before : undefined;
      const suspect = changePercent !== undefined && changePercent <= -shrinkPercent;
      if (suspect && prev !== undefined && before !== undefined) {
        suspects.push({
          series: key,
          id: s.id,
          at: s.at,
          previousId: prev.id,
          bytes,
          previousBytes: before,
          shrinkPercent: Math.round(-changePercent! * 10) / 10,
        });
      }
      return {
        id: s.id,
        at: s.at,
        rawBytes: s.rawBytes,
        storedBytes: s.storedBytes,
        ratio: s.rawBytes === 0 ? 0 : s.storedBytes / s.rawBytes,
        ...(changePercent === undefined ? {} : { changePercent: Math.round(changePercent * 10) / 10 }),
        suspect,
      };
    });
    const [type, database] = key.split('/', 2) as [string, string | undefined];
    series.push({ key, type, ...(database ? { database } : {}), points, trend: sizeTrend(sorted) });
  }
  suspects.sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0));
  return { ok: suspects.length === 0, cluster, shrinkPercent, series, suspects };
}

export async function verifySizes(vault: Vault, entries?: readonly CatalogEntry[]): Promise<SizesReport> {
  return analyseSizes(
    vault.config.clusterName,
    entries ?? (await vault.catalog.list()),
    vault.config.alerts.shrinkPercent,
  );
}
