import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { StorageError } from '../../core/errors';
import { ToolExitError } from '../../core/stream/process';
import {
  bestReplica,
  leader,
  nodeFailureReason,
  noReplicaReason,
  normalizeRole,
  replicaCandidates,
  type TopologyNode,
} from '../../core/topology';

function node(name: string, role: TopologyNode['role'], extra: Partial<TopologyNode> = {}): TopologyNode {
  return { name, role, state: 'running', host: `${name}.db`, port: 5432, timeline: 3, ...extra };
}

const MB = 1024 * 1024;

describe('leader()', () => {
  it('is the running leader; a stopped one is no leader; a standby cluster has its standby_leader', () => {
    expect(leader({ nodes: [node('a', 'replica'), node('b', 'leader')] })?.name).toBe('b');
    expect(
      leader({ nodes: [node('a', 'replica'), node('b', 'leader', { state: 'stopped' })] }),
    ).toBeUndefined();
    expect(leader({ nodes: [node('a', 'replica'), node('s', 'standby_leader')] })?.name).toBe('s');
  });

  it('reads the role words of every Patroni version', () => {
    expect(
      ['leader', 'master', 'primary', 'sync_standby', 'quorum_standby', 'replica', 'x'].map(normalizeRole),
    ).toEqual(['leader', 'leader', 'leader', 'sync_standby', 'sync_standby', 'replica', 'unknown']);
  });
});

describe('bestReplica()', () => {
  it('takes the sync standby first, then the least lag, then the name', () => {
    const nodes = [
      node('l', 'leader'),
      node('r2', 'replica', { lagBytes: 10 }),
      node('r1', 'replica', { lagBytes: 10 }),
      node('r0', 'replica', { lagBytes: 5 }),
      node('s', 'sync_standby', { lagBytes: 100 }),
    ];
    expect(replicaCandidates({ nodes }, { bytes: MB }).candidates.map((n) => n.name)).toEqual([
      's',
      'r0',
      'r1',
      'r2',
    ]);
    expect(bestReplica({ nodes }, { bytes: MB })?.name).toBe('s');
  });

  it('skips a replica that lags over the limit, is not running, or whose lag is unknown, and says why', () => {
    const nodes = [
      node('l', 'leader'),
      node('far', 'replica', { lagBytes: 20 * MB }),
      node('down', 'replica', { state: 'stopped', lagBytes: 0 }),
      node('blind', 'replica'),
      node('ok', 'replica', { lagBytes: 16 * MB, state: 'streaming' }),
    ];
    const choice = replicaCandidates({ nodes }, { bytes: 16 * MB });
    expect(choice.candidates.map((n) => n.name)).toEqual(['ok']);
    expect(noReplicaReason(choice)).toBe(
      'far: it lags 20.0 MiB, over REPLICA_MAX_LAG (16.0 MiB); down: it is stopped; blind: its lag is unknown',
    );
  });

  it('with a limit in seconds: a replica with no WAL outstanding is 0 s behind; otherwise its seconds count', () => {
    const nodes = [
      node('l', 'leader'),
      node('idle', 'replica', { lagBytes: 0 }),
      node('slow', 'replica', { lagBytes: 500, lagSeconds: 45 }),
      node('unknown', 'replica', { lagBytes: 500 }),
    ];
    const choice = replicaCandidates({ nodes }, { seconds: 30 });
    expect(choice.candidates.map((n) => n.name)).toEqual(['idle']);
    expect(choice.rejected.map((r) => r.reason)).toEqual([
      'it lags 45 s, over REPLICA_MAX_LAG (30 s)',
      'its lag in seconds is unknown',
    ]);
  });

  it('no replica at all: none, and the reason says so', () => {
    const choice = replicaCandidates({ nodes: [node('l', 'leader')] }, { bytes: MB });
    expect(bestReplica({ nodes: [node('l', 'leader')] }, { bytes: MB })).toBeUndefined();
    expect(noReplicaReason(choice)).toBe('the cluster has no replica');
  });
});

