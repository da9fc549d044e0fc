import { formatBytes, formatDays, formatMinutes, sinceText, utc } from '../alert/format';
import type { Alert } from '../alert/types';
import { describeDrillPlace } from '../catalog/records';
import type { ReportData } from './model';
import { barChart, COLORS, esc, gauge, lineChart } from './svg';

/**
 * The report as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched.
 * Everything failing comes first; then recovery objectives, backups, sizes, WAL, drills, capacity.
 */

const CSS = `
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:${COLORS.text};background:#fff}
header{padding:20px 32px;color:#fff}
header.failing{background:${COLORS.fail}}
header.ok{background:${COLORS.ok}}
header h1{margin:0 0 4px;font-size:24px}
header p{margin:0;opacity:.95}
main{padding:8px 32px 32px;max-width:1100px}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid ${COLORS.grid};padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f6f8fa;padding:1px 4px;border-radius:3px}
ul.alerts{list-style:none;padding:0;margin:0}
ul.alerts li{border-left:8px solid ${COLORS.fail};background:#fdecea;padding:10px 14px;margin:0 0 10px}
ul.alerts li.warning{border-left-color:${COLORS.warn};background:#fff4e5}
ul.alerts li strong{display:block;font-size:15px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 220px;border:1px solid ${COLORS.grid};border-top:6px solid ${COLORS.ok};padding:10px 14px}
.card.bad{border-top-color:${COLORS.fail}}
.card.unknown{border-top-color:${COLORS.muted}}
.card .big{font-size:22px;font-weight:600}
.pass{color:${COLORS.ok};font-weight:600}
.failtext{color:${COLORS.fail};font-weight:600}
.muted{color:${COLORS.muted}}
figure{margin:8px 0 16px}
figcaption{font-size:12px;color:${COLORS.muted}}
.legend{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
footer{color:${COLORS.muted};font-size:12px;padding:0 32px 24px}
`;

function ago(hours: number): string {
  return hours < 48 ? `${hours.toFixed(1)} h` : `${(hours / 24).toFixed(1)} days`;
}

function alertItem(a: Alert): string {
  return `<li class="${a.severity}"><strong>${esc(a.title)}</strong>${esc(a.what)}<br><span class="muted">${esc(sinceText(a))}</span><br>Next step: <code>${esc(a.nextStep)}</code>${a.hint ? ` <span class="muted">${esc(a.hint)}</span>` : ''}</li>`;
}

function card(title: string, value: string, detail: string, state: 'ok' | 'bad' | 'unknown'): string {
  return `<div class="card ${state === 'ok' ? '' : state}"><div class="muted">${esc(title)}</div><div class="big">${esc(value)}</div><div>${detail}</div></div>`;
}

function objectives(d: ReportData): string {
  const rpo = d.rpo;
  const rto = d.rto;
  const window = d.wal.window;
  const days = d.capacity.targets
    .map((t) => t.daysUntilFull)
    .filter((v): v is number => v !== undefined)
    .sort((a, b) => a - b)[0];
  return `<div class="cards">${[
    card(
      'RPO (measured / target)',
      rpo.measuredMinutes === undefined ? 'unknown' : formatMinutes(rpo.measuredMinutes),
      `target ${esc(formatMinutes(rpo.targetMinutes))}${rpo.basis ? `; from the newest ${rpo.basis === 'wal' ? 'archived WAL' : 'backup'} (${esc(utc(rpo.at!))})` : ''}`,
      rpo.measuredMinutes === undefined ? 'bad' : rpo.ok ? 'ok' : 'bad',
    ),
    card(
      'RTO (last drill / target)',
      rto.latestMinutes === undefined ? 'not measured' : formatMinutes(rto.latestMinutes),
      `target ${esc(formatMinutes(rto.targetMinutes))}${rto.worstMinutes === undefined ? '; run <code>pgvault drill</code>' : `; worst ${esc(formatMinutes(rto.worstMinutes))} over ${rto.samples.length} sample(s)`}`,
      rto.ok === undefined ? 'unknown' : rto.ok ? 'ok' : 'bad',
    ),
    card(
      'PITR window',
      window?.from && window.to
        ? `${formatMinutes((Date.parse(window.to) - Date.parse(window.from)) / 60_000)}`
        : 'none',
      window?.from && window.to
        ? `${esc(utc(window.from))} to ${esc(utc(window.to))}`
        : 'needs a base backup and archived WAL',
      d.wal.gaps.length > 0 ? 'bad' : window?.from ? 'ok' : 'unknown',
    ),
    card(
      'Capacity',
      days === undefined ? 'no forecast' : formatDays(days),
      'until the fullest target is full at the current write rate',
      d.capacity.ok ? 'ok' : 'bad',
    ),
  ].join('')}</div>`;
}

