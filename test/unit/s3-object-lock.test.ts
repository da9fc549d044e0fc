import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatStamp } from '../../core/catalog/naming';
import { parseConfig } from '../../core/config';
import { objectLockRetainUntil, plannedExpiry } from '../../core/retention/lock';
import { DEFAULT_POLICY, type RetentionPolicy } from '../../core/retention/plan';
import { createTargets } from '../../core/storage';
import type { S3Target } from '../../core/storage/s3';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';

const DAY = 24 * 3600 * 1000;
const MiB = 1024 * 1024;
const policy: RetentionPolicy = { ...DEFAULT_POLICY, daily: 7, weekly: 4, monthly: 6, walDays: 10 };
const iso = (d: Date | undefined) => d?.toISOString();

describe('objectLockRetainUntil: each object locked until its planned GFS expiry', () => {
  // Wednesday 2026-02-11 02:00 UTC; its ISO week starts Monday 2026-02-09.
  const now = new Date('2026-02-11T02:00:05Z');

  it('daily backups: start of their UTC day + RETENTION_DAYS, manifest and objects alike', () => {
    for (const name of [
      'full-daily-20260211-020000.manifest.json',
      'full-daily-20260211-020000.app.dump.zst.enc',
      'full-daily-20260211-020000-2.globals.sql.zst',
    ]) {
      expect(iso(plannedExpiry(`main/full/daily/${name}`, policy, now)), name).toBe(
        '2026-02-18T00:00:00.000Z',
      );
    }
    expect(iso(plannedExpiry('main/base/daily/base-daily-20260211-020000.base.tar', policy, now))).toBe(
      '2026-02-18T00:00:00.000Z',
    );
  });

  it('weekly backups: start of their ISO week + RETENTION_WEEKS weeks (later than the daily hold)', () => {
    expect(
      iso(plannedExpiry('main/full/weekly/full-weekly-20260211-030000.manifest.json', policy, now)),
    ).toBe('2026-03-09T00:00:00.000Z');
    // A Sunday belongs to the week that started six days before.
    expect(iso(plannedExpiry('main/base/weekly/base-weekly-20260215-033000.base.tar', policy, now))).toBe(
      '2026-03-09T00:00:00.000Z',
    );
  });

  it('monthly backups: start of their UTC month + RETENTION_MONTHS months', () => {
    expect(iso(plannedExpiry('main/full/monthly/full-monthly-20260201-040000.app.dump', policy, now))).toBe(
      '2026-08-01T00:00:00.000Z',
    );
    // With a long daily hold, the daily hold wins.
    expect(
      iso(
        plannedExpiry(
          'main/full/monthly/full-monthly-20260201-040000.app.dump',
          { ...policy, daily: 400 },
          now,
        ),
      ),
    ).toBe('2027-03-08T00:00:00.000Z');
  });

  it('WAL: the write time + RETENTION_WAL_DAYS (the PITR window), history and backup labels too', () => {
    for (const key of [
      'main/wal/00000001/0000000100000000/000000010000000000000003.zst.enc',
      'main/wal/00000002/0000000200000000/00000002.history',
      'main/wal/00000001/0000000100000000/000000010000000000000003.00000028.backup.zst',
    ]) {
      expect(iso(plannedExpiry(key, policy, now)), key).toBe('2026-02-21T02:00:05.000Z');
    }
  });

  it('no per-object date for what retention does not expire by date (the bucket default applies)', () => {
    for (const key of [
      'main/full/manual/full-manual-20260211-020000.manifest.json',
      'main/config/config-20260211-010000.tar.zst',
      'main/indexes/indexes-20260211-013000.sql',
      'main/reports/2026-02-11.json',
      'main/drills/x.json',
      'main/wal/archive.json',
      'main/keys.json',
      'main/full/daily/full-daily-20260211-020000.claim-9c3c716532fee3f0',
      'main/.pgvault-probe-abc',
    ]) {
      expect(plannedExpiry(key, policy, now), key).toBeUndefined();
      expect(objectLockRetainUntil(key, policy, now, 7), key).toBeUndefined();
    }
  });

  it('never less than the floor (the bucket default retention) from the write', () => {
    const key = 'main/full/daily/full-daily-20260211-020000.manifest.json';
    expect(iso(objectLockRetainUntil(key, policy, now, 3))).toBe('2026-02-18T00:00:00.000Z');
    expect(iso(objectLockRetainUntil(key, policy, now, 30))).toBe('2026-03-13T02:00:05.000Z');
    // A key whose id does not parse falls back to the write time.
    expect(iso(objectLockRetainUntil('main/full/daily/odd-name.dump', policy, now, 0))).toBe(
      '2026-02-18T00:00:00.000Z',
    );
  });
});

