import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
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
import { CLUSTER_NAME, readSegment, sha256, startWalFixture, type WalFixture } from './wal-fixture';

/**
 * CLOUD_PROVIDER=gcs end to end through the built CLI (`npm run build` first), against the GCS
 * stand-in (test/helpers/gcs-server.ts: a JSON-API server written for the tests, since no GCS
 * emulator can be installed here) with the real @google-cloud/storage client, pointed at it with
 * STORAGE_EMULATOR_HOST in pgvault's config. Only the cloud copy exists (LOCAL_COPY=false), so every
 * byte restored came from the bucket: a full backup restored, a base backup and the WAL PostgreSQL's
 * archiver pushed (archive_command `pgvault backup wal`) recovered to a time by `restore pitr`
 * (restore_command reads the bucket with the config file pgvault writes for it), and WAL pushed by
 * the async uploader (ARCHIVE_ASYNC=true).
 */
let gcs: GcsStandIn;

beforeAll(async () => {
  gcs = await startGcsStandIn('pgvault-gcs');
});

afterAll(async () => {
  await gcs?.stop();
});

function gcsSettings(prefix: string): Record<string, string> {
  return {
    CLOUD_PROVIDER: 'gcs',
    CLOUD_BUCKET: gcs.bucket,
    CLOUD_PREFIX: prefix,
    STORAGE_EMULATOR_HOST: gcs.endpoint,
    LOCAL_COPY: 'false',
    GCS_STORAGE_CLASS_ARCHIVE: 'ARCHIVE',
  };
}

function objectNames(prefix: string): string[] {
  return [...gcs.objects.keys()].filter((n) => n.startsWith(prefix)).sort();
}

describe('CLOUD_PROVIDER=gcs through the CLI: full backup, base backup and PITR', () => {
  let a: ArchivingCluster;
  const batches: Batch[] = [];

  beforeAll(async () => {
    a = await startAppCluster({ cluster: 'in-gcs', extra: gcsSettings('vault') });
    batches.push(await commitBatch(a.cluster, 0));
  }, 120_000);

  afterAll(async () => {
    await a?.stop();
  });

  function pgvault(args: string[]) {
    return runPgvault(
      ['--config', a.configFile, ...args],
      { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
      a.work,
    );
  }

  it('backs up in full into the bucket and restores a database equal to the source', async () => {
    // Act
    const backup = await pgvault(['--json', 'backup', 'full', 'weekly', '--database', 'app']);
    const stored = objectNames('vault/in-gcs/full/weekly/');
    const restore = await pgvault(['--json', 'restore', 'full', 'latest', 'app_copy', '--from', 'app']);

    // Assess
    expect(backup.code, backup.stderr).toBe(0);
    expect(stored.some((n) => /\.app\.dump/.test(n))).toBe(true);
    expect(stored.some((n) => n.endsWith('.manifest.json'))).toBe(true);
    // Weekly backups go to ARCHIVE (GCS_STORAGE_CLASS_ARCHIVE) and are restored from it at once.
    const dump = stored.find((n) => /\.app\.dump/.test(n) && !n.endsWith('.manifest.json'))!;
    expect(gcs.objects.get(dump)?.storageClass).toBe('ARCHIVE');
    expect(restore.code, restore.stderr).toBe(0);
    expect(await batchesIn(a.cluster, 'app_copy')).toEqual(await batchesIn(a.cluster, 'app'));
    expect(existsSync(join(a.backupDir, 'in-gcs', 'full'))).toBe(false);
  });

  it('archives WAL into the bucket and recovers to a time between two commits from the bucket alone', async () => {
    // Prepare
    const base = await pgvault(['--json', 'backup', 'base', 'weekly']);
    batches.push(await commitBatch(a.cluster, 1));
    await sleep(1100);
    batches.push(await commitBatch(a.cluster, 2));
    await switchAndWaitArchived(a.cluster);
    const time = between(batches[1]!.commitTime, batches[2]!.commitTime);

    // Act
    const pitr = await pgvault(['--json', 'restore', 'pitr', 'auto', time, 'from_gcs', '--from', 'app']);

    // Assess
    expect(base.code, base.stderr).toBe(0);
    expect(objectNames('vault/in-gcs/wal/').length).toBeGreaterThan(1);
    expect(objectNames('vault/in-gcs/base/weekly/').length).toBeGreaterThan(0);
    expect(pitr.code, pitr.stderr).toBe(0);
    expect(await batchesIn(a.cluster, 'from_gcs')).toEqual({ 0: 50, 1: 50 });
  });
});

describe('WAL archiving into GCS with the async uploader (ARCHIVE_ASYNC=true)', () => {
  let fx: WalFixture;

  beforeAll(async () => {
    fx = await startWalFixture({ ...gcsSettings('async'), ARCHIVE_ASYNC: 'true' });
  }, 120_000);

  afterAll(async () => {
    await fx?.stop();
  });

  it('pushes segments ahead of the archiver into the bucket and restores them byte for byte', async () => {
    // Prepare
    const names = await fx.makeSegments(3);
    await fx.waitArchived(names[names.length - 1]!, 60_000);
    const restoreDir = join(fx.work, 'restore');
    mkdirSync(join(restoreDir, 'pg_wal'), { recursive: true });

    // Act
    const stored = objectNames(`async/${CLUSTER_NAME}/wal/`);
    // Run without blocking this process: the stand-in server answers from it (fx.pgvault is spawnSync).
    const restored: Array<{ result: { code: number | null; stderr: string }; bytes: Buffer }> = [];
    for (const name of names) {
      const result = await runPgvault(
        ['--config', fx.configFile, 'restore', 'wal', name, 'pg_wal/RECOVERYXLOG'],
        { PATH: process.env.PATH ?? '', HOME: '/root' },
        restoreDir,
      );
      restored.push({ result, bytes: readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG')) });
    }

    // Assess
    expect(stored).toContain(`async/${CLUSTER_NAME}/wal/archive.json`);
    const spool = join(fx.cluster.dataDir, 'pg_wal', 'pgvault-spool');
    expect(existsSync(spool) && readdirSync(spool).some((f) => f.endsWith('.ok'))).toBe(true);
    for (const [i, name] of names.entries()) {
      expect(stored).toContain(`async/${CLUSTER_NAME}/wal/00000001/${name.slice(0, 16)}/${name}.zst.enc`);
      expect(restored[i]!.result.code, restored[i]!.result.stderr).toBe(0);
      expect(sha256(restored[i]!.bytes)).toBe(sha256(readSegment(fx.cluster, name)));
    }
  });
});
