import type { CatalogEntry } from '../catalog/catalog';
import type { DrillRecord } from '../catalog/records';
import { listDrillRecords } from '../catalog/records';
import type { AlertConfig } from '../config';
import type { Vault } from '../vault';
import { type CapacityReport, verifyCapacity } from '../verify/capacity';
import { analyseSizes, type SizesReport } from '../verify/sizes';
import { verifyWalArchive, type WalVerifyReport } from '../wal/archive';
import { formatBytes, formatDays, formatMinutes } from './format';
import type { Alert } from './types';

/**
 * Threshold alerts: capacity, backup age, WAL gap, RPO, RTO, a failed drill or restore test, and a
 * sudden shrink. Collecting the facts (catalog, WAL archive, capacity, drill records) is separate
 * from judging them (thresholdAlerts, pure), so the report judges the data it shows without
 * reading the targets twice.
 */

/** The newest point a recovery could reach now, from the WAL archive or the newest backup. */
export interface RecoveryPoint {
  readonly at: string;
  readonly basis: 'wal' | 'backup';
  /** The backup, when the basis is a backup. */
  readonly id?: string;
}

export interface ThresholdInputs {
  readonly cluster: string;
  readonly checkedAt: string;
  /** Newest whole full or base backup (every data object there, not only its manifest). */
  readonly newestBackup?: { readonly id: string; readonly type: string; readonly finishedAt: string };
  readonly recoveryPoint?: RecoveryPoint;
  /** Full or base backups newer than newestBackup whose manifest is listed but whose data is gone. */
  readonly brokenBackups?: readonly BrokenBackup[];
  readonly wal?: Pick<WalVerifyReport, 'gaps' | 'backups'>;
  readonly capacity?: CapacityReport;
  readonly sizes?: SizesReport;
  /** Newest first. */
  readonly drills: readonly DrillRecord[];
}

export interface BrokenBackup {
  readonly id: string;
  readonly type: string;
  readonly finishedAt: string;
  /** What is missing, e.g. "…app.dump.zst is missing in file:///…". */
  readonly problem: string;
}

/**
 * The full and base backups newer than the newest whole one, whose data objects are gone: the age
 * and RPO checks must not count them. Stats the objects of the newest candidates only, newest
 * first, until one is whole (catalog.newestWhole), never of every backup.
 */
export async function brokenNewestBackups(
  vault: Vault,
  entries: readonly CatalogEntry[],
): Promise<BrokenBackup[]> {
  const candidates = entries
    .filter((e) => e.manifest.type === 'full' || e.manifest.type === 'base')
    .sort((a, b) =>
      a.manifest.finishedAt < b.manifest.finishedAt
        ? 1
        : a.manifest.finishedAt > b.manifest.finishedAt
          ? -1
          : 0,
    );
  const { broken } = await vault.catalog.newestWhole(candidates);
  return broken.map(({ entry, problem }) => ({
    id: entry.manifest.id,
    type: entry.manifest.type,
    finishedAt: entry.manifest.finishedAt,
    problem,
  }));
}

/** The data a logical dump holds is as of its start; a base backup recovers to its end. */
function backupPointInTime(e: CatalogEntry): string {
  const m = e.manifest;
  return m.type === 'base' ? (m.physical?.stopTime ?? m.finishedAt) : m.startedAt;
}

export function newestRecoveryPoint(
  entries: readonly CatalogEntry[],
  wal?: Pick<WalVerifyReport, 'newestModified'>,
): RecoveryPoint | undefined {
  let best: RecoveryPoint | undefined;
  for (const e of entries) {
    if (e.manifest.type !== 'full' && e.manifest.type !== 'base') continue;
    const at = backupPointInTime(e);
    if (best === undefined || at > best.at) best = { at, basis: 'backup', id: e.manifest.id };
  }
  if (wal?.newestModified !== undefined && (best === undefined || wal.newestModified >= best.at)) {
    best = { at: wal.newestModified, basis: 'wal' };
  }
  return best;
}

/** Measured RPO in minutes: the data lost if the server were lost now. */
export function measuredRpoMinutes(point: RecoveryPoint | undefined, now: Date): number | undefined {
  return point === undefined ? undefined : Math.max(0, (now.getTime() - Date.parse(point.at)) / 60_000);
}

