import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import type { ManifestBody } from '../../core/catalog/manifest';
import { IntegrityError } from '../../core/errors';
import { serverOsUser } from '../../core/pg/cluster';
import { parseRecoveryTarget, restorePitrToDataDirectory } from '../../core/restore/pitr';
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
 * `restore pitr --pgdata DIR` builds the data directory in a hidden sibling of DIR and renames it
 * into place only once complete: a restore that fails (a corrupt object found after the first files
 * were extracted) or is killed (SIGKILL mid-copy) never leaves a half-written directory at DIR that
 * could be started; DIR is absent, or with --force unchanged.
 */
let a: ArchivingCluster;
let base: ManifestBody;

beforeAll(async () => {
  a = await startAppCluster({ cluster: 'atomic' });
  await commitBatch(a.cluster, 0);
  // Some bulk, so that extracting the base backup takes long enough to be killed in the middle.
  await a.cluster.query(
    'CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) AS t FROM generate_series(1, 150000) g',
    [],
    'app',
  );
  base = await backupBase(a.vault(), { schedule: 'daily' });
  await switchAndWaitArchived(a.cluster, 170_000);
}, 240_000);

afterAll(async () => {
  await a?.stop();
});

/** What a restore left beside DIR: the hidden directories it builds in. */
async function strays(parent: string): Promise<string[]> {
  return (await readdir(parent)).filter(
    (f) => f.includes('.pgvault-building-') || f.includes('.pgvault-replaced-'),
  );
}

async function flippedVault(at: number): Promise<string> {
  const copy = join(a.work, `flipped-${at}`);
  await cp(a.backupDir, copy, { recursive: true, preserveTimestamps: true });
  const object = join(copy, base.objects.find((o) => o.kind === 'base')!.key);
  const bytes = await readFile(object);
  // Late in the object: tar has written most of the files when the checksum turns out wrong.
  bytes[Math.floor(bytes.length * at)]! ^= 0x10;
  await writeFile(object, bytes);
  const user = serverOsUser();
  if (user) {
    const { execFileSync } = await import('node:child_process');
    execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, copy]);
  }
  return copy;
}

describe('restore pitr --pgdata that fails mid-restore', () => {
  it('a corrupt base backup found after the first files were written: DIR stays absent, no temp directory is left', async () => {
    // Prepare
    const copy = await flippedVault(0.9);
    const parent = join(a.work, 'fail-absent');
    await mkdir(parent);
    const pgdata = join(parent, 'data');

    // Act
    const result = restorePitrToDataDirectory(
      a.vault({ BACKUP_DIR: copy }),
      base.id,
      parseRecoveryTarget({ immediate: true }),
      { pgdata },
    );

    // Assess
    await expect(result).rejects.toThrow(IntegrityError);
    expect(existsSync(pgdata)).toBe(false);
    expect(await strays(parent)).toEqual([]);
  });

  it('with --force over a directory that holds data: DIR is unchanged (its old files all there), no temp directory is left', async () => {
    // Prepare: DIR holds someone's files.
    const copy = await flippedVault(0.9);
    const parent = join(a.work, 'fail-force');
    const pgdata = join(parent, 'data');
    await mkdir(join(pgdata, 'sub'), { recursive: true });
    await writeFile(join(pgdata, 'keep.txt'), 'precious\n');
    await writeFile(join(pgdata, 'sub', 'more.txt'), 'more\n');

    // Act
    const result = restorePitrToDataDirectory(
      a.vault({ BACKUP_DIR: copy }),
      base.id,
      parseRecoveryTarget({ immediate: true }),
      { pgdata, force: true },
    );

    // Assess
    await expect(result).rejects.toThrow(IntegrityError);
    expect((await readdir(pgdata)).sort()).toEqual(['keep.txt', 'sub']);
    expect(await readFile(join(pgdata, 'keep.txt'), 'utf8')).toBe('precious\n');
    expect(await readFile(join(pgdata, 'sub', 'more.txt'), 'utf8')).toBe('more\n');
    expect(await strays(parent)).toEqual([]);
  });
});

describe('restore pitr --pgdata killed mid-copy (SIGKILL of the CLI)', () => {
  it('leaves DIR absent and only its hidden build directory, which the next run removes before it restores', async () => {
    // Prepare
    const parent = join(a.work, 'killed');
    await mkdir(parent);
    const pgdata = join(parent, 'data');
    const env = { ...process.env, PGVAULT_CONFIG: '' };
    const args = [
      PGVAULT_BIN,
      '--config',
      a.configFile,
      'restore',
      'pitr',
      base.id,
      '--immediate',
      '--pgdata',
      pgdata,
    ];

    // Act: kill -9 the CLI once extraction has begun in the hidden directory.
    const child = spawn(process.execPath, args, { env, stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    let building: string | undefined;
    const deadline = Date.now() + 120_000;
    while (building === undefined) {
      const [name] = await strays(parent);
      if (name !== undefined && existsSync(join(parent, name, 'global'))) building = name;
      else if (Date.now() > deadline || child.exitCode !== null) break;
      else await sleep(5);
    }
    child.kill('SIGKILL');
    await exited;
    await sleep(500); // tar and the decompressor end on their broken pipes

    // Assess: nothing at DIR that could be started; the half-built directory is what is left.
    expect(building, 'the CLI never started extracting into a hidden directory').toBeDefined();
    expect(existsSync(pgdata)).toBe(false);
    expect(await strays(parent)).toEqual([building]);
    expect(building).toMatch(new RegExp(`^\\.data\\.pgvault-building-${child.pid}-`));

    // Act: the next run.
    const again = await runPgvault(
      ['--config', a.configFile, 'restore', 'pitr', base.id, '--immediate', '--pgdata', pgdata],
      env,
      a.work,
    );

    // Assess: it said what it removed, restored, and left no stray.
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(
      `removed ${join(parent, building!)}, a data directory an interrupted restore (pid ${child.pid}) left half-built`,
    );
    expect(await strays(parent)).toEqual([]);
    expect(await readdir(pgdata)).toContain('recovery.signal');
    expect(await batchesAfterRecovery(pgdata)).toEqual({ 0: 50 });
  }, 240_000);
});
