import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../core/errors';
import { clearPgBinaryCache, clientForServer, pickClient, refuseOlderClient } from '../../core/pg/tools';

/** pgvault reads a server with client programs never older than it, and says so when it has none. */
describe('client programs for a server', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgvault-clients-'));
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
    clearPgBinaryCache();
  });

  it('takes the newest installed copy when several majors are installed', () => {
    const copies = [
      { path: '/usr/lib/postgresql/15/bin/pg_dump', major: 15 },
      { path: '/usr/lib/postgresql/17/bin/pg_dump', major: 17 },
      { path: '/usr/lib/postgresql/16/bin/pg_dump', major: 16 },
    ];
    expect(pickClient(copies, 17)?.major).toBe(17);
    expect(pickClient(copies, 15)?.path).toBe('/usr/lib/postgresql/17/bin/pg_dump');
  });

  it('has none for a server newer than every copy', () => {
    expect(pickClient([{ path: '/usr/lib/postgresql/15/bin/pg_dump', major: 15 }], 17)).toBeUndefined();
    expect(pickClient([], 15)).toBeUndefined();
  });

  it('refuses a newer server with ConfigError (exit 2), one line naming both versions and the fix', () => {
    const refuse = () =>
      refuseOlderClient(
        'pg_basebackup',
        { path: '/usr/lib/postgresql/15/bin/pg_basebackup', major: 15 },
        { major: 17, version: '17.7 (Debian 17.7-0+deb13u1)' },
      );
    expect(refuse).toThrow(ConfigError);
    try {
      refuse();
    } catch (err) {
      const message = (err as ConfigError).message;
      expect((err as ConfigError).exitCode).toBe(2);
      expect(message).not.toContain('\n');
      expect(message).toContain('PostgreSQL 17.7');
      expect(message).toContain('pg_basebackup 15 (/usr/lib/postgresql/15/bin/pg_basebackup)');
      expect(message).toContain('install postgresql-client-17');
    }
  });

  it('clientForServer reads the version of the program PG_BIN_DIR names and refuses it by name', async () => {
    // A stand-in pg_dump that reports version 15, as `pg_dump --version` does.
    const fake = join(dir, 'pg_dump');
    writeFileSync(fake, '#!/bin/sh\necho "pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"\n', {
      mode: 0o755,
    });
    await expect(clientForServer('pg_dump', { major: 15, version: '15.14' }, dir)).resolves.toEqual({
      path: fake,
      major: 15,
    });
    await expect(clientForServer('pg_dump', { major: 17, version: '17.7' }, dir)).rejects.toThrow(
      `the server runs PostgreSQL 17.7, newer than pg_dump 15 (${fake}), the newest pg_dump found; point PG_BIN_DIR (now ${dir}) at the bin directory of a PostgreSQL 17 or newer client`,
    );
  });
});
