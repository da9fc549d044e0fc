import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { wakeWaiter, withHugePages } from '../../core/wal/spool';
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

/** Whether a marker was taken: bin/pgvault empties it (the uploader removes it later). */
function taken(marker: string): boolean {
  return !existsSync(marker) || statSync(marker).size === 0;
}

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
    expect(taken(marker)).toBe(true);
  });

  it('leaves a marker older than the file to Node (an earlier life of the data directory)', () => {
    const marker = join(dir.path, 'pg_wal', 'pgvault-spool', `${NAME}.ok`);
    writeFileSync(marker, NAME);
    const older = new Date(Date.now() - 120_000);
    utimesSync(marker, older, older);

    const code = launch(['backup', 'wal', `pg_wal/${NAME}`]);

    expect(code).toBe(1);
    expect(taken(marker)).toBe(false);
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
    expect(taken(marker)).toBe(true);
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
    expect(['a', 'b', 'c'].map((d) => taken(marker(d)))).toEqual([true, true, true]);
  });

  it('starts the uploader itself in asynchronous mode, with the configuration the CLI would give it', async () => {
    // Prepare: a stand-in for node that, run as the uploader, records how it was started, takes the
    // lock and acknowledges the segment a moment later; run as anything else (the CLI) it fails.
    const spool = join(dir.path, 'pg_wal', 'pgvault-spool');
    const fakeNode = join(dir.path, 'fake-node');
    writeFileSync(
      fakeNode,
      [
        '#!/bin/sh',
        'case " $* " in',
        `  *" push-async "*) printf '%s\\n' "$*" >"${dir.path}/uploader-args"; echo "$GLIBC_TUNABLES" >"${dir.path}/uploader-tunables"; echo $$ >"${spool}/uploader.pid"`,
        `    sleep 0.3; echo ${NAME} >"${spool}/${NAME}.ok"; sleep 1 ;;`,
        '  *) exit 1 ;;',
        'esac',
      ].join('\n'),
      { mode: 0o755 },
    );
    writeFileSync(join(dir.path, 'pgvault.env'), 'ARCHIVE_ASYNC=yes\n');
    const call = (args: string[]) => launch(args, { PGVAULT_NODE: fakeNode });

    // Act: first for a file PostgreSQL has not marked .ready (a command run by hand), then for one it has.
    const byHand = call(['--config', 'pgvault.env', 'backup', 'wal', `pg_wal/${NAME}`]);
    const startedByHand = existsSync(join(dir.path, 'uploader-args'));
    mkdirSync(join(dir.path, 'pg_wal', 'archive_status'));
    writeFileSync(join(dir.path, 'pg_wal', 'archive_status', `${NAME}.ready`), '');
    const archived = call(['--config', 'pgvault.env', 'backup', 'wal', `pg_wal/${NAME}`]);

    // Assess
    expect([byHand, startedByHand]).toEqual([1, false]);
    expect(archived).toBe(0);
    expect(taken(join(spool, `${NAME}.ok`))).toBe(true);
    expect(readFileSync(join(dir.path, 'uploader-args'), 'utf8').trim()).toBe(
      `${dirname(LAUNCHER)}/../dist/cli/main.js --config ${join(dir.path, 'pgvault.env')} wal push-async --pg-wal ${join(dir.path, 'pg_wal')}`,
    );
    expect(existsSync(join(spool, 'uploader.log'))).toBe(true);
    expect(readFileSync(join(dir.path, 'uploader-tunables'), 'utf8').trim()).toBe(withHugePages(undefined));
  });

  it('asks malloc for huge pages for the uploader, keeping the tunables a user set', () => {
    expect(withHugePages(undefined)).toBe('glibc.malloc.hugetlb=1');
    expect(withHugePages('glibc.malloc.arena_max=2')).toBe('glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1');
    expect(withHugePages('glibc.malloc.hugetlb=0')).toBe('glibc.malloc.hugetlb=0');
  });

  it('leaves starting the uploader to the CLI when ARCHIVE_ASYNC is not on', () => {
    mkdirSync(join(dir.path, 'pg_wal', 'archive_status'));
    writeFileSync(join(dir.path, 'pg_wal', 'archive_status', `${NAME}.ready`), '');
    writeFileSync(join(dir.path, '.env'), 'ARCHIVE_ASYNC=false\n');

    const code = launch(['backup', 'wal', `pg_wal/${NAME}`], {
      PGVAULT_NODE: join(dir.path, 'missing-node'),
    });

    expect(code).toBe(127);
    expect(existsSync(join(dir.path, 'pg_wal', 'pgvault-spool', 'uploader.log'))).toBe(false);
  });

  it('sleeps until the uploader wakes it, and wakes only a launcher waiting for that file', async () => {
    // Prepare: a live "uploader" (this test's process), and a sleep that would take 60 s, so only
    // the signal can end the wait in time.
    const spool = join(dir.path, 'pg_wal', 'pgvault-spool');
    writeFileSync(join(spool, 'uploader.pid'), `${process.pid}\n`);
    mkdirSync(join(dir.path, 'bin'));
    writeFileSync(join(dir.path, 'bin', 'sleep'), '#!/bin/sh\nexec /bin/sleep 60\n', { mode: 0o755 });
    const waitingFile = join(spool, `${NAME}.waiting`);
    // A process naming the file that is not a launcher (a Node CLI would start its debugger).
    const other = spawn('/bin/sh', ['-c', 'sleep 30; true', 'stranger', `pg_wal/${NAME}`]);
    const launcher = spawn(LAUNCHER, ['backup', 'wal', `pg_wal/${NAME}`], {
      cwd: dir.path,
      env: { PATH: `${join(dir.path, 'bin')}:${process.env.PATH ?? ''}`, PGVAULT_NODE: '/bin/false' },
    });
    const exited = new Promise<number | null>((r) => launcher.on('close', (code) => r(code)));
    while (!existsSync(waitingFile) || readFileSync(waitingFile, 'utf8').trim() === '')
      await new Promise((r) => setTimeout(r, 20));

    // Act: the marker is written; a stranger's pid in the file is left alone, the launcher's is woken.
    writeFileSync(join(spool, `${NAME}.ok`), `${NAME}\n`);
    const launcherPid = readFileSync(waitingFile, 'utf8').trim();
    writeFileSync(waitingFile, `${other.pid}\n`);
    await wakeWaiter(spool, NAME);
    const strangerEnded = new Promise<boolean>((r) => other.on('exit', () => r(true)));
    const strangerAlive = !(await Promise.race([strangerEnded, new Promise((r) => setTimeout(r, 300))]));
    writeFileSync(waitingFile, `${launcherPid}\n`);
    await wakeWaiter(spool, NAME);
    const code = await exited;
    other.kill();

    // Assess
    expect(strangerAlive).toBe(true);
    expect(code).toBe(0);
    expect(taken(join(spool, `${NAME}.ok`))).toBe(true);
    expect(readFileSync(waitingFile, 'utf8')).toBe('');
  }, 20_000);

  it('restore wal: waits for a prefetcher that is still starting up, and is served by it without Node', async () => {
    // Prepare: an earlier call started a prefetcher (its pid: this test's process) that is not up yet.
    const prefetch = join(dir.path, 'pg_wal', 'pgvault-prefetch');
    mkdirSync(prefetch);
    writeFileSync(join(prefetch, 'prefetcher.starting'), `${process.pid}\n`);
    setTimeout(() => {
      writeFileSync(join(prefetch, 'prefetcher.pid'), `${process.pid}\n`);
      writeFileSync(join(prefetch, NAME), 'prefetched segment');
    }, 300);

    // Act
    const served = await launchAsync(['restore', 'wal', NAME, 'pg_wal/RECOVERYXLOG']);

    // Assess
    expect(served.code, served.stderr).toBe(0);
    expect(readFileSync(join(dir.path, 'pg_wal', 'RECOVERYXLOG'), 'utf8')).toBe('prefetched segment');
    expect(readFileSync(join(prefetch, 'want'), 'utf8')).toBe(`${NAME}\n`);
  });

  it('finds the package through a symlink (npm links node_modules/.bin/pgvault)', () => {
    const link = join(dir.path, 'pgvault-link');
    symlinkSync(LAUNCHER, link);

    const r = spawnSync(link, ['--version'], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });

    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });
});
