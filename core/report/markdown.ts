import { formatBytes, formatDays, formatMinutes, sinceText, utc } from '../alert/format';
import { describeDrillPlace } from '../catalog/records';
import type { ReportData } from './model';

/** The report as Markdown (a ticket, a wiki page, a chat message): the same sections as the HTML. */

/** Table cells: no pipes or line breaks. */
function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}

function tableOf(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  return [
    `| ${header.map(cell).join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`),
  ];
}

/** Several repositories: one row each (absent with the single-target keys). */
function repositoriesSection(d: ReportData): string[] {
  if (d.repositories === undefined) return [];
  return [
    '## Repositories',
    '',
    ...tableOf(
      ['repo', 'type', 'location', 'holds', 'backups', 'stored', 'missing (run repo sync)'],
      d.repositories.map((r) => [
        `repo${r.repository}`,
        r.type,
        r.location,
        r.holds.join(','),
        String(r.backups),
        formatBytes(r.storedBytes),
        r.unreachable !== undefined
          ? `FAILING: unreachable (${r.unreachable})`
          : r.missing.length === 0
            ? 'none'
            : `FAILING: ${r.missing.join(', ')}`,
      ]),
    ),
    '',
  ];
}

export function renderMarkdown(d: ReportData): string {
  const out: string[] = [
    `# pgvault report: cluster ${d.cluster}`,
    '',
    `${d.status === 'ok' ? '**OK**: every check passes.' : `**FAILING**: ${d.failing.length} check(s).`} Generated ${utc(d.generatedAt)} on ${d.host}; targets ${d.targets.join(', ')}.`,
    '',
    '## Failing',
    '',
  ];
  if (d.failing.length === 0) out.push('Nothing is failing.');
  for (const a of d.failing) {
    out.push(
      `- **${a.severity === 'critical' ? 'ALERT' : 'warning'}: ${a.title}**: ${a.what} (${sinceText(a)}). Next step: \`${a.nextStep}\`${a.hint ? ` ${a.hint}` : ''}`,
    );
  }
  const w = d.wal.window;
  out.push(
    '',
    '## Recovery objectives',
    '',
    ...tableOf(
      ['objective', 'measured', 'target', 'status'],
      [
        [
          'RPO',
          d.rpo.measuredMinutes === undefined
            ? 'unknown'
            : `${formatMinutes(d.rpo.measuredMinutes)} (newest ${d.rpo.basis === 'wal' ? 'archived WAL' : 'backup'})`,
          formatMinutes(d.rpo.targetMinutes),
          d.rpo.ok ? 'ok' : 'FAILING',
        ],
        [
          'RTO',
          d.rto.latestMinutes === undefined
            ? 'not measured'
            : `${formatMinutes(d.rto.latestMinutes)} (worst ${formatMinutes(d.rto.worstMinutes!)})`,
          formatMinutes(d.rto.targetMinutes),
          d.rto.ok === undefined ? 'unknown' : d.rto.ok ? 'ok' : 'FAILING',
        ],
        [
          'PITR window',
          w?.from && w.to ? `${utc(w.from)} to ${utc(w.to)}` : 'none',
          '-',
          d.wal.gaps.length > 0 ? 'FAILING (WAL gap)' : w?.from ? 'ok' : 'none',
        ],
      ],
    ),
    '',
    ...repositoriesSection(d),
    '## Backups per type',
    '',
    ...(d.backups.length === 0
      ? ['No complete backup.']
      : tableOf(
          ['type', 'backups', 'newest', 'age (h)', 'newest size', 'all stored', 'ratio'],
          d.backups.map((b) => [
            b.type,
            String(b.count),
            `\`${b.newestId}\``,
            b.ageHours.toFixed(1),
            formatBytes(b.newestStoredBytes),
            formatBytes(b.storedBytes),
            b.ratio.toFixed(3),
          ]),
        )),
    '',
    `${d.totals.count} backup(s), ${formatBytes(d.totals.storedBytes)} stored for ${formatBytes(d.totals.rawBytes)} dumped (ratio ${d.totals.ratio.toFixed(3)}).`,
    '',
    '## Size over time',
    '',
    ...tableOf(
      ['series', 'backups', 'raw sizes, oldest to newest (last 8)', 'trend'],
      d.sizes.series.map((s) => [
        s.key,
        String(s.points.length),
        s.points
          .slice(-8)
          .map((p) => `${formatBytes(p.rawBytes > 0 ? p.rawBytes : p.storedBytes)}${p.suspect ? ' (!)' : ''}`)
          .join(', '),
        s.trend.direction === 'single'
          ? 'single'
          : `${s.trend.direction} (${s.trend.percentPerDay >= 0 ? '+' : ''}${s.trend.percentPerDay.toFixed(2)}%/day)`,
      ]),
    ),
    '',
    ...(d.sizes.suspects.length === 0
      ? ['No sudden shrink.']
      : d.sizes.suspects.map(
          (s) =>
            `- Suspect: \`${s.id}\` (${s.series}) is ${s.shrinkPercent.toFixed(1)}% smaller than \`${s.previousId}\` (${formatBytes(s.bytes)} against ${formatBytes(s.previousBytes)})`,
        )),
    '',
    '## WAL archive',
    '',
    d.wal.archived
      ? `${d.wal.segments} segment(s) on ${d.wal.timelines} timeline(s), newest archived ${d.wal.newestModified ? utc(d.wal.newestModified) : 'unknown'}. ${d.wal.gaps.length === 0 ? 'No gap.' : `Gaps: ${d.wal.gaps.map((g) => `${g.from}..${g.to} (${g.count})`).join(', ')}.`}`
      : 'No WAL archived: point-in-time recovery is not possible.',
    '',
    '## Drills and restore tests',
    '',
    ...(d.drills.length === 0
      ? ['None recorded yet: run `pgvault drill`.']
      : tableOf(
          ['started', 'kind', 'backup', 'restored on', 'result', 'RTO', 'RPO', 'error'],
          d.drills.map((r) => [
            utc(r.startedAt),
            r.kind,
            `\`${r.backupId}\``,
            describeDrillPlace(r.restoredOn),
            r.ok ? 'ok' : 'FAILED',
            r.rtoMinutes === undefined ? '-' : formatMinutes(r.rtoMinutes),
            r.rpoMinutes === undefined ? '-' : formatMinutes(r.rpoMinutes),
            r.error ?? '',
          ]),
        )),
    '',
    '## Capacity',
    '',
    ...tableOf(
      ['target', 'cluster objects', 'used', 'free', 'writes/day', 'full in'],
      d.capacity.targets.map((t) => [
        t.location,
        `${formatBytes(t.usedBytes)} (${t.objects})`,
        t.percent === undefined
          ? t.error
            ? `not measured: ${t.error}`
            : 'no limit (STORAGE_QUOTA_GB)'
          : `${t.percent.toFixed(1)}% of ${t.basis === 'disk' ? 'disk' : 'quota'}${t.percent >= d.capacity.thresholdPercent ? ' (FAILING)' : ''}`,
        t.freeBytes === undefined ? '-' : formatBytes(t.freeBytes),
        formatBytes(t.writtenBytesPerDay),
        t.daysUntilFull === undefined ? '-' : formatDays(t.daysUntilFull),
      ]),
    ),
    '',
    `Thresholds: capacity ${d.thresholds.capacityPercent}%, newest backup ${d.thresholds.backupAgeHours} h, shrink ${d.thresholds.shrinkPercent}%, RPO ${formatMinutes(d.thresholds.rpoTargetMinutes)}, RTO ${formatMinutes(d.thresholds.rtoTargetMinutes)}.`,
    '',
  );
  return out.join('\n');
}
