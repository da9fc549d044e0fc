import { describe, expect, it } from 'vitest';
import { type ThresholdInputs, thresholdAlerts, thresholdInputsFrom } from '../../core/alert/thresholds';
import type { CatalogEntry } from '../../core/catalog/catalog';
import type { DrillRecord } from '../../core/catalog/records';
import { parseConfig } from '../../core/config';
import { ConfigError } from '../../core/errors';
import type { CapacityReport, TargetCapacity } from '../../core/verify/capacity';
import { targetCapacity } from '../../core/verify/capacity';

const NOW = new Date('2026-02-12T12:00:00Z');
const HOUR = 3_600_000;
const limits = parseConfig({ BACKUP_DIR: '/tmp/pgvault-unit' }).alerts;

function ago(ms: number): string {
  return new Date(NOW.getTime() - ms).toISOString();
}

/** A healthy cluster: a backup 2 h old, WAL archived a minute ago, a passing drill, half-full disk. */
function healthy(overrides: Partial<ThresholdInputs> = {}): ThresholdInputs {
  return {
    cluster: 'main',
    checkedAt: NOW.toISOString(),
    newestBackup: { id: 'full-daily-20260212-100000', type: 'full', finishedAt: ago(2 * HOUR) },
    recoveryPoint: { at: ago(60_000), basis: 'wal' },
    wal: { gaps: [], backups: [] },
    capacity: capacity([{ percent: 50 }]),
    drills: [drill({ ok: true, rtoMs: 10 * 60_000, startedAt: ago(24 * HOUR) })],
    ...overrides,
  };
}

function capacity(targets: Partial<TargetCapacity>[]): CapacityReport {
  return {
    ok: true,
    cluster: 'main',
    checkedAt: NOW.toISOString(),
    thresholdPercent: 80,
    targets: targets.map((t) => ({
      location: 'file:///var/backups/postgresql',
      kind: 'file' as const,
      usedBytes: 10 * 2 ** 30,
      objects: 100,
      basis: 'disk' as const,
      limitBytes: 100 * 2 ** 30,
      occupiedBytes: 50 * 2 ** 30,
      freeBytes: 50 * 2 ** 30,
      writtenBytesPerDay: 0,
      windowDays: 7,
      ...t,
    })),
  };
}

function drill(d: Partial<DrillRecord>): DrillRecord {
  return {
    format: 'pgvault-drill/1',
    kind: 'drill',
    backupId: 'full-daily-20260211-020000',
    startedAt: ago(HOUR),
    finishedAt: ago(HOUR - 60_000),
    ok: true,
    host: 'db1',
    ...d,
  };
}