describe('S3_OBJECT_LOCK_* settings', () => {
  const s3 = { CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'vault', LOCAL_COPY: 'false' };

  it('are off by default and need a mode for gfs', () => {
    expect(parseConfig(s3).cloud.objectLock).toBeUndefined();
    expect(parseConfig({ ...s3, S3_OBJECT_LOCK_MODE: 'compliance' }).cloud.objectLock).toEqual({
      mode: 'COMPLIANCE',
      minDays: 0,
    });
    expect(
      parseConfig({ ...s3, S3_OBJECT_LOCK_MODE: 'GOVERNANCE', S3_OBJECT_LOCK_MIN_DAYS: '7' }).cloud
        .objectLock,
    ).toEqual({ mode: 'GOVERNANCE', minDays: 7 });
    expect(
      parseConfig({ ...s3, S3_OBJECT_LOCK_MODE: 'compliance', S3_OBJECT_LOCK_RETAIN: 'bucket' }).cloud
        .objectLock,
    ).toBeUndefined();
  });

  it('refuse bad values in one line naming the setting', () => {
    expect(() => parseConfig({ ...s3, S3_OBJECT_LOCK_MODE: 'legal-hold' })).toThrow(
      'S3_OBJECT_LOCK_MODE=legal-hold is not allowed; use one of off, governance, compliance',
    );
    expect(() => parseConfig({ ...s3, S3_OBJECT_LOCK_RETAIN: 'gfs' })).toThrow(
      'S3_OBJECT_LOCK_RETAIN=gfs needs S3_OBJECT_LOCK_MODE (governance or compliance)',
    );
    expect(() =>
      parseConfig({ ...s3, S3_OBJECT_LOCK_MODE: 'compliance', S3_OBJECT_LOCK_MIN_DAYS: '-1' }),
    ).toThrow('S3_OBJECT_LOCK_MIN_DAYS=-1 is not allowed');
  });
});

describe('OBJECT_LOCK_* settings: the provider-neutral names, S3_OBJECT_LOCK_* their aliases', () => {
  const azure = { CLOUD_PROVIDER: 'azure', CLOUD_BUCKET: 'vault', AZURE_STORAGE_ACCOUNT: 'account' };

  it('read for every provider; either name works, and the same value under both is fine', () => {
    expect(
      parseConfig({ ...azure, OBJECT_LOCK_MODE: 'compliance', OBJECT_LOCK_MIN_DAYS: '3' }).cloud.objectLock,
    ).toEqual({ mode: 'COMPLIANCE', minDays: 3 });
    expect(
      parseConfig({ ...azure, S3_OBJECT_LOCK_MODE: 'governance', OBJECT_LOCK_MIN_DAYS: '2' }).cloud
        .objectLock,
    ).toEqual({ mode: 'GOVERNANCE', minDays: 2 });
    expect(
      parseConfig({ ...azure, OBJECT_LOCK_MODE: 'compliance', S3_OBJECT_LOCK_MODE: 'COMPLIANCE' }).cloud
        .objectLock,
    ).toEqual({ mode: 'COMPLIANCE', minDays: 0 });
    expect(
      parseConfig({ ...azure, OBJECT_LOCK_MODE: 'compliance', OBJECT_LOCK_RETAIN: 'bucket' }).cloud
        .objectLock,
    ).toBeUndefined();
  });

  it('refuse the two names set to different values, and name the key that was set', () => {
    expect(() =>
      parseConfig({ ...azure, OBJECT_LOCK_MODE: 'compliance', S3_OBJECT_LOCK_MODE: 'governance' }),
    ).toThrow(
      'OBJECT_LOCK_MODE=compliance and S3_OBJECT_LOCK_MODE=governance disagree; S3_OBJECT_LOCK_MODE is the older name of OBJECT_LOCK_MODE: keep one',
    );
    expect(() => parseConfig({ ...azure, OBJECT_LOCK_MODE: 'worm' })).toThrow(
      'OBJECT_LOCK_MODE=worm is not allowed; use one of off, governance, compliance',
    );
    expect(() => parseConfig({ ...azure, OBJECT_LOCK_RETAIN: 'gfs' })).toThrow(
      'OBJECT_LOCK_RETAIN=gfs needs OBJECT_LOCK_MODE (governance or compliance)',
    );
  });
});

/**
 * s3rver ignores Object Lock, so what is checked is what a real S3 would be told: the headers of each
 * PutObject and CreateMultipartUpload, as seen by a proxy in front of s3rver.
 */
