import { existsSync, readdirSync, rmSync } from 'node:fs';
import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPgvault } from '../helpers/cli';
import { type GcsStandIn, startGcsStandIn } from '../helpers/gcs-server';
import {
  type ArchivingCluster,
  type Batch,
  batchesIn,
  between,
  commitBatch,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * Issue 14, "Repositories", with a file repository and a GCS one (REPO1_TYPE=file, REPO2_TYPE=gcs)
 * through the built CLI (`npm run build` first), the GCS one on the stand-in JSON-API server
 * (test/helpers/gcs-server.ts, written for the tests: no GCS emulator can be installed here) with the
 * real @google-cloud/storage client: a full backup in both, restored from GCS when the file copy is
 * gone; GCS answering 503 to every upload of a backup (exit non-zero naming repo2, the file copy
 * whole) and caught up by `repo sync`; WAL archived by PostgreSQL into both, and a base backup + PITR
 * recovered from GCS with the file repository removed. The CLI runs asynchronously: the stand-in
 * answers from this process.
 */
let gcs: GcsStandIn;
let a: ArchivingCluster;
let repo1: string;
const batches: Batch[] = [];
const CLUSTER = 'two-repos';

beforeAll(async () => {
  gcs = await startGcsStandIn('pgvault-repos');
  a = await startAppCluster({ cluster: CLUSTER });
  // repo1 is the fixture's backup folder (the server's user owns it: archive_command writes there).
  repo1 = a.backupDir;
  await appendFile(
    a.configFile,
    [
      'REPO1_TYPE=file',
      `REPO1_PATH=${repo1}`,
      'REPO2_TYPE=gcs',
      `REPO2_BUCKET=${gcs.bucket}`,
      'REPO2_PREFIX=cloud',
      `REPO2_STORAGE_EMULATOR_HOST=${gcs.endpoint}`,
      'REPO2_S3_MAX_ATTEMPTS=2',
      '',
    ].join('\n'),
  );
  batches.push(await commitBatch(a.cluster, 0));
}, 120_000);

afterAll(async () => {
  await a?.stop();
  await gcs?.stop();
});

function pgvault(args: string[]) {
  return runPgvault(
    ['--config', a.configFile, ...args],
    { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
    a.work,
  );
}

const inGcs = (prefix: string) =>
  [...gcs.objects.keys()].filter((n) => n.startsWith(`cloud/${CLUSTER}/${prefix}`)).sort();
const manifests = (names: string[]) => names.filter((n) => n.endsWith('.manifest.json'));

describe('file + gcs repositories', () => {
  it('a full backup lands in both and is restored from GCS when the file copy is gone', async () => {
    // Act
    const backup = await pgvault(['--json', 'backup', 'full', 'daily', '--database', 'app']);
    const local = readdirSync(join(repo1, CLUSTER, 'full', 'daily'));
    const cloud = inGcs('full/daily/');
    rmSync(join(repo1, CLUSTER, 'full'), { recursive: true });
    const restore = await pgvault(['--json', 'restore', 'full', 'latest', 'app_from_gcs', '--from', 'app']);

    // Assess
    expect(backup.code, backup.stderr).toBe(0);
    expect(manifests(local)).toHaveLength(1);
    expect(manifests(cloud).map((n) => n.split('/').pop())).toEqual(manifests(local));
    expect(restore.code, restore.stderr).toBe(0);
    expect(await batchesIn(a.cluster, 'app_from_gcs')).toEqual(await batchesIn(a.cluster, 'app'));
  });

  it('GCS answering 503 to every upload of a backup: exit non-zero naming repo2, the file copy whole; repo sync fills GCS', async () => {
    // Prepare
    const before = manifests(inGcs('full/weekly/'));
    const down = gcs.addFault({ name: /\/full\/weekly\//, action: { kind: 'status', status: 503 } });

    // Act
    const backup = await pgvault(['--json', 'backup', 'full', 'weekly', '--database', 'app']);
    const afterFailure = inGcs('full/weekly/');
    const hits = gcs.hits(down);
    gcs.clearFaults();
    const local = readdirSync(join(repo1, CLUSTER, 'full', 'weekly'));
    const sync = await pgvault(['--json', 'repo', 'sync', '--from', '1', '--to', '2']);
    const afterSync = inGcs('full/weekly/');

    // Assess
    expect(before).toEqual([]);
    expect(hits, backup.stderr).toBeGreaterThan(0);
    expect(backup.code).not.toBe(0);
    expect(backup.stderr).toMatch(/not in repo2 \(gs:\/\/pgvault-repos\/cloud\)/);
    expect(afterFailure).toEqual([]);
    expect(manifests(local)).toHaveLength(1);
    expect(sync.code, sync.stderr).toBe(0);
    const copied = JSON.parse(sync.stdout).copied as { kind: string; name: string }[];
    expect(copied.filter((c) => c.kind === 'backup')).toHaveLength(1);
    expect(manifests(afterSync).map((n) => n.split('/').pop())).toEqual(manifests(local));
  });

  it('WAL archived into both; a base backup + PITR with the file repository removed recovers from GCS', async () => {
    // Prepare
    const base = await pgvault(['--json', 'backup', 'base', 'daily']);
    batches.push(await commitBatch(a.cluster, 1));
    await sleep(1100);
    batches.push(await commitBatch(a.cluster, 2));
    const last = await switchAndWaitArchived(a.cluster);
    const time = between(batches[1]!.commitTime, batches[2]!.commitTime);
    const walInGcs = inGcs('wal/');
    const walLocal = existsSync(join(repo1, CLUSTER, 'wal'));
    // The file repository goes: everything it held for the cluster.
    rmSync(join(repo1, CLUSTER, 'base'), { recursive: true });
    rmSync(join(repo1, CLUSTER, 'wal'), { recursive: true });

    // Act
    const pitr = await pgvault(['--json', 'restore', 'pitr', 'auto', time, 'from_gcs', '--from', 'app']);

    // Assess
    expect(base.code, base.stderr).toBe(0);
    expect(walLocal).toBe(true);
    expect(walInGcs.some((n) => n.includes(last))).toBe(true);
    expect(inGcs('base/daily/').length).toBeGreaterThan(0);
    expect(pitr.code, pitr.stderr).toBe(0);
    expect(await batchesIn(a.cluster, 'from_gcs')).toEqual({ 0: 50, 1: 50 });
  });
});
