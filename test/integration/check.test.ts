import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { startCluster } from '../helpers/pg';
import { giveToServer, pgvaultCommand, startWalFixture, type WalFixture, walKeyPath } from './wal-fixture';

/**
 * `pgvault check` against real servers whose own archiver runs: fine (the segment arrives), broken
 * (archive_command fails, archive_mode off), and WAL health in `verify wal` and `backup init`.
 * Each test leaves archiving working for the next.
 */

let fx: WalFixture;
let serverEnv: Record<string, string>;

beforeAll(async () => {
  fx = await startWalFixture();
  serverEnv = {
    PGHOST: fx.cluster.host,
    PGPORT: String(fx.cluster.port),
    PGUSER: fx.cluster.superuser,
    PGDATABASE: 'postgres',
  };
}, 120_000);

afterAll(async () => {
  await fx?.stop();
});

interface CheckJson {
  ok: boolean;
  verdict: string;
  summary: string;
  nextStep: string;
  segment?: string;
  arrivedIn: string[];
  archiver: { lastFailedWal: string | null; failedCount: number };
}

function check(extraEnv: Record<string, string> = {}) {
  const r = fx.pgvault(['--json', 'check', '--timeout', '60'], { env: { ...serverEnv, ...extraEnv } });
  return { ...r, report: JSON.parse(r.stdout) as CheckJson };
}

describe('pgvault check', () => {
  it('says fine when the switched segment arrives in the archive', async () => {
    // Act
    const r = check();

    // Assert
    expect(r.code, r.stderr).toBe(0);
    expect(r.report.verdict).toBe('fine');
    expect(r.report.segment).toMatch(/^[0-9A-F]{24}$/);
    expect(existsSync(walKeyPath(fx.vaultDir, r.report.segment!))).toBe(true);
    expect(r.report.arrivedIn).toEqual([`file://${fx.vaultDir}`]);
  });

  it('says broken, with the failing segment, when archive_command fails', async () => {
    // Prepare
    await fx.setArchiveCommand("sh -c 'echo check-test-failure >&2; exit 1'");
    try {
      // Act
      const r = check();

      // Assert
      expect(r.code).not.toBe(0);
      expect(r.report.verdict).toBe('broken');
      expect(r.report.archiver.lastFailedWal).toBe(r.report.segment);
      expect(r.report.summary).toContain(`archive_command failed on ${r.report.segment}`);
      expect(r.report.nextStep).toContain('server log');
      expect(r.stderr).toContain('BROKEN');
    } finally {
      await fx.setArchiveCommand(pgvaultCommand(fx.configFile));
    }
    const [last] = await fx.makeSegments(1);
    await fx.waitArchived(last!, 60_000);
  });

  it('says slow, not broken, when the archiver works but has not got there yet', async () => {
    // Prepare: an archive_command that takes 15 s and then succeeds.
    await fx.setArchiveCommand(`sleep 15; ${pgvaultCommand(fx.configFile)}`);
    try {
      // Act
      const r = fx.pgvault(['--json', 'check', '--timeout', '3'], { env: serverEnv });

      // Assert
      const report = JSON.parse(r.stdout) as CheckJson;
      expect(r.code).not.toBe(0);
      expect(report.verdict).toBe('slow');
      expect(report.summary).toContain('no failure');
      expect(report.summary).toMatch(/1 file\(s\) wait for archive_command/);
      expect(report.nextStep).toContain('ARCHIVE_ASYNC');
    } finally {
      await fx.setArchiveCommand(pgvaultCommand(fx.configFile));
    }
    const [last] = await fx.makeSegments(1);
    await fx.waitArchived(last!, 90_000);
  });

  it('says archiving is off when archive_mode is off', async () => {
    // Prepare
    let plain: TempCluster | undefined;
    try {
      plain = await startCluster();

      // Act (the environment overrides the fixture's configuration file)
      const r = fx.pgvault(['--json', 'check'], {
        env: {
          ...serverEnv,
          PGPORT: String(plain.port),
          PGHOST: plain.host,
          BACKUP_DIR: join(fx.work, 'plain'),
        },
      });

      // Assert
      const report = JSON.parse(r.stdout) as CheckJson;
      expect(r.code).not.toBe(0);
      expect(report.verdict).toBe('broken');
      expect(report.summary).toMatch(/archive_mode is off/);
      expect(report.nextStep).toContain('archive_mode = on');
    } finally {
      await plain?.stop();
    }
  });
});

describe('pgvault check as a role that may not switch WAL', () => {
  it('says so in one line, with the grant that fixes it', async () => {
    // Prepare
    await fx.cluster.query('DROP ROLE IF EXISTS check_nosu');
    await fx.cluster.query('CREATE ROLE check_nosu LOGIN');

    // Act
    const r = fx.pgvault(['check'], { env: { ...serverEnv, PGUSER: 'check_nosu' } });

    // Assert
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('GRANT EXECUTE ON FUNCTION pg_switch_wal() TO');
  });
});

describe('backup wal by hand', () => {
  it('refuses the segment PostgreSQL is still writing, and stores nothing', async () => {
    // Prepare: something written into it. (pg_walfile_name names the previous segment for an LSN
    // right at a segment's start, where a switch leaves it: + 1 names the one written next.)
    await fx.cluster.query('CREATE TABLE IF NOT EXISTS by_hand (note text)');
    await fx.cluster.query("INSERT INTO by_hand VALUES ('written now')");
    const [row] = await fx.cluster.query<{ name: string }>(
      'SELECT pg_walfile_name(pg_current_wal_lsn() + 1) AS name',
    );
    const current = row!.name;

    // Act
    const r = fx.pgvault(['backup', 'wal', `pg_wal/${current}`]);

    // Assert
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(current);
    expect(r.stderr).toMatch(/still writing/);
    expect(existsSync(walKeyPath(fx.vaultDir, current))).toBe(false);
  });
});