describe('Patroni settings (core/config.ts)', () => {
  it('reads PATRONI_URL as a list, keeps a URL password out of the URL, and defaults BACKUP_FROM to replica', () => {
    const config = parseConfig({
      BACKUP_DIR: '/b',
      DEPLOYMENT_MODE: 'patroni',
      PATRONI_URL: ' http://a.db:8008/ , https://watch:s%40cret@b.db:8008',
      PATRONI_USERNAME: 'api',
      PATRONI_PASSWORD: 'pw',
    });
    expect(config.patroni).toEqual({
      urls: [{ url: 'http://a.db:8008' }, { url: 'https://b.db:8008', auth: 'watch:s@cret' }],
      auth: 'api:pw',
      caFile: undefined,
      timeoutSeconds: 5,
    });
    expect(config.pg.patroni).toBe(config.patroni);
    expect(config.backupFrom).toBe('replica');
    expect(config.replicaMaxLag).toEqual({ bytes: 16 * MB });
    expect(config.warnings).toEqual([]);
  });

  it('single-node: no Patroni, BACKUP_FROM leader', () => {
    const config = parseConfig({ BACKUP_DIR: '/b' });
    expect(config.patroni).toBeUndefined();
    expect(config.pg.patroni).toBeUndefined();
    expect(config.backupFrom).toBe('leader');
  });

  it.each([
    ['16MB', { bytes: 16 * MB }],
    ['1gb', { bytes: 1024 * MB }],
    ['0', { bytes: 0 }],
    ['30s', { seconds: 30 }],
    ['2min', { seconds: 120 }],
  ])('REPLICA_MAX_LAG=%s', (value, limit) => {
    expect(parseConfig({ BACKUP_DIR: '/b', REPLICA_MAX_LAG: value }).replicaMaxLag).toEqual(limit);
  });

  it.each([
    [{ DEPLOYMENT_MODE: 'patroni' }, /^DEPLOYMENT_MODE=patroni needs PATRONI_URL; set it to the REST API/],
    [
      { DEPLOYMENT_MODE: 'patroni', PATRONI_URL: 'http://a:8008,postgres://u:hunter2@b:5432' },
      /^PATRONI_URL entry 2 of 2 is not an http:\/\/ or https:\/\/ URL; /,
    ],
    [
      { DEPLOYMENT_MODE: 'patroni', PATRONI_URL: 'http://a:8008', PATRONI_PASSWORD: 'x' },
      /^PATRONI_PASSWORD is set without PATRONI_USERNAME; set both/,
    ],
    [{ REPLICA_MAX_LAG: 'lots' }, /^REPLICA_MAX_LAG=lots is not allowed; use an amount of WAL like 16MB/],
    [{ BACKUP_FROM: 'standby' }, /^BACKUP_FROM=standby is not allowed; use one of replica, leader$/],
  ])('refuses %o in one line, never echoing a password', (raw, message) => {
    let error: Error | undefined;
    try {
      parseConfig({ BACKUP_DIR: '/b', ...raw });
    } catch (err) {
      error = err as Error;
    }
    expect(error?.name).toBe('ConfigError');
    expect(error?.message).toMatch(message);
    expect(error?.message).not.toContain('hunter2');
    expect(error?.message).not.toContain('\n');
  });
});

describe('nodeFailureReason()', () => {
  it("names the node's failures (pg_dump's stderr, SQLSTATE, socket codes) and nothing else", () => {
    const dump = (stderr: string) => new ToolExitError('pg_dump of shop', 1, null, stderr);
    expect(
      nodeFailureReason(
        dump(
          'pg_dump: detail: Error message from server: ERROR:  canceling statement due to conflict with recovery\n',
        ),
      ),
    ).toBe('a recovery conflict cancelled its query');
    expect(
      nodeFailureReason(
        dump(
          'pg_dump: error: Dumping the contents of table "t" failed: PQgetResult() failed.\npg_dump: detail: Error message from server: FATAL:  terminating connection due to administrator command\n',
        ),
      ),
    ).toBe('its server was shut down or restarted');
    expect(nodeFailureReason(dump('pg_dump: error: server closed the connection unexpectedly\n'))).toBe(
      'the connection to it was lost',
    );
    expect(nodeFailureReason(Object.assign(new Error('terminating'), { code: '57P02' }))).toBe(
      'its server crashed',
    );
    expect(nodeFailureReason(new Error('Connection terminated unexpectedly'))).toBe(
      'the connection to it was lost',
    );
    expect(
      nodeFailureReason(
        new StorageError('upload failed', { cause: Object.assign(new Error('x'), { code: 'ECONNRESET' }) }),
      ),
    ).toBeUndefined();
    expect(nodeFailureReason(dump('pg_dump: error: permission denied for table t\n'))).toBeUndefined();
    expect(nodeFailureReason(new StorageError('disk full'))).toBeUndefined();
  });
});
