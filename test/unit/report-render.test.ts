import { describe, expect, it } from 'vitest';
import { thresholdAlerts, thresholdInputsFrom } from '../../core/alert/thresholds';
import type { CatalogEntry } from '../../core/catalog/catalog';
import type { Manifest } from '../../core/catalog/manifest';
import type { DrillRecord } from '../../core/catalog/records';
import { parseConfig } from '../../core/config';
import { renderHtml } from '../../core/report/html';
import { renderMarkdown } from '../../core/report/markdown';
import { buildReportData, type ReportData } from '../../core/report/model';
import type { CapacityReport } from '../../core/verify/capacity';
import { analyseSizes } from '../../core/verify/sizes';
import type { WalVerifyReport } from '../../core/wal/archive';

const NOW = new Date('2026-02-12T12:00:00Z');
const DAY = 86_400_000;
const limits = parseConfig({ BACKUP_DIR: '/tmp/x' }).alerts;

function entry(
  id: string,
  daysAgo: number,
  databases: Record<string, [raw: number, stored: number]>,
  type: 'full' | 'base' | 'config' = 'full',
): CatalogEntry {
  const at = new Date(NOW.getTime() - daysAgo * DAY).toISOString();
  const objects = Object.entries(databases).map(([database, [raw, stored]]) => ({
    key: `main/${type}/daily/${id}.${database}.dump.zst`,
    kind: (type === 'full' ? 'database' : type) as 'database',
    format: 'dump' as const,
    ...(type === 'full' ? { database } : {}),
    rawSize: raw,
    storedSize: stored,
    sha256: '0'.repeat(64),
  }));
  const manifest: Manifest = {
    format: 'pgvault-manifest/1',
    id,
    type,
    ...(type === 'config' ? {} : { schedule: 'daily' as const }),
    cluster: 'main',
    node: { host: 'db1', port: 5432 },
    server: { version: '15.8', versionNum: 150008, systemIdentifier: '1' },
    tools: {},
    startedAt: at,
    finishedAt: at,
    durationMs: 1000,
    compression: { algorithm: 'zstd' },
    encryption: null,
    objects,
    rawSize: objects.reduce((n, o) => n + o.rawSize, 0),
    storedSize: objects.reduce((n, o) => n + o.storedSize, 0),
  };
  return { manifest, manifestKey: `main/${type}/daily/${id}.manifest.json`, targets: [] };
}

const noWal: WalVerifyReport = {
  ok: true,
  cluster: 'main',
  segmentBytes: 16 * 2 ** 20,
  checkedAt: NOW.toISOString(),
  timelines: [],
  backups: [],
  gaps: [],
  windows: [],
};

function capacity(percent: number): CapacityReport {
  return {
    ok: percent < 80,
    cluster: 'main',
    checkedAt: NOW.toISOString(),
    thresholdPercent: 80,
    targets: [
      {
        location: 'file:///var/backups/postgresql',
        kind: 'file',
        usedBytes: 3 * 2 ** 30,
        objects: 42,
        basis: 'disk',
        limitBytes: 100 * 2 ** 30,
        occupiedBytes: percent * 2 ** 30,
        freeBytes: (100 - percent) * 2 ** 30,
        percent,
        writtenBytesPerDay: 2 ** 30,
        windowDays: 7,
        daysUntilFull: 100 - percent,
        fullBy: new Date(NOW.getTime() + (100 - percent) * DAY).toISOString(),
      },
    ],
  };
}

function report(entries: CatalogEntry[], options: { percent: number; drills?: DrillRecord[] }): ReportData {
  const inputs = thresholdInputsFrom({
    cluster: 'main',
    now: NOW,
    entries,
    wal: noWal,
    capacity: capacity(options.percent),
    sizes: analyseSizes('main', entries, limits.shrinkPercent),
    drills: options.drills ?? [],
  });
  return buildReportData({
    now: NOW,
    targets: ['file:///var/backups/postgresql'],
    entries,
    wal: noWal,
    inputs,
    alerts: thresholdAlerts(inputs, limits),
    limits,
    host: 'db1',
  });
}

