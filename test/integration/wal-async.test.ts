import { chmodSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLUSTER_NAME,
  openWithoutPgvault,
  pgvaultCommand,
  readSegment,
  sha256,
  startWalFixture,
  type WalFixture,
  walKeyPath,
} from './wal-fixture';

/**
 * ARCHIVE_ASYNC=true: the uploader pushes the backlog ahead of PostgreSQL's archiver, and
 * archive_command only takes its markers. A backlog is made while archive_command fails.
 */
let fx: WalFixture;
let spool: string;

beforeAll(async () => {
  fx = await startWalFixture({ ARCHIVE_ASYNC: 'true' }, { archiveCommand: '' });
  spool = join(fx.cluster.dataDir, 'pg_wal', 'pgvault-spool');
});

afterAll(async () => {
  await fx?.stop();
});

function markers(suffix: '.ok' | '.error'): string[] {
  return existsSync(spool)
    ? readdirSync(spool)
        .filter((f) => f.endsWith(suffix))
        .map((f) => f.slice(0, -suffix.length))
    : [];
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('backup wal with ARCHIVE_ASYNC=true', () => {
  it('drains a backlog of 30 segments and never acknowledges one that is not stored, even when the uploader is killed', async () => {
    // Prepare: 30 segments wait while archive_command is not set.
    const names = await fx.makeSegments(30);
    const originals = new Map(names.map((n) => [n, sha256(readSegment(fx.cluster, n))]));
    const failedBefore = (await fx.archiver()).failed;

    // Act: switch to pgvault; kill the uploader once it has stored a few.
    const started = Date.now();
    await fx.setArchiveCommand(pgvaultCommand(fx.configFile));
    await until(
      () => names.filter((n) => existsSync(walKeyPath(fx.vaultDir, n))).length >= 4,
      60_000,
      'first uploads',
    );
    const pid = Number(readFileSync(join(spool, 'uploader.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    const storedAtKillCount = names.filter((n) => existsSync(walKeyPath(fx.vaultDir, n))).length;
    const acknowledgedAtKill = markers('.ok');
    const storedAtKill = acknowledgedAtKill.map((n) =>
      sha256(openWithoutPgvault(walKeyPath(fx.vaultDir, n), fx.keyFile)),
    );
    await fx.waitArchived(names[names.length - 1]!, 90_000);
    const seconds = (Date.now() - started) / 1000;

    // Assess: killed mid-way, every marker then present was for a stored file, and nothing was lost.
    expect(storedAtKillCount).toBeLessThan(names.length);
    acknowledgedAtKill.forEach((n, i) => {
      expect(storedAtKill[i], n).toBe(originals.get(n));
    });
    for (const name of names) {
      expect(sha256(openWithoutPgvault(walKeyPath(fx.vaultDir, name), fx.keyFile)), name).toBe(
        originals.get(name),
      );
    }
    expect((await fx.archiver()).failed).toBe(failedBefore);
    console.info(`async archiving drained 30 segments in ${seconds.toFixed(1)} s (uploader killed once)`);
  });

  it('fails fast while the target is unwritable, keeps the segments, and drains them once it is back', async () => {
    // Prepare
    const before = await fx.archiver();
    const folder = join(fx.vaultDir, CLUSTER_NAME, 'wal', '00000001', '0000000100000000');
    chmodSync(folder, 0o500);

    // Act
    const names = await fx.makeSegments(2);
    await until(async () => (await fx.archiver()).failed > before.failed, 30_000, 'a failed archive_command');
    const acknowledged = markers('.ok').filter((n) => names.includes(n));
    const errors = markers('.error');
    const stored = names.filter((n) => existsSync(walKeyPath(fx.vaultDir, n)));
    chmodSync(folder, 0o700);
    const [nudge] = await fx.makeSegments(1);
    await fx.waitArchived(nudge!, 60_000);

    // Assess
    expect(acknowledged).toEqual([]);
    expect(stored).toEqual([]);
    expect(errors.length + (await fx.archiver()).failed).toBeGreaterThan(0);
    expect(fx.cluster.readLog()).toMatch(/not writable \(EACCES\)/);
    for (const name of [...names, nudge!]) {
      expect(existsSync(walKeyPath(fx.vaultDir, name)), name).toBe(true);
    }
  });
});
