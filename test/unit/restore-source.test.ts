import { describe, expect, it } from 'vitest';
import type { Manifest, StoredObject } from '../../core/catalog/manifest';
import { UsageError } from '../../core/errors';
import { chooseSourceDatabase, pickDatabaseObject } from '../../core/restore/fetch';

/**
 * The one rule for a restore's source (issue 11): the named object, else --from, else the target's
 * name, else the one user database besides postgres, else a usage error listing them. `restore pitr`
 * applies chooseSourceDatabase to the recovered cluster's databases.
 */
const object = (database: string | undefined, kind: StoredObject['kind'] = 'database'): StoredObject => ({
  key: `main/full/daily/full-daily-20260212-020000.${database ?? kind}.dump.zst`,
  kind,
  format: 'dump',
  ...(database !== undefined ? { database } : {}),
  rawSize: 1,
  storedSize: 1,
  sha256: '0'.repeat(64),
});
const manifest = (...objects: StoredObject[]) => ({ id: 'full-daily-20260212-020000', objects }) as Manifest;
const several = manifest(
  object(undefined, 'globals'),
  object('app'),
  object('my_database'),
  object('postgres'),
);

describe('chooseSourceDatabase', () => {
  it.each([
    ['--from wins', ['app', 'crm', 'postgres'], { from: 'crm', target: 'app' }, 'crm'],
    ["the target's name", ['app', 'crm', 'postgres'], { target: 'crm' }, 'crm'],
    ['the one user database besides postgres', ['app', 'postgres'], { target: 'app_restored' }, 'app'],
    ['the one user database, no target', ['app', 'postgres'], {}, 'app'],
    ['postgres when it is all there is', ['postgres'], { target: 'x' }, 'postgres'],
    ['postgres when the target is named so', ['app', 'crm', 'postgres'], { target: 'postgres' }, 'postgres'],
  ])('%s', (_name, names, choice, expected) => {
    expect(chooseSourceDatabase(names, choice, 'backup b')).toBe(expected);
  });

  it('several user databases and no name: a usage error listing them', () => {
    const attempt = () => chooseSourceDatabase(['app', 'crm', 'postgres'], { target: 'x' }, 'backup b');
    expect(attempt).toThrow(UsageError);
    expect(attempt).toThrow(
      'backup b holds several databases (app, crm, postgres), none named "x"; name the one to restore with --from NAME',
    );
  });

  it('in a recovered cluster (restore pitr) the error does not offer a path', () => {
    expect(() =>
      chooseSourceDatabase(['app', 'crm', 'postgres'], {}, 'the cluster recovered from b', false),
    ).toThrow(
      /^the cluster recovered from b holds several databases \(app, crm, postgres\); name the one to restore with --from NAME$/,
    );
  });

  it('a --from the backup does not hold', () => {
    expect(() => chooseSourceDatabase(['app', 'postgres'], { from: 'nope' }, 'backup b')).toThrow(
      'backup b has no database "nope"; it holds app, postgres',
    );
  });
});

describe('pickDatabaseObject', () => {
  it('takes the object a path named, whatever the target is called', () => {
    const named = several.objects[2]!.key;
    expect(pickDatabaseObject(several, { named, target: 'postgres' }).database).toBe('my_database');
  });

  it('refuses a path and a --from that disagree, and a path naming the globals', () => {
    expect(() => pickDatabaseObject(several, { named: several.objects[2]!.key, from: 'app' })).toThrow(
      /names database "my_database" .* --from names "app"/,
    );
    expect(() => pickDatabaseObject(several, { named: several.objects[0]!.key })).toThrow(/globals object/);
  });

  it('never falls back to the connection database: several databases and no name is an error', () => {
    expect(() => pickDatabaseObject(several, {})).toThrow(
      /holds several databases \(app, my_database, postgres\)/,
    );
  });
});
