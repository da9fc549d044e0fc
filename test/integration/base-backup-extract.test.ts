import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { cp, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import type { ManifestBody } from '../../core/catalog/manifest';
import { serverOsUser } from '../../core/pg/cluster';
import {
  type ArchivingCluster,
  commitBatch,
  createAppTable,
  giveToServerUser,
  PGVAULT_BIN,
  startArchivingCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * A base backup object corrupt where tar notices it before any digest is complete: uncompressed and
 * unencrypted (COMPRESSION=none), its first tar header overwritten with a zstd frame's magic, so tar
 * gives up at once ("Archive is compressed") while nothing else has read the bytes. The stored object
 * is the cause and is named (exit 3) by every path that extracts it: `restore pitr --pgdata`,
 * `verify restore` (the recovery sandbox) and `verify file` (pg_verifybackup's folder).
 */
let a: ArchivingCluster;
let base: ManifestBody;
let copies = 0;

beforeAll(async () => {
  a = await startArchivingCluster({
    cluster: 'bx',
    extra: { COMPRESSION: 'none', ENCRYPTION: 'false' },
  });
  await createAppTable(a.cluster);
  await commitBatch(a.cluster, 0);
  base = await backupBase(a.vault(), { schedule: 'weekly' });
  await commitBatch(a.cluster, 1);
  await switchAndWaitArchived(a.cluster);
}, 180_000);

afterAll(async () => {
  await a?.stop();
});

/** A copy of the repository whose base backup object starts with a zstd frame's magic. */
async function corruptCopy(): Promise<string> {
  const dir = join(a.work, `corrupt-${++copies}`);
  await cp(a.backupDir, dir, { recursive: true });
  // restore_command runs as the server's OS user and reads the WAL archive in the copy.
  const user = serverOsUser();
  if (user) execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, dir]);
  const path = join(dir, base.objects[0]!.key);
  const bytes = await readFile(path);
  bytes.set([0x28, 0xb5, 0x2f, 0xfd], 0);
  await writeFile(path, bytes);
  return dir;
}

function pgvault(backupDir: string, args: string[]) {
  const r = spawnSync(process.execPath, [PGVAULT_BIN, '--config', a.configFile, ...args], {
    encoding: 'utf8',
    env: { ...process.env, BACKUP_DIR: backupDir },
    timeout: 300_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('a base backup whose corruption tar notices first', () => {
  it('restore pitr --pgdata exits 3 naming the object, not "check the disk has room", and leaves --pgdata empty', async () => {
    // Prepare
    const dir = await corruptCopy();
    const pgdata = join(a.work, 'pitr-data');
    await mkdir(pgdata, { mode: 0o700 });
    await giveToServerUser(pgdata);

    // Act
    const r = pgvault(dir, ['restore', 'pitr', base.id, '--pgdata', pgdata, '--immediate']);

    // Assess
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toContain(`object ${base.objects[0]!.key} in file://${dir} is corrupt`);
    expect(r.stderr).toContain('sha256 differs from the manifest');
    expect(r.stderr).not.toMatch(/disk has room/);
    expect(await readdir(pgdata)).toEqual([]);
  });

  it('verify restore exits 3 naming the object', async () => {
    // Prepare
    const dir = await corruptCopy();

    // Act
    const r = pgvault(dir, ['verify', 'restore', base.id]);

    // Assess
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toContain(`object ${base.objects[0]!.key} in file://${dir} is corrupt`);
    expect(r.stderr).not.toMatch(/disk has room/);
  });

  it('verify file says the same: exit 3, the object named as corrupt', async () => {
    // Prepare
    const dir = await corruptCopy();

    // Act
    const r = pgvault(dir, ['verify', 'file', base.id]);

    // Assess
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toContain(`object ${base.objects[0]!.key} in file://${dir} is corrupt`);
    expect(r.stderr).toContain('sha256 differs from the manifest');
  });

  it('an intact object whose extraction fails (no inode left) is not called corrupt: exit 1 naming --pgdata', async () => {
    // Prepare: --pgdata on a file system with room for the bytes but not for the files.
    const pgdata = join(a.work, 'few-inodes');
    await mkdir(pgdata);
    const user = serverOsUser();
    execFileSync('mount', [
      '-t',
      'tmpfs',
      '-o',
      `size=512m,nr_inodes=64,mode=0700${user ? `,uid=${user.uid},gid=${user.gid}` : ''}`,
      'tmpfs',
      pgdata,
    ]);
    try {
      // Act
      const r = pgvault(a.backupDir, ['restore', 'pitr', base.id, '--pgdata', pgdata, '--immediate']);

      // Assess
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(`no space left writing ${pgdata}`);
      expect(r.stderr).not.toMatch(/corrupt/);
    } finally {
      execFileSync('umount', [pgdata]);
    }
  });

  it('--pgdata that is itself a mount point (a volume mounted at the data directory): restored into it, PG_VERSION last, nothing left beside it', async () => {
    // Prepare: an empty file system mounted at --pgdata; its parent is another file system.
    const pgdata = join(a.work, 'mounted-volume');
    await mkdir(pgdata);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512m,mode=0755', 'tmpfs', pgdata]);
    try {
      // Act
      const r = pgvault(a.backupDir, ['restore', 'pitr', base.id, '--pgdata', pgdata, '--immediate']);

      // Assess
      expect(r.code, r.stderr).toBe(0);
      const entries = readdirSync(pgdata);
      expect(entries).toContain('PG_VERSION');
      expect(entries).toContain('global');
      expect(entries.filter((e) => e.startsWith('.pgvault-'))).toEqual([]);
      expect(readdirSync(a.work).filter((e) => e.includes('pgvault-building'))).toEqual([]);
      // A directory PostgreSQL accepts: its own user's, mode 0700.
      const st = statSync(pgdata);
      expect(st.mode & 0o777).toBe(0o700);
      const user = serverOsUser();
      if (user) expect(st.uid).toBe(user.uid);
    } finally {
      execFileSync('umount', ['-l', pgdata]);
    }
  });

  it('the untouched backup passes verify file, pg_verifybackup included', async () => {
    // Act
    const r = pgvault(a.backupDir, ['verify', 'file', base.id]);

    // Assess
    expect(r.code, r.stderr).toBe(0);
  });
});
