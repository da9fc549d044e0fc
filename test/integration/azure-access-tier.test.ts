import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { AzureTarget } from '../../core/storage/azure';
import { type AzuriteServer, startAzurite } from '../helpers/azurite';
import { runPgvault } from '../helpers/cli';
import { createSampleData, startCluster } from '../helpers/pg';
import { tempDir } from '../helpers/vault';

/**
 * An access tier per lifecycle kind (AZURE_ACCESS_TIER_ARCHIVE, AZURE_ACCESS_TIER_EXPIRE), set by the
 * upload itself, checked on the blobs Azurite stores: `backup full weekly` and `backup config` through
 * the built CLI (`npm run build` first), and a block-list upload (staged blocks, Put Block List) through
 * the target. Azurite keeps the tier an upload sends and reports an unset one as Hot, inferred.
 */
let azurite: AzuriteServer;
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;
let configFile: string;

beforeAll(async () => {
  [azurite, cluster, work] = await Promise.all([
    startAzurite('pgvault'),
    startCluster(),
    tempDir('pgvault-azure-tier-'),
  ]);
  await createSampleData(cluster, 'shop');
  const settings = {
    BACKUP_DIR: join(work.path, 'backups'),
    CLUSTER_NAME: 'main',
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: 'postgres',
    ENCRYPTION: 'false',
    CLOUD_PROVIDER: 'azure',
    CLOUD_BUCKET: azurite.container,
    CLOUD_PREFIX: 'vault',
    LOCAL_COPY: 'false',
    AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
    AZURE_ACCESS_TIER_ARCHIVE: 'cool',
    AZURE_ACCESS_TIER_EXPIRE: 'Cold',
  };
  configFile = join(work.path, 'pgvault.conf');
  await writeFile(
    configFile,
    `${Object.entries(settings)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    { mode: 0o600 },
  );
}, 120_000);

afterAll(async () => {
  await Promise.all([cluster?.stop(), azurite?.stop(), work?.remove()]);
});

/** Every blob under `prefix` with the tier Azurite reports and whether it was inferred (never set). */
async function tiers(prefix: string): Promise<Map<string, { tier?: string; inferred?: boolean }>> {
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(
    azurite.container,
  );
  const out = new Map<string, { tier?: string; inferred?: boolean }>();
  for await (const blob of container.listBlobsFlat({ prefix })) {
    const properties = await container.getBlobClient(blob.name).getProperties();
    out.set(blob.name, { tier: properties.accessTier, inferred: properties.accessTierInferred });
  }
  return out;
}

function pgvault(args: string[]) {
  return runPgvault(
    ['--config', configFile, ...args],
    { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
    work.path,
  );
}

describe('each blob is uploaded in the access tier of its lifecycle kind', () => {
  it('weekly backup data: Cool; config backup: Cold; manifests: none set (the account default)', async () => {
    // Act
    const weekly = await pgvault(['backup', 'full', 'weekly', '--json']);
    const config = await pgvault(['backup', 'config', '--json']);

    // Assess
    expect(weekly.code, weekly.stderr).toBe(0);
    expect(config.code, config.stderr).toBe(0);
    const weeklyBlobs = [...(await tiers('vault/main/full/weekly/'))];
    const data = weeklyBlobs.filter(([name]) => !name.endsWith('.manifest.json'));
    const manifests = weeklyBlobs.filter(([name]) => name.endsWith('.manifest.json'));
    expect(data.length).toBeGreaterThan(1);
    expect(manifests).toHaveLength(1);
    for (const [name, t] of data) expect(t, name).toEqual({ tier: 'Cool', inferred: false });
    for (const [name, t] of manifests) expect(t, name).toEqual({ tier: 'Hot', inferred: true });
    const configBlobs = [...(await tiers('vault/main/config/'))];
    const configData = configBlobs.filter(([name]) => !name.endsWith('.manifest.json'));
    expect(configData.length).toBeGreaterThan(0);
    for (const [name, t] of configData) expect(t, name).toEqual({ tier: 'Cold', inferred: false });
  }, 180_000);

  it('a block-list upload (several staged blocks) commits the blob in its tier, Archive included', async () => {
    // Prepare
    const target = new AzureTarget({
      container: azurite.container,
      prefix: 'blocks',
      connectionString: azurite.connectionString,
      blockSize: 1024,
      accessTier: { default: 'Hot', archive: 'Archive' },
    });

    // Act
    await target.put(
      'main/full/monthly/full-monthly-20260101-000000.app.dump',
      Readable.from([Buffer.alloc(5000, 7)]),
    );
    await target.put('main/full/monthly/full-monthly-20260101-000000.manifest.json', Readable.from(['{}']));

    // Assess (Azurite leaves accessTierInferred unset on a committed block list: the tier is what counts)
    const blobs = await tiers('blocks/');
    expect(blobs.get('blocks/main/full/monthly/full-monthly-20260101-000000.app.dump')?.tier).toBe('Archive');
    expect(blobs.get('blocks/main/full/monthly/full-monthly-20260101-000000.app.dump')?.inferred).not.toBe(
      true,
    );
    expect(blobs.get('blocks/main/full/monthly/full-monthly-20260101-000000.manifest.json')).toEqual({
      tier: 'Hot',
      inferred: false,
    });
  }, 60_000);
});
