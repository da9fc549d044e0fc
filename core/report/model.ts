import { hostname } from 'node:os';
import type { ThresholdInputs } from '../alert/thresholds';
import { measuredRpoMinutes } from '../alert/thresholds';
import type { Alert } from '../alert/types';
import type { RecoverableWindow } from '../backup/stats';
import type { CatalogEntry } from '../catalog/catalog';
import type { DrillRecord } from '../catalog/records';
import type { AlertConfig } from '../config';
import type { CapacityReport } from '../verify/capacity';
import type { SizesReport } from '../verify/sizes';
import type { WalGapReport, WalVerifyReport } from '../wal/archive';

/**
 * Everything `verify report` shows, as plain data: the JSON report is this object, and the HTML and
 * Markdown renderers are pure functions of it (core/report/html.ts, markdown.ts).
 */
export const REPORT_FORMAT = 'pgvault-report/1';

export interface TypeRow {
  /** `full/daily`, `base/weekly`, `config`, `indexes`. */
  readonly type: string;
  readonly count: number;
  readonly newestId: string;
  readonly newestAt: string;
  readonly ageHours: number;
  /** The newest backup's stored size. */
  readonly newestStoredBytes: number;
  readonly storedBytes: number;
  readonly rawBytes: number;
  /** stored / raw over the type. */
  readonly ratio: number;
}

export interface DrillRow {
  readonly kind: DrillRecord['kind'];
  readonly backupId: string;
  readonly startedAt: string;
  readonly ok: boolean;
  readonly rtoMinutes?: number;
  readonly rpoMinutes?: number;
  readonly error?: string;
  /** Where it restored (DrillRecord.restoredOn), absent in older records. */
  readonly restoredOn?: DrillRecord['restoredOn'];
}

/**
 * The limits of AlertConfig a report shows: picked by name, so a destination added to AlertConfig
 * (an ARN, an address) never reaches a stored report.
 */
export type ReportThresholds = Pick<
  AlertConfig,
  | 'capacityPercent'
  | 'backupAgeHours'
  | 'shrinkPercent'
  | 'rpoTargetMinutes'
  | 'rtoTargetMinutes'
  | 'storageQuotaBytes'
>;

/** One repository in the report: what it holds and has, and the backups it should have but lacks. */
export interface RepositoryRow {
  readonly repository: number;
  readonly type: string;
  readonly location: string;
  readonly holds: readonly string[];
  readonly backups: number;
  readonly storedBytes: number;
  /** The newest backup it has, by type (`full:daily` …). */
  readonly newest: Readonly<Record<string, string>>;
  /** Backups it should hold (REPO<n>_HOLDS) but lacks (verify all's placement check): `repo sync` copies them. */
  readonly missing: readonly string[];
  /** Why it could not be listed (unreachable, refused): its backups are unknown, so none is "missing". */
  readonly unreachable?: string;
}

export interface ReportData {
  readonly format: typeof REPORT_FORMAT;
  readonly cluster: string;
  readonly generatedAt: string;
  readonly host: string;
  readonly targets: readonly string[];
  /** Several repositories (REPO<n>_*): one row each; absent with the single-target keys. */
  readonly repositories?: readonly RepositoryRow[];
  readonly status: 'ok' | 'failing';
  /** Threshold alerts, critical first: the report's first section. */
  readonly failing: readonly Alert[];
  /** The limits judged against (never where alerts go: no ARN or address in a stored report). */
  readonly thresholds: ReportThresholds;
  readonly totals: {
    readonly count: number;
    readonly storedBytes: number;
    readonly rawBytes: number;
    readonly ratio: number;
  };
  readonly backups: readonly TypeRow[];
  readonly sizes: SizesReport;
  readonly wal: {
    readonly archived: boolean;
    readonly window?: RecoverableWindow;
    readonly gaps: readonly WalGapReport[];
    readonly newestModified?: string;
    readonly timelines: number;
    readonly segments: number;
  };
  readonly rpo: {
    readonly targetMinutes: number;
    readonly measuredMinutes?: number;
    readonly basis?: 'wal' | 'backup';
    readonly at?: string;
    readonly ok: boolean;
  };
  readonly rto: {
    readonly targetMinutes: number;
    readonly latestMinutes?: number;
    readonly worstMinutes?: number;
    /** Oldest first, successful runs with a measured time. */
    readonly samples: readonly {
      readonly at: string;
      readonly minutes: number;
      readonly kind: DrillRecord['kind'];
    }[];
    /** undefined: never measured. */
    readonly ok?: boolean;
  };
  /** Newest first, at most 20. */
  readonly drills: readonly DrillRow[];
  readonly capacity: CapacityReport;
}

/** Rows per type (full and base per schedule), newest backup first in each. */
export function typeRows(entries: readonly CatalogEntry[], now: Date): TypeRow[] {
  const groups = new Map<string, CatalogEntry[]>();
  for (const e of entries) {
    const m = e.manifest;
    const type = m.schedule ? `${m.type}/${m.schedule}` : m.type;
    groups.set(type, [...(groups.get(type) ?? []), e]);
  }
  return [...groups.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([type, list]) => {
      const sorted = [...list].sort((a, b) => (a.manifest.finishedAt < b.manifest.finishedAt ? 1 : -1));
      const newest = sorted[0]!.manifest;
      const rawBytes = list.reduce((n, e) => n + e.manifest.rawSize, 0);
      const storedBytes = list.reduce((n, e) => n + e.manifest.storedSize, 0);
      return {
        type,
        count: list.length,
        newestId: newest.id,
        newestAt: newest.finishedAt,
        ageHours: Math.round(((now.getTime() - Date.parse(newest.finishedAt)) / 3_600_000) * 10) / 10,
        newestStoredBytes: newest.storedSize,
        storedBytes,
        rawBytes,
        ratio: rawBytes === 0 ? 0 : storedBytes / rawBytes,
      };
    });
}

