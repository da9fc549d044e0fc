import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  giveToServer,
  openWithoutPgvault,
  pgvaultCommand,
  readSegment,
  sha256,
  startWalFixture,
  type WalFixture,
  walKeyPath,
} from './wal-fixture';

/**
 * Issue 11 follow-ups, through the built CLI and PostgreSQL's own archiver:
 * - an alert-channel mistake (the guide's EMAIL_NOTIFICATIONS=true with no way to send) stops every
 *   command that can send alerts, in one line, exit 2, but not archive_command or restore_command,
 *   which send none (archiving stopping would fill pg_wal);
 * - a key of the config file pgvault does not know (ENCRYPTON) is named on every command, with the
 *   key it probably meant, and not by the per-segment ones (the server would log it per segment).
 */
const NO_WAY_TO_SEND =
  'pgvault: EMAIL_NOTIFICATIONS=true but there is no way to send mail; set SMTP_URL (smtp://user:password@host:587) or SNS_TOPIC_ARN, or set EMAIL_NOTIFICATIONS=false\n';

let fx: WalFixture;

beforeAll(async () => {
  // The guide's notification lines, with nothing that can send mail; and a misspelt key.
  fx = await startWalFixture({
    EMAIL_NOTIFICATIONS: 'true',
    EMAIL_TO: 'admin@example.com',
    ENCRYPTON: 'true',
  });
});

afterAll(async () => {
  await fx?.stop();
});

describe('an alert-channel mistake in the config', () => {
  it("does not stop PostgreSQL's archive_command: segments are stored and decode to the server's bytes", async () => {
    // Act
    const names = await fx.makeSegments(2);
    await fx.waitArchived(names[names.length - 1]!);

    // Assess
    for (const name of names) {
      const object = walKeyPath(fx.vaultDir, name);
      expect(existsSync(object), object).toBe(true);
      expect(sha256(openWithoutPgvault(object, fx.keyFile))).toBe(sha256(readSegment(fx.cluster, name)));
    }
    expect((await fx.archiver()).failed).toBe(0);
    expect(fx.cluster.readLog()).not.toContain('EMAIL_NOTIFICATIONS');
    expect(fx.cluster.readLog()).not.toContain('ENCRYPTON');
  });

  it('does not stop backup wal or restore wal by hand, and they print nothing', async () => {
    // Prepare
    const [name] = await fx.makeSegments(1);
    await fx.waitArchived(name!);
    const copy = join(fx.work, 'by-hand', 'pg_wal');
    mkdirSync(copy, { recursive: true });
    writeFileSync(join(copy, name!), readSegment(fx.cluster, name!));
    const restored = join(fx.work, 'restored', 'pg_wal');
    mkdirSync(restored, { recursive: true });

    // Act
    const push = fx.pgvault(['backup', 'wal', join(copy, name!)]);
    const fetch = fx.pgvault(['restore', 'wal', name!, join(restored, 'RECOVERYXLOG')]);

    // Assess
    expect(push).toMatchObject({ code: 0, stderr: '' });
    expect(fetch).toMatchObject({ code: 0, stderr: '' });
    expect(sha256(readFileSync(join(restored, 'RECOVERYXLOG')))).toBe(sha256(readSegment(fx.cluster, name!)));
  });

  it('does not stop the WAL uploader of ARCHIVE_ASYNC=true: it runs and the segments are stored', async () => {
    // Prepare
    const asyncFile = join(fx.work, 'async.env');
    writeFileSync(asyncFile, `${readFileSync(fx.configFile, 'utf8')}ARCHIVE_ASYNC=true\n`, { mode: 0o600 });
    giveToServer(asyncFile);
    await fx.setArchiveCommand(pgvaultCommand(asyncFile));
    const spool = join(fx.cluster.dataDir, 'pg_wal', 'pgvault-spool');

    // Act
    const names = await fx.makeSegments(3);
    await fx.waitArchived(names[names.length - 1]!);
    const pid = Number(readFileSync(join(spool, 'uploader.pid'), 'utf8'));
    await fx.setArchiveCommand(pgvaultCommand(fx.configFile));

    // Assess
    for (const name of names) {
      const object = walKeyPath(fx.vaultDir, name);
      expect(existsSync(object), object).toBe(true);
      expect(sha256(openWithoutPgvault(object, fx.keyFile))).toBe(sha256(readSegment(fx.cluster, name)));
    }
    expect(() => process.kill(pid, 0)).not.toThrow();
    expect(readFileSync(join(spool, 'uploader.log'), 'utf8')).not.toContain('EMAIL_NOTIFICATIONS');
    expect((await fx.archiver()).failed).toBe(0);
  });

  it('stops backup full, exit 2, with the unknown key named first and then the one error line', () => {
    // Act
    const r = fx.pgvault(['backup', 'full', 'daily']);

    // Assess
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `pgvault: warning: ${fx.configFile}: unknown setting ENCRYPTON (did you mean ENCRYPTION?); it is ignored\n${NO_WAY_TO_SEND}`,
    );
  });
});

describe('an unknown key of the config file', () => {
  it('is named on every command that reads the config, with --json output left clean', () => {
    // Prepare
    const file = join(fx.work, 'typo.env');
    writeFileSync(
      file,
      `${readFileSync(fx.configFile, 'utf8')
        .split('\n')
        .filter((l) => !l.startsWith('EMAIL_'))
        .join('\n')}\nRETENTION_DAY=14\n`,
    );

    // Act
    const r = fx.pgvault(['--config', file, '--json', 'restore', 'list']);

    // Assess
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toBeDefined();
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      `pgvault: warning: ${file}: unknown setting ENCRYPTON (did you mean ENCRYPTION?); it is ignored`,
      `pgvault: warning: ${file}: unknown setting RETENTION_DAY (did you mean RETENTION_DAYS?); it is ignored`,
    ]);
  });
});
