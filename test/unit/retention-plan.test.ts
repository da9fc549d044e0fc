import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type BackupType, backupFolder, backupId, type Schedule } from '../../core/catalog/naming';
import { inventory, type ManifestCopy } from '../../core/retention/inventory';
import {
  backupDeletionOrder,
  DEFAULT_POLICY,
  isoWeekKey,
  planRetention,
  type RetentionPlan,
  type RetentionPolicy,
  walSegmentDeletable,
} from '../../core/retention/plan';
import type { ObjectInfo } from '../../core/storage/target';
import type { WalArchiveState } from '../../core/wal/archive';
import { segmentName, segmentNumber, segmentsPerLog } from '../../core/wal/naming';

/**
 * Retention invariants as properties over generated catalogs and clocks. A catalog is a model of
 * what the targets hold: objects and manifests by key, with their write times, and a WAL archive of
 * one timeline where segment n was archived at walStart + n × STEP. The plan is applied to the
 * model the way apply.ts applies it (manifest first, then objects), including runs stopped halfway.
 */

const CLUSTER = 'main';
const STEP_MS = 30 * 60_000; // one WAL segment archived every 30 minutes
const DAY = 24 * 3600_000;
const SEG_BYTES = 16 * 1024 * 1024;
const PER_LOG = segmentsPerLog(SEG_BYTES);
const seg = (n: number) => segmentName(1, BigInt(n), SEG_BYTES);

interface ModelBackup {
  id: string;
  type: BackupType;
  schedule: Schedule;
  startedAt: Date;
  finishedAt: Date;
  lineage: 'a' | 'b';
  /** Data object keys (all written); `lost` ones are absent from the targets. */
  objectKeys: string[];
  lost: string[];
  startSeg?: number;
  stopSeg?: number;
}

interface Model {
  now: Date;
  walStart: Date;
  backups: ModelBackup[];
  /** key → modified, for every object present (manifests included). */
  objects: Map<string, Date>;
  manifests: Map<string, ModelBackup>;
  /** WAL segments present (numbers on timeline 1). */
  wal: Set<number>;
}

const backupArb = fc.record({
  type: fc.constantFrom<BackupType>('full', 'full', 'base', 'base', 'config', 'indexes'),
  schedule: fc.constantFrom<Schedule>('daily', 'daily', 'daily', 'weekly', 'monthly', 'manual'),
  ageMinutes: fc.integer({ min: 0, max: 400 * 24 * 60 }),
  durationSegments: fc.integer({ min: 0, max: 3 }),
  complete: fc.integer({ min: 0, max: 9 }).map((n) => n < 8),
  lineage: fc.constantFrom<'a' | 'b'>('a', 'a', 'a', 'b'),
  databases: fc.integer({ min: 1, max: 2 }),
});

const policyArb: fc.Arbitrary<RetentionPolicy> = fc.record({
  daily: fc.integer({ min: 0, max: 10 }),
  weekly: fc.integer({ min: 0, max: 6 }),
  monthly: fc.integer({ min: 0, max: 8 }),
  configCount: fc.integer({ min: 0, max: 4 }),
  indexesCount: fc.integer({ min: 0, max: 4 }),
  walDays: fc.integer({ min: 0, max: 40 }),
});

const modelArb = fc
  .record({
    now: fc.date({
      min: new Date('2026-01-01T00:00:00Z'),
      max: new Date('2027-12-31T00:00:00Z'),
      noInvalidDate: true,
    }),
    backups: fc.array(backupArb, { maxLength: 40 }),
    leftovers: fc.array(fc.record({ ageMinutes: fc.integer({ min: 0, max: 5 * 24 * 60 }) }), {
      maxLength: 3,
    }),
    gaps: fc.array(fc.integer({ min: 0, max: 200 * 48 }), { maxLength: 3 }),
    walDaysKept: fc.integer({ min: 1, max: 200 }),
  })
  .map(({ now, backups, leftovers, gaps, walDaysKept }) =>
    buildModel(now, backups, leftovers, gaps, walDaysKept),
  );

