/**
 * Daylight saving time and schedules: which local run times of a cron schedule fall into an hour the
 * time zone skips (spring forward) or repeats (fall back), so the schedule's owner is told what happens
 * to those runs. Pure (Intl only): the CLI's crontab (`backup schedule`) and the AWS deployment's
 * EventBridge Scheduler schedules (infra) both use it.
 */

export interface DstClash {
  /** `skipped`: the local time does not exist that day; `repeated`: it happens twice. */
  readonly kind: 'skipped' | 'repeated';
  /** Local date of the change, YYYY-MM-DD. */
  readonly date: string;
  /** The schedule's local run times (HH:MM) inside the affected hour. */
  readonly times: readonly string[];
  /** The affected local wall-clock window, e.g. 02:00–03:00. */
  readonly window: string;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

const formatters = new Map<string, Intl.DateTimeFormat>();
function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
    });
    formatters.set(timeZone, f);
  }
  return f;
}

/** The zone's UTC offset in minutes at instant `t` (ms). */
function offsetMinutes(timeZone: string, t: number): number {
  const parts: Record<string, number> = {};
  for (const p of formatter(timeZone).formatToParts(new Date(t))) {
    if (p.type !== 'literal') parts[p.type] = Number(p.value);
  }
  const wall = Date.UTC(parts.year!, parts.month! - 1, parts.day!, parts.hour! % 24, parts.minute!);
  return Math.round((wall - Math.floor(t / MINUTE) * MINUTE) / MINUTE);
}

/** Offset changes of the zone in [from, from + days): the instant and the offsets before and after. */
function transitions(
  timeZone: string,
  from: number,
  days: number,
): Array<{ at: number; before: number; after: number }> {
  const out: Array<{ at: number; before: number; after: number }> = [];
  const start = Math.floor(from / HOUR) * HOUR;
  // Day by day (zones change at most once a day), then the minute by bisection.
  let previous = offsetMinutes(timeZone, start);
  for (let t = start + DAY; t < start + (days + 1) * DAY; t += DAY) {
    const current = offsetMinutes(timeZone, t);
    if (current === previous) continue;
    let lo = t - DAY;
    let hi = t;
    while (hi - lo > MINUTE) {
      const mid = lo + Math.floor((hi - lo) / 2 / MINUTE) * MINUTE;
      if (offsetMinutes(timeZone, mid) === previous) lo = mid;
      else hi = mid;
    }
    if (hi < start + days * DAY) out.push({ at: hi, before: previous, after: current });
    previous = current;
  }
  return out;
}

/** A cron field as the set of its values; undefined for what this reader does not evaluate (L, W, #). */
function parseField(
  field: string,
  min: number,
  max: number,
  names: readonly string[] = [],
  nameBase = 0,
): Set<number> | undefined {
  const values = new Set<number>();
  const value = (v: string): number | undefined => {
    const named = names.indexOf(v.toUpperCase());
    if (named >= 0) return named + nameBase;
    return /^\d+$/.test(v) ? Number(v) : undefined;
  };
  for (const part of field.split(',')) {
    const [range, stepText] = part.split('/') as [string, string | undefined];
    const step = stepText === undefined ? 1 : Number(stepText);
    if (!Number.isInteger(step) || step < 1) return undefined;
    let lo: number | undefined;
    let hi: number | undefined;
    if (range === '*' || range === '?') [lo, hi] = [min, max];
    else if (range.includes('-')) {
      const [a, b] = range.split('-');
      [lo, hi] = [value(a ?? ''), value(b ?? '')];
    } else {
      lo = value(range);
      hi = stepText === undefined ? lo : max;
    }
    if (lo === undefined || hi === undefined) return undefined;
    for (let v = lo; v <= hi; v += step) values.add(v);
  }
  return values;
}

const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
const DAYS = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];

interface CronTimes {
  readonly minutes: Set<number>;
  readonly hours: Set<number>;
  /** Whether the schedule runs on this local date (day of month, month, day of week). */
  readonly onDate: (year: number, month: number, day: number) => boolean;
}

/**
 * A crontab line's schedule (5 fields; day of week 0–7, 0 and 7 Sunday) or an EventBridge Scheduler
 * `cron(min hour dom month dow year)` (day of week 1–7, 1 Sunday); undefined for anything else
 * (rate(), at(), L/W/# fields): no note is given for those.
 */
