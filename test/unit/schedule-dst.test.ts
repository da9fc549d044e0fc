import { describe, expect, it } from 'vitest';
import { CRON_DST, dstClashes, dstNote, EVENTBRIDGE_SCHEDULER_DST } from '../../core/schedule-dst';

// A fixed start: the year after 2026-12-01 holds Europe/Berlin's spring-forward on 2027-03-28
// (02:00 → 03:00) and its fall-back on 2027-10-31 (03:00 → 02:00).
const FROM = new Date('2026-12-01T00:00:00Z');

describe('dstClashes: schedule run times in a skipped or repeated hour', () => {
  it('02:30 daily in Europe/Berlin: skipped on the last Sunday of March, repeated on the last of October', () => {
    expect(dstClashes('30 2 * * *', 'Europe/Berlin', FROM)).toEqual([
      { kind: 'skipped', date: '2027-03-28', times: ['02:30'], window: '02:00–03:00' },
      { kind: 'repeated', date: '2027-10-31', times: ['02:30'], window: '02:00–03:00' },
    ]);
  });

  it('reads EventBridge Scheduler expressions too (day of week 1 = Sunday)', () => {
    expect(dstClashes('cron(30 2 ? * 1 *)', 'Europe/Berlin', FROM).map((c) => c.date)).toEqual([
      '2027-03-28',
      '2027-10-31',
    ]);
    // Mondays only: the changes are on Sundays.
    expect(dstClashes('cron(30 2 ? * MON *)', 'Europe/Berlin', FROM)).toEqual([]);
  });

  it('nothing for times clear of the change, zones without DST, or expressions it cannot read', () => {
    expect(dstClashes('0 3 * * *', 'Europe/Berlin', FROM).map((c) => c.kind)).toEqual([]);
    expect(dstClashes('30 2 * * *', 'UTC', FROM)).toEqual([]);
    expect(dstClashes('30 2 * * *', 'Asia/Tokyo', FROM)).toEqual([]);
    expect(dstClashes('rate(1 day)', 'Europe/Berlin', FROM)).toEqual([]);
    expect(dstClashes('0 4 1 * *', 'Europe/Berlin', FROM)).toEqual([]);
  });

  it('another zone’s hour: America/New_York changes at 02:00 local on 2027-03-14 and 2027-11-07', () => {
    expect(dstClashes('15 1,2 * * *', 'America/New_York', FROM)).toEqual([
      { kind: 'skipped', date: '2027-03-14', times: ['02:15'], window: '02:00–03:00' },
      { kind: 'repeated', date: '2027-11-07', times: ['01:15'], window: '01:00–02:00' },
    ]);
  });
});

describe('dstNote: one line saying what happens', () => {
  it('for EventBridge Scheduler and for cron', () => {
    expect(
      dstNote('schedules.fullDaily', '30 2 * * *', 'Europe/Berlin', EVENTBRIDGE_SCHEDULER_DST, FROM),
    ).toBe(
      'schedules.fullDaily (Europe/Berlin): 02:30 does not exist on 2027-03-28 (02:00–03:00 is skipped): EventBridge Scheduler skips that run; 02:30 happens twice on 2027-10-31 (02:00–03:00 is repeated): EventBridge Scheduler runs it once',
    );
    expect(dstNote('backup full daily', '0 2 * * *', 'Europe/Berlin', CRON_DST, FROM)).toMatch(
      /^backup full daily \(Europe\/Berlin\): 02:00 does not exist on 2027-03-28 .*: cron runs it right after the change; 02:00 happens twice on 2027-10-31 .*: cron runs it once$/,
    );
    expect(dstNote('schedules.verify', '0 6 * * *', 'Europe/Berlin', CRON_DST, FROM)).toBeUndefined();
    // From June the fall-back comes first in the year; the line still names the skipped hour first.
    expect(dstNote('x', '30 2 * * *', 'Europe/Berlin', CRON_DST, new Date('2026-06-01T00:00:00Z'))).toMatch(
      /^x \(Europe\/Berlin\): 02:30 does not exist on 2027-03-28 .*; 02:30 happens twice on 2026-10-25 /,
    );
  });
});
