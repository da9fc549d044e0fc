import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, cp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { backupFull } from '../../core/backup/full';
import { parseConfig } from '../../core/config';
import { parseRecoveryTarget, restorePitrDatabase } from '../../core/restore/pitr';
import { createTargets } from '../../core/storage';
import { fetchWalFile } from '../../core/wal/fetch';
import { pushWalFile } from '../../core/wal/push';
import {
  type ArchivingCluster,
  batchesIn,
  between,
  commitBatch,
  giveToServerUser,
  PGVAULT_BIN,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * One key per archive (issue 11): a writer with a key (or ENCRYPTION setting) other than the
 * archive's stores nothing and says so; restore init and verify notice a wrong key and WAL objects
 * no key of the ring opens; a key rotation (new key current, the old one retired) keeps every
 * backup restorable and verify names which key each backup needs.
 */
const CLUSTER = 'keys';
let a: ArchivingCluster;
let wrongKeyFile: string;
/** The archive's first full backup, made with key A. */
let fullA: string;

beforeAll(async () => {
  a = await startAppCluster({ cluster: CLUSTER });
  await commitBatch(a.cluster, 0);
  fullA = (await backupFull(a.vault(), { schedule: 'daily' })).id;
  // The start of point-in-time recovery through WAL of both keys (the rotation test).
  await backupBase(a.vault(), { schedule: 'weekly' });
  await archiveNow();
  await switchAndWaitArchived(a.cluster);
  wrongKeyFile = join(a.work, 'wrong-key');
  await writeFile(wrongKeyFile, 'a key that is not the archive key\n', { mode: 0o600 });
}, 180_000);

afterAll(async () => {
  await a?.stop();
});

function cli(args: string[], env: Record<string, string> = {}, cwd?: string) {
  const r = spawnSync(process.execPath, [PGVAULT_BIN, '--config', a.configFile, ...args], {
    encoding: 'utf8',
    cwd: cwd ?? a.work,
    env: { PATH: process.env.PATH ?? '', HOME: '/root', ...env },
    timeout: 300_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every file under the cluster's folder of a vault, relative, sorted (`backups`: but the WAL the server archives meanwhile). */
async function listing(dir = a.backupDir, which: 'all' | 'backups' = 'all'): Promise<string[]> {
  const root = join(dir, CLUSTER);
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(root, join(e.parentPath, e.name)))
    .filter((f) => which === 'all' || !f.startsWith('wal/'))
    .sort();
}

/** Writes a little WAL (no table), completes the segment and waits until it is archived. */
async function archiveNow(): Promise<string> {
  await a.cluster.query("SELECT pg_logical_emit_message(false, 'pgvault-keys-test', 'x')");
  return switchAndWaitArchived(a.cluster);
}

/** A copy of the repository without the newest archived segment, and that segment as a file. */
async function archiveWithoutNewest(label: string): Promise<{ name: string; path: string; copy: string }> {
  const name = await archiveNow();
  const copy = join(a.work, `copy-${label}`);
  await cp(a.backupDir, copy, { recursive: true });
  const config = parseConfig({ ...a.settings, BACKUP_DIR: copy });
  const dir = join(a.work, `segment-${label}`);
  await mkdir(dir, { recursive: true });
  const path = join(dir, name);
  const fetched = await fetchWalFile({ config, targets: createTargets(config) }, name, path);
  await rm(join(copy, fetched.key));
  return { name, path, copy };
}

describe('one key per archive: writers', () => {
  it('backup full, base, config and indexes with another key store nothing, exit 2 and say what to do', async () => {
    for (const args of [['full', 'manual'], ['base', 'manual'], ['config'], ['indexes']]) {
      // Prepare
      const before = await listing(a.backupDir, 'backups');

      // Act
      const r = cli(['backup', ...args], { ENCRYPTION_KEY_FILE: wrongKeyFile });

      // Assert
      expect(r.code, `backup ${args[0]}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/is not a key of the archive of cluster keys/);
      expect(r.stderr).toMatch(/ENCRYPTION_KEYS_RETIRED_FILE/);
      expect(await listing(a.backupDir, 'backups')).toEqual(before);
    }
  }, 300_000);

  it('ENCRYPTION=false into the encrypted archive stores nothing and exits 2', async () => {
    // Prepare
    const before = await listing(a.backupDir, 'backups');

    // Act
    const r = cli(['backup', 'config'], { ENCRYPTION: 'false' });

    // Assert
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/is encrypted but ENCRYPTION is off/);
    expect(await listing(a.backupDir, 'backups')).toEqual(before);
  }, 120_000);

  it('backup wal with another key (or ENCRYPTION=false) stores nothing under the segment name and exits 2; the right key stores it', async () => {
    // Prepare: a copy of the archive without its newest segment, which is pushed again by hand.
    const { name, path, copy } = await archiveWithoutNewest('sync');
    const spool = join(a.work, 'spool-sync');
    const env = { BACKUP_DIR: copy, SPOOL_DIR: spool };
    const stored = async () => (await listing(copy)).filter((f) => f.includes(name));

    // Act
    const wrong = cli(['backup', 'wal', path], { ...env, ENCRYPTION_KEY_FILE: wrongKeyFile });
    const off = cli(['backup', 'wal', path], { ...env, ENCRYPTION: 'false' });

    // Assert
    expect(wrong.code, wrong.stderr).toBe(2);
    expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
    expect(wrong.stderr).toMatch(/is not a key of the archive/);
    expect(off.code, off.stderr).toBe(2);
    expect(off.stderr).toMatch(/is encrypted but ENCRYPTION is off/);
    expect(await stored()).toEqual([]);
    // The right key stores it (and is remembered in the spool); another key is still refused after.
    const right = cli(['backup', 'wal', path], env);
    expect(right.code, right.stderr).toBe(0);
    expect(await stored()).toHaveLength(1);
    await rm(join(copy, (await stored())[0]!.replace(/^/, `${CLUSTER}/`)));
    const again = cli(['backup', 'wal', path], { ...env, ENCRYPTION_KEY_FILE: wrongKeyFile });
    expect(again.code, again.stderr).toBe(2);
    expect(await stored()).toEqual([]);
  }, 180_000);

  it('the async uploader with another key stores nothing and says why in its .error marker', async () => {
    // Prepare: a pg_wal of our own with one segment marked ready, and a copy of the archive lacking it.
    const { name, path, copy } = await archiveWithoutNewest('async');
    const pgWal = join(a.work, 'pg_wal-async');
    await mkdir(join(pgWal, 'archive_status'), { recursive: true });
    await copyFile(path, join(pgWal, name));
    await writeFile(join(pgWal, 'archive_status', `${name}.ready`), '');
    const marker = join(pgWal, 'pgvault-spool', `${name}.error`);

    // Act
    const uploader = spawn(
      process.execPath,
      [PGVAULT_BIN, '--config', a.configFile, 'wal', 'push-async', '--pg-wal', pgWal],
      {
        cwd: a.work,
        env: {
          PATH: process.env.PATH ?? '',
          HOME: '/root',
          BACKUP_DIR: copy,
          ENCRYPTION_KEY_FILE: wrongKeyFile,
        },
        stdio: 'ignore',
      },
    );
    let line = '';
    try {
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline && line === '') {
        if (existsSync(marker)) line = await readFile(marker, 'utf8');
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      uploader.kill('SIGKILL');
    }

    // Assert
    expect(line).toMatch(/is not a key of the archive/);
    expect(existsSync(join(pgWal, 'pgvault-spool', `${name}.ok`))).toBe(false);
    expect((await listing(copy)).filter((f) => f.includes(name))).toEqual([]);
  }, 180_000);
});

describe('one key per archive: readers', () => {
  it('restore init fails with another key and passes with the archive key', async () => {
    // Act
    const wrong = cli(['restore', 'init'], { ENCRYPTION_KEY_FILE: wrongKeyFile });
    const right = cli(['restore', 'init']);

    // Assert
    expect(wrong.code).not.toBe(0);
    expect(wrong.stdout).toMatch(/FAIL\s+encryption keys: .*key id/);
    expect(right.code, right.stdout + right.stderr).toBe(0);
    expect(right.stdout).toMatch(/ok\s+encryption keys: key id [0-9a-f]{16} current/);
  }, 120_000);

  it('verify wal and verify all report a WAL object written with another key (exit 3)', async () => {
    // Prepare: a copy of the repository whose newest segment was written with another key,
    // straight through core (no key check on this path).
    const last = await archiveNow();
    const copy = join(a.work, 'planted');
    await cp(a.backupDir, copy, { recursive: true });
    const good = parseConfig({ ...a.settings, BACKUP_DIR: copy });
    const segment = join(a.work, 'planted-segment', last);
    await mkdir(join(a.work, 'planted-segment'), { recursive: true });
    await fetchWalFile({ config: good, targets: createTargets(good) }, last, segment);
    const other = parseConfig({
      ...a.settings,
      BACKUP_DIR: join(a.work, 'other-vault'),
      ENCRYPTION_KEY_FILE: wrongKeyFile,
    });
    const pushed = await pushWalFile({ config: other, targets: createTargets(other) }, segment);
    await copyFile(join(a.work, 'other-vault', pushed.key), join(copy, pushed.key));

    // Act
    const wal = cli(['verify', 'wal'], { BACKUP_DIR: copy });
    const all = cli(['verify', 'all', '--json'], { BACKUP_DIR: copy });

    // Assert
    expect(wal.code, wal.stdout + wal.stderr).toBe(3);
    expect(wal.stdout + wal.stderr).toContain(`${last}.zst.enc`);
    expect(wal.stdout + wal.stderr).toMatch(/does not decrypt with the current keys/);
    expect(all.code, all.stderr).toBe(3);
    const report = JSON.parse(all.stdout) as { faults: { kind: string; object?: string; problem: string }[] };
    expect(report.faults).toEqual([
      expect.objectContaining({
        kind: 'wal',
        object: pushed.key,
        problem: expect.stringMatching(/does not decrypt/),
      }),
    ]);
  }, 300_000);
});

describe('key rotation', () => {
  it('a new key writes, the retired key still reads; verify all names the key each backup needs, and fails without it', async () => {
    // Prepare: rotate to key B with key A retired, in the config archive_command reads too.
    const keyA = (await readFile(a.settings.ENCRYPTION_KEY_FILE!, 'utf8')).trim();
    const keyBFile = join(a.work, 'key-b');
    const retiredFile = join(a.work, 'retired-keys');
    await writeFile(keyBFile, 'the new quarterly key\n', { mode: 0o600 });
    await writeFile(retiredFile, `${keyA}\n`, { mode: 0o600 });
    await giveToServerUser(keyBFile);
    await giveToServerUser(retiredFile);
    const rotated = {
      ...a.settings,
      ENCRYPTION_KEY_FILE: keyBFile,
      ENCRYPTION_KEYS_RETIRED_FILE: retiredFile,
    };
    await writeFile(
      a.configFile,
      `${Object.entries(rotated)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
      { mode: 0o600 },
    );
    await giveToServerUser(a.configFile);
    const oldSegment = (await readdir(join(a.backupDir, CLUSTER, 'wal'), { recursive: true }))
      .map(String)
      .filter((f) => /[0-9A-F]{24}\.zst\.enc$/.test(f))
      .sort()[0]!
      .replace(/^.*\//, '')
      .replace('.zst.enc', '');

    // Act: WAL and a new full backup under key B.
    const batch2 = await commitBatch(a.cluster, 2);
    await sleep(1100);
    const batch3 = await commitBatch(a.cluster, 3);
    await switchAndWaitArchived(a.cluster);
    const fullB = cli(['backup', 'full', 'manual', '--json']);
    expect(fullB.code, fullB.stderr).toBe(0);
    const idB = (JSON.parse(fullB.stdout) as { manifest: { id: string } }).manifest.id;
    const restoreA = cli(['restore', 'full', fullA, 'app_a', '--from', 'app']);
    const restoreB = cli(['restore', 'full', idB, 'app_b', '--from', 'app']);
    const oldWal = cli(['restore', 'wal', oldSegment, join(a.work, 'old-segment')]);
    const verified = cli(['verify', 'all', '--json']);
    // Point-in-time recovery from the base backup of key A through WAL of keys A and B.
    const pitr = await restorePitrDatabase(
      a.vault(rotated),
      'auto',
      parseRecoveryTarget({ time: between(batch2.commitTime, batch3.commitTime) }),
      { database: 'app_pitr', from: 'app' },
    );
    await writeFile(retiredFile, '\n');
    const withoutA = cli(['verify', 'all', '--json']);

    // Assert: both backups restore, the first with the retired key.
    expect(restoreA.code, restoreA.stderr).toBe(0);
    expect(restoreB.code, restoreB.stderr).toBe(0);
    expect(await batchesIn(a.cluster, 'app_a')).toEqual({ 0: 50 });
    expect(await batchesIn(a.cluster, 'app_b')).toEqual(await batchesIn(a.cluster, 'app'));
    expect(oldWal.code, oldWal.stderr).toBe(0);
    expect(pitr.backupId).toMatch(/^base-weekly-/);
    expect(await batchesIn(a.cluster, 'app_pitr')).toEqual({ 0: 50, 2: 50 });
    const keys = JSON.parse(await readFile(join(a.backupDir, CLUSTER, 'keys.json'), 'utf8')) as {
      keys: { id: string }[];
    };
    expect(keys.keys).toHaveLength(2);
    const [idOfA, idOfB] = keys.keys.map((k) => k.id);
    expect(JSON.stringify(keys)).not.toContain(keyA);
    expect(verified.code, verified.stdout).toBe(0);
    const report = JSON.parse(verified.stdout) as {
      copies: { backup: string; keyId?: string; keyInRing?: boolean }[];
      faults: unknown[];
    };
    expect(report.faults).toEqual([]);
    expect(report.copies.find((c) => c.backup === fullA)).toMatchObject({ keyId: idOfA, keyInRing: true });
    expect(report.copies.find((c) => c.backup === idB)).toMatchObject({ keyId: idOfB, keyInRing: true });
    expect(withoutA.code).toBe(3);
    const faults = (JSON.parse(withoutA.stdout) as { faults: { backup?: string; problem: string }[] }).faults;
    expect(faults).toContainEqual(
      expect.objectContaining({ backup: fullA, problem: expect.stringContaining(`needs key id ${idOfA}`) }),
    );
  }, 400_000);
});