describe('verify wal and the server', () => {
  it('is not OK when the server archives but the archive is empty', async () => {
    // Prepare: the same server, a configuration whose archive holds nothing.
    const emptyVault = join(fx.work, 'empty-vault');
    mkdirSync(emptyVault);

    // Act
    const r = fx.pgvault(['--json', 'verify', 'wal'], { env: { ...serverEnv, BACKUP_DIR: emptyVault } });

    // Assert
    expect(r.code).not.toBe(0);
    const report = JSON.parse(r.stdout) as { ok: boolean; server: { problems: string[] } };
    expect(report.ok).toBe(false);
    expect(report.server.problems.join('\n')).toMatch(/archive holds no WAL/);
    expect(r.stderr).toMatch(/archive holds no WAL/);
  });

  it('is not OK when a segment waits in pg_wal longer than the RPO target', async () => {
    // Prepare: archiving paused (no archive_command: segments wait, nothing fails), one waits for 2 h.
    await fx.setArchiveCommand('');
    try {
      const [waiting] = await fx.makeSegments(1);
      const ready = join(fx.cluster.dataDir, 'pg_wal', 'archive_status', `${waiting}.ready`);
      const twoHoursAgo = new Date(Date.now() - 2 * 3600 * 1000);
      utimesSync(ready, twoHoursAgo, twoHoursAgo);

      // Act
      const r = fx.pgvault(['verify', 'wal'], { env: { ...serverEnv, RPO_TARGET_MINUTES: '60' } });

      // Assert
      expect(r.code).not.toBe(0);
      expect(r.stdout).toContain(waiting!);
      expect(r.stderr).toMatch(/waits? in pg_wal/);
    } finally {
      await fx.setArchiveCommand(pgvaultCommand(fx.configFile));
    }
    const [last] = await fx.makeSegments(1);
    await fx.waitArchived(last!, 60_000);
  });

  it('is OK when the server archives into it and nothing waits', async () => {
    // Act
    const r = fx.pgvault(['--json', 'verify', 'wal'], { env: serverEnv });

    // Assert
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { server: { checked: boolean } }).server.checked).toBe(true);
  });
});

describe('backup init', () => {
  it('runs the archiving check when the server is reachable', async () => {
    // Act
    const r = fx.pgvault(['--json', 'backup', 'init'], { env: serverEnv });

    // Assert
    expect(r.code, r.stderr).toBe(0);
    const { checks } = JSON.parse(r.stdout) as {
      checks: Array<{ check: string; ok: boolean; detail: string }>;
    };
    const archiving = checks.find((c) => c.check === 'WAL archiving');
    expect(archiving?.ok).toBe(true);
    expect(archiving?.detail).toMatch(/works/);
  });

  it('says it skipped the check when no server answers', async () => {
    // Act: a port nothing listens on (the cluster's own, once it is known to be closed, is not needed).
    const r = fx.pgvault(['--json', 'backup', 'init'], {
      env: { ...serverEnv, PGHOST: '127.0.0.1', PGPORT: '1' },
    });

    // Assert
    expect(r.code, r.stderr).toBe(0);
    const { checks } = JSON.parse(r.stdout) as {
      checks: Array<{ check: string; ok: boolean; detail: string }>;
    };
    const archiving = checks.find((c) => c.check === 'WAL archiving');
    expect(archiving?.ok).toBe(true);
    expect(archiving?.detail).toMatch(/skipped/);
  });
});

describe('a full disk', () => {
  it('a backup names BACKUP_DIR and the object it was writing, and leaves no backup behind', async () => {
    // Prepare: BACKUP_DIR on a 256 kB file system (the probe fits, the dump does not).
    await fx.cluster.query('CREATE DATABASE bigdb');
    await fx.cluster.query(
      'CREATE TABLE t AS SELECT g, md5(g::text) AS a, md5((g * 3)::text) AS b FROM generate_series(1, 100000) g',
      [],
      'bigdb',
    );
    const tiny = join(fx.work, 'tiny-backups');
    mkdirSync(tiny);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', tiny]);
    try {
      // Act
      const r = fx.pgvault(['backup', 'full', 'manual', '--database', 'bigdb'], {
        env: { ...serverEnv, BACKUP_DIR: tiny },
      });

      // Assert
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(
        new RegExp(`BACKUP_DIR ${tiny} is full \\(ENOSPC\\) while writing walt/full/manual/full-manual-\\S+`),
      );
      expect(r.stderr).not.toMatch(/corrupt/);
      expect(r.code).toBe(1);
      const list = fx.pgvault(['--json', 'restore', 'list'], { env: { ...serverEnv, BACKUP_DIR: tiny } });
      expect(JSON.parse(list.stdout).backups).toEqual([]);
    } finally {
      execFileSync('umount', [tiny]);
    }
  });

  it('restore wal names the path it was writing, and does not call the object corrupt', async () => {
    // Prepare: an archived segment (1 MB) and a 256 kB file system to fetch it into.
    const [segment] = await fx.makeSegments(1);
    await fx.waitArchived(segment!, 60_000);
    const tiny = join(fx.work, 'tiny');
    mkdirSync(tiny);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', tiny]);
    try {
      giveToServer(tiny);
      const destination = join(tiny, segment!);

      // Act
      const r = fx.pgvault(['restore', 'wal', segment!, destination]);

      // Assert
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`no space left writing ${destination}`);
      expect(r.stderr).not.toMatch(/corrupt/);
      expect(existsSync(destination)).toBe(false);
    } finally {
      execFileSync('umount', [tiny]);
    }
  });
});