type BackupSpec = typeof backupArb extends fc.Arbitrary<infer T> ? T : never;

function buildModel(
  now: Date,
  specs: BackupSpec[],
  leftovers: Array<{ ageMinutes: number }>,
  gaps: number[],
  walDaysKept: number,
): Model {
  const walStart = new Date(now.getTime() - walDaysKept * DAY);
  const model: Model = {
    now,
    walStart,
    backups: [],
    objects: new Map(),
    manifests: new Map(),
    wal: new Set(),
  };
  const lastSeg = Math.floor((now.getTime() - walStart.getTime()) / STEP_MS);
  for (let n = 0; n <= lastSeg; n++) model.wal.add(n);
  for (const g of gaps) for (let n = g; n < g + 5; n++) model.wal.delete(n);
  const ids = new Set<string>();
  specs.forEach((s) => {
    const schedule = s.type === 'config' || s.type === 'indexes' ? 'daily' : s.schedule;
    const startedAt = new Date(Math.floor((now.getTime() - s.ageMinutes * 60_000) / 1000) * 1000);
    let id = backupId(s.type, schedule, startedAt);
    for (let k = 2; ids.has(id); k++) id = `${backupId(s.type, schedule, startedAt)}-${k}`;
    ids.add(id);
    const folder = backupFolder(CLUSTER, s.type, schedule);
    const objectKeys =
      s.type === 'full'
        ? Array.from({ length: s.databases }, (_, i) => `${folder}/${id}.db${i}.dump`)
        : [`${folder}/${id}.${s.type === 'base' ? 'tar' : 'sql'}`];
    const b: ModelBackup = {
      id,
      type: s.type,
      schedule,
      startedAt,
      finishedAt: new Date(startedAt.getTime() + s.durationSegments * STEP_MS),
      lineage: s.lineage,
      objectKeys,
      lost: s.complete ? [] : [objectKeys[0]!],
    };
    if (s.type === 'base') {
      if (startedAt < walStart) return; // a base backup older than the archive: not generated
      b.startSeg = Math.floor((startedAt.getTime() - walStart.getTime()) / STEP_MS);
      b.stopSeg = b.startSeg + s.durationSegments;
      b.lineage = 'a';
    }
    model.backups.push(b);
    for (const k of objectKeys) if (!b.lost.includes(k)) model.objects.set(k, startedAt);
    const mkey = `${folder}/${id}.manifest.json`;
    model.objects.set(mkey, b.finishedAt);
    model.manifests.set(mkey, b);
  });
  leftovers.forEach((l, i) => {
    const at = new Date(Math.floor((now.getTime() - l.ageMinutes * 60_000) / 1000) * 1000 - i * 1000);
    const id = backupId('full', 'daily', at);
    if (ids.has(id)) return;
    model.objects.set(`${CLUSTER}/full/daily/${id}.app.dump`, at);
  });
  return model;
}

function walState(model: Model): WalArchiveState {
  const sorted = [...model.wal].sort((a, b) => a - b);
  const runs: Array<{ first: string; last: string; lastModified: Date }> = [];
  let start: number | undefined;
  sorted.forEach((n, i) => {
    if (start === undefined) start = n;
    if (sorted[i + 1] !== n + 1) {
      runs.push({ first: seg(start), last: seg(n), lastModified: segTime(model, n) });
      start = undefined;
    }
  });
  if (runs.length === 0) return { timelines: [], segmentBytes: SEG_BYTES };
  return {
    segmentBytes: SEG_BYTES,
    timelines: [
      {
        timeline: 1,
        segments: sorted.length,
        first: runs[0]!.first,
        last: runs[runs.length - 1]!.last,
        gaps: [],
        runs,
        lastModified: runs[runs.length - 1]!.lastModified,
      },
    ],
  };
}

const segTime = (model: Model, n: number) => new Date(model.walStart.getTime() + n * STEP_MS);