/** Several repositories: one row each (nothing with the single-target keys). */
function repositoriesSection(d: ReportData): string {
  if (d.repositories === undefined) return '';
  const rows = d.repositories.map(
    (r) =>
      `<tr><td>repo${r.repository}</td><td>${esc(r.type)}</td><td><code>${esc(r.location)}</code></td><td>${esc(r.holds.join(', '))}</td><td class="num">${r.backups}</td><td class="num">${formatBytes(r.storedBytes)}</td><td${r.missing.length > 0 || r.unreachable !== undefined ? ' class="failtext"' : ''}>${r.unreachable !== undefined ? `unreachable: ${esc(r.unreachable)}` : r.missing.length === 0 ? 'none' : `${esc(r.missing.join(', '))} (run <code>pgvault repo sync</code>)`}</td></tr>`,
  );
  return `<section id="repositories"><h2>Repositories</h2><table><thead><tr><th>repo</th><th>type</th><th>location</th><th>holds</th><th class="num">backups</th><th class="num">stored</th><th>missing</th></tr></thead><tbody>${rows.join('')}</tbody></table></section>\n`;
}

function backupsTable(d: ReportData): string {
  if (d.backups.length === 0) return '<p class="failtext">No complete backup.</p>';
  const rows = d.backups.map(
    (b) =>
      `<tr><td>${esc(b.type)}</td><td class="num">${b.count}</td><td><code>${esc(b.newestId)}</code></td><td class="num${b.type.startsWith('full') || b.type.startsWith('base') ? (b.ageHours > d.thresholds.backupAgeHours ? ' failtext' : '') : ''}">${ago(b.ageHours)}</td><td class="num">${formatBytes(b.newestStoredBytes)}</td><td class="num">${formatBytes(b.storedBytes)}</td><td class="num">${b.ratio.toFixed(3)}</td></tr>`,
  );
  return `<table><thead><tr><th>type</th><th class="num">backups</th><th>newest</th><th class="num">age</th><th class="num">newest size</th><th class="num">all stored</th><th class="num">compression (stored/raw)</th></tr></thead><tbody>${rows.join('')}</tbody></table>
<p class="muted">${d.totals.count} backup(s), ${formatBytes(d.totals.storedBytes)} stored for ${formatBytes(d.totals.rawBytes)} dumped (ratio ${d.totals.ratio.toFixed(3)}).</p>`;
}

