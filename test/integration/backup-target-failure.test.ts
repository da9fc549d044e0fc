import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFull } from '../../core/backup/full';
import { StorageError } from '../../core/errors';
import type { TempCluster } from '../../core/pg/cluster';
import { FileTarget } from '../../core/storage/file';
import type { PutOptions, StorageTarget } from '../../core/storage/target';
import type { Vault } from '../../core/vault';
import { startCluster } from '../helpers/pg';
import { recordingReporter, tempDir, testVault } from '../helpers/vault';

/** A target that stores small objects (keys.json) and gives up 1 MiB into a large one, like a disk filling up. */
class FailingTarget extends FileTarget {
  override put(key: string, source: Readable, options?: PutOptions): Promise<{ size: number }> {
    let seen = 0;
    const limited = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        seen += chunk.length;
        callback(seen > 1 << 20 ? new StorageError(`disk full while writing ${key}`) : null, chunk);
      },
    });
    pipeline(source, limited).catch(() => {});
    return super.put(key, limited, options);
  }
}

let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir()]);
  await cluster.psql('CREATE DATABASE big');
  await cluster.psql(
    'CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 300000) g',
    'big',
  );
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

describe('a target that fails in the middle of a dump', () => {
  it('fails the backup with the target error, stops pg_dump, and leaves no manifest', async () => {
    // Prepare
    const base = testVault(cluster, `${work.path}/vault`, { COMPRESSION: 'none' });
    const failing: StorageTarget = new FailingTarget(`${work.path}/vault`);
    const vault: Vault = { ...base, targets: [failing], reporter: recordingReporter() };

    // Act
    const attempt = backupFull(vault, { schedule: 'manual', databases: ['big'] });

    // Assess
    await expect(attempt).rejects.toThrow(/disk full while writing/);
    // pg_dump has exited (the backup waited for it); its server session goes away with it.
    let sessions = -1;
    for (let i = 0; i < 50 && sessions !== 0; i++) {
      sessions = (await cluster.query(`SELECT 1 FROM pg_stat_activity WHERE datname = 'big'`)).length;
      if (sessions !== 0) await new Promise((r) => setTimeout(r, 100));
    }
    expect(sessions).toBe(0);
    expect(await base.catalog.list()).toEqual([]);
  });
});