function manifestCopies(model: Model): ManifestCopy[] {
  return [...model.manifests.entries()]
    .filter(([key]) => model.objects.has(key))
    .map(([manifestKey, b]) => ({
      manifestKey,
      manifest: {
        id: b.id,
        type: b.type,
        schedule: b.type === 'full' || b.type === 'base' ? b.schedule : undefined,
        startedAt: b.startedAt.toISOString(),
        finishedAt: b.finishedAt.toISOString(),
        server: { version: '15', versionNum: b.lineage === 'a' ? 150004 : 160001, systemIdentifier: '7345' },
        objects: b.objectKeys.map((key) => ({
          key,
          kind: 'database' as const,
          format: 'dump' as const,
          rawSize: 10,
          storedSize: 10,
          sha256: '0'.repeat(64),
        })),
        storedSize: 10 * b.objectKeys.length,
        physical:
          b.startSeg !== undefined
            ? {
                timeline: 1,
                startLsn: '0/0',
                stopLsn: '0/0',
                startWal: seg(b.startSeg),
                stopWal: seg(b.stopSeg!),
                walIncluded: true,
                segmentBytes: SEG_BYTES,
              }
            : undefined,
      },
    }));
}

function plan(model: Model, policy: RetentionPolicy, now = model.now): RetentionPlan {
  const listing: ObjectInfo[] = [...model.objects.entries()].map(([key, modified]) => ({
    key,
    size: 10,
    modified,
  }));
  const { backups, leftovers } = inventory(
    [{ location: 'file:///t', objects: listing }],
    manifestCopies(model),
  );
  return planRetention({ backups, leftovers, wal: walState(model), policy, now });
}

/** The deletions apply.ts makes, in its order: each backup's manifest then objects, leftovers, WAL. */
function steps(model: Model, p: RetentionPlan): Array<() => void> {
  const out: Array<() => void> = [];
  for (const b of p.backups.filter((d) => d.action === 'delete')) {
    for (const k of backupDeletionOrder(b)) out.push(() => model.objects.delete(k));
  }
  for (const l of p.leftovers.filter((d) => d.action === 'delete'))
    for (const k of l.keys) out.push(() => model.objects.delete(k));
  // WAL, as the executor does it: only folders the plan names are listed.
  const folders = new Set(p.wal.folders.map((f) => f.folder));
  for (const n of [...model.wal]) {
    const name = seg(n);
    if (folders.has(name.slice(0, 16)) && walSegmentDeletable(p.wal, name))
      out.push(() => model.wal.delete(n));
  }
  return out;
}

function apply(model: Model, p: RetentionPlan, stopAfter = Number.POSITIVE_INFINITY): void {
  steps(model, p)
    .slice(0, stopAfter)
    .forEach((s) => {
      s();
    });
}

function clone(model: Model): Model {
  return {
    ...model,
    objects: new Map(model.objects),
    wal: new Set(model.wal),
    manifests: new Map(model.manifests),
  };
}

const isComplete = (model: Model, b: ModelBackup) => b.objectKeys.every((k) => model.objects.has(k));
const kept = (p: RetentionPlan) => new Set(p.backups.filter((b) => b.action === 'keep').map((b) => b.id));

/** For each segment number, the first missing one at or after it (WAL continuity in O(1)). */
function nextMissing(model: Model): Int32Array {
  const last = Math.floor((model.now.getTime() - model.walStart.getTime()) / STEP_MS) + 1;
  const out = new Int32Array(last + 2);
  out[last + 1] = last + 1;
  for (let n = last; n >= 0; n--) out[n] = model.wal.has(n) ? out[n + 1]! : n;
  return out;
}

/** Whether some kept, complete, listed base backup reaches the segment of time t with the WAL present. */
function reachable(model: Model, missing: Int32Array, keptIds: Set<string>, t: Date): boolean {
  const target = Math.floor((t.getTime() - model.walStart.getTime()) / STEP_MS);
  return model.backups.some((b) => {
    if (b.type !== 'base' || !keptIds.has(b.id) || b.finishedAt > t || !isComplete(model, b)) return false;
    if (!model.objects.has(`${backupFolder(CLUSTER, 'base', b.schedule)}/${b.id}.manifest.json`))
      return false;
    return missing[b.startSeg!]! > Math.max(target, b.stopSeg!);
  });
}

