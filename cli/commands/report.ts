import { alertLine, formatDays, formatMinutes, utc } from '../../core/alert/format';
import { sendAlerts } from '../../core/alert/notify';
import { thresholdAlerts, thresholdInputsFrom } from '../../core/alert/thresholds';
import type { Alert } from '../../core/alert/types';
import type { AlertConfig } from '../../core/config';
import { collectReport, writeReport } from '../../core/report/collect';
import { type CapacityReport, verifyCapacity } from '../../core/verify/capacity';
import { type SizesReport, verifySizes } from '../../core/verify/sizes';
import { emit, formatBytes, type GlobalOptions, table, vaultFor } from '../output';

/**
 * verify sizes | capacity | report. Findings over a threshold print one ALERT line each on stderr and
 * exit 1 after the output; only the report publishes them (with SNS_TOPIC_ARN), as `verify all` does.
 */

function exitOnAlerts(alerts: readonly Alert[]): void {
  if (alerts.length > 0) process.exitCode = 1;
}

/**
 * The threshold alerts of one kind judged from a single report (sizes or capacity), each printed as
 * an ALERT line on stderr.
 */
function printThresholdAlerts(
  limits: AlertConfig,
  kind: 'size-shrink' | 'capacity',
  report: { readonly sizes: SizesReport } | { readonly capacity: CapacityReport },
): Alert[] {
  const cluster = 'sizes' in report ? report.sizes.cluster : report.capacity.cluster;
  const alerts = thresholdAlerts(
    thresholdInputsFrom({ cluster, now: new Date(), entries: [], ...report, drills: [] }),
    limits,
  ).filter((a) => a.kind === kind);
  for (const a of alerts) process.stderr.write(`${alertLine(a)}\n`);
  return alerts;
}

export async function verifySizesCommand(opts: GlobalOptions) {
  const vault = vaultFor(opts);
  const report = await verifySizes(vault);
  emit(opts, report, () =>
    [
      `backup sizes of cluster ${report.cluster} (raw size compared; shrink over ${report.shrinkPercent}% is suspect):`,
      table(
        ['series', 'backups', 'first', 'last', 'last stored', 'change', 'trend'],
        report.series.map((s) => {
          const first = s.points[0]!;
          const last = s.points[s.points.length - 1]!;
          return [
            s.key,
            String(s.points.length),
            formatBytes(first.rawBytes || first.storedBytes),
            formatBytes(last.rawBytes || last.storedBytes),
            formatBytes(last.storedBytes),
            last.changePercent === undefined
              ? '-'
              : `${last.changePercent >= 0 ? '+' : ''}${last.changePercent}%`,
            s.trend.direction === 'single'
              ? '-'
              : `${s.trend.direction} ${s.trend.bytesPerDay >= 0 ? '+' : '-'}${formatBytes(Math.abs(s.trend.bytesPerDay))}/day`,
          ];
        }),
      ),
      ...(report.suspects.length === 0
        ? ['no sudden shrink']
        : report.suspects.map(
            (s) =>
              `SUSPECT ${s.id} (${s.series}): ${formatBytes(s.bytes)}, ${s.shrinkPercent}% smaller than ${s.previousId} (${formatBytes(s.previousBytes)}) at ${utc(s.at)}`,
          )),
    ].join('\n'),
  );
  const alerts = printThresholdAlerts(vault.config.alerts, 'size-shrink', { sizes: report });
  exitOnAlerts(alerts);
  return report;
}

export async function verifyCapacityCommand(opts: GlobalOptions) {
  const vault = vaultFor(opts);
  const report = await verifyCapacity(vault);
  emit(opts, report, () =>
    [
      `capacity of cluster ${report.cluster} (alert at ${report.thresholdPercent}%):`,
      ...report.targets.map((t) => {
        if (t.error) return `  ${t.location}: not measured: ${t.error}`;
        const limit =
          t.percent === undefined
            ? 'no limit known (set STORAGE_QUOTA_GB for cloud targets)'
            : `${t.percent.toFixed(1)}% of ${t.basis === 'disk' ? 'its disk' : 'STORAGE_QUOTA_GB'} (${formatBytes(t.limitBytes ?? 0)}), ${formatBytes(t.freeBytes ?? 0)} free${t.percent >= report.thresholdPercent ? '  OVER THRESHOLD' : ''}`;
        const forecast =
          t.daysUntilFull === undefined
            ? 'no growth in the window'
            : `full in ${formatDays(t.daysUntilFull)} (${utc(t.fullBy!)}) if nothing is deleted`;
        return `  ${t.location}: ${formatBytes(t.usedBytes)} in ${t.objects} object(s); ${limit}\n    writes ${formatBytes(t.writtenBytesPerDay)}/day over ${t.windowDays} day(s): ${forecast}`;
      }),
    ].join('\n'),
  );
  const alerts = printThresholdAlerts(vault.config.alerts, 'capacity', { capacity: report });
  if (report.targets.some((t) => t.error !== undefined)) process.exitCode = 1;
  exitOnAlerts(alerts);
  return report;
}

export async function verifyReportCommand(opts: GlobalOptions) {
  const vault = vaultFor(opts);
  const { data, alerts } = await collectReport(vault);
  const stored = await writeReport(vault, data);
  emit(opts, { ok: alerts.length === 0, stored, alerts, report: data }, () =>
    [
      `report of cluster ${data.cluster}: ${alerts.length === 0 ? 'every check passes' : `${alerts.length} check(s) failing`}`,
      `  RPO ${data.rpo.measuredMinutes === undefined ? 'unknown' : formatMinutes(data.rpo.measuredMinutes)} (target ${formatMinutes(data.rpo.targetMinutes)}), RTO ${data.rto.latestMinutes === undefined ? 'not measured' : formatMinutes(data.rto.latestMinutes)} (target ${formatMinutes(data.rto.targetMinutes)})`,
      ...stored.flatMap((s) => [`  ${s.html}`, `  ${s.markdown}`, `  ${s.json}`]),
    ].join('\n'),
  );
  await sendAlerts(vault.config, data.failing);
  exitOnAlerts(alerts);
  return { ok: alerts.length === 0, stored, alerts, report: data };
}