/**
 * The PITR window from one WAL report: the same rules as core/backup/stats.ts recoverableWindow,
 * computed from the report the thresholds already read, so the archive is listed once per report.
 */
export function windowFromWal(
  entries: readonly CatalogEntry[],
  wal: WalVerifyReport,
): RecoverableWindow | undefined {
  const bases = entries.filter((e) => e.manifest.type === 'base' && e.manifest.physical);
  if (bases.length === 0 && wal.timelines.length === 0) return undefined;
  const reached = wal.backups.filter((b) => b.recoverableToTime !== undefined);
  const from = bases
    .filter((b) => reached.some((r) => r.id === b.manifest.id))
    .map((b) => b.manifest.physical?.stopTime ?? b.manifest.finishedAt)
    .sort()[0];
  const to = reached
    .map((r) => r.recoverableToTime!)
    .sort()
    .pop();
  return {
    from,
    to,
    rpoSeconds: wal.rpoSeconds,
    missingWal: wal.backups.reduce((n, b) => n + b.missingCount, 0),
  };
}

export function buildReportData(parts: {
  readonly now: Date;
  readonly targets: readonly string[];
  readonly entries: readonly CatalogEntry[];
  readonly wal: WalVerifyReport;
  readonly inputs: ThresholdInputs;
  readonly alerts: readonly Alert[];
  readonly limits: AlertConfig;
  readonly host?: string;
  readonly repositories?: readonly RepositoryRow[];
}): ReportData {
  const { now, entries, wal, inputs, limits } = parts;
  const sizes = inputs.sizes!;
  const capacity = inputs.capacity!;
  const rawBytes = entries.reduce((n, e) => n + e.manifest.rawSize, 0);
  const storedBytes = entries.reduce((n, e) => n + e.manifest.storedSize, 0);
  const rpoMinutes = measuredRpoMinutes(inputs.recoveryPoint, now);
  const samples = inputs.drills
    .filter((d) => d.ok && d.rtoMs !== undefined)
    .map((d) => ({ at: d.startedAt, minutes: d.rtoMs! / 60_000, kind: d.kind }))
    .reverse();
  const latest = samples[samples.length - 1];
  const failing = [...parts.alerts].sort((a, b) =>
    a.severity === b.severity ? 0 : a.severity === 'critical' ? -1 : 1,
  );
  return {
    format: REPORT_FORMAT,
    cluster: inputs.cluster,
    generatedAt: now.toISOString(),
    host: parts.host ?? hostname(),
    targets: parts.targets,
    ...(parts.repositories ? { repositories: parts.repositories } : {}),
    status: failing.length > 0 ? 'failing' : 'ok',
    failing,
    thresholds: {
      capacityPercent: limits.capacityPercent,
      backupAgeHours: limits.backupAgeHours,
      shrinkPercent: limits.shrinkPercent,
      rpoTargetMinutes: limits.rpoTargetMinutes,
      rtoTargetMinutes: limits.rtoTargetMinutes,
      ...(limits.storageQuotaBytes === undefined ? {} : { storageQuotaBytes: limits.storageQuotaBytes }),
    },
    totals: {
      count: entries.length,
      storedBytes,
      rawBytes,
      ratio: rawBytes === 0 ? 0 : storedBytes / rawBytes,
    },
    backups: typeRows(entries, now),
    sizes,
    wal: {
      archived: wal.timelines.length > 0,
      window: windowFromWal(entries, wal),
      gaps: wal.gaps,
      ...(wal.newestModified ? { newestModified: wal.newestModified } : {}),
      timelines: wal.timelines.length,
      segments: wal.timelines.reduce((n, t) => n + t.segments, 0),
    },
    rpo: {
      targetMinutes: limits.rpoTargetMinutes,
      ...(rpoMinutes === undefined
        ? {}
        : {
            measuredMinutes: Math.round(rpoMinutes * 10) / 10,
            basis: inputs.recoveryPoint!.basis,
            at: inputs.recoveryPoint!.at,
          }),
      ok: rpoMinutes !== undefined && rpoMinutes <= limits.rpoTargetMinutes,
    },
    rto: {
      targetMinutes: limits.rtoTargetMinutes,
      ...(latest === undefined
        ? {}
        : {
            latestMinutes: Math.round(latest.minutes * 100) / 100,
            worstMinutes: Math.round(Math.max(...samples.map((s) => s.minutes)) * 100) / 100,
          }),
      samples,
      ...(latest === undefined ? {} : { ok: latest.minutes <= limits.rtoTargetMinutes }),
    },
    drills: inputs.drills.slice(0, 20).map((d) => ({
      kind: d.kind,
      backupId: d.backupId,
      startedAt: d.startedAt,
      ok: d.ok,
      ...(d.rtoMs === undefined ? {} : { rtoMinutes: Math.round((d.rtoMs / 60_000) * 100) / 100 }),
      ...(d.rpoMs === undefined ? {} : { rpoMinutes: Math.round((d.rpoMs / 60_000) * 100) / 100 }),
      ...(d.error === undefined ? {} : { error: d.error }),
      ...(d.restoredOn === undefined ? {} : { restoredOn: d.restoredOn }),
    })),
    capacity,
  };
}
