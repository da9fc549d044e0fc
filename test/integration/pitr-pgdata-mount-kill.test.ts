import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import type { ManifestBody } from '../../core/catalog/manifest';
import { checkDataDirectorySlot } from '../../core/restore/patroni';
import { runPgvault } from '../helpers/cli';
import {
  type ArchivingCluster,
  batchesAfterRecovery,
  commitBatch,
  PGVAULT_BIN,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * `restore pitr --pgdata DIR` killed (SIGKILL) at the step that moves the finished data directory
 * into place, then run again as an operator would, without --force. DIR a mount point (a tmpfs
 * mounted there: the build goes into a hidden folder inside it, entries moved up PG_VERSION last),
 * and DIR an ordinary directory (built beside it, renamed in). The kill point is reached through the
 * test-only pause PGVAULT_TEST_ONLY_PAUSE_AT (core/restore/datadir.ts), which holds the CLI there
 * until the test kills it.
 */
let a: ArchivingCluster;
let base: ManifestBody;
const mounted: string[] = [];

beforeAll(async () => {
  a = await startAppCluster({ cluster: 'mountkill' });
  await commitBatch(a.cluster, 0);
  base = await backupBase(a.vault(), { schedule: 'daily' });
  await switchAndWaitArchived(a.cluster, 120_000);
}, 240_000);

afterAll(async () => {
  for (const dir of mounted.reverse()) {
    try {
      execFileSync('umount', ['-l', dir]);
    } catch {
      // Already unmounted.
    }
  }
  await a?.stop();
});

const env = () => ({ ...process.env, PGVAULT_CONFIG: '', PGVAULT_TEST_ONLY_PAUSE_AT: '' });

/** An empty tmpfs mounted at a new directory (a volume mounted at the data directory). */
async function mountPoint(name: string): Promise<string> {
  const dir = join(a.work, name);
  await mkdir(dir);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512m,mode=0755', 'tmpfs', dir]);
  mounted.push(dir);
  return dir;
}

function restoreArgs(pgdata: string, ...extra: string[]): string[] {
  return ['--config', a.configFile, 'restore', 'pitr', base.id, '--immediate', '--pgdata', pgdata, ...extra];
}

/** Runs `restore pitr --pgdata` until it reaches `step`, then kills it with SIGKILL; its pid. */
async function killAt(step: string, pgdata: string, ...extra: string[]): Promise<number> {
  const pause = join(a.work, `pause-${step}-${Date.now()}`);
  await mkdir(pause);
  let stderr = '';
  const child = spawn(process.execPath, [PGVAULT_BIN, ...restoreArgs(pgdata, ...extra)], {
    env: { ...env(), PGVAULT_TEST_ONLY_PAUSE_AT: `${step}:${pause}` },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  const exited = new Promise((r) => child.once('exit', r));
  const deadline = Date.now() + 180_000;
  while (!existsSync(join(pause, step)) && child.exitCode === null && Date.now() < deadline) await sleep(20);
  const reached = existsSync(join(pause, step));
  child.kill('SIGKILL');
  await exited;
  expect(reached, `the CLI never reached ${step}: ${stderr}`).toBe(true);
  expect(await readFile(join(pause, step), 'utf8')).toBe(`${child.pid}\n`);
  return child.pid!;
}

const hidden = (entries: string[]) => entries.filter((e) => e.startsWith('.') && e.includes('.pgvault-'));

describe('restore pitr --pgdata on a mount point, killed while moving the data directory into place', () => {
  it('leaves no PG_VERSION; the next run without --force says what it found, restores anew, and PostgreSQL starts with the rows', async () => {
    // Prepare
    const pgdata = await mountPoint('vol-move');
    const pid = await killAt('inside-move', pgdata);
    const left = await readdir(pgdata);
    expect(hidden(left)).toEqual([expect.stringMatching(new RegExp(`^\\.pgvault-building-${pid}-`))]);
    expect(left.length).toBeGreaterThan(2); // some entries moved up already
    expect(left).not.toContain('PG_VERSION'); // PostgreSQL refuses to start it

    // Act
    const again = await runPgvault(restoreArgs(pgdata), env(), a.work);

    // Assess
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(
      `${pgdata} held a data directory an interrupted restore (pid ${pid}) was moving into place (`,
    );
    expect(again.stderr).toContain('removed it all; restoring anew');
    const entries = await readdir(pgdata);
    expect(hidden(entries)).toEqual([]);
    expect(entries).toContain('PG_VERSION');
    expect(await batchesAfterRecovery(pgdata)).toEqual({ 0: 50 });
    expect(hidden(await readdir(pgdata))).toEqual([]);
  }, 300_000);

  it('killed once the build was complete, before the move: the next run removes the hidden folder and restores', async () => {
    // Prepare
    const pgdata = await mountPoint('vol-built');
    const pid = await killAt('inside-built', pgdata);
    const [folder, ...rest] = await readdir(pgdata);
    expect(rest).toEqual([]);
    expect(folder).toMatch(new RegExp(`^\\.pgvault-building-${pid}-`));

    // Act
    const again = await runPgvault(restoreArgs(pgdata), env(), a.work);

    // Assess
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(
      `removed ${join(pgdata, folder!)}, a data directory an interrupted restore (pid ${pid}) left half-built`,
    );
    expect(hidden(await readdir(pgdata))).toEqual([]);
    expect(await batchesAfterRecovery(pgdata)).toEqual({ 0: 50 });
  }, 300_000);

  it('a file of someone else beside the half-moved entries: refused without --force, nothing touched; --force restores', async () => {
    // Prepare
    const pgdata = await mountPoint('vol-other');
    await killAt('inside-move', pgdata);
    await writeFile(join(pgdata, 'notes.txt'), 'mine\n');
    const before = (await readdir(pgdata)).sort();

    // Act
    const refused = await runPgvault(restoreArgs(pgdata), env(), a.work);

    // Assess
    expect(refused.code, refused.stderr).toBe(2);
    expect(refused.stderr).toContain(`--pgdata ${pgdata} is not empty`);
    expect((await readdir(pgdata)).sort()).toEqual(before);
    expect(await readFile(join(pgdata, 'notes.txt'), 'utf8')).toBe('mine\n');

    // Act
    const forced = await runPgvault(restoreArgs(pgdata, '--force'), env(), a.work);

    // Assess
    expect(forced.code, forced.stderr).toBe(0);
    const entries = await readdir(pgdata);
    expect(hidden(entries)).toEqual([]);
    expect(entries).not.toContain('notes.txt');
    expect(await batchesAfterRecovery(pgdata)).toEqual({ 0: 50 });
  }, 300_000);
});

describe('restore replica / restore bootstrap (Patroni) on the same half-moved mount point', () => {
  it('their --datadir check recovers it the same way: one line, an empty directory, nothing to replace', async () => {
    // Prepare
    const pgdata = await mountPoint('vol-patroni');
    const pid = await killAt('inside-move', pgdata);
    const said: string[] = [];

    // Act
    const slot = await checkDataDirectorySlot(pgdata, false, (line) => said.push(line));

    // Assess
    expect(slot).toEqual({ pgdata, replaces: false });
    expect(said).toEqual([
      expect.stringContaining(
        `${pgdata} held a data directory an interrupted restore (pid ${pid}) was moving into place`,
      ),
    ]);
    expect(await readdir(pgdata)).toEqual([]);
  }, 300_000);
});

describe('restore pitr --pgdata on an ordinary directory, killed at the rename into place', () => {
  it('DIR absent, the built directory beside it: the next run removes it and restores', async () => {
    // Prepare
    const parent = join(a.work, 'beside');
    await mkdir(parent);
    const pgdata = join(parent, 'data');
    const pid = await killAt('beside-move', pgdata);
    expect(existsSync(pgdata)).toBe(false);
    const [building] = await readdir(parent);
    expect(building).toMatch(new RegExp(`^\\.data\\.pgvault-building-${pid}-`));

    // Act
    const again = await runPgvault(restoreArgs(pgdata), env(), a.work);

    // Assess
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(`removed ${join(parent, building!)}`);
    expect(hidden(await readdir(parent))).toEqual([]);
    expect(await batchesAfterRecovery(pgdata)).toEqual({ 0: 50 });
  }, 300_000);

  it('with --force over a directory with files, killed between setting the old one aside and renaming the new one in: the old one is kept and named, the next run restores', async () => {
    // Prepare
    const parent = join(a.work, 'beside-force');
    const pgdata = join(parent, 'data');
    await mkdir(pgdata, { recursive: true });
    await writeFile(join(pgdata, 'keep.txt'), 'precious\n');
    const pid = await killAt('beside-move', pgdata, '--force');
    expect(existsSync(pgdata)).toBe(false);
    const old = (await readdir(parent)).find((e) => e.startsWith(`.data.pgvault-replaced-${pid}-`));
    expect(old).toBeDefined();

    // Act
    const again = await runPgvault(restoreArgs(pgdata), env(), a.work);

    // Assess
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(
      `${join(parent, old!)} is the data directory an interrupted replace (pid ${pid})`,
    );
    expect(await readFile(join(parent, old!, 'keep.txt'), 'utf8')).toBe('precious\n');
    expect((await readdir(parent)).filter((e) => e.includes('pgvault-building'))).toEqual([]);
    expect(await batchesAfterRecovery(pgdata)).toEqual({ 0: 50 });
  }, 300_000);
});
