import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { createTargets } from '../../core/storage';
import type { StorageTarget } from '../../core/storage/target';
import { pushWalFile, type WalPushResult } from '../../core/wal/push';
import { tempDir } from '../helpers/vault';

/**
 * Issue 11, the same class of fault as "a backup whose manifest outlived its data": places where
 * pgvault called something fine (or removed something) without checking what is really stored.
 */

let work: { path: string; remove(): Promise<void> };
beforeAll(async () => {
  work = await tempDir('pgvault-whole-');
});
afterAll(async () => {
  await work.remove();
});

describe('a WAL file that changes size while it is archived', () => {
  it('never has its clean-up delete the object another archiver completed and acknowledged', async () => {
    const vaultDir = join(work.path, 'wal-vault');
    const config = parseConfig({ BACKUP_DIR: vaultDir, CLUSTER_NAME: 'grow', COMPRESSION: 'none' });
    const [target] = createTargets(config);
    const history = join(work.path, '00000002.history');
    writeFileSync(history, '1\t0/3000000\tno recovery target specified\n');
    let listed = false;
    let other: WalPushResult | undefined;
    // Archiver A's target: the file grows after A has looked it up (between its stat and its read),
    // and once A's object is stored a second archiver (B) of the same file finds it and reports it
    // archived to PostgreSQL.
    const real = target!;
    const seen: StorageTarget = {
      kind: real.kind,
      location: real.location,
      putBytes: (key, data) => real.putBytes(key, data),
      get: (key) => real.get(key),
      getBytes: (key) => real.getBytes(key),
      stat: (key) => real.stat(key),
      delete: (key) => real.delete(key),
      probe: () => real.probe(),
      list(prefix: string) {
        if (!listed && prefix.endsWith('00000002.history')) {
          listed = true;
          appendFileSync(history, '2\t0/5000000\tno recovery target specified\n');
        }
        return target!.list(prefix);
      },
      async put(...args: Parameters<StorageTarget['put']>) {
        const done = await real.put(...args);
        if (args[0].endsWith('.history')) other = await pushWalFile({ config, targets: [target!] }, history);
        return done;
      },
    };
    await expect(pushWalFile({ config, targets: [seen] }, history)).rejects.toThrow(/changed size/);
    // B archives it (again, or for the first time when A stored nothing).
    other ??= await pushWalFile({ config, targets: [target!] }, history);
    expect(other.name).toBe('00000002.history');
    // What B reported archived is there, and holds the file as it is now.
    const stored = join(vaultDir, other.key);
    expect(existsSync(stored), `${other.key} (acknowledged by the other archiver) is gone`).toBe(true);
    expect(readFileSync(stored)).toEqual(readFileSync(history));
  });
});
