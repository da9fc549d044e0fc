import { describe, expect, it } from 'vitest';
import { backupId, formatStamp, type Schedule } from '../../core/catalog/naming';
import { parseConfig } from '../../core/config';
import { plannedExpiry } from '../../core/retention/lock';
import {
  DEFAULT_POLICY,
  planRetention,
  type RetentionBackup,
  type RetentionPolicy,
} from '../../core/retention/plan';
import { AzureTarget, createTargets, S3Target } from '../../core/storage';

/**
 * "Retention must never fight a lock": the retain-until the writer sets (core/retention/lock.ts) ends no
 * later than the moment the planner (plan.ts) first deletes the backup, for months of backups taken on
 * the guide's schedules (daily 02:00, weekly Sunday 03:00, monthly 1st 04:00, UTC) and retention run
 * daily at 05:00. The one exception is by design: a backup superseded the same UTC day (the daily backup
 * of a Sunday by that day's weekly one) may go before its lock ends; retention then reports it locked.
 *
 * Run for every provider's lock as its target computes it from the config (OBJECT_LOCK_MODE and
 * RETENTION_*, through createTargets): S3 Object Lock's retain-until, Azure's immutability policy
 * expiry. A provider whose lock is added (GCS object retention) adds its line to LOCKS.
 */
const DAY = 86_400_000;

/** The retain-until a provider's target sets on `key` written at `now`, under `policy`. */
type LockUntil = (key: string, now: Date) => Date | undefined;

function configFor(provider: 's3' | 'azure', policy: RetentionPolicy) {
  return parseConfig({
    CLOUD_PROVIDER: provider,
    CLOUD_BUCKET: 'vault',
    LOCAL_COPY: 'false',
    AZURE_STORAGE_ACCOUNT: 'account',
    OBJECT_LOCK_MODE: 'compliance',
    RETENTION_DAYS: String(policy.daily),
    RETENTION_WEEKS: String(policy.weekly),
    RETENTION_MONTHS: String(policy.monthly),
    RETENTION_WAL_DAYS: String(policy.walDays),
    RETENTION_CONFIG_COUNT: String(policy.configCount),
    RETENTION_INDEXES_COUNT: String(policy.indexesCount),
  });
}

const LOCKS: Record<string, (policy: RetentionPolicy) => LockUntil> = {
  'core/retention/lock.ts plannedExpiry': (policy) => (key, now) => plannedExpiry(key, policy, now),
  's3 (Object Lock retain-until)': (policy) => {
    const [target] = createTargets(configFor('s3', policy));
    if (!(target instanceof S3Target)) throw new Error('not an S3 target');
    return (key, now) => target.lockParamsFor(key, now).ObjectLockRetainUntilDate;
  },
  'azure (immutability policy expiry)': (policy) => {
    const [target] = createTargets(configFor('azure', policy));
    if (!(target instanceof AzureTarget)) throw new Error('not an Azure target');
    return (key, now) => target.immutabilityPolicyFor(key, now)?.expiriesOn;
  },
};

function simulate(policy: RetentionPolicy, days: number, lockUntil: LockUntil) {
  const start = Date.UTC(2026, 0, 1);
  let kept: RetentionBackup[] = [];
  const fights: string[] = [];
  let deletions = 0;
  let superseded = 0;
  for (let d = 0; d < days; d++) {
    const day = new Date(start + d * DAY);
    const taken: Array<[Schedule, number]> = [['daily', 2]];
    if (day.getUTCDay() === 0) taken.push(['weekly', 3]);
    if (day.getUTCDate() === 1) taken.push(['monthly', 4]);
    for (const [schedule, hour] of taken) {
      const at = new Date(day.getTime() + hour * 3600_000);
      const id = backupId('full', schedule, at);
      kept.push({
        id,
        type: 'full',
        schedule,
        startedAt: at.toISOString(),
        finishedAt: new Date(at.getTime() + 600_000).toISOString(),
        complete: true,
        lineage: 'a',
        storedSize: 1,
        manifestKey: `main/full/${schedule}/${id}.manifest.json`,
        objectKeys: [`main/full/${schedule}/${id}.app.dump`],
      });
    }
    const now = new Date(day.getTime() + 5 * 3600_000);
    const plan = planRetention({ backups: kept, leftovers: [], policy, now });
    const gone = new Set<string>();
    for (const b of plan.backups.filter((x) => x.action === 'delete')) {
      deletions++;
      gone.add(b.id);
      for (const key of [b.manifestKey, ...b.objectKeys]) {
        // The lock is computed at write time; the key's id carries the backup's time.
        const until = lockUntil(key, new Date(b.startedAt));
        if (until === undefined) {
          fights.push(`${key}: no lock at all`);
          continue;
        }
        if (until.getTime() <= now.getTime()) continue;
        const sameDayNewer = kept.some(
          (o) =>
            o.id !== b.id &&
            o.startedAt.slice(0, 10) === b.startedAt.slice(0, 10) &&
            o.startedAt > b.startedAt,
        );
        if (sameDayNewer) superseded++;
        else fights.push(`${key} deleted at ${now.toISOString()} but locked until ${until.toISOString()}`);
      }
    }
    kept = kept.filter((b) => !gone.has(b.id));
  }
  return { fights, deletions, superseded };
}

describe.each(Object.entries(LOCKS))('the GFS lock never outlives the GFS plan: %s', (_, lockFor) => {
  for (const policy of [
    DEFAULT_POLICY,
    { ...DEFAULT_POLICY, daily: 1, weekly: 1, monthly: 1 },
    { ...DEFAULT_POLICY, daily: 14, weekly: 8, monthly: 12 },
    { ...DEFAULT_POLICY, daily: 3, weekly: 0, monthly: 2 },
    { ...DEFAULT_POLICY, daily: 0, weekly: 2, monthly: 0 },
    { ...DEFAULT_POLICY, daily: 2, weekly: 10, monthly: 1 },
  ]) {
    it(`daily ${policy.daily}, weekly ${policy.weekly}, monthly ${policy.monthly}: 500 days`, () => {
      const r = simulate(policy, 500, lockFor(policy));
      expect(r.fights).toEqual([]);
      expect(r.deletions).toBeGreaterThan(100);
    });
  }

  it('counts the by-design exception: a Sunday daily backup goes the day its weekly one is taken', () => {
    const r = simulate(DEFAULT_POLICY, 60, lockFor(DEFAULT_POLICY));
    expect(r.superseded).toBeGreaterThan(0);
    expect(formatStamp(new Date(Date.UTC(2026, 0, 4, 2)))).toBe('20260104-020000'); // a Sunday
  });
});