describe('thresholdAlerts', () => {
  it('is silent for a healthy cluster', () => {
    // Act
    const alerts = thresholdAlerts(healthy(), limits);

    // Assess
    expect(alerts).toEqual([]);
  });

  it('alerts when the newest backup is older than ALERT_BACKUP_AGE_HOURS, not before', () => {
    // Prepare
    const at47 = healthy({ newestBackup: { id: 'full-daily-x', type: 'full', finishedAt: ago(47 * HOUR) } });
    const at49 = healthy({
      newestBackup: { id: 'full-daily-20260210-110000', type: 'full', finishedAt: ago(49 * HOUR) },
    });

    // Act
    const quiet = thresholdAlerts(at47, limits);
    const loud = thresholdAlerts(at49, limits);
    const custom = thresholdAlerts(at47, { ...limits, backupAgeHours: 24 });

    // Assess
    expect(quiet).toEqual([]);
    expect(loud).toEqual([
      {
        cluster: 'main',
        severity: 'critical',
        kind: 'backup-age',
        title: 'newest backup is 49 h old',
        what: 'newest backup full-daily-20260210-110000 finished 49.0 h ago, over the 48 h limit (ALERT_BACKUP_AGE_HOURS)',
        since: ago(49 * HOUR),
        sinceKind: 'observed',
        nextStep: 'pgvault backup full daily',
        hint: 'Then check why the scheduled backups stopped: `pgvault backup schedule` shows the crontab.',
      },
    ]);
    expect(custom.map((a) => a.kind)).toEqual(['backup-age']);
  });

  it('judges age and RPO by the newest whole backup; a newer one whose data is gone is its own alert', () => {
    const entry = (id: string, finishedAt: string) =>
      ({
        manifest: { id, type: 'full', startedAt: finishedAt, finishedAt },
        targets: [],
      }) as unknown as CatalogEntry;
    const good = entry('full-daily-20260210-020000', ago(50 * HOUR));
    const broken = entry('full-daily-20260212-110000', ago(HOUR));
    const problem =
      'main/full/daily/full-daily-20260212-110000.app.dump.zst is missing in file:///var/backups';
    const inputs = thresholdInputsFrom({
      cluster: 'main',
      now: NOW,
      entries: [broken, good],
      drills: [],
      broken: [{ id: broken.manifest.id, type: 'full', finishedAt: broken.manifest.finishedAt, problem }],
    });

    const alerts = thresholdAlerts(inputs, limits);

    expect(inputs.newestBackup?.id).toBe(good.manifest.id);
    expect(inputs.recoveryPoint?.id).toBe(good.manifest.id);
    expect(alerts.find((a) => a.kind === 'backup-age')?.what).toContain(good.manifest.id);
    const incomplete = alerts.find((a) => a.kind === 'backup-incomplete');
    expect(incomplete?.severity).toBe('critical');
    expect(incomplete?.what).toContain(problem);
  });

  it('alerts when there is no backup at all', () => {
    // Act
    const alerts = thresholdAlerts(healthy({ newestBackup: undefined, recoveryPoint: undefined }), limits);

    // Assess
    expect(alerts.map((a) => [a.kind, a.what, a.nextStep, a.sinceKind])).toEqual([
      [
        'backup-age',
        'cluster main has no complete full or base backup',
        'pgvault backup full daily',
        'checked',
      ],
    ]);
  });

  it('alerts at ALERT_CAPACITY_PERCENT and above, per target, with an estimated start', () => {
    // Prepare
    const inputs = healthy({
      capacity: capacity([
        { percent: 79.9 },
        {
          location: 's3://bucket/pg',
          kind: 's3',
          basis: 'quota',
          percent: 90,
          limitBytes: 100 * 2 ** 30,
          occupiedBytes: 90 * 2 ** 30,
          freeBytes: 10 * 2 ** 30,
          writtenBytesPerDay: 5 * 2 ** 30,
          daysUntilFull: 2,
        },
      ]),
    });

    // Act
    const alerts = thresholdAlerts(inputs, limits);
    const stricter = thresholdAlerts(inputs, { ...limits, capacityPercent: 70 });

    // Assess: 10 GiB over the 80% line at 5 GiB/day: crossed two days ago.
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({
      kind: 'capacity',
      title: 'storage 90% full',
      what: 's3://bucket/pg is 90.0% full (of STORAGE_QUOTA_GB; ALERT_CAPACITY_PERCENT 80%), 10.0 GiB free, full in 2.0 days at 5.0 GiB/day',
      since: ago(48 * HOUR),
      sinceKind: 'estimated',
      nextStep: 'pgvault backup retention --dry-run',
    });
    expect(stricter.map((a) => a.kind)).toEqual(['capacity', 'capacity']);
  });

  it('alerts on a WAL gap with the missing range and since when recovery stops', () => {
    // Prepare
    const inputs = healthy({
      wal: {
        gaps: [
          { timeline: 1, from: '000000010000000000000005', to: '000000010000000000000007', count: 3 },
          { timeline: 1, from: '000000010000000000000009', to: '000000010000000000000009', count: 1 },
        ],
        backups: [
          {
            id: 'base-weekly-20260209-030000',
            timeline: 1,
            startWal: '000000010000000000000002',
            timelinePath: [1],
            recoverableTo: '000000010000000000000004',
            recoverableToTime: ago(30 * HOUR),
            missing: [],
            missingCount: 4,
          },
        ],
      },
    });

    // Act
    const alerts = thresholdAlerts(inputs, limits);

    // Assess
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({
      kind: 'wal-gap',
      title: 'WAL gap, 4 file(s) missing',
      what: 'the WAL archive misses 4 file(s): 000000010000000000000005 to 000000010000000000000007 on timeline 1 and 1 more range(s); point-in-time recovery cannot pass the gap',
      since: ago(30 * HOUR),
      nextStep: 'pgvault backup base daily',
    });
  });

  it('alerts when the measured RPO is over RPO_TARGET_MINUTES', () => {
    // Prepare
    const walLate = healthy({ recoveryPoint: { at: ago(2 * HOUR), basis: 'wal' } });
    const backupOnly = healthy({
      recoveryPoint: { at: ago(30 * HOUR), basis: 'backup', id: 'full-daily-20260211-060000' },
    });

    // Act
    const underDefault = thresholdAlerts(walLate, limits);
    const tight = thresholdAlerts(walLate, { ...limits, rpoTargetMinutes: 60 });
    const daily = thresholdAlerts(backupOnly, limits);

    // Assess
    expect(underDefault).toEqual([]);
    expect(tight.map((a) => [a.kind, a.title, a.what, a.nextStep])).toEqual([
      [
        'rpo',
        'RPO 2.0 h over target 60 min',
        'no WAL archived for 2.0 h, over the RPO target of 60 min (RPO_TARGET_MINUTES)',
        'pgvault verify wal',
      ],
    ]);
    expect(daily.map((a) => [a.kind, a.what, a.nextStep])).toEqual([
      [
        'rpo',
        'the newest recoverable point is backup full-daily-20260211-060000 from 30.0 h ago, over the RPO target of 24.0 h (RPO_TARGET_MINUTES)',
        'pgvault backup full daily',
      ],
    ]);
  });

  it('alerts on the newest failed drill or restore test, since the first failure in a row', () => {
    // Prepare
    const drills = [
      drill({
        kind: 'verify-restore',
        ok: false,
        error: 'row count of public.orders differs',
        startedAt: ago(HOUR),
      }),
      drill({ kind: 'drill', ok: true, rtoMs: 5 * 60_000, startedAt: ago(2 * HOUR) }),
      drill({ kind: 'verify-restore', ok: false, error: 'pg_restore failed', startedAt: ago(25 * HOUR) }),
      drill({ kind: 'verify-restore', ok: true, startedAt: ago(49 * HOUR) }),
    ];

    // Act
    const alerts = thresholdAlerts(healthy({ drills }), limits);

    // Assess
    expect(alerts).toEqual([
      expect.objectContaining({
        kind: 'drill-failed',
        title: 'restore test failed',
        what: 'the last restore test of backup full-daily-20260211-020000 failed: row count of public.orders differs (2 failures in a row)',
        since: ago(25 * HOUR),
        nextStep: 'pgvault verify restore full-daily-20260211-020000',
      }),
    ]);
  });

  it('alerts when the newest measured RTO is over RTO_TARGET_MINUTES', () => {
    // Prepare
    const drills = [drill({ kind: 'pitr', ok: true, rtoMs: 300 * 60_000, startedAt: ago(3 * HOUR) })];

    // Act
    const alerts = thresholdAlerts(healthy({ drills }), limits);
    const relaxed = thresholdAlerts(healthy({ drills }), { ...limits, rtoTargetMinutes: 360 });

    // Assess
    expect(alerts.map((a) => [a.kind, a.title, a.nextStep])).toEqual([
      ['rto', 'RTO 5.0 h over target 4.0 h', 'pgvault drill --pitr'],
    ]);
    expect(relaxed).toEqual([]);
  });

  it('warns on a sudden shrink of the newest backup only', () => {
    // Prepare
    const point = (id: string, raw: number, suspect = false) => ({
      id,
      at: ago(HOUR),
      rawBytes: raw,
      storedBytes: raw / 4,
      ratio: 0.25,
      suspect,
    });
    const sizes = {
      ok: false,
      cluster: 'main',
      shrinkPercent: 50,
      series: [
        {
          key: 'full/app',
          type: 'full',
          database: 'app',
          points: [point('full-daily-1', 8e6), point('full-daily-2', 2e6, true)],
          trend: { bytesPerDay: 0, percentPerDay: 0, direction: 'flat' as const },
        },
      ],
      suspects: [
        {
          series: 'full/app',
          id: 'full-daily-2',
          at: ago(HOUR),
          previousId: 'full-daily-1',
          bytes: 2e6,
          previousBytes: 8e6,
          shrinkPercent: 75,
        },
      ],
    };

    // Act
    const alerts = thresholdAlerts(healthy({ sizes }), limits);

    // Assess
    expect(alerts.map((a) => [a.kind, a.severity, a.nextStep])).toEqual([
      ['size-shrink', 'warning', 'pgvault verify file full-daily-2'],
    ]);
  });
});

