import { parseBackupId } from '../catalog/naming';
import { walNameFromKey } from '../wal/naming';
import type { RetentionPolicy } from './plan';

/**
 * Object Lock retain-until dates from the GFS plan (S3_OBJECT_LOCK_RETAIN=gfs). Pure: given an
 * object's key (relative to the prefix, `<cluster>/<folder>/...`), the policy and the write time, the
 * earliest moment retention (plan.ts) may delete it if backups keep running on their schedules. A lock
 * until then protects the object for as long as pgvault itself means to keep it, and never longer, so
 * retention never fights the lock in the ordinary course:
 *
 * - full/base, schedule daily: the daily tier keeps a backup while its UTC day is among the `daily` most
 *   recent days that have one: at least until the start of its day + `daily` days.
 * - schedule weekly: also the weekly tier: start of its ISO week (Monday 00:00 UTC) + `weekly` weeks,
 *   if later. (A weekly backup, taken on Sunday, is the newest of its ISO week.)
 * - schedule monthly: also the monthly tier: start of its UTC month + `monthly` months, if later. Not the
 *   weekly tier: a monthly backup may share its ISO week with a newer weekly one, which that tier keeps
 *   instead (test/unit/retention-lock.test.ts simulates the schedules against the planner).
 * - WAL (segments, history, backup labels): the PITR window keeps every segment written in the last
 *   `walDays` days: write time + `walDays` days.
 * - Nothing (undefined, no per-object date: the bucket's default retention applies) for a backup's
 *   `.claim-` object (removed when the backup is done), manual backups
 *   (kept until deleted by hand), config and indexes backups (kept by count, whatever their cadence),
 *   reports, drills, `wal/archive.json`, `keys.json` and anything else.
 *
 * The backup's time is its id's stamp (when the backup started); the write time when the id has none.
 * The date is never before `now + floorDays` (the bucket's default retention stays the floor).
 * A backup superseded within its own period (a second daily backup the same day) may be planned for
 * deletion before its lock ends: retention then reports it "locked until ..." and a later run deletes it.
 */
export function objectLockRetainUntil(
  key: string,
  policy: RetentionPolicy,
  now: Date,
  floorDays = 0,
): Date | undefined {
  const planned = plannedExpiry(key, policy, now);
  if (planned === undefined) return undefined;
  const floor = now.getTime() + floorDays * DAY_MS;
  return new Date(Math.max(planned.getTime(), floor));
}

const DAY_MS = 24 * 3600 * 1000;

/** The earliest time retention may delete the object under `key`; undefined: not planned by date. */
export function plannedExpiry(key: string, policy: RetentionPolicy, now: Date): Date | undefined {
  const parts = key.split('/');
  if (parts.length < 3) return undefined;
  const [, folder] = parts as [string, string];
  if (folder === 'wal') {
    if (parts[2] === 'archive.json' || walNameFromKey(key) === undefined) return undefined;
    return new Date(now.getTime() + policy.walDays * DAY_MS);
  }
  if (folder !== 'full' && folder !== 'base') return undefined;
  const schedule = parts[2];
  if (schedule !== 'daily' && schedule !== 'weekly' && schedule !== 'monthly') return undefined;
  const name = parts[parts.length - 1]!;
  // A backup's claim (core/backup/run.ts) is removed once the backup is done: not kept by GFS.
  if (name.includes('.claim-')) return undefined;
  const id = parseBackupId(name.slice(0, name.indexOf('.') < 0 ? name.length : name.indexOf('.')));
  const started = id && id.schedule === schedule ? stampDate(id.stamp) : now;
  const day = Date.UTC(started.getUTCFullYear(), started.getUTCMonth(), started.getUTCDate());
  const ends: number[] = [day + policy.daily * DAY_MS];
  if (schedule === 'weekly') {
    const weekday = new Date(day).getUTCDay() || 7; // Monday 1 .. Sunday 7
    ends.push(day - (weekday - 1) * DAY_MS + policy.weekly * 7 * DAY_MS);
  }
  if (schedule === 'monthly') {
    ends.push(Date.UTC(started.getUTCFullYear(), started.getUTCMonth() + policy.monthly, 1));
  }
  return new Date(Math.max(...ends));
}

/** 20260212-020000 as a UTC date. */
function stampDate(stamp: string): Date {
  const [d, t] = stamp.split('-') as [string, string];
  return new Date(
    Date.UTC(
      Number(d.slice(0, 4)),
      Number(d.slice(4, 6)) - 1,
      Number(d.slice(6, 8)),
      Number(t.slice(0, 2)),
      Number(t.slice(2, 4)),
      Number(t.slice(4, 6)),
    ),
  );
}
