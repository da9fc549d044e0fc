import { existsSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { AzureTarget } from '../../core/storage/azure';
import { type AzuriteServer, startAzurite } from '../helpers/azurite';
import { runPgvault } from '../helpers/cli';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { tempDir } from '../helpers/vault';

/**
 * Issue 14, "Repositories": a file repository and an Azure one (Azurite), its connection string
 * given per repository (REPO2_AZURE_STORAGE_CONNECTION_STRING). Weekly backups land only in Azure;
 * a daily one in both, and a restore reads Azure when the file copy is gone.
 */
let azurite: AzuriteServer;
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [azurite, cluster, work] = await Promise.all([
    startAzurite('pgvault-repos'),
    startCluster(),
    tempDir('pgvault-repos-azure-'),
  ]);
  await createSampleData(cluster, 'shop');
}, 120_000);

afterAll(async () => {
  await Promise.all([cluster?.stop(), azurite?.stop(), work?.remove()]);
});

describe('file + azure repositories', () => {
  it('puts weekly backups only in Azure, daily in both, and restores from Azure when the file copy is gone', async () => {
    // Prepare
    const repo1 = join(work.path, 'local');
    const settings = {
      CLUSTER_NAME: 'main',
      PGHOST: cluster.host,
      PGPORT: String(cluster.port),
      PGUSER: cluster.superuser,
      PGDATABASE: 'postgres',
      REPO1_TYPE: 'file',
      REPO1_PATH: repo1,
      REPO1_HOLDS: 'full:daily,wal,config,indexes,reports',
      REPO2_TYPE: 'azure',
      REPO2_BUCKET: azurite.container,
      REPO2_PREFIX: 'vault',
      REPO2_AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
      REPO2_HOLDS: 'full,wal,config,reports',
    };
    const file = join(work.path, 'pgvault.conf');
    await writeFile(
      file,
      `${Object.entries(settings)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
      { mode: 0o600 },
    );
    const pgvault = (args: string[]) =>
      runPgvault(
        ['--config', file, ...args],
        { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
        work.path,
      );
    const container = new AzureTarget({
      container: azurite.container,
      prefix: 'vault',
      connectionString: azurite.connectionString,
    });
    const manifests = async (prefix: string) => {
      const keys: string[] = [];
      for await (const o of container.list(prefix)) if (o.key.endsWith('.manifest.json')) keys.push(o.key);
      return keys;
    };

    // Act
    const weekly = await pgvault(['--json', 'backup', 'full', 'weekly', '--database', 'shop']);
    const daily = await pgvault(['--json', 'backup', 'full', 'daily', '--database', 'shop']);
    const list = await pgvault(['--json', 'repo', 'list']);
    const localWeekly = existsSync(join(repo1, 'main', 'full', 'weekly'));
    const localDaily = existsSync(join(repo1, 'main', 'full', 'daily'));
    rmSync(join(repo1, 'main', 'full'), { recursive: true });
    const restore = await pgvault([
      '--json',
      'restore',
      'full',
      'latest',
      'shop_from_azure',
      '--from',
      'shop',
    ]);

    // Assess
    expect(weekly.code, weekly.stderr).toBe(0);
    expect(daily.code, daily.stderr).toBe(0);
    expect([localWeekly, localDaily]).toEqual([false, true]);
    expect(await manifests('main/full/weekly/')).toHaveLength(1);
    expect(await manifests('main/full/daily/')).toHaveLength(1);
    expect(JSON.parse(list.stdout).repositories.map((r: { type: string }) => r.type)).toEqual([
      'file',
      'azure',
    ]);
    expect(restore.code, restore.stderr).toBe(0);
    for (const table of Object.keys(SAMPLE_TABLES)) {
      expect(await tableContents(cluster, 'shop_from_azure', table), table).toBe(
        await tableContents(cluster, 'shop', table),
      );
    }
    expect(`${weekly.stderr}${daily.stderr}${list.stdout}${restore.stderr}`).not.toContain(
      azurite.accountKey,
    );
  });
});
