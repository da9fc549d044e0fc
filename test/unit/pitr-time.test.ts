import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseRecoveryTarget, parseTargetTime, targetTimeLine, targetTimeOf } from '../../core/restore/pitr';

/**
 * A PITR time without a zone is the operator's local time (TZ), not UTC: "10:30" typed in New York
 * means 15:30 UTC in winter and 14:30 in summer. Node applies a TZ set at run time to Date.
 */
describe('PITR target time', () => {
  const saved = process.env.TZ;
  beforeEach(() => {
    process.env.TZ = 'America/New_York';
  });
  afterEach(() => {
    if (saved === undefined) delete process.env.TZ;
    else process.env.TZ = saved;
  });

  it.each([
    ['2026-01-15 10:30:00', '2026-01-15T15:30:00.000Z'],
    ['2026-07-01 09:30', '2026-07-01T13:30:00.000Z'],
    ['2026-07-01T09:30:00.123456', '2026-07-01T13:30:00.123Z'],
    ['2026-11-01 00:30:00', '2026-11-01T04:30:00.000Z'],
  ])('reads %s without a zone as New York time: %s', (input, utc) => {
    expect(parseTargetTime(input).time.toISOString()).toBe(utc);
  });

  it.each([
    ['2026-01-15 10:30:00Z', '2026-01-15T10:30:00.000Z'],
    ['2026-01-15 10:30:00 UTC', '2026-01-15T10:30:00.000Z'],
    ['2026-01-15 10:30:00.5+00', '2026-01-15T10:30:00.500Z'],
    ['2026-01-15T10:30:00+01:00', '2026-01-15T09:30:00.000Z'],
  ])('keeps the zone %s names', (input, utc) => {
    expect(parseTargetTime(input).time.toISOString()).toBe(utc);
  });

  it('writes recovery_target_time in UTC with microseconds', () => {
    expect(parseTargetTime('2026-01-15 10:30:00.000001').text).toBe('2026-01-15 15:30:00.000001+00');
  });

  it('refuses a local time the clocks skipped, naming the zone', () => {
    expect(() => parseTargetTime('2026-03-08 02:30:00')).toThrow(/does not exist in America\/New_York/);
  });

  it('shows the target in UTC and in local time', () => {
    const target = parseRecoveryTarget({ time: '2026-01-15 10:30:00' });
    expect(targetTimeOf(target)).toEqual({
      utc: '2026-01-15 15:30:00.000000 UTC',
      local: '2026-01-15 10:30:00.000000-05:00',
      timeZone: 'America/New_York',
    });
    expect(targetTimeLine(target)).toBe(
      'target time 2026-01-15 15:30:00.000000 UTC = 2026-01-15 10:30:00.000000-05:00 (America/New_York)',
    );
    expect(targetTimeLine(parseRecoveryTarget({ lsn: '0/5000028' }))).toBeUndefined();
  });
});