describe('targetCapacity', () => {
  it('computes disk percentage like df, the write rate and the days until full', () => {
    // Act
    const t = targetCapacity(
      { location: 'file:///b', kind: 'file' },
      { usedBytes: 700, objects: 7, writtenInWindow: 700, oldest: new Date(NOW.getTime() - 14 * 24 * HOUR) },
      { basis: 'disk', disk: { totalBytes: 10_000, usedBytes: 8_000, availableBytes: 1_400 } },
      NOW,
    );

    // Assess: 8000 / (8000 + 1400) = 85.1%; 700 bytes over 7 days = 100/day; 1400 free = 14 days.
    expect(t).toMatchObject({
      percent: 85.1,
      writtenBytesPerDay: 100,
      windowDays: 7,
      daysUntilFull: 14,
      fullBy: new Date(NOW.getTime() + 14 * 24 * HOUR).toISOString(),
    });
  });

  it('uses the quota for cloud targets, and no percentage without one', () => {
    // Act
    const quota = targetCapacity(
      { location: 's3://b', kind: 's3' },
      { usedBytes: 900, objects: 3, writtenInWindow: 0 },
      { basis: 'quota', quotaBytes: 1000 },
      NOW,
    );
    const none = targetCapacity(
      { location: 's3://b', kind: 's3' },
      { usedBytes: 900, objects: 3, writtenInWindow: 0 },
      { basis: 'none' },
      NOW,
    );

    // Assess
    expect(quota).toMatchObject({ percent: 90, freeBytes: 100, basis: 'quota' });
    expect(quota.daysUntilFull).toBeUndefined();
    expect(none.percent).toBeUndefined();
  });
});

