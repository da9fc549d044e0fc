import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { archiveKeysKey } from '../../core/catalog/keys';
import { syncRepositories } from '../../core/catalog/sync';
import { parseConfig } from '../../core/config';
import type { ObjectInfo } from '../../core/storage/target';
import { openVault } from '../../core/vault';

/*
 * `repo sync` racing another writer of the destination: the destination gains the object after sync
 * listed it (a key rotation writing keys.json, archive_command storing a segment, a second sync).
 * Its writes are create-only, as every writer of these objects is: what the other writer stored
 * stays, and sync does not count it as copied.
 */
let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('repo sync against a destination that gained the object after the listing', () => {
  it("leaves the destination's keys.json as that writer stored it", async () => {
    // Prepare
    dir = await mkdtemp(join(tmpdir(), 'pgvault-sync-race-'));
    const config = parseConfig({
      CLUSTER_NAME: 'main',
      REPO1_TYPE: 'file',
      REPO1_PATH: join(dir, 'one'),
      REPO2_TYPE: 'file',
      REPO2_PATH: join(dir, 'two'),
    });
    const vault = openVault(config);
    const [one, two] = vault.targets;
    const key = archiveKeysKey('main');
    await one!.putBytes(key, JSON.stringify({ from: 'repo1' }));
    await two!.putBytes(key, JSON.stringify({ from: 'the rotation that wrote repo2 meanwhile' }));
    // The listing sync saw: taken before the other writer stored its keys.json.
    const list = two!.list.bind(two);
    two!.list = async function* (prefix: string): AsyncIterable<ObjectInfo> {
      for await (const o of list(prefix)) if (o.key !== key) yield o;
    } as typeof list;

    // Act
    const result = await syncRepositories(vault, { from: 1, to: 2 });

    // Assess
    expect(JSON.parse((await two!.getBytes(key)).toString('utf8'))).toEqual({
      from: 'the rotation that wrote repo2 meanwhile',
    });
    expect(result.copied.filter((c) => c.name === key)).toEqual([]);
    expect(result.failed).toEqual([]);
    expect(await readFile(join(dir, 'two', key), 'utf8')).toContain('meanwhile');
  });
});