export function parseCronTimes(expression: string): CronTimes | undefined {
  const trimmed = expression.trim();
  const scheduler = /^cron\((.+)\)$/.exec(trimmed);
  const fields = (scheduler ? scheduler[1]! : trimmed).trim().split(/\s+/);
  if (scheduler ? fields.length !== 6 : fields.length !== 5) return undefined;
  const [m, h, dom, mon, dow] = fields as [string, string, string, string, string];
  const minutes = parseField(m, 0, 59);
  const hours = parseField(h, 0, 23);
  const days = parseField(dom, 1, 31);
  const months = parseField(mon, 1, 12, MONTHS, 1);
  const weekdays = scheduler ? parseField(dow, 1, 7, DAYS, 1) : parseField(dow, 0, 7, DAYS, 0);
  if (!minutes || !hours || !days || !months || !weekdays) return undefined;
  const restricted = (f: string) => f !== '*' && f !== '?';
  const weekdayOf = (year: number, month: number, day: number) => {
    const sunday0 = new Date(Date.UTC(year, month - 1, day)).getUTCDay();
    return scheduler
      ? weekdays.has(sunday0 + 1)
      : weekdays.has(sunday0) || (sunday0 === 0 && weekdays.has(7));
  };
  return {
    minutes,
    hours,
    onDate(year, month, day) {
      if (!months.has(month)) return false;
      // crontab: both day fields restricted means either; Scheduler never restricts both.
      if (restricted(dom) && restricted(dow)) return days.has(day) || weekdayOf(year, month, day);
      if (restricted(dow)) return weekdayOf(year, month, day);
      return days.has(day);
    },
  };
}

const two = (n: number) => String(n).padStart(2, '0');
const wallDate = (w: number) => {
  const d = new Date(w);
  return `${d.getUTCFullYear()}-${two(d.getUTCMonth() + 1)}-${two(d.getUTCDate())}`;
};
const wallTime = (w: number) => {
  const d = new Date(w);
  return `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}`;
};

/**
 * The skipped and repeated local hours of `timeZone` in the `days` after `from` that a run of the
 * schedule falls into. Empty for a zone without DST, a schedule clear of the changes, or an
 * expression this reader does not evaluate.
 */
export function dstClashes(expression: string, timeZone: string, from = new Date(), days = 366): DstClash[] {
  const times = parseCronTimes(expression);
  if (!times) return [];
  const clashes: DstClash[] = [];
  for (const t of transitions(timeZone, from.getTime(), days)) {
    const kind = t.after > t.before ? 'skipped' : 'repeated';
    // The wall-clock window (as UTC fields): skipped [at+before, at+after), repeated [at+after, at+before).
    const start = t.at + Math.min(t.before, t.after) * MINUTE;
    const end = t.at + Math.max(t.before, t.after) * MINUTE;
    const hits: string[] = [];
    for (let day = Math.floor(start / DAY) * DAY; day < end; day += DAY) {
      const d = new Date(day);
      if (!times.onDate(d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate())) continue;
      for (const h of [...times.hours].sort((a, b) => a - b)) {
        for (const m of [...times.minutes].sort((a, b) => a - b)) {
          const wall = day + h * HOUR + m * MINUTE;
          if (wall >= start && wall < end) hits.push(wallTime(wall));
        }
      }
    }
    if (hits.length > 0) {
      clashes.push({
        kind,
        date: wallDate(start),
        times: hits,
        window: `${wallTime(start)}–${wallTime(end)}`,
      });
    }
  }
  return clashes;
}

/** How a scheduler treats a run time in a skipped and in a repeated hour. */
export interface DstBehaviour {
  readonly skipped: string;
  readonly repeated: string;
}

/** What EventBridge Scheduler does (its documentation: a non-existent time is skipped, a repeated one runs once). */
export const EVENTBRIDGE_SCHEDULER_DST: DstBehaviour = {
  skipped: 'EventBridge Scheduler skips that run',
  repeated: 'EventBridge Scheduler runs it once',
};

/** What Debian's cron does (cron(8): jobs of a skipped hour run right after the change; a repeated hour's jobs are not run again). */
export const CRON_DST: DstBehaviour = {
  skipped: 'cron runs it right after the change',
  repeated: 'cron runs it once',
};

/**
 * One line for a schedule's clashes: `<what> (<zone>): 02:30 does not exist on 2027-03-28 (02:00–03:00
 * is skipped): EventBridge Scheduler skips that run; 02:30 happens twice on 2026-10-25: ... runs it once`.
 * Undefined when nothing clashes.
 */
export function dstNote(
  what: string,
  expression: string,
  timeZone: string,
  behaviour: DstBehaviour,
  from = new Date(),
): string | undefined {
  // The skipped hour first, whichever comes first in the year: the line reads the same all year.
  const clashes = dstClashes(expression, timeZone, from).sort((a, b) =>
    a.kind === b.kind ? 0 : a.kind === 'skipped' ? -1 : 1,
  );
  if (clashes.length === 0) return undefined;
  const parts = clashes.map((c) =>
    c.kind === 'skipped'
      ? `${c.times.join(', ')} does not exist on ${c.date} (${c.window} is skipped): ${behaviour.skipped}`
      : `${c.times.join(', ')} happens twice on ${c.date} (${c.window} is repeated): ${behaviour.repeated}`,
  );
  return `${what} (${timeZone}): ${parts.join('; ')}`;
}
