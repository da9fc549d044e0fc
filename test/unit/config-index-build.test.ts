import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { ConfigError } from '../../core/errors';

/** INDEX_BUILD_*: the maintenance settings `restore indexes` and `verify indexes` build with. */
const base = { BACKUP_DIR: '/var/backups/postgresql' };

describe('INDEX_BUILD_MAINTENANCE_WORK_MEM and INDEX_BUILD_PARALLEL_WORKERS', () => {
  it('are read as typed, and absent when unset (the server’s own settings then)', () => {
    expect(
      parseConfig({ ...base, INDEX_BUILD_MAINTENANCE_WORK_MEM: '2GB', INDEX_BUILD_PARALLEL_WORKERS: '4' })
        .indexBuild,
    ).toEqual({ maintenanceWorkMem: '2GB', parallelWorkers: 4 });
    expect(parseConfig(base).indexBuild).toEqual({});
  });

  it('refuses a size PostgreSQL would not take, in one line naming the key and the form', () => {
    for (const bad of ['2 GB', '2gb', 'lots', '1.5GB']) {
      let err: unknown;
      try {
        parseConfig({ ...base, INDEX_BUILD_MAINTENANCE_WORK_MEM: bad });
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).exitCode).toBe(2);
      expect((err as Error).message).toBe(
        `INDEX_BUILD_MAINTENANCE_WORK_MEM=${bad} is not a PostgreSQL memory size; write it as a number and kB, MB, GB or TB (e.g. 2GB)`,
      );
    }
    expect(() => parseConfig({ ...base, INDEX_BUILD_PARALLEL_WORKERS: '-1' })).toThrow(
      /INDEX_BUILD_PARALLEL_WORKERS/,
    );
  });
});
