import { mkdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { AzureTarget } from '../../core/storage/azure';
import { type AzuriteServer, startAzurite } from '../helpers/azurite';
import { runPgvault } from '../helpers/cli';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { tempDir } from '../helpers/vault';
import { CLUSTER_NAME, readSegment, sha256, startWalFixture, type WalFixture } from './wal-fixture';

/**
 * CLOUD_PROVIDER=azure end to end through the built CLI (`npm run build` first), against Azurite: a
 * full backup restored into a new database, and WAL pushed by PostgreSQL's own archiver and fetched
 * back by restore_command's `pgvault restore wal`. Only the cloud copy exists (LOCAL_COPY=false), so
 * every byte restored came from the container.
 */
let azurite: AzuriteServer;
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
let configFile: string;

beforeAll(async () => {
  [azurite, cluster, work] = await Promise.all([
    startAzurite('pgvault'),
    startCluster(),
    tempDir('pgvault-azure-'),
  ]);
  await createSampleData(cluster, 'shop');
  const settings = {
    BACKUP_DIR: join(work.path, 'backups'),
    CLUSTER_NAME: 'main',
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: 'postgres',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: 'azure round trip key, long enough',
    ENCRYPTION_ITERATIONS: '1000',
    CLOUD_PROVIDER: 'azure',
    CLOUD_BUCKET: azurite.container,
    CLOUD_PREFIX: 'vault',
    LOCAL_COPY: 'false',
    AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
  };
  configFile = join(work.path, 'pgvault.conf');
  await writeFile(
    configFile,
    `${Object.entries(settings)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    {
      mode: 0o600,
    },
  );
}, 120_000);

afterAll(async () => {
  await Promise.all([cluster?.stop(), azurite?.stop(), work?.remove()]);
});

function pgvault(args: string[]) {
  return runPgvault(
    ['--config', configFile, ...args],
    { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
    work.path,
  );
}

describe('CLOUD_PROVIDER=azure through the CLI', () => {
  it('backs up in full into the container and restores a database equal to the source', async () => {
    // Prepare
    const container = new AzureTarget({
      container: azurite.container,
      prefix: 'vault',
      connectionString: azurite.connectionString,
    });

    // Act
    const backup = await pgvault(['--json', 'backup', 'full', 'daily', '--database', 'shop']);
    const stored: string[] = [];
    for await (const info of container.list('main/full/daily/')) stored.push(info.key);
    const restore = await pgvault(['--json', 'restore', 'full', 'latest', 'shop_copy', '--from', 'shop']);

    // Assess
    expect(backup.code, backup.stderr).toBe(0);
    expect(stored.some((key) => /\.shop\.dump/.test(key))).toBe(true);
    expect(stored.some((key) => key.endsWith('.manifest.json'))).toBe(true);
    expect(restore.code, restore.stderr).toBe(0);
    for (const table of Object.keys(SAMPLE_TABLES)) {
      expect(await tableContents(cluster, 'shop_copy', table), table).toBe(
        await tableContents(cluster, 'shop', table),
      );
    }
    expect(`${backup.stdout}${backup.stderr}${restore.stdout}${restore.stderr}`).not.toContain(
      azurite.accountKey,
    );
  });
});

describe('WAL archiving into Azure', () => {
  let fx: WalFixture;

  beforeAll(async () => {
    fx = await startWalFixture({
      CLOUD_PROVIDER: 'azure',
      CLOUD_BUCKET: azurite.container,
      CLOUD_PREFIX: 'pitr',
      AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
      LOCAL_COPY: 'false',
    });
  }, 120_000);

  afterAll(async () => {
    await fx?.stop();
  });

  it('archives segments from the archiver into the container and restores them byte for byte', async () => {
    // Prepare
    const names = await fx.makeSegments(2);
    await fx.waitArchived(names[names.length - 1]!, 60_000);
    const restoreDir = join(fx.work, 'restore');
    mkdirSync(join(restoreDir, 'pg_wal'), { recursive: true });
    const container = new AzureTarget({
      container: azurite.container,
      prefix: 'pitr',
      connectionString: azurite.connectionString,
    });

    // Act
    const keys: string[] = [];
    for await (const info of container.list(`${CLUSTER_NAME}/wal/`)) keys.push(info.key);
    const restored = names.map((name) => {
      const result = fx.pgvault(['restore', 'wal', name, 'pg_wal/RECOVERYXLOG'], { cwd: restoreDir });
      return { result, bytes: readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG')) };
    });

    // Assess
    expect(keys).toContain(`${CLUSTER_NAME}/wal/archive.json`);
    for (const [i, name] of names.entries()) {
      expect(keys).toContain(`${CLUSTER_NAME}/wal/00000001/${name.slice(0, 16)}/${name}.zst.enc`);
      expect(restored[i]!.result.code, restored[i]!.result.stderr).toBe(0);
      expect(sha256(restored[i]!.bytes)).toBe(sha256(readSegment(fx.cluster, name)));
    }
  });
});
