import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/vault';

/**
 * bin/pgvault's fast path: `backup wal <path>` answered from the uploader's `.ok` marker without
 * Node. PGVAULT_NODE=/bin/false stands in for Node, so a call that falls through exits 1.
 */
const LAUNCHER = resolve(__dirname, '../../bin/pgvault');
const NAME = '000000010000000000000007';
let dir: Awaited<ReturnType<typeof tempDir>>;

beforeEach(async () => {
  dir = await tempDir('pgvault-launcher-');
  mkdirSync(join(dir.path, 'pg_wal', 'pgvault-spool'), { recursive: true });
  writeFileSync(join(dir.path, 'pg_wal', NAME), 'segment');
  // The marker is written after the file was complete: make the file clearly older.
  const past = new Date(Date.now() - 60_000);
  utimesSync(join(dir.path, 'pg_wal', NAME), past, past);
});

afterEach(async () => {
  await dir.remove();
});

function launch(args: string[], env: Record<string, string> = {}, command = LAUNCHER) {
  const r = spawnSync(command, args, {
    cwd: dir.path,
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '', PGVAULT_NODE: '/bin/false', ...env },
  });
  return r.status;
}

/** Like launch, without blocking this process (its timers write the markers meanwhile). */
function launchAsync(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(LAUNCHER, args, {
      cwd: dir.path,
      env: { PATH: process.env.PATH ?? '', PGVAULT_NODE: '/bin/false' },
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('close', (code) => resolvePromise({ code, stderr }));
  });
}

describe('bin/pgvault fast path', () => {
  it('takes a fresh .ok marker and exits 0 without Node', () => {
    const marker = join(dir.path, 'pg_wal', 'pgvault-spool', `${NAME}.ok`);
    writeFileSync(marker, NAME);

    const code = launch(['backup', 'wal', `pg_wal/${NAME}`]);

    expect(code).toBe(0);
    expect(existsSync(marker)).toBe(false);
  });

  it('leaves a marker older than the file to Node (an earlier life of the data directory)', () => {
    const marker = join(dir.path, 'pg_wal', 'pgvault-spool', `${NAME}.ok`);
    writeFileSync(marker, NAME);
    const older = new Date(Date.now() - 120_000);
    utimesSync(marker, older, older);

    const code = launch(['backup', 'wal', `pg_wal/${NAME}`]);

    expect(code).toBe(1);
    expect(existsSync(marker)).toBe(true);
  });

  it('falls through to Node without a marker, and for every other command', () => {
    expect(launch(['backup', 'wal', `pg_wal/${NAME}`])).toBe(1);
    writeFileSync(join(dir.path, 'pg_wal', 'pgvault-spool', `${NAME}.ok`), NAME);
    expect(launch(['restore', 'wal', NAME, `pg_wal/${NAME}`])).toBe(1);
    expect(launch(['--version'])).toBe(1);
  });

  it('waits for the marker while the uploader runs, and passes on a failure it reports meanwhile', async () => {
    const spool = join(dir.path, 'pg_wal', 'pgvault-spool');
    // Any live process stands in for the uploader: this test's own.
    writeFileSync(join(spool, 'uploader.pid'), `${process.pid}\n`);
    const marker = join(spool, `${NAME}.ok`);
    setTimeout(() => writeFileSync(marker, NAME), 300);

    const waited = await launchAsync(['backup', 'wal', `pg_wal/${NAME}`]);
    setTimeout(
      () =>
        writeFileSync(
          join(spool, `${NAME}.error`),
          'S3 endpoint http://x cannot be reached (ECONNREFUSED)\n',
        ),
      300,
    );
    const failed = await launchAsync(['backup', 'wal', `pg_wal/${NAME}`]);

    expect(waited.code).toBe(0);
    expect(existsSync(marker)).toBe(false);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toBe('pgvault: S3 endpoint http://x cannot be reached (ECONNREFUSED)\n');
    expect(existsSync(join(spool, `${NAME}.error`))).toBe(false);
  });

  it('finds SPOOL_DIR in the environment, the --config file and .env, as the CLI does', () => {
    mkdirSync(join(dir.path, 'a'));
    mkdirSync(join(dir.path, 'b'));
    mkdirSync(join(dir.path, 'c'));
    writeFileSync(join(dir.path, 'pgvault.env'), 'ENCRYPTION=true\nexport SPOOL_DIR = "b"  \n');
    writeFileSync(join(dir.path, '.env'), "SPOOL_DIR='c' # the .env\n");
    const marker = (d: string) => join(dir.path, d, `${NAME}.ok`);

    writeFileSync(marker('a'), NAME);
    const fromEnv = launch(['--config', 'pgvault.env', 'backup', 'wal', `pg_wal/${NAME}`], {
      SPOOL_DIR: 'a',
    });
    writeFileSync(marker('b'), NAME);
    const fromFile = launch([`--config=pgvault.env`, 'backup', 'wal', `pg_wal/${NAME}`]);
    writeFileSync(marker('c'), NAME);
    const fromDotEnv = launch(['backup', 'wal', `pg_wal/${NAME}`]);

    expect([fromEnv, fromFile, fromDotEnv]).toEqual([0, 0, 0]);
    expect(['a', 'b', 'c'].map((d) => existsSync(marker(d)))).toEqual([false, false, false]);
  });

  it('finds the package through a symlink (npm links node_modules/.bin/pgvault)', () => {
    const link = join(dir.path, 'pgvault-link');
    symlinkSync(LAUNCHER, link);

    const r = spawnSync(link, ['--version'], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });

    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });
});
