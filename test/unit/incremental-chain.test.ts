import { describe, expect, it } from 'vitest';
import { chooseIncrementalParent } from '../../core/backup/base';
import { chainClosure, chainOf, chainProblems, describeChain } from '../../core/catalog/chain';
import { IntegrityError } from '../../core/errors';
import { DEFAULT_POLICY, planRetention, type RetentionBackup } from '../../core/retention/plan';

/**
 * Chains of incremental base backups (issue 15): how one is found from the manifests' incrementalOf,
 * when the next base backup starts a new one (INCREMENTAL_CHAIN_MAX, the server's major,
 * summarize_wal), and that retention never deletes a member a kept incremental needs.
 */

const m = (id: string, incrementalOf?: string) => ({ manifest: { id, incrementalOf, type: 'base' } });

describe('chainOf', () => {
  const backups = [m('full-a'), m('incr-1', 'full-a'), m('incr-2', 'incr-1'), m('full-b')];

  it('leads from an incremental back to its full, full first', () => {
    expect(chainOf('incr-2', backups).map((b) => b.manifest.id)).toEqual(['full-a', 'incr-1', 'incr-2']);
    expect(describeChain(chainOf('incr-2', backups))).toBe('full full-a + incr incr-1 + incr incr-2');
    expect(chainOf('full-b', backups)).toHaveLength(1);
  });

  it('refuses a chain with a missing middle member, naming it', () => {
    const broken = backups.filter((b) => b.manifest.id !== 'incr-1');
    expect(() => chainOf('incr-2', broken)).toThrow(IntegrityError);
    expect(() => chainOf('incr-2', broken)).toThrow(/incr-1, the parent of incr-2, is missing/);
  });

  it('refuses links that loop', () => {
    expect(() => chainOf('x', [m('x', 'y'), m('y', 'x')])).toThrow(/loops/);
  });

  it('chainProblems names each incremental whose parent is gone or is not a base backup', () => {
    const problems = chainProblems([
      m('incr-2', 'incr-1'),
      m('full-a'),
      { manifest: { id: 'incr-9', incrementalOf: 'dump', type: 'base' } },
      { manifest: { id: 'dump', type: 'full' } },
    ]);
    expect(problems).toEqual([
      { id: 'incr-2', problem: 'its parent incr-1 is missing (no manifest)' },
      { id: 'incr-9', problem: 'its parent dump is a full backup, not a base backup' },
    ]);
  });

  it('chainClosure holds every member kept backups need', () => {
    expect([...chainClosure(['incr-2'], backups)].sort()).toEqual(['full-a', 'incr-1', 'incr-2']);
    expect([...chainClosure(['full-b'], backups)]).toEqual(['full-b']);
  });
});