describe('the S3 target sends each object its lock (headers seen in front of s3rver)', () => {
  let server: S3TestServer;
  let proxy: FaultProxy;
  beforeAll(async () => {
    server = await startS3Server();
    proxy = await startFaultProxy(server.endpoint);
  });
  afterAll(async () => {
    await proxy?.stop();
    await server?.stop();
  });

  const targetFor = (extra: Record<string, string>) =>
    createTargets(
      parseConfig({
        CLOUD_PROVIDER: 's3',
        CLOUD_BUCKET: server.bucket,
        CLOUD_PREFIX: 'locked',
        S3_ENDPOINT: proxy.endpoint,
        AWS_ACCESS_KEY_ID: server.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: server.credentials.secretAccessKey,
        AWS_REGION: server.region,
        LOCAL_COPY: 'false',
        RETENTION_DAYS: '7',
        RETENTION_WEEKS: '4',
        RETENTION_MONTHS: '6',
        RETENTION_WAL_DAYS: '10',
        ...extra,
      }),
    )[0] as S3Target;
  /** The lock headers of the request that created `key` (PutObject, or CreateMultipartUpload). */
  const lockOf = (key: string) => {
    const creates = proxy.requests.filter(
      (r) =>
        r.key === `locked/${key}` &&
        ((r.method === 'PUT' && !/partNumber=|tagging/.test(r.query)) ||
          (r.method === 'POST' && /(^|&)uploads(=|&|$)/.test(r.query))),
    );
    expect(creates, key).toHaveLength(1);
    const h = creates[0]!.headers;
    return { mode: h['x-amz-object-lock-mode'], until: h['x-amz-object-lock-retain-until-date'] };
  };
  const at = (s: string | string[] | undefined) => new Date(String(s)).toISOString();

  it('daily, weekly and monthly backups, WAL: mode and retain-until by kind; put and putBytes, multipart too', async () => {
    const target = targetFor({ S3_OBJECT_LOCK_MODE: 'compliance', S3_OBJECT_LOCK_MIN_DAYS: '1' });
    const started = new Date();
    const day = Date.UTC(started.getUTCFullYear(), started.getUTCMonth(), started.getUTCDate());
    const stamp = formatStamp(started);
    const daily = `main/full/daily/full-daily-${stamp}`;
    const monthly = `main/full/monthly/full-monthly-${stamp}`;
    const weekly = `main/base/weekly/base-weekly-${stamp}`;
    const wal = 'main/wal/00000001/0000000100000000/000000010000000000000007.zst';
    await target.putBytes(`${daily}.manifest.json`, '{}');
    await target.put(`${daily}.app.dump`, Readable.from([Buffer.alloc(1024)]));
    // 9 MiB with 8 MiB parts: a multipart upload, whose lock goes on CreateMultipartUpload.
    await target.put(`${monthly}.app.dump`, Readable.from([Buffer.alloc(9 * MiB)]), { sizeHint: 9 * MiB });
    await target.put(`${weekly}.base.tar`, Readable.from([Buffer.alloc(10)]));
    await target.put(wal, Readable.from([Buffer.alloc(10)]), { ifAbsent: true });
    await target.putBytes('main/full/manual/full-manual-x.manifest.json', '{}');
    const finished = new Date();

    const dailyUntil = new Date(day + 7 * DAY).toISOString();
    expect(lockOf(`${daily}.manifest.json`).mode).toBe('COMPLIANCE');
    expect(at(lockOf(`${daily}.manifest.json`).until)).toBe(dailyUntil);
    expect(at(lockOf(`${daily}.app.dump`).until)).toBe(dailyUntil);
    const monthlyLock = lockOf(`${monthly}.app.dump`);
    expect(proxy.requests.some((r) => r.key === `locked/${monthly}.app.dump` && r.method === 'POST')).toBe(
      true,
    );
    expect(monthlyLock.mode).toBe('COMPLIANCE');
    expect(at(monthlyLock.until)).toBe(
      new Date(Date.UTC(started.getUTCFullYear(), started.getUTCMonth() + 6, 1)).toISOString(),
    );
    const weekday = new Date(day).getUTCDay() || 7;
    expect(at(lockOf(`${weekly}.base.tar`).until)).toBe(
      new Date(day - (weekday - 1) * DAY + 28 * DAY).toISOString(),
    );
    const walUntil = new Date(String(lockOf(wal).until)).getTime();
    // Sent with whole seconds.
    expect(walUntil).toBeGreaterThanOrEqual(Math.floor(started.getTime() / 1000) * 1000 + 10 * DAY);
    expect(walUntil).toBeLessThanOrEqual(finished.getTime() + 10 * DAY);
    expect(lockOf('main/full/manual/full-manual-x.manifest.json')).toEqual({
      mode: undefined,
      until: undefined,
    });
  });

  it('governance mode; no lock header at all without the setting', async () => {
    const stamp = formatStamp(new Date());
    await targetFor({ S3_OBJECT_LOCK_MODE: 'governance' }).putBytes(
      `gov/full/daily/full-daily-${stamp}.manifest.json`,
      '{}',
    );
    expect(lockOf(`gov/full/daily/full-daily-${stamp}.manifest.json`).mode).toBe('GOVERNANCE');
    await targetFor({}).putBytes(`off/full/daily/full-daily-${stamp}.manifest.json`, '{}');
    expect(lockOf(`off/full/daily/full-daily-${stamp}.manifest.json`)).toEqual({
      mode: undefined,
      until: undefined,
    });
  });
});