const RUNS = { numRuns: 150 };

describe('retention planner properties', () => {
  it('never deletes the newest complete backup of a type (per lineage), nor a complete manual one', () => {
    fc.assert(
      fc.property(modelArb, policyArb, (model, policy) => {
        const p = plan(model, policy);
        const keptIds = kept(p);
        for (const type of ['full', 'base', 'config', 'indexes'] as const) {
          for (const lineage of ['a', 'b'] as const) {
            const newest = model.backups
              .filter((b) => b.type === type && b.lineage === lineage && isComplete(model, b))
              .sort((x, y) => y.startedAt.getTime() - x.startedAt.getTime() || (x.id < y.id ? 1 : -1))[0];
            if (newest) expect(keptIds.has(newest.id), `${newest.id} is the newest ${type}`).toBe(true);
          }
        }
        for (const b of model.backups)
          if (b.schedule === 'manual' && isComplete(model, b) && b.type !== 'config' && b.type !== 'indexes')
            expect(keptIds.has(b.id)).toBe(true);
      }),
      RUNS,
    );
  });

  it('never counts an incomplete backup as kept: adding broken ones changes no decision about the others', () => {
    fc.assert(
      fc.property(modelArb, policyArb, (model, policy) => {
        const p = plan(model, policy);
        for (const d of p.backups) if (!d.complete) expect(d.action).toBe('delete');
        const withoutBroken = clone(model);
        for (const [key, b] of model.manifests) if (!isComplete(model, b)) withoutBroken.objects.delete(key);
        const q = plan(withoutBroken, policy);
        const actions = (r: RetentionPlan) =>
          Object.fromEntries(r.backups.filter((d) => d.complete).map((d) => [d.id, d.action]));
        expect(actions(p)).toEqual(actions(q));
        expect(p.wal.keepFromNumber).toEqual(q.wal.keepFromNumber);
      }),
      RUNS,
    );
  });

  it('keeps one backup for each of the N most recent days, weeks and months that have one', () => {
    fc.assert(
      fc.property(modelArb, policyArb, (model, policy) => {
        const p = plan(model, policy);
        const keptIds = kept(p);
        for (const type of ['full', 'base'] as const) {
          const scheduled = model.backups.filter(
            (b) => b.type === type && b.schedule !== 'manual' && isComplete(model, b),
          );
          for (const [count, period] of [
            [policy.daily, (d: Date) => d.toISOString().slice(0, 10)],
            [policy.weekly, isoWeekKey],
            [policy.monthly, (d: Date) => d.toISOString().slice(0, 7)],
          ] as const) {
            const periods = [...new Set(scheduled.map((b) => period(b.startedAt)))]
              .sort()
              .reverse()
              .slice(0, count);
            for (const per of periods)
              expect(scheduled.some((b) => period(b.startedAt) === per && keptIds.has(b.id))).toBe(true);
          }
          // And no more than the slots allow: each slot, the newest, and the PITR window's start.
          const keptScheduled = scheduled.filter((b) => keptIds.has(b.id)).length;
          expect(keptScheduled).toBeLessThanOrEqual(policy.daily + policy.weekly + policy.monthly + 2 + 1);
        }
        for (const d of p.backups) expect(d.rules.length).toBeGreaterThan(0);
      }),
      RUNS,
    );
  });

  it('never deletes WAL a kept base backup needs for consistency or for any point of the PITR window', () => {
    fc.assert(
      fc.property(modelArb, policyArb, (model, policy) => {
        const p = plan(model, policy);
        const keptIds = kept(p);
        const before = clone(model);
        const after = clone(model);
        apply(after, p);
        for (const b of model.backups) {
          if (b.type !== 'base' || !keptIds.has(b.id)) continue;
          for (let n = b.startSeg!; n <= b.stopSeg!; n++)
            if (before.wal.has(n)) expect(after.wal.has(n), `${seg(n)} needed by ${b.id}`).toBe(true);
        }
        const windowStart = model.now.getTime() - policy.walDays * DAY;
        const missingBefore = nextMissing(before);
        const missingAfter = nextMissing(after);
        for (let n = 0; segTime(model, n) <= model.now; n++) {
          const t = segTime(model, n);
          if (t.getTime() < windowStart) continue;
          if (reachable(before, missingBefore, keptIds, t))
            expect(reachable(after, missingAfter, keptIds, t), `point ${t.toISOString()}`).toBe(true);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('names WAL folders so that listing only them finds every deletable segment; whole folders hold nothing to keep', () => {
    fc.assert(
      fc.property(modelArb, policyArb, (model, policy) => {
        const p = plan(model, policy);
        const folders = new Map(p.wal.folders.map((f) => [f.folder, f]));
        let deletable = 0;
        for (const n of model.wal) {
          const name = seg(n);
          if (walSegmentDeletable(p.wal, name)) {
            deletable++;
            expect(folders.has(name.slice(0, 16)), `${name}'s folder is in the plan`).toBe(true);
          }
        }
        expect(p.summary.walSegmentsToDelete).toBe(deletable);
        for (const f of p.wal.folders.filter((x) => x.whole)) {
          const first = Number(segmentNumber(`${f.folder}00000000`, SEG_BYTES));
          for (let n = first; n < first + PER_LOG; n++) expect(walSegmentDeletable(p.wal, seg(n))).toBe(true);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('is idempotent: planning again after applying the plan deletes nothing more', () => {
    fc.assert(
      fc.property(modelArb, policyArb, (model, policy) => {
        const first = plan(model, policy);
        apply(model, first);
        const second = plan(model, policy);
        expect(second.backups.filter((b) => b.action === 'delete').map((b) => b.id)).toEqual([]);
        expect(second.summary.walSegmentsToDelete).toBe(0);
        expect(second.summary.leftoversToDelete).toBe(0);
        expect([...kept(second)].sort()).toEqual([...kept(first)].sort());
      }),
      RUNS,
    );
  });

  it('a run stopped at any step leaves nothing that looks complete and is not, and the next run finishes the job', () => {
    fc.assert(
      fc.property(
        modelArb,
        policyArb,
        fc.nat(),
        fc.integer({ min: 0, max: 3 * 24 * 60 }),
        (model, policy, stopAt, laterMinutes) => {
          const first = plan(model, policy);
          const keptIds = kept(first);
          const total = steps(clone(model), first).length;
          apply(model, first, total === 0 ? 0 : stopAt % total);
          // Halfway: every manifest left either describes all its objects or was broken before the run.
          for (const [key, b] of model.manifests)
            if (model.objects.has(key) && !isComplete(model, b))
              expect(first.backups.find((d) => d.id === b.id)?.complete).toBe(false);
          // The next run (maybe later): kept backups stay whole; a deleted backup's objects go.
          const later = new Date(model.now.getTime() + laterMinutes * 60_000);
          const second = plan(model, policy, later);
          apply(model, second);
          for (const b of model.backups) {
            const again = second.backups.find((d) => d.id === b.id);
            if (keptIds.has(b.id) && (b.schedule === 'manual' || again?.action === 'keep'))
              expect(isComplete(model, b), `${b.id} kept`).toBe(true);
            const mkey = `${backupFolder(CLUSTER, b.type, b.schedule)}/${b.id}.manifest.json`;
            if (model.objects.has(mkey) && !isComplete(model, b))
              throw new Error(`${b.id} is broken but listed`);
          }
          for (const [key, modified] of model.objects) {
            if (key.endsWith('.manifest.json')) continue;
            const id = key.split('/').pop()!.split('.')[0]!;
            const owner = [...model.manifests.values()].find((b) => b.id === id);
            const listed =
              owner &&
              model.objects.has(`${backupFolder(CLUSTER, owner.type, owner.schedule)}/${id}.manifest.json`);
            if (!listed) expect(later.getTime() - modified.getTime()).toBeLessThanOrEqual(DAY);
          }
        },
      ),
      RUNS,
    );
  });
});

describe('retention planner examples', () => {
  const day = (iso: string) => new Date(`${iso}T02:00:00Z`);
  function catalog(entries: Array<[BackupType, Schedule, string]>, walDays = 7): Model {
    const now = new Date('2026-11-24T12:00:00Z');
    const model: Model = {
      now,
      walStart: new Date(now.getTime() - 400 * DAY),
      backups: [],
      objects: new Map(),
      manifests: new Map(),
      wal: new Set(),
    };
    for (const [type, schedule, date] of entries) {
      const startedAt = day(date);
      const id = backupId(type, schedule, startedAt);
      const folder = backupFolder(CLUSTER, type, schedule);
      const b: ModelBackup = {
        id,
        type,
        schedule,
        startedAt,
        finishedAt: new Date(startedAt.getTime() + 60_000),
        lineage: 'a',
        objectKeys: [`${folder}/${id}.x.dump`],
        lost: [],
      };
      model.backups.push(b);
      model.objects.set(b.objectKeys[0]!, startedAt);
      model.objects.set(`${folder}/${id}.manifest.json`, startedAt);
      model.manifests.set(`${folder}/${id}.manifest.json`, b);
    }
    void walDays;
    return model;
  }

  it('states the rule for every backup', () => {
    const dailies = Array.from({ length: 40 }, (_, i) => {
      const d = new Date(Date.UTC(2026, 10, 24 - i));
      return ['full', 'daily', d.toISOString().slice(0, 10)] as [BackupType, Schedule, string];
    });
    const model = catalog([...dailies, ['full', 'manual', '2025-01-05'], ['full', 'weekly', '2026-11-16']]);
    const p = plan(model, DEFAULT_POLICY);
    const rule = (date: string, schedule = 'daily') =>
      p.backups.find((b) => b.id === backupId('full', schedule as Schedule, day(date)))!.rules.join('; ');
    expect(rule('2026-11-24')).toBe(
      'newest full; daily 2026-11-24 (#1 of 7); weekly 2026-W48 (#1 of 4); monthly 2026-11 (#1 of 6)',
    );
    expect(rule('2026-11-20')).toBe('daily 2026-11-20 (#5 of 7)');
    expect(rule('2026-11-16', 'weekly')).toBe('weekly 2026-W47 (#2 of 4)');
    expect(rule('2026-11-16')).toMatch(/^superseded by full-weekly-20261116-020000/);
    expect(rule('2026-11-15')).toBe('weekly 2026-W46 (#3 of 4)');
    expect(rule('2026-10-31')).toBe('monthly 2026-10 (#2 of 6)');
    expect(rule('2026-10-30')).toBe('outside the GFS slots (daily 7, weekly 4, monthly 6)');
    expect(rule('2025-01-05', 'manual')).toBe('manual: kept until deleted by hand (backup delete)');
    // 7 days + weeks W46 and W45 (W48 is today's, W47 the weekly backup) + month 2026-10 (11 is today's).
    const keptDaily = p.backups.filter((b) => b.action === 'keep' && b.schedule === 'daily');
    expect(keptDaily.length).toBe(7 + 2 + 1);
  });

  it('keeps the newest backup of each type even when every count is zero', () => {
    const model = catalog([
      ['full', 'daily', '2026-11-01'],
      ['full', 'daily', '2026-11-02'],
      ['config', 'daily', '2026-11-02'],
    ]);
    const p = plan(model, { ...DEFAULT_POLICY, daily: 0, weekly: 0, monthly: 0, configCount: 0 });
    expect(p.backups.map((b) => [b.id, b.action])).toEqual([
      ['full-daily-20261102-020000', 'keep'],
      ['config-20261102-020000', 'keep'],
      ['full-daily-20261101-020000', 'delete'],
    ]);
  });

  it('ISO weeks', () => {
    expect(isoWeekKey(new Date('2026-01-01T00:00:00Z'))).toBe('2026-W01');
    expect(isoWeekKey(new Date('2027-01-01T00:00:00Z'))).toBe('2026-W53');
    expect(isoWeekKey(new Date('2026-11-24T00:00:00Z'))).toBe('2026-W48');
    expect(isoWeekKey(new Date('2024-12-30T00:00:00Z'))).toBe('2025-W01');
  });
});