export function thresholdInputsFrom(parts: {
  cluster: string;
  now: Date;
  entries: readonly CatalogEntry[];
  wal?: WalVerifyReport;
  capacity?: CapacityReport;
  sizes?: SizesReport;
  drills: readonly DrillRecord[];
  /** From brokenNewestBackups: not counted as the newest backup nor as a recovery point. */
  broken?: readonly BrokenBackup[];
}): ThresholdInputs {
  const broken = parts.broken ?? [];
  const whole = parts.entries.filter((e) => !broken.some((b) => b.id === e.manifest.id));
  const data = whole
    .filter((e) => e.manifest.type === 'full' || e.manifest.type === 'base')
    .map((e) => e.manifest)
    .sort((a, b) => (a.finishedAt < b.finishedAt ? 1 : a.finishedAt > b.finishedAt ? -1 : 0));
  const newest = data[0];
  return {
    cluster: parts.cluster,
    checkedAt: parts.now.toISOString(),
    ...(newest ? { newestBackup: { id: newest.id, type: newest.type, finishedAt: newest.finishedAt } } : {}),
    recoveryPoint: newestRecoveryPoint(whole, parts.wal),
    ...(broken.length > 0 ? { brokenBackups: broken } : {}),
    ...(parts.wal ? { wal: parts.wal } : {}),
    ...(parts.capacity ? { capacity: parts.capacity } : {}),
    ...(parts.sizes ? { sizes: parts.sizes } : {}),
    drills: parts.drills,
  };
}

const HOUR_MS = 3_600_000;

function drillCommand(record: DrillRecord): string {
  switch (record.kind) {
    case 'drill':
      return 'pgvault drill';
    case 'pitr':
      return 'pgvault drill --pitr';
    case 'verify-restore':
      return `pgvault verify restore ${record.backupId}`;
  }
}

const DRILL_NAMES: Record<DrillRecord['kind'], string> = {
  drill: 'restore drill',
  pitr: 'PITR drill',
  'verify-restore': 'restore test',
};