describe('alert configuration', () => {
  it('has the guide defaults and reads every threshold', () => {
    // Act
    const defaults = parseConfig({ BACKUP_DIR: '/tmp/x' }).alerts;
    const set = parseConfig({
      BACKUP_DIR: '/tmp/x',
      ALERT_CAPACITY_PERCENT: '90',
      ALERT_BACKUP_AGE_HOURS: '26',
      ALERT_SHRINK_PERCENT: '30',
      RPO_TARGET_MINUTES: '5',
      RTO_TARGET_MINUTES: '60',
      STORAGE_QUOTA_GB: '0.5',
      SNS_TOPIC_ARN: 'arn:aws:sns:eu-west-1:123456789012:pgvault-alerts',
      EMAIL_TO: 'dba@example.com, ops@example.com',
    }).alerts;

    // Assess
    expect(defaults).toEqual({
      capacityPercent: 80,
      backupAgeHours: 48,
      shrinkPercent: 50,
      rpoTargetMinutes: 1440,
      rtoTargetMinutes: 240,
      storageQuotaBytes: undefined,
      snsTopicArn: undefined,
      emailTo: [],
    });
    expect(set).toEqual({
      capacityPercent: 90,
      backupAgeHours: 26,
      shrinkPercent: 30,
      rpoTargetMinutes: 5,
      rtoTargetMinutes: 60,
      storageQuotaBytes: 536_870_912,
      snsTopicArn: 'arn:aws:sns:eu-west-1:123456789012:pgvault-alerts',
      emailTo: ['dba@example.com', 'ops@example.com'],
    });
  });

  it.each([
    [
      'ALERT_CAPACITY_PERCENT',
      '101',
      'ALERT_CAPACITY_PERCENT=101 is not allowed; use a whole number, 1 to 100',
    ],
    ['RPO_TARGET_MINUTES', '0', 'RPO_TARGET_MINUTES=0 is not allowed; use a whole number, 1 or more'],
    [
      'STORAGE_QUOTA_GB',
      '-1',
      'STORAGE_QUOTA_GB=-1 is not allowed; use a number of GB above 0, like 500 or 0.5',
    ],
    ['SNS_TOPIC_ARN', 'pgvault-alerts', 'SNS_TOPIC_ARN=pgvault-alerts is not allowed'],
    ['EMAIL_TO', 'dba', 'EMAIL_TO=dba is not allowed; use addresses separated by commas'],
  ])('refuses %s=%s with one line', (key, value, message) => {
    // Act
    const parse = () => parseConfig({ BACKUP_DIR: '/tmp/x', [key]: value });

    // Assess
    expect(parse).toThrow(ConfigError);
    expect(parse).toThrow(message);
  });
});