function sizesSection(d: ReportData): string {
  const chart = lineChart({
    title: 'backup size over time',
    yFormat: formatBytes,
    series: d.sizes.series.map((s) => ({
      name: s.key,
      points: s.points.map((p) => ({
        x: Date.parse(p.at),
        y: p.rawBytes > 0 ? p.rawBytes : p.storedBytes,
        flagged: p.suspect,
        label: `${p.id}: ${formatBytes(p.rawBytes)} raw, ${formatBytes(p.storedBytes)} stored${p.suspect ? ' (suspect shrink)' : ''}`,
      })),
    })),
  });
  const trend = d.sizes.series.map((s) => {
    const last = s.points[s.points.length - 1]!;
    return `<tr><td>${esc(s.key)}</td><td class="num">${s.points.length}</td><td class="num">${formatBytes(last.rawBytes)}</td><td class="num">${formatBytes(last.storedBytes)}</td><td class="num">${last.ratio.toFixed(3)}</td><td>${esc(s.trend.direction)}${s.trend.direction === 'single' ? '' : ` (${s.trend.percentPerDay >= 0 ? '+' : ''}${s.trend.percentPerDay.toFixed(2)}%/day)`}</td></tr>`;
  });
  const suspects = d.sizes.suspects.map(
    (s) =>
      `<tr><td class="failtext"><code>${esc(s.id)}</code></td><td>${esc(s.series)}</td><td class="num">${formatBytes(s.bytes)}</td><td class="num">${formatBytes(s.previousBytes)} (<code>${esc(s.previousId)}</code>)</td><td class="num failtext">-${s.shrinkPercent.toFixed(1)}%</td></tr>`,
  );
  return `${chart}
<p class="muted">Dumped (raw) size per database and type; red dots are backups more than ${d.thresholds.shrinkPercent}% smaller than the one before.</p>
<table><thead><tr><th>series</th><th class="num">backups</th><th class="num">last raw</th><th class="num">last stored</th><th class="num">ratio</th><th>trend</th></tr></thead><tbody>${trend.join('')}</tbody></table>
${suspects.length === 0 ? '<p class="pass">No sudden shrink.</p>' : `<table><thead><tr><th>suspect backup</th><th>series</th><th class="num">size</th><th class="num">previous</th><th class="num">change</th></tr></thead><tbody>${suspects.join('')}</tbody></table>`}`;
}

function walSection(d: ReportData): string {
  const w = d.wal;
  if (!w.archived) {
    return '<p class="muted">No WAL archived: point-in-time recovery is not possible; the RPO is the age of the newest backup. Set <code>archive_command = \'pgvault backup wal %p\'</code>.</p>';
  }
  const gaps = w.gaps.map(
    (g) =>
      `<tr><td class="num">${g.timeline}</td><td><code>${esc(g.from)}</code></td><td><code>${esc(g.to)}</code></td><td class="num failtext">${g.count}</td></tr>`,
  );
  return `<p>${w.segments} segment(s) on ${w.timelines} timeline(s); newest archived ${w.newestModified ? esc(utc(w.newestModified)) : 'unknown'}.
Recoverable window: ${w.window?.from && w.window.to ? `<strong>${esc(utc(w.window.from))}</strong> to <strong>${esc(utc(w.window.to))}</strong>` : 'none (no base backup reaches the archive)'}.</p>
${gaps.length === 0 ? '<p class="pass">No WAL gap.</p>' : `<table><thead><tr><th class="num">timeline</th><th>missing from</th><th>to</th><th class="num">files</th></tr></thead><tbody>${gaps.join('')}</tbody></table>`}`;
}