/** Pure: every threshold crossed, most urgent kinds first. */
export function thresholdAlerts(inputs: ThresholdInputs, limits: AlertConfig): Alert[] {
  const { cluster, checkedAt } = inputs;
  const now = Date.parse(checkedAt);
  const alerts: Alert[] = [];
  const base = { cluster, severity: 'critical' as const };

  // A newer backup listed but with its data gone: it must not pass for the newest backup.
  for (const b of inputs.brokenBackups ?? []) {
    alerts.push({
      ...base,
      kind: 'backup-incomplete',
      title: `backup ${b.id} has lost its data`,
      what: `backup ${b.id} (${b.type}) is listed but its data is gone: ${b.problem}; the newest whole backup is ${inputs.newestBackup?.id ?? 'none'}`,
      since: b.finishedAt,
      sinceKind: 'checked',
      nextStep: `pgvault backup ${b.type} daily`,
      hint: 'It is never used as latest; `pgvault verify all --quick` names it. Find what removed its objects (a lifecycle rule, a clean-up by hand), then remove its manifest.',
    });
  }
  // Newest backup age (the guide's "newest backup older than 48 hours").
  const newest = inputs.newestBackup;
  if (newest === undefined) {
    alerts.push({
      ...base,
      kind: 'backup-age',
      title: 'no backup',
      what: `cluster ${cluster} has no complete full or base backup`,
      since: checkedAt,
      sinceKind: 'checked',
      nextStep: 'pgvault backup full daily',
      hint: 'Check the schedule with `pgvault backup schedule`.',
    });
  } else {
    const ageHours = (now - Date.parse(newest.finishedAt)) / HOUR_MS;
    if (ageHours > limits.backupAgeHours) {
      alerts.push({
        ...base,
        kind: 'backup-age',
        title: `newest backup is ${Math.floor(ageHours)} h old`,
        what: `newest backup ${newest.id} finished ${ageHours.toFixed(1)} h ago, over the ${limits.backupAgeHours} h limit (ALERT_BACKUP_AGE_HOURS)`,
        since: newest.finishedAt,
        sinceKind: 'observed',
        nextStep: `pgvault backup ${newest.type} daily`,
        hint: 'Then check why the scheduled backups stopped: `pgvault backup schedule` shows the crontab.',
      });
    }
  }

  // WAL gaps break point-in-time recovery past the gap.
  const gaps = inputs.wal?.gaps ?? [];
  if (gaps.length > 0) {
    const missing = gaps.reduce((n, g) => n + g.count, 0);
    const first = gaps[0]!;
    const reachTimes = (inputs.wal?.backups ?? [])
      .filter((b) => b.missingCount > 0 && b.recoverableToTime !== undefined)
      .map((b) => b.recoverableToTime!)
      .sort();
    alerts.push({
      ...base,
      kind: 'wal-gap',
      title: `WAL gap, ${missing} file(s) missing`,
      what: `the WAL archive misses ${missing} file(s): ${first.from === first.to ? first.from : `${first.from} to ${first.to}`} on timeline ${first.timeline}${gaps.length > 1 ? ` and ${gaps.length - 1} more range(s)` : ''}; point-in-time recovery cannot pass the gap`,
      since: reachTimes[0] ?? checkedAt,
      sinceKind: reachTimes[0] === undefined ? 'checked' : 'observed',
      nextStep: 'pgvault backup base daily',
      hint: 'A new base backup makes recovery possible again from now on; `pgvault verify wal` lists the gaps.',
    });
  }

  // RPO: data that would be lost if the server were lost now.
  const point = inputs.recoveryPoint;
  const rpo = measuredRpoMinutes(point, new Date(now));
  if (point !== undefined && rpo !== undefined && rpo > limits.rpoTargetMinutes) {
    alerts.push({
      ...base,
      kind: 'rpo',
      title: `RPO ${formatMinutes(rpo)} over target ${formatMinutes(limits.rpoTargetMinutes)}`,
      what:
        point.basis === 'wal'
          ? `no WAL archived for ${formatMinutes(rpo)}, over the RPO target of ${formatMinutes(limits.rpoTargetMinutes)} (RPO_TARGET_MINUTES)`
          : `the newest recoverable point is backup ${point.id} from ${formatMinutes(rpo)} ago, over the RPO target of ${formatMinutes(limits.rpoTargetMinutes)} (RPO_TARGET_MINUTES)`,
      since: point.at,
      sinceKind: 'observed',
      nextStep: point.basis === 'wal' ? 'pgvault verify wal' : 'pgvault backup full daily',
      hint:
        point.basis === 'wal'
          ? "Check archive_command in PostgreSQL's log (or `pgvault wal receive`)."
          : 'Archive WAL (archive_command) for an RPO of minutes instead of a day.',
    });
  }

  // Drills and restore tests: the newest of each kind; since = the first of its run of failures.
  for (const kind of ['drill', 'pitr', 'verify-restore'] as const) {
    const records = inputs.drills.filter((d) => d.kind === kind);
    if (records.length === 0 || records[0]!.ok) continue;
    let i = 0;
    while (i + 1 < records.length && !records[i + 1]!.ok) i++;
    const newestFailure = records[0]!;
    alerts.push({
      ...base,
      kind: 'drill-failed',
      title: `${DRILL_NAMES[kind]} failed`,
      what: `the last ${DRILL_NAMES[kind]} of backup ${newestFailure.backupId} failed: ${newestFailure.error ?? 'no reason recorded'}${i > 0 ? ` (${i + 1} failures in a row)` : ''}`,
      since: records[i]!.startedAt,
      sinceKind: 'observed',
      nextStep: drillCommand(newestFailure),
    });
  }

  // RTO: the newest measured recovery time.
  const sample = inputs.drills.find((d) => d.ok && d.rtoMs !== undefined);
  if (sample !== undefined && sample.rtoMs! / 60_000 > limits.rtoTargetMinutes) {
    const minutes = sample.rtoMs! / 60_000;
    alerts.push({
      ...base,
      kind: 'rto',
      title: `RTO ${formatMinutes(minutes)} over target ${formatMinutes(limits.rtoTargetMinutes)}`,
      what: `the last ${DRILL_NAMES[sample.kind]} (backup ${sample.backupId}) took ${formatMinutes(minutes)} to validated data, over the RTO target of ${formatMinutes(limits.rtoTargetMinutes)} (RTO_TARGET_MINUTES)`,
      since: sample.startedAt,
      sinceKind: 'observed',
      nextStep: drillCommand(sample),
      hint: 'Faster: more PARALLEL_JOBS for pg_restore, a faster compressor (zstd, lz4), a closer copy (LOCAL_COPY=true).',
    });
  }

  // Capacity, per target.
  for (const t of inputs.capacity?.targets ?? []) {
    if (t.percent === undefined || t.percent < limits.capacityPercent) continue;
    const total = (t.occupiedBytes ?? 0) + (t.freeBytes ?? 0);
    const over = ((t.percent - limits.capacityPercent) / 100) * total;
    // Extrapolated back at the measured rate, only as far as the rate was measured.
    const back = t.writtenBytesPerDay > 0 ? over / t.writtenBytesPerDay : undefined;
    const crossedDaysAgo = back !== undefined && back <= t.windowDays ? back : undefined;
    alerts.push({
      ...base,
      kind: 'capacity',
      title: `storage ${Math.round(t.percent)}% full`,
      what: `${t.location} is ${t.percent.toFixed(1)}% full (${t.basis === 'quota' ? 'of STORAGE_QUOTA_GB' : 'of its disk'}; ALERT_CAPACITY_PERCENT ${limits.capacityPercent}%), ${formatBytes(t.freeBytes ?? 0)} free${t.daysUntilFull === undefined ? '' : `, full in ${formatDays(t.daysUntilFull)} at ${formatBytes(t.writtenBytesPerDay)}/day`}`,
      since:
        crossedDaysAgo === undefined
          ? checkedAt
          : new Date(Math.max(0, now - crossedDaysAgo * 24 * HOUR_MS)).toISOString(),
      sinceKind: crossedDaysAgo === undefined ? 'checked' : 'estimated',
      nextStep: 'pgvault backup retention --dry-run',
      hint: `Then apply it (pgvault backup retention), lower RETENTION_DAYS/WEEKS/MONTHS, or grow ${t.basis === 'quota' ? 'STORAGE_QUOTA_GB' : 'the volume'}.`,
    });
  }

  // Sudden shrinks: the newest per series only (older ones were reported when they happened).
  const reported = new Set<string>();
  for (const s of inputs.sizes?.suspects ?? []) {
    if (reported.has(s.series)) continue;
    reported.add(s.series);
    const series = inputs.sizes?.series.find((x) => x.key === s.series);
    if (series?.points[series.points.length - 1]?.id !== s.id) continue;
    alerts.push({
      cluster,
      severity: 'warning',
      kind: 'size-shrink',
      title: `backup shrank ${Math.round(s.shrinkPercent)}% (${s.series})`,
      what: `backup ${s.id} (${s.series}) is ${s.shrinkPercent.toFixed(1)}% smaller than ${s.previousId}: ${formatBytes(s.bytes)} against ${formatBytes(s.previousBytes)} (ALERT_SHRINK_PERCENT ${limits.shrinkPercent}%)`,
      since: s.at,
      sinceKind: 'observed',
      nextStep: `pgvault verify file ${s.id}`,
      hint: 'Check whether data was deleted or the backup missed tables (see its row counts).',
    });
  }
  return alerts;
}

/** Reads what the thresholds judge, from the targets. */
export async function collectThresholdInputs(vault: Vault, now = new Date()): Promise<ThresholdInputs> {
  const entries = await vault.catalog.list();
  const [wal, capacity, drills, broken] = await Promise.all([
    verifyWalArchive(vault, now),
    verifyCapacity(vault, now),
    listDrillRecords(vault),
    brokenNewestBackups(vault, entries),
  ]);
  return thresholdInputsFrom({
    cluster: vault.config.clusterName,
    now,
    entries,
    broken,
    wal,
    capacity,
    sizes: analyseSizes(vault.config.clusterName, entries, vault.config.alerts.shrinkPercent),
    drills,
  });
}

/** Every threshold alert for the vault's cluster now (`verify all` and the report send these). */
export async function evaluateThresholds(vault: Vault, now = new Date()): Promise<Alert[]> {
  return thresholdAlerts(await collectThresholdInputs(vault, now), vault.config.alerts);
}
