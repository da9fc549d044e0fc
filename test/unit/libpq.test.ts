import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config';
import { sslAttempts, sslMode, tlsOptions } from '../../core/pg/libpq';

/** libpq's sslmode as node-postgres TLS settings (core/pg/libpq.ts); the CA file is this test file. */
const SOME_FILE = __filename;

describe('libpq sslmode for node-postgres', () => {
  it('tries what libpq tries, in its order; never TLS on a socket', () => {
    // Act
    const kinds = (libpq: Record<string, string>, host = '10.0.0.1') =>
      sslAttempts(libpq, host).map((a) => (a === false ? 'plain' : 'tls'));

    // Assess
    expect(kinds({})).toEqual(['tls', 'plain']);
    expect(kinds({ PGSSLMODE: 'prefer' })).toEqual(['tls', 'plain']);
    expect(kinds({ PGSSLMODE: 'allow' })).toEqual(['plain', 'tls']);
    expect(kinds({ PGSSLMODE: 'disable' })).toEqual(['plain']);
    expect(kinds({ PGSSLMODE: 'require' })).toEqual(['tls']);
    expect(kinds({ PGREQUIRESSL: '1' })).toEqual(['tls']);
    expect(kinds({ PGSSLMODE: 'verify-full', PGSSLROOTCERT: SOME_FILE }, '/run/postgresql')).toEqual([
      'plain',
    ]);
    expect(() => sslMode({ PGSSLMODE: 'no-verify' })).toThrow(/PGSSLMODE=no-verify is not allowed/);
  });

  it('require verifies the chain only when a root certificate is given, as libpq does', () => {
    // Act
    const bare = tlsOptions({ PGSSLMODE: 'require', PGSSLROOTCERT: '' }, 'db');
    const withRoot = tlsOptions({ PGSSLMODE: 'require', PGSSLROOTCERT: SOME_FILE }, 'db');

    // Assess
    expect(bare.rejectUnauthorized).toBe(false);
    expect(withRoot.rejectUnauthorized).toBe(true);
    expect(withRoot.ca).toBeDefined();
    expect(withRoot.checkServerIdentity?.('db', {} as never)).toBeUndefined();
  });

  it('verify-full without a readable root certificate is refused in one line', () => {
    // Assess
    expect(() =>
      tlsOptions({ PGSSLMODE: 'verify-full', PGSSLROOTCERT: '/nonexistent/ca.crt' }, 'db'),
    ).toThrow(/^PGSSLROOTCERT=\/nonexistent\/ca.crt cannot be read \(ENOENT\); check the path/);
  });

  it('a setting node-postgres cannot apply is warned about in one line, not dropped silently', () => {
    // Act
    const config = loadConfig({
      env: { BACKUP_DIR: '/tmp/x', PGTARGETSESSIONATTRS: 'read-write', PGTZ: 'UTC' },
      cwd: '/nonexistent',
    });

    // Assess
    expect(config.pg.libpq).toMatchObject({ PGTARGETSESSIONATTRS: 'read-write', PGTZ: 'UTC' });
    expect(config.warnings).toEqual([
      "PGTARGETSESSIONATTRS reaches pg_dump, pg_restore and psql, but pgvault's own connections (node-postgres) cannot apply it: the server is not checked for it",
    ]);
  });
});
