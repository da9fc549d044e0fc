import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type ObjectSource, runBackup } from '../../core/backup/run';
import { runUndoSteps } from '../../core/cleanup';
import { parseConfig } from '../../core/config';
import { openVault } from '../../core/vault';
import { recordingReporter, tempDir } from '../helpers/vault';

/** Every file under `dir`, recursively, relative to it. */
function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1));
}

describe('an interrupted backup', () => {
  let work: { path: string; remove(): Promise<void> };
  beforeEach(async () => {
    work = await tempDir();
  });
  afterEach(async () => {
    await work.remove();
  });

  it('leaves nothing behind, not even an object whose write completes while the interrupt is handled', async () => {
    // Prepare: a database dump that streams until its producer dies, and the globals, whose file is
    // in place but whose put has not returned yet (the directory fsync after the rename) when the
    // interrupt comes: the window in which an earlier build left the globals behind.
    const vault = openVault(
      parseConfig({ CLUSTER_NAME: 'main', BACKUP_DIR: work.path, COMPRESSION: 'none' }),
      recordingReporter(),
    );
    const target = vault.targets[0]!;
    const put = target.put.bind(target);
    let globalsStored: () => void = () => {};
    const globalsInPlace = new Promise<void>((r) => {
      globalsStored = r;
    });
    let releaseGlobals: () => void = () => {};
    const globalsReleased = new Promise<void>((r) => {
      releaseGlobals = r;
    });
    target.put = async (key, source, options) => {
      const result = await put(key, source, options);
      if (key.includes('.globals.')) {
        globalsStored();
        await globalsReleased;
      }
      return result;
    };
    const dump = new Readable({ read() {} });
    dump.push(Buffer.alloc(64 * 1024, 1));
    const sources: ObjectSource[] = [
      {
        part: 'app',
        kind: 'database',
        format: 'dump',
        database: 'app',
        label: 'dump app',
        open: () => ({ source: dump, upstream: [] }),
      },
      {
        part: 'globals',
        kind: 'globals',
        format: 'sql',
        label: 'roles and tablespaces',
        small: true,
        open: () => ({ source: Readable.from([Buffer.from('CREATE ROLE app;\n')]), upstream: [] }),
      },
    ];
    const backup = runBackup(vault, {
      type: 'full',
      schedule: 'manual',
      server: { version: '15.0', versionNum: 150000, major: 15, systemIdentifier: '1', superuser: true },
      tools: {},
      sources,
    });
    backup.catch(() => {});
    await globalsInPlace;
    expect(filesUnder(work.path).some((f) => f.includes('.globals.'))).toBe(true);

    // Act: the CLI's SIGINT handling, after which it exits; meanwhile the globals' put returns and
    // the dump's producer dies of the same signal.
    const undo = runUndoSteps(10_000);
    setTimeout(() => {
      releaseGlobals();
      dump.destroy(new Error('pg_dump: terminated by SIGINT'));
    }, 100);
    await undo;

    // Assess: what the exit would leave (keys.json, written before the first object, names its key).
    expect(filesUnder(work.path)).toEqual([join('main', 'keys.json')]);
    await expect(backup).rejects.toThrow(/terminated by SIGINT/);
  });
});
