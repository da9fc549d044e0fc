import { readdirSync, rmSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AzureTarget } from '../../core/storage/azure';
import { AZURITE_KEY, type AzuriteServer, startAzurite } from '../helpers/azurite';
import { runPgvault } from '../helpers/cli';
import { tempDir } from '../helpers/vault';
import {
  type ArchivingCluster,
  type Batch,
  batchesAfterRecovery,
  between,
  commitBatch,
  giveToServerUser,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * Issue 14, "Repositories", round trip with point-in-time recovery, file + Azure: a real server
 * archives its WAL through the built CLI (`backup wal %p`) into repo1 (a folder) and repo2 (Azurite,
 * its connection string given per repository); a base backup goes to both. With repo1's folder
 * removed, `restore pitr <backup> --target-time T --pgdata DIR` recovers from Azure alone.
 *
 *   base · batch 0 · T · batch 1 · switch (archived into both)
 *
 * `npm run build` first: archive_command, restore_command and the commands under test are the built CLI.
 */
const CLUSTER = 'twin';
const PREFIX = 'vault';
let azurite: AzuriteServer;
let a: ArchivingCluster;
let dirs: Awaited<ReturnType<typeof tempDir>>;
let repo1: string;
let baseId: string;
let baseOut: Awaited<ReturnType<typeof runPgvault>>;
const batches: Batch[] = [];

function pgvault(args: string[]) {
  return runPgvault(
    ['--config', a.configFile, ...args],
    { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
    a.work,
  );
}

beforeAll(async () => {
  [azurite, dirs] = await Promise.all([
    startAzurite('pgvault-repos-pitr'),
    tempDir('pgvault-repos-az-pitr-'),
  ]);
  await chmod(dirs.path, 0o755);
  repo1 = join(dirs.path, 'repo1');
  await mkdir(join(repo1, CLUSTER), { recursive: true, mode: 0o700 });
  await giveToServerUser(repo1);
  await giveToServerUser(join(repo1, CLUSTER));
  a = await startAppCluster({
    cluster: CLUSTER,
    extra: {
      REPO1_TYPE: 'file',
      REPO1_PATH: repo1,
      REPO2_TYPE: 'azure',
      REPO2_BUCKET: azurite.container,
      REPO2_PREFIX: PREFIX,
      REPO2_AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
      REPO2_HOLDS: 'full,base,wal,config,reports',
    },
  });
  baseOut = await pgvault(['--json', 'backup', 'base', 'daily']);
  baseId = (JSON.parse(baseOut.stdout) as { manifest: { id: string } }).manifest.id;
  batches.push(await commitBatch(a.cluster, 0));
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 1));
  await switchAndWaitArchived(a.cluster);
}, 240_000);

afterAll(async () => {
  await a?.stop();
  await azurite?.stop();
  await dirs?.remove();
});

/** WAL segment names (not .history / .backup) under a list of keys or paths. */
function segments(keys: Iterable<string>): string[] {
  const found: string[] = [];
  for (const k of keys) {
    const m = /(?:^|\/)([0-9A-F]{24})\.[a-z.]+$/.exec(k);
    if (m) found.push(m[1]!);
  }
  return found.sort();
}

describe('PITR with a file and an Azure repository', () => {
  it('archives every segment into both; with repo1 removed, restore pitr --pgdata recovers from Azure alone: batch 0, not batch 1', async () => {
    // Prepare
    const container = new AzureTarget({
      container: azurite.container,
      prefix: PREFIX,
      connectionString: azurite.connectionString,
    });
    const inAzure: string[] = [];
    for await (const o of container.list(`${CLUSTER}/`)) inAzure.push(o.key);
    const inRepo1 = segments(readdirSync(join(repo1, CLUSTER, 'wal'), { recursive: true }) as string[]);
    const target = between(batches[0]!.commitTime, batches[1]!.commitTime);
    rmSync(repo1, { recursive: true, force: true });
    const pgdata = join(a.work, 'from-azure');

    // Act
    const restore = await pgvault([
      '--json',
      'restore',
      'pitr',
      baseId,
      '--target-time',
      target,
      '--pgdata',
      pgdata,
    ]);
    const rows = restore.code === 0 ? await batchesAfterRecovery(pgdata) : undefined;

    // Assess
    expect(baseOut.code, baseOut.stderr).toBe(0);
    expect(inAzure).toContain(`${CLUSTER}/base/daily/${baseId}.manifest.json`);
    expect(inRepo1.length).toBeGreaterThan(0);
    expect(segments(inAzure)).toEqual(expect.arrayContaining(inRepo1));
    expect(restore.code, restore.stderr).toBe(0);
    expect(restore.stdout + restore.stderr).not.toContain(AZURITE_KEY);
    expect(rows).toEqual({ 0: 50 });
  }, 240_000);
});
