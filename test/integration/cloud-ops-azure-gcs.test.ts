import { existsSync } from 'node:fs';
import { appendFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { AzureTarget } from '../../core/storage/azure';
import { type AzuriteServer, startAzurite } from '../helpers/azurite';
import { runPgvault } from '../helpers/cli';
import { type GcsStandIn, startGcsStandIn } from '../helpers/gcs-server';
import { createSampleData, startCluster } from '../helpers/pg';
import { tempDir } from '../helpers/vault';

/**
 * Issue 14: drills, the report, capacity and retention through the Azure target (Azurite) and the
 * GCS target (the stand-in, test/helpers/gcs-server.ts) exactly as through s3, with the cloud copy
 * only (LOCAL_COPY=false), through the built CLI (`npm run build` first). One throwaway PostgreSQL
 * with sample data; per provider: two daily full backups, `drill`, `verify all`, `verify report`,
 * `verify capacity` (STORAGE_QUOTA_GB set) and `backup retention` (RETENTION_DAYS=1), every result
 * checked in what the bucket / container lists.
 */
interface Provider {
  readonly name: 'azure' | 'gcs';
  /** The provider's keys for pgvault's config. */
  readonly settings: Record<string, string>;
  /** Keys of the objects under `prefix` in the cloud target (relative to CLOUD_PREFIX). */
  list(prefix: string): Promise<string[]>;
  read(key: string): Promise<string>;
  stop(): Promise<void>;
}

const PREFIX = 'vault';

async function azureProvider(): Promise<Provider> {
  const azurite: AzuriteServer = await startAzurite('pgvault-ops');
  const target = new AzureTarget({
    container: azurite.container,
    prefix: PREFIX,
    connectionString: azurite.connectionString,
  });
  return {
    name: 'azure',
    settings: {
      CLOUD_PROVIDER: 'azure',
      CLOUD_BUCKET: azurite.container,
      AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
    },
    async list(prefix) {
      const keys: string[] = [];
      for await (const o of target.list(prefix)) keys.push(o.key);
      return keys.sort();
    },
    async read(key) {
      return (await target.getBytes(key)).toString('utf8');
    },
    stop: () => azurite.stop(),
  };
}

async function gcsProvider(): Promise<Provider> {
  const gcs: GcsStandIn = await startGcsStandIn('pgvault-ops');
  return {
    name: 'gcs',
    settings: { CLOUD_PROVIDER: 'gcs', CLOUD_BUCKET: gcs.bucket, STORAGE_EMULATOR_HOST: gcs.endpoint },
    async list(prefix) {
      return [...gcs.objects.keys()]
        .filter((n) => n.startsWith(`${PREFIX}/${prefix}`))
        .map((n) => n.slice(PREFIX.length + 1))
        .sort();
    },
    async read(key) {
      return gcs.objects.get(`${PREFIX}/${key}`)!.data.toString('utf8');
    },
    stop: () => gcs.stop(),
  };
}

let cluster: TempCluster;

beforeAll(async () => {
  cluster = await startCluster();
  await createSampleData(cluster, 'shop');
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
});

describe.each([
  ['azure', azureProvider],
  ['gcs', gcsProvider],
] as const)(
  'CLOUD_PROVIDER=%s, cloud copy only: drill, verify all, report, capacity, retention',
  (name, start) => {
    let provider: Provider;
    let work: Awaited<ReturnType<typeof tempDir>>;
    let configFile: string;
    const ids: string[] = [];

    beforeAll(async () => {
      [provider, work] = await Promise.all([start(), tempDir(`pgvault-ops-${name}-`)]);
      const settings = {
        BACKUP_DIR: join(work.path, 'backups'),
        CLUSTER_NAME: 'main',
        PGHOST: cluster.host,
        PGPORT: String(cluster.port),
        PGUSER: cluster.superuser,
        PGDATABASE: 'postgres',
        ENCRYPTION: 'true',
        ENCRYPTION_KEY: 'cloud operations key, long enough',
        ENCRYPTION_ITERATIONS: '1000',
        CLOUD_PREFIX: PREFIX,
        LOCAL_COPY: 'false',
        STORAGE_QUOTA_GB: '0.01',
        ...provider.settings,
      };
      configFile = join(work.path, 'pgvault.conf');
      const lines = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
      await writeFile(configFile, `${lines.join('\n')}\n`, { mode: 0o600 });
    }, 120_000);

    afterAll(async () => {
      await Promise.all([provider?.stop(), work?.remove()]);
    });

    function pgvault(args: string[]) {
      return runPgvault(
        ['--config', configFile, '--json', ...args],
        { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
        work.path,
      );
    }

    function manifests(keys: string[]): string[] {
      return keys.filter((k) => k.endsWith('.manifest.json'));
    }

    it('backs up twice (daily) into the cloud target only', async () => {
      for (let i = 0; i < 2; i++) {
        // Act
        const r = await pgvault(['backup', 'full', 'daily', '--database', 'shop']);

        // Assess
        expect(r.code, r.stderr).toBe(0);
        ids.push(JSON.parse(r.stdout).manifest.id);
      }
      const stored = manifests(await provider.list('main/full/daily/'));
      expect(stored).toHaveLength(2);
      for (const id of ids) expect(stored.some((k) => k.includes(id))).toBe(true);
      expect(existsSync(join(work.path, 'backups', 'main', 'full'))).toBe(false);
    });

    it('drill restores the newest backup, passes, and stores its record in the cloud target', async () => {
      // Act
      const r = await pgvault(['drill']);

      // Assess
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout);
      expect(out).toMatchObject({ ok: true, kind: 'drill', backupId: ids[1] });
      const records = await provider.list('main/drills/');
      expect(records.length, r.stderr).toBeGreaterThan(0);
      const stored = await Promise.all(records.map(async (k) => JSON.parse(await provider.read(k))));
      expect(stored.find((s) => s.startedAt === out.record.startedAt)).toMatchObject({
        ok: true,
        kind: 'drill',
        backupId: ids[1],
      });
    });

    it('verify all passes over both backups in the cloud target', async () => {
      // Act
      const r = await pgvault(['verify', 'all']);

      // Assess
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(JSON.parse(r.stdout).ok).toBe(true);
    });

    it('verify report stores a report in the cloud target whose JSON is ok and counts both backups', async () => {
      // Act
      const r = await pgvault(['verify', 'report']);

      // Assess
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      const reports = await provider.list('main/reports/');
      const json = reports.find((k) => k.endsWith('.json'));
      expect(json, reports.join(', ')).toBeDefined();
      expect(reports.some((k) => k.endsWith('.html'))).toBe(true);
      const stored = JSON.parse(await provider.read(json!));
      expect(stored.status, JSON.stringify(stored.failing)).toBe('ok');
      expect(stored.totals.count).toBe(2);
    });

    it('verify capacity measures the cloud target against STORAGE_QUOTA_GB', async () => {
      // Act
      const r = await pgvault(['verify', 'capacity']);

      // Assess
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      const report = JSON.parse(r.stdout);
      expect(report.targets).toHaveLength(1);
      const t = report.targets[0];
      expect(t.error).toBeUndefined();
      expect(t.kind).toBe(name);
      expect(t.basis).toBe('quota');
      const quota = Math.round(0.01 * 1024 ** 3);
      expect(t.limitBytes).toBe(quota);
      // What the listing of the cloud target holds for this cluster, against the quota.
      const keys = await provider.list('main/');
      expect(t.objects).toBe(keys.length);
      expect(t.usedBytes).toBeGreaterThan(0);
      expect(t.occupiedBytes).toBe(t.usedBytes);
      expect(t.freeBytes).toBe(quota - t.usedBytes);
      expect(t.percent).toBe(Math.round((1000 * t.usedBytes) / quota) / 10);
      expect(t.percent).toBeGreaterThan(0);
      expect(t.writtenBytesPerDay).toBeGreaterThan(0);
      expect(t.daysUntilFull).toBeGreaterThan(0);
    });

    it('backup retention with RETENTION_DAYS=1 keeps the newer daily backup and deletes the older', async () => {
      // Prepare
      const before = manifests(await provider.list('main/full/daily/'));
      await appendFile(configFile, 'RETENTION_DAYS=1\n');

      // Act
      const r = await pgvault(['backup', 'retention']);

      // Assess
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(JSON.parse(r.stdout).deleted.backups).toEqual([ids[0]]);
      const after = await provider.list('main/full/daily/');
      expect(before).toHaveLength(2);
      expect(after.filter((k) => k.includes(ids[0]!))).toEqual([]);
      expect(manifests(after)).toHaveLength(1);
      expect(manifests(after)[0]).toContain(ids[1]);
    });
  },
);