const growing = [
  entry('full-daily-20260209-020000', 3, { app: [8_000_000, 2_000_000], crm: [1_000_000, 300_000] }),
  entry('full-daily-20260210-020000', 2, { app: [8_400_000, 2_100_000], crm: [1_000_000, 300_000] }),
  entry('full-daily-20260211-020000', 1, { app: [8_800_000, 2_200_000], crm: [1_000_000, 300_000] }),
  entry('full-daily-20260212-020000', 0.4, { app: [9_200_000, 2_300_000], crm: [1_000_000, 300_000] }),
];

describe('analyseSizes', () => {
  it('keeps one series per database, oldest first, with the trend', () => {
    // Act
    const sizes = analyseSizes('main', growing, 50);

    // Assess
    expect(sizes.ok).toBe(true);
    expect(sizes.series.map((s) => [s.key, s.points.length, s.trend.direction])).toEqual([
      ['full/app', 4, 'growing'],
      ['full/crm', 4, 'flat'],
    ]);
    expect(sizes.series[0]!.points.map((p) => p.rawBytes)).toEqual([
      8_000_000, 8_400_000, 8_800_000, 9_200_000,
    ]);
    expect(sizes.series[0]!.trend.bytesPerDay).toBeGreaterThan(350_000);
    expect(sizes.series[0]!.trend.bytesPerDay).toBeLessThan(450_000);
  });

  it('flags a backup more than ALERT_SHRINK_PERCENT smaller than the previous one of its database', () => {
    // Prepare
    const shrunk = [
      ...growing,
      entry('full-daily-20260212-110000', 0.05, { app: [4_000_000, 1_000_000], crm: [990_000, 290_000] }),
    ];

    // Act
    const at50 = analyseSizes('main', shrunk, 50);
    const at60 = analyseSizes('main', shrunk, 60);

    // Assess: app fell 56.5% (9.2 MB to 4 MB); crm 1%.
    expect(at50.suspects).toEqual([
      {
        series: 'full/app',
        id: 'full-daily-20260212-110000',
        at: new Date(NOW.getTime() - 0.05 * DAY).toISOString(),
        previousId: 'full-daily-20260212-020000',
        bytes: 4_000_000,
        previousBytes: 9_200_000,
        shrinkPercent: 56.5,
      },
    ]);
    expect(at60.suspects).toEqual([]);
  });

  it('judges the raw size, so a change of compressor is not a shrink', () => {
    // Prepare: same data, stored size quartered by a better compressor.
    const recompressed = [
      entry('full-daily-20260211-020000', 1, { app: [8_000_000, 4_000_000] }),
      entry('full-daily-20260212-020000', 0.4, { app: [8_000_000, 1_000_000] }),
    ];

    // Act
    const sizes = analyseSizes('main', recompressed, 50);

    // Assess
    expect(sizes.suspects).toEqual([]);
  });
});