describe('chooseIncrementalParent', () => {
  const server = { major: 17, version: '17.6', systemIdentifier: '42' };
  const base = (id: string, incrementalOf?: string, systemIdentifier = '42') => ({
    id,
    incrementalOf,
    server: { systemIdentifier },
    physical: {},
  });
  // Newest first, as the catalog lists them.
  const bases = [base('incr-2', 'incr-1'), base('incr-1', 'full-a'), base('full-a')];

  it('an incremental of the newest base backup while the chain is shorter than INCREMENTAL_CHAIN_MAX', () => {
    expect(
      chooseIncrementalParent({ wanted: 'setting', chainMax: 6, server, summarizeWal: 'on', bases }),
    ).toEqual({ parentId: 'incr-2' });
    expect(
      chooseIncrementalParent({ wanted: 'explicit', chainMax: 3, server, summarizeWal: 'on', bases }),
    ).toEqual({ parentId: 'incr-2' });
  });

  it('a full once the chain holds INCREMENTAL_CHAIN_MAX incrementals, saying so', () => {
    const choice = chooseIncrementalParent({
      wanted: 'setting',
      chainMax: 2,
      server,
      summarizeWal: 'on',
      bases,
    });
    expect(choice.parentId).toBeUndefined();
    expect(choice.note).toMatch(/already holds 2 incremental\(s\) \(INCREMENTAL_CHAIN_MAX=2\)/);
  });

  it('never incremental to a backup of another system (a re-initialised server)', () => {
    const choice = chooseIncrementalParent({
      wanted: 'setting',
      chainMax: 6,
      server,
      summarizeWal: 'on',
      bases: [base('other-full', undefined, '7')],
    });
    expect(choice.parentId).toBeUndefined();
    expect(() =>
      chooseIncrementalParent({
        wanted: 'explicit',
        chainMax: 6,
        server,
        summarizeWal: 'on',
        bases: [base('other-full', undefined, '7')],
      }),
    ).toThrow(/needs an earlier base backup of this server/);
  });

  it('before PostgreSQL 17: --incremental refused (exit 2), the setting takes a full and says so', () => {
    const old = { major: 15, version: '15.14', systemIdentifier: '42' };
    let err: unknown;
    try {
      chooseIncrementalParent({
        wanted: 'explicit',
        chainMax: 6,
        server: old,
        summarizeWal: undefined,
        bases,
      });
    } catch (e) {
      err = e;
    }
    expect((err as { exitCode: number }).exitCode).toBe(2);
    expect(String(err)).toContain('--incremental needs PostgreSQL 17 or newer (the server is 15.14)');
    const choice = chooseIncrementalParent({
      wanted: 'setting',
      chainMax: 6,
      server: old,
      summarizeWal: undefined,
      bases,
    });
    expect(choice).toEqual({
      note: 'full base backup: BASE_INCREMENTAL is set, but incremental base backups need PostgreSQL 17 or newer (the server is 15.14)',
    });
  });

  it('summarize_wal off: refused in one line naming the setting', () => {
    expect(() =>
      chooseIncrementalParent({ wanted: 'setting', chainMax: 6, server, summarizeWal: 'off', bases }),
    ).toThrow(/need summarize_wal = on \(the server has off\)/);
  });

  it('nothing asked: a full, no note', () => {
    expect(
      chooseIncrementalParent({ wanted: 'no', chainMax: 6, server, summarizeWal: 'off', bases }),
    ).toEqual({});
  });
});

describe('retention and chains', () => {
  const DAY = 24 * 3600_000;
  const now = new Date('2026-03-20T12:00:00Z');
  const backup = (id: string, daysAgo: number, incrementalOf?: string): RetentionBackup => {
    const at = new Date(now.getTime() - daysAgo * DAY).toISOString();
    return {
      id,
      type: 'base',
      schedule: 'daily',
      startedAt: at,
      finishedAt: at,
      complete: true,
      lineage: '42/17',
      storedSize: 100,
      manifestKey: `${id}.manifest.json`,
      objectKeys: [`${id}.tar`],
      physical: {
        timeline: 1,
        startWal: '000000010000000000000001',
        stopWal: '000000010000000000000001',
        stopLsn: '0/1000000',
      },
      ...(incrementalOf ? { incrementalOf } : {}),
    };
  };

  it('keeps the full and every incremental between while a later incremental of its chain is kept', () => {
    // One daily kept: on its own only the newest (incr-3) would stay.
    const backups = [
      backup('full-a', 4),
      backup('incr-1', 3, 'full-a'),
      backup('incr-2', 2, 'incr-1'),
      backup('incr-3', 1, 'incr-2'),
    ];
    const plan = planRetention({
      backups,
      leftovers: [],
      policy: { ...DEFAULT_POLICY, daily: 1, weekly: 0, monthly: 0, walDays: 0 },
      now,
    });
    const action = Object.fromEntries(plan.backups.map((b) => [b.id, b.action]));
    expect(action).toEqual({ 'incr-3': 'keep', 'incr-2': 'keep', 'incr-1': 'keep', 'full-a': 'keep' });
    expect(plan.backups.find((b) => b.id === 'full-a')!.rules).toContain(
      'in the chain of incremental incr-3 (parent of incr-1)',
    );
  });

  it('a chain no kept backup needs goes as a whole', () => {
    const backups = [
      backup('full-a', 10),
      backup('incr-1', 9, 'full-a'),
      backup('full-b', 1),
      backup('incr-b1', 0.5, 'full-b'),
    ];
    const plan = planRetention({
      backups,
      leftovers: [],
      policy: { ...DEFAULT_POLICY, daily: 1, weekly: 0, monthly: 0, walDays: 0 },
      now,
    });
    const action = Object.fromEntries(plan.backups.map((b) => [b.id, b.action]));
    expect(action).toEqual({ 'incr-b1': 'keep', 'full-b': 'keep', 'incr-1': 'delete', 'full-a': 'delete' });
  });
});