function drillsSection(d: ReportData): string {
  const chart = barChart({
    title: 'measured recovery time',
    target: d.rto.targetMinutes,
    yFormat: formatMinutes,
    bars: d.rto.samples.slice(-30).map((s) => ({
      label: s.at.slice(5, 10),
      value: s.minutes,
      title: `${s.kind} ${utc(s.at)}: ${formatMinutes(s.minutes)}`,
    })),
  });
  if (d.drills.length === 0) {
    return '<p class="muted">No drill or restore test recorded yet: run <code>pgvault drill</code> to measure the RTO.</p>';
  }
  const rows = d.drills.map(
    (r) =>
      `<tr><td>${esc(utc(r.startedAt))}</td><td>${esc(r.kind)}</td><td><code>${esc(r.backupId)}</code></td><td>${esc(describeDrillPlace(r.restoredOn))}</td><td class="${r.ok ? 'pass' : 'failtext'}">${r.ok ? 'ok' : 'FAILED'}</td><td class="num">${r.rtoMinutes === undefined ? '-' : formatMinutes(r.rtoMinutes)}</td><td class="num">${r.rpoMinutes === undefined ? '-' : formatMinutes(r.rpoMinutes)}</td><td>${esc(r.error ?? '')}</td></tr>`,
  );
  return `${chart}<table><thead><tr><th>started</th><th>kind</th><th>backup</th><th>restored on</th><th>result</th><th class="num">RTO</th><th class="num">RPO</th><th>error</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function capacitySection(d: ReportData): string {
  return d.capacity.targets
    .map((t) => {
      const head = `<p><strong>${esc(t.location)}</strong>: ${formatBytes(t.usedBytes)} in ${t.objects} object(s) for this cluster; writes ${formatBytes(t.writtenBytesPerDay)}/day (last ${t.windowDays} day(s)).</p>`;
      if (t.error) return `${head}<p class="failtext">Not measured: ${esc(t.error)}</p>`;
      if (t.percent === undefined) {
        return `${head}<p class="muted">No limit known: set STORAGE_QUOTA_GB for a percentage and a forecast.</p>`;
      }
      return `${head}${gauge({ percent: t.percent, threshold: d.capacity.thresholdPercent })}
<p class="${t.percent >= d.capacity.thresholdPercent ? 'failtext' : ''}">${t.percent.toFixed(1)}% of ${t.basis === 'disk' ? 'the disk' : 'STORAGE_QUOTA_GB'} (${formatBytes(t.limitBytes ?? 0)}) used, ${formatBytes(t.freeBytes ?? 0)} free; alert at ${d.capacity.thresholdPercent}%. ${t.daysUntilFull === undefined ? 'No growth in the window.' : `Full in ${formatDays(t.daysUntilFull)} (${esc(utc(t.fullBy!))}) if nothing is deleted.`}</p>`;
    })
    .join('\n');
}

export function renderHtml(d: ReportData): string {
  const failingCount = d.failing.length;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgvault report: ${esc(d.cluster)} ${esc(d.generatedAt.slice(0, 10))}</title>
<style>${CSS}</style>
</head>
<body>
<header class="${d.status}">
<h1>pgvault report: cluster ${esc(d.cluster)}</h1>
<p>${failingCount === 0 ? 'Every check passes.' : `${failingCount} check(s) failing.`} Generated ${esc(utc(d.generatedAt))} on ${esc(d.host)}; targets ${esc(d.targets.join(', '))}.</p>
</header>
<main>
<section id="failing"><h2>Failing</h2>
${failingCount === 0 ? '<p class="pass">Nothing is failing.</p>' : `<ul class="alerts">${d.failing.map(alertItem).join('')}</ul>`}
</section>
<section id="objectives"><h2>Recovery objectives</h2>${objectives(d)}</section>
${repositoriesSection(d)}<section id="backups"><h2>Backups per type</h2>${backupsTable(d)}</section>
<section id="sizes"><h2>Size over time</h2>${sizesSection(d)}</section>
<section id="wal"><h2>WAL archive</h2>${walSection(d)}</section>
<section id="drills"><h2>Drills and restore tests</h2>${drillsSection(d)}</section>
<section id="capacity"><h2>Capacity</h2>${capacitySection(d)}</section>
</main>
<footer>Thresholds: capacity ${d.thresholds.capacityPercent}%, newest backup ${d.thresholds.backupAgeHours} h, shrink ${d.thresholds.shrinkPercent}%, RPO ${esc(formatMinutes(d.thresholds.rpoTargetMinutes))}, RTO ${esc(formatMinutes(d.thresholds.rtoTargetMinutes))}. Report format ${esc(d.format)}.</footer>
</body>
</html>
`;
}
