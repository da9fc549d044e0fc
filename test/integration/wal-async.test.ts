import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { createTargets } from '../../core/storage';
import { pushWalFile, pushWalFiles, type WalPushOutcome } from '../../core/wal/push';
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
  it('drains a backlog of 100 segments and never acknowledges one that is not stored, even when the uploader is killed', async () => {
    // Prepare: 100 segments wait while archive_command is not set (more than the uploader's first
    // round of batches takes, 4 lanes of 16, so it is killed with work left).
    const names = await fx.makeSegments(100);
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
    console.info(`async archiving drained 100 segments in ${seconds.toFixed(1)} s (uploader killed once)`);
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

describe("the uploader's batches: one compressor run for several segments", () => {
  /** Copies of `count` fresh segments in a folder of their own, and a config for a vault of its own. */
  async function batchSetup(label: string, count: number) {
    const names = await fx.makeSegments(count);
    const dir = join(fx.work, `batch-${label}`);
    mkdirSync(join(dir, 'bin'), { recursive: true });
    const paths = names.map((n) => {
      copyFileSync(join(fx.cluster.dataDir, 'pg_wal', n), join(dir, n));
      return join(dir, n);
    });
    const vaultDir = join(dir, 'vault');
    const config = parseConfig({
      BACKUP_DIR: vaultDir,
      CLUSTER_NAME,
      ENCRYPTION: 'true',
      ENCRYPTION_KEY_FILE: fx.keyFile,
      ENCRYPTION_ITERATIONS: '1000',
    });
    return { names, paths, dir, vaultDir, ctx: { config, targets: createTargets(config) } };
  }

  /** Puts a `zstd` first on PATH that logs its arguments and then runs `body` (sh, the real zstd on PATH). */
  async function withZstd<T>(dir: string, body: string, act: () => Promise<T>): Promise<T> {
    writeFileSync(
      join(dir, 'bin', 'zstd'),
      `#!/bin/sh\necho "$*" >> ${join(dir, 'zstd.log')}\nPATH=${process.env.PATH}\n${body}\n`,
      { mode: 0o755 },
    );
    const path = process.env.PATH;
    process.env.PATH = `${join(dir, 'bin')}:${path}`;
    try {
      return await act();
    } finally {
      process.env.PATH = path;
    }
  }

  it('stores each segment of a batch as its own object from one zstd run, each opening byte for byte', async () => {
    // Prepare
    const { names, paths, dir, vaultDir, ctx } = await batchSetup('one-run', 4);
    const outcomes: WalPushOutcome[] = [];

    // Act
    await withZstd(dir, 'exec zstd "$@"', () => pushWalFiles(ctx, paths, (o) => void outcomes.push(o)));

    // Assess
    expect(outcomes.map((o) => ('result' in o ? o.path : String(o.error))).sort()).toEqual(paths);
    const runs = readFileSync(join(dir, 'zstd.log'), 'utf8').trim().split('\n');
    expect(runs.filter((r) => !r.includes('--version'))).toHaveLength(1);
    names.forEach((name, i) => {
      expect(sha256(openWithoutPgvault(walKeyPath(vaultDir, name), fx.keyFile)), name).toBe(
        sha256(readFileSync(paths[i]!)),
      );
    });
  });

  it('lanes starting together on a new archive write its identity once', async () => {
    // Prepare: a fresh vault, and a count of the writes of its archive.json.
    const { paths, ctx } = await batchSetup('identity', 4);
    const target = ctx.targets[0]!;
    const putBytes = target.putBytes.bind(target);
    let identityWrites = 0;
    target.putBytes = (key, data) => {
      if (key.endsWith('/wal/archive.json')) identityWrites++;
      return putBytes(key, data);
    };
    const outcomes: WalPushOutcome[] = [];

    // Act: two lanes at once, as the uploader starts them.
    await Promise.all([
      pushWalFiles(ctx, paths.slice(0, 2), (o) => void outcomes.push(o)),
      pushWalFiles(ctx, paths.slice(2), (o) => void outcomes.push(o)),
    ]);

    // Assess
    expect(outcomes.filter((o) => 'result' in o)).toHaveLength(4);
    expect(identityWrites).toBe(1);
  });

  it('two uploaders of the same segments at once both succeed, each object written once and whole (create-only writes)', async () => {
    // Prepare: the same batch twice, as an uploader and a retry by another process would push it.
    const { names, paths, vaultDir, ctx } = await batchSetup('twice', 3);
    const outcomes: WalPushOutcome[] = [];

    // Act
    await Promise.all([
      pushWalFiles(ctx, paths, (o) => void outcomes.push(o)),
      pushWalFiles(ctx, paths, (o) => void outcomes.push(o)),
    ]);

    // Assess: a writer that found the name taken judged the other's object by content: a success.
    expect(outcomes.map((o) => ('error' in o ? String(o.error) : 'stored'))).toEqual(Array(6).fill('stored'));
    names.forEach((name, i) => {
      expect(sha256(openWithoutPgvault(walKeyPath(vaultDir, name), fx.keyFile)), name).toBe(
        sha256(readFileSync(paths[i]!)),
      );
    });
  });

  it('acknowledges each segment of a batch as soon as it is stored, before zstd has exited', async () => {
    // Prepare: a zstd that stays alive after its work until the test has heard about every file (or
    // 10 s have passed, and then says so).
    const { names, paths, dir, vaultDir, ctx } = await batchSetup('early', 3);
    const heard = join(dir, 'heard-all');
    const lingering = [
      'zstd "$@" || exit $?',
      `for i in $(seq 200); do [ -e ${heard} ] && exit 0; sleep 0.05; done`,
      `echo waited >${join(dir, 'waited-out')}`,
    ].join('\n');
    const outcomes: WalPushOutcome[] = [];

    // Act
    await withZstd(dir, lingering, () =>
      pushWalFiles(ctx, paths, (o) => {
        outcomes.push(o);
        if (outcomes.length === paths.length) writeFileSync(heard, '');
      }),
    );

    // Assess
    expect(existsSync(join(dir, 'waited-out'))).toBe(false);
    expect(outcomes.map((o) => ('result' in o ? o.path : String(o.error))).sort()).toEqual(paths);
    names.forEach((name, i) => {
      expect(sha256(openWithoutPgvault(walKeyPath(vaultDir, name), fx.keyFile)), name).toBe(
        sha256(readFileSync(paths[i]!)),
      );
    });
  });

  it("never stores a segment's neighbour under its name when zstd skips a file, and stores the rest one at a time afterwards", async () => {
    // Prepare: a zstd that leaves out the second file and says so with exit code 1, as the real one
    // does for a file it cannot read: the frames after it belong to the wrong names.
    const { names, paths, dir, vaultDir, ctx } = await batchSetup('skip', 3);
    const outcomes: WalPushOutcome[] = [];
    const skipping = [
      'args=""; n=0',
      'for a in "$@"; do case "$a" in */batch-skip/0*) n=$((n+1)); [ $n -eq 2 ] && continue;; esac; args="$args $a"; done',
      'zstd $args; exit 1',
    ].join('\n');

    // Act
    await withZstd(dir, skipping, () => pushWalFiles(ctx, paths, (o) => void outcomes.push(o)));
    const storedAfterFailure = names.filter((n) => existsSync(walKeyPath(vaultDir, n)));
    const firstAfterFailure = storedAfterFailure.includes(names[0]!)
      ? sha256(openWithoutPgvault(walKeyPath(vaultDir, names[0]!), fx.keyFile))
      : undefined;
    for (const path of paths.slice(1)) await pushWalFile(ctx, path);

    // Assess: the first file, reported by zstd in turn, is stored and right; the second and third
    // (the third's frame came where the second's should have) failed and left nothing.
    expect(paths.map((path) => outcomes.filter((o) => o.path === path).map((o) => 'result' in o))).toEqual([
      [true],
      [false],
      [false],
    ]);
    expect(storedAfterFailure).toEqual([names[0]]);
    expect(firstAfterFailure).toBe(sha256(readFileSync(paths[0]!)));
    names.forEach((name, i) => {
      expect(sha256(openWithoutPgvault(walKeyPath(vaultDir, name), fx.keyFile)), name).toBe(
        sha256(readFileSync(paths[i]!)),
      );
    });
  });
});