describe('renderHtml', () => {
  it('puts everything failing first, with the next step', () => {
    // Prepare
    const data = report([entry('full-daily-20260209-020000', 3, { app: [8_000_000, 2_000_000] })], {
      percent: 91,
    });

    // Act
    const html = renderHtml(data);

    // Assess
    expect(data.status).toBe('failing');
    expect(data.failing.map((a) => a.kind)).toEqual(['backup-age', 'rpo', 'capacity']);
    expect(html).toContain('<header class="failing">');
    const failing = html.indexOf('<section id="failing">');
    expect(failing).toBeGreaterThan(0);
    for (const id of ['objectives', 'backups', 'sizes', 'wal', 'drills', 'capacity']) {
      expect(html.indexOf(`<section id="${id}">`)).toBeGreaterThan(failing);
    }
    expect(html).toContain('Next step: <code>pgvault backup retention --dry-run</code>');
    expect(html).toContain('Next step: <code>pgvault backup full daily</code>');
    expect(html).toContain('class="over"');
  });

  it('is self-contained: no script, no link, nothing fetched', () => {
    // Act
    const html = renderHtml(report(growing, { percent: 40 }));

    // Assess
    expect(html).not.toMatch(/<script|<link|<img|<iframe|@import|url\(/i);
    expect(html).not.toMatch(/\b(src|href)=/i);
    expect(html.replace(/xmlns="http:\/\/www\.w3\.org\/2000\/svg"/g, '')).not.toMatch(/https?:\/\//);
    expect(html.match(/<svg /g)?.length).toBeGreaterThanOrEqual(2);
  });

  it('shows a healthy cluster without any failure colour or flagged point', () => {
    // Prepare
    const drills: DrillRecord[] = [
      {
        format: 'pgvault-drill/1',
        kind: 'drill',
        backupId: 'full-daily-20260212-020000',
        startedAt: new Date(NOW.getTime() - DAY / 4).toISOString(),
        finishedAt: new Date(NOW.getTime() - DAY / 4 + 600_000).toISOString(),
        ok: true,
        rtoMs: 600_000,
        host: 'db1',
      },
    ];

    // Act
    const data = report(growing, { percent: 40, drills });
    const html = renderHtml(data);

    // Assess
    expect(data.failing).toEqual([]);
    expect(html).toContain('<header class="ok">');
    expect(html).toContain('Nothing is failing.');
    expect(html).not.toContain('class="flagged"');
    expect(html).not.toContain('class="over"');
  });

  it('escapes what it did not write itself', () => {
    // Prepare
    const drills: DrillRecord[] = [
      {
        format: 'pgvault-drill/1',
        kind: 'verify-restore',
        backupId: 'full-daily-20260212-020000',
        startedAt: new Date(NOW.getTime() - 3_600_000).toISOString(),
        finishedAt: NOW.toISOString(),
        ok: false,
        error: 'table <script>alert(1)</script> & "x" differs',
        host: 'db1',
      },
    ];

    // Act
    const html = renderHtml(report(growing, { percent: 40, drills }));

    // Assess
    expect(html).not.toContain('<script>');
    expect(html).toContain('table &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot; differs');
  });
});

describe('the WAL archive in the report', () => {
  it('shows the recoverable window from the base backup to the last unbroken WAL, and the gaps', () => {
    // Prepare
    const base = entry('base-weekly-20260209-030000', 3, { '-': [50_000_000, 10_000_000] }, 'base');
    const physical = {
      timeline: 1,
      startLsn: '0/2000028',
      stopLsn: '0/2000100',
      startWal: '000000010000000000000002',
      stopWal: '000000010000000000000002',
      walIncluded: true,
      segmentBytes: 16 * 2 ** 20,
      stopTime: new Date(NOW.getTime() - 3 * DAY + 60_000).toISOString(),
    };
    const withPhysical = { ...base, manifest: { ...base.manifest, physical } };
    const wal: WalVerifyReport = {
      ...noWal,
      ok: false,
      newestModified: new Date(NOW.getTime() - 120_000).toISOString(),
      rpoSeconds: 120,
      timelines: [{ timeline: 1, segments: 40, gaps: [] }],
      backups: [
        {
          id: 'base-weekly-20260209-030000',
          timeline: 1,
          startWal: '000000010000000000000002',
          timelinePath: [1],
          recoverableTo: '000000010000000000000020',
          recoverableToTime: new Date(NOW.getTime() - DAY).toISOString(),
          missing: [],
          missingCount: 2,
        },
      ],
      gaps: [{ timeline: 1, from: '000000010000000000000021', to: '000000010000000000000022', count: 2 }],
    };
    const entries = [...growing, withPhysical];
    const inputs = thresholdInputsFrom({
      cluster: 'main',
      now: NOW,
      entries,
      wal,
      capacity: capacity(10),
      sizes: analyseSizes('main', entries, 50),
      drills: [],
    });

    // Act
    const data = buildReportData({
      now: NOW,
      targets: ['file:///b'],
      entries,
      wal,
      inputs,
      alerts: thresholdAlerts(inputs, limits),
      limits,
      host: 'db1',
    });
    const html = renderHtml(data);

    // Assess
    expect(data.wal).toMatchObject({
      archived: true,
      segments: 40,
      window: {
        from: physical.stopTime,
        to: wal.backups[0]!.recoverableToTime,
        missingWal: 2,
        rpoSeconds: 120,
      },
    });
    expect(data.rpo).toMatchObject({ basis: 'wal', measuredMinutes: 2, ok: true });
    expect(data.failing.map((a) => a.kind)).toEqual(['wal-gap']);
    expect(html).toContain(
      'Recoverable window: <strong>2026-02-09 12:01:00 UTC</strong> to <strong>2026-02-11 12:00:00 UTC</strong>',
    );
    expect(html).toContain(
      '<td><code>000000010000000000000021</code></td><td><code>000000010000000000000022</code></td>',
    );
  });
});

describe('renderMarkdown', () => {
  it('has the same sections, failing first, and safe table cells', () => {
    // Prepare
    const drills: DrillRecord[] = [
      {
        format: 'pgvault-drill/1',
        kind: 'drill',
        backupId: 'full-daily-20260212-020000',
        startedAt: new Date(NOW.getTime() - 3_600_000).toISOString(),
        finishedAt: NOW.toISOString(),
        ok: false,
        error: 'a | b\nc',
        host: 'db1',
      },
    ];

    // Act
    const md = renderMarkdown(report(growing, { percent: 85, drills }));

    // Assess
    const headings = md.split('\n').filter((l) => l.startsWith('## '));
    expect(headings).toEqual([
      '## Failing',
      '## Recovery objectives',
      '## Backups per type',
      '## Size over time',
      '## WAL archive',
      '## Drills and restore tests',
      '## Capacity',
    ]);
    expect(md).toContain('**FAILING**: 2 check(s).');
    expect(md).toContain(
      '- **ALERT: restore drill failed**: the last restore drill of backup full-daily-20260212-020000 failed: a | b',
    );
    expect(md).toContain('| a \\| b c |');
    expect(md).toContain('| full/app | 4 | 7.6 MiB, 8.0 MiB, 8.4 MiB, 8.8 MiB | growing');
  });
});

describe('where each drill restored (DrillRecord.restoredOn)', () => {
  it('both renderings name the sandbox and its version, or the configured server; "-" for an older record', () => {
    // Prepare
    const base = {
      format: 'pgvault-drill/1',
      backupId: 'full-daily-20260212-020000',
      finishedAt: NOW.toISOString(),
      ok: true,
      rtoMs: 60_000,
      host: 'db1',
    } as const;
    const drills: DrillRecord[] = [
      {
        ...base,
        kind: 'drill',
        startedAt: new Date(NOW.getTime() - 1_000_000).toISOString(),
        restoredOn: { kind: 'sandbox', serverVersion: '15.10 (Debian 15.10-0+deb12u1)' },
      },
      {
        ...base,
        kind: 'verify-restore',
        startedAt: new Date(NOW.getTime() - 2_000_000).toISOString(),
        restoredOn: { kind: 'server', server: 'db1:5432' },
      },
      { ...base, kind: 'drill', startedAt: new Date(NOW.getTime() - 3_000_000).toISOString() },
    ];

    // Act
    const data = report(growing, { percent: 40, drills });
    const md = renderMarkdown(data);
    const html = renderHtml(data);

    // Assess
    expect(data.drills.map((d) => d.restoredOn)).toEqual([
      drills[0]!.restoredOn,
      drills[1]!.restoredOn,
      undefined,
    ]);
    expect(md).toContain('| started | kind | backup | restored on | result |');
    expect(md).toContain('| `full-daily-20260212-020000` | sandbox (PostgreSQL 15.10) | ok |');
    expect(md).toContain('| `full-daily-20260212-020000` | server db1:5432 | ok |');
    expect(md).toContain('| `full-daily-20260212-020000` | - | ok |');
    expect(html).toContain('<th>restored on</th>');
    expect(html).toContain('<td>sandbox (PostgreSQL 15.10)</td>');
    expect(html).toContain('<td>server db1:5432</td>');
  });
});
