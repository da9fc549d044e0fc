import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { AzureTarget } from '../../core/storage/azure';
import { GcsTarget } from '../../core/storage/gcs';
import { S3Target } from '../../core/storage/s3';
import type { StorageTarget } from '../../core/storage/target';
import { AZURITE_ACCOUNT, AZURITE_KEY, type AzuriteServer, startAzurite } from '../helpers/azurite';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type GcsStandIn, startGcsStandIn } from '../helpers/gcs-server';
import { startCluster, tableContents } from '../helpers/pg';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { tempDir } from '../helpers/vault';

/**
 * Faults in the middle of a backup's data upload, per cloud target, through the real CLI
 * (`pgvault backup full`, `npm run build` first) against a throwaway PostgreSQL:
 * - gcs: the real @google-cloud/storage client against the GCS stand-in (test/helpers/gcs-server.ts,
 *   a JSON-API server written for the tests: no GCS emulator can be installed here), whose fault
 *   switches reset, answer 500/503 or stall the upload's chunk requests;
 * - azure: Azurite behind the fault proxy (test/helpers/fault-proxy.ts);
 * - s3: s3rver behind the fault proxy (WAL faults are in wal-faults.test.ts, manifest and claim faults
 *   in backup-concurrency.test.ts; these are the data upload's).
 * Each fault sticks to the dump's upload (its object name), so the run gets as far as the data.
 * Invariants: the run exits non-zero with one line naming the provider's failure; nothing of the
 * upload is visible (no object, no manifest of that run); a retryable 503 that then passes gives a
 * backup that restores equal to the source.
 */

type Fault = 'reset' | 'status500' | 'stall' | 'flaky503';

interface Provider {
  readonly name: 'gcs' | 'azure' | 's3';
  readonly settings: Record<string, string>;
  /** Injects the fault into the data upload (objects whose name holds `.big.dump`); returns its index. */
  inject(fault: Fault): number;
  /** How many requests fault `index` answered. */
  hits(index: number): number;
  clear(): void;
  /** The target as pgvault sees it, to list what is visible. */
  target(): StorageTarget;
  /** The one line the failed run must end with, per fault. */
  expected: Record<Exclude<Fault, 'flaky503'>, RegExp>;
  /** Extra checks of what the store holds after a failed upload (no open GCS session, say). */
  leftovers(): string[];
  stop(): Promise<void>;
}

const DUMP = /\.big\.dump/;

async function gcsProvider(): Promise<Provider> {
  const server: GcsStandIn = await startGcsStandIn('faults');
  return {
    name: 'gcs',
    settings: {
      CLOUD_PROVIDER: 'gcs',
      CLOUD_BUCKET: server.bucket,
      STORAGE_EMULATOR_HOST: server.endpoint,
    },
    inject(fault) {
      const action =
        fault === 'reset'
          ? ({ kind: 'reset', afterBytes: 1000 } as const)
          : fault === 'stall'
            ? ({ kind: 'stall' } as const)
            : ({ kind: 'status', status: fault === 'status500' ? 500 : 503 } as const);
      return server.addFault({
        request: 'chunk',
        name: DUMP,
        ...(fault === 'flaky503' ? { times: 2 } : {}),
        action,
      });
    },
    hits: (index) => server.hits(index),
    clear: () => server.clearFaults(),
    target: () => new GcsTarget({ bucket: server.bucket, prefix: 'vault', endpoint: server.endpoint }),
    expected: {
      reset:
        /^Google Cloud Storage at http:\/\/127\.0\.0\.1:\d+ dropped the connection \(ECONNRESET\) trying to upload main\/full\/manual\/\S+\.big\.dump\S* in gs:\/\/faults\/vault; check STORAGE_EMULATOR_HOST and the network$/,
      status500:
        /^GCS could not upload main\/full\/manual\/\S+\.big\.dump\S* in gs:\/\/faults\/vault \(500: injected by the GCS stand-in \(500\); gave up after its retries\)$/,
      stall:
        /^Google Cloud Storage at http:\/\/127\.0\.0\.1:\d+ did not answer in time: upload main\/full\/manual\/\S+\.big\.dump\S* in gs:\/\/faults\/vault timed out after 2 s \(TimeoutError\)/,
    },
    leftovers: () => (server.openSessions() > 0 ? [`${server.openSessions()} open upload session(s)`] : []),
    stop: () => server.stop(),
  };
}

async function azureProvider(): Promise<Provider> {
  const azurite: AzuriteServer = await startAzurite('faults');
  const proxy: FaultProxy = await startFaultProxy(azurite.endpoint.replace(/\/devstoreaccount1$/, ''));
  const endpoint = `${proxy.endpoint}/${AZURITE_ACCOUNT}`;
  return {
    name: 'azure',
    settings: {
      CLOUD_PROVIDER: 'azure',
      CLOUD_BUCKET: azurite.container,
      AZURE_STORAGE_CONNECTION_STRING: `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=${endpoint};`,
    },
    inject(fault) {
      const action =
        fault === 'reset'
          ? ({ kind: 'reset-request', afterBytes: 1000 } as const)
          : fault === 'stall'
            ? ({ kind: 'stall' } as const)
            : ({ kind: 'status', status: fault === 'status500' ? 500 : 503 } as const);
      return proxy.addRule({
        method: 'PUT',
        path: DUMP,
        ...(fault === 'flaky503' ? { times: 2 } : {}),
        action,
      });
    },
    hits: (index) => proxy.hits(index),
    clear: () => proxy.clearRules(),
    target: () =>
      new AzureTarget({
        container: azurite.container,
        prefix: 'vault',
        connectionString: azurite.connectionString,
      }),
    expected: {
      reset:
        /^Azure Blob Storage at http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1 cannot be reached \(ECONNRESET\) trying to upload main\/full\/manual\/\S+\.big\.dump\S* in azure:\/\/devstoreaccount1\/faults\/vault; check AZURE_STORAGE_ACCOUNT \(or the connection string's endpoint\) and the network$/,
      status500:
        /^Azure could not upload main\/full\/manual\/\S+\.big\.dump\S* in azure:\/\/devstoreaccount1\/faults\/vault \(/,
      stall:
        /^Azure Blob Storage at http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1 did not answer in time: upload main\/full\/manual\/\S+\.big\.dump\S* in azure:\/\/devstoreaccount1\/faults\/vault timed out after 2 s \(TimeoutError\)/,
    },
    leftovers: () => [],
    stop: async () => {
      await proxy.stop();
      await azurite.stop();
    },
  };
}

async function s3Provider(): Promise<Provider> {
  const s3: S3TestServer = await startS3Server('faults');
  const proxy: FaultProxy = await startFaultProxy(s3.endpoint);
  return {
    name: 's3',
    settings: {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      S3_ENDPOINT: proxy.endpoint,
      AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    },
    inject(fault) {
      const action =
        fault === 'reset'
          ? ({ kind: 'reset-request', afterBytes: 1000 } as const)
          : fault === 'stall'
            ? ({ kind: 'stall' } as const)
            : ({ kind: 'status', status: fault === 'status500' ? 500 : 503 } as const);
      return proxy.addRule({
        method: 'PUT',
        path: DUMP,
        ...(fault === 'flaky503' ? { times: 2 } : {}),
        action,
      });
    },
    hits: (index) => proxy.hits(index),
    clear: () => proxy.clearRules(),
    target: () =>
      new S3Target({
        bucket: s3.bucket,
        prefix: 'vault',
        region: s3.region,
        endpoint: s3.endpoint,
        credentials: s3.credentials,
      }),
    expected: {
      reset:
        /^S3 endpoint http:\/\/127\.0\.0\.1:\d+ dropped the connection \(ECONNRESET\) trying to upload main\/full\/manual\/\S+\.big\.dump\S* in s3:\/\/faults\/vault; check S3_ENDPOINT and the network$/,
      status500:
        /^S3 could not upload main\/full\/manual\/\S+\.big\.dump\S* in s3:\/\/faults\/vault \(InternalError: /,
      stall:
        /^S3 endpoint http:\/\/127\.0\.0\.1:\d+ did not answer in time: upload main\/full\/manual\/\S+\.big\.dump\S* in s3:\/\/faults\/vault timed out after 2 s/,
    },
    leftovers: () => [],
    stop: async () => {
      await proxy.stop();
      await s3.stop();
    },
  };
}

let cluster: TempCluster;

beforeAll(async () => {
  cluster = await startCluster();
  await cluster.psql('CREATE DATABASE big');
  // About 10 MB of dump, most of it incompressible: several chunks, blocks or parts.
  await cluster.psql(
    'CREATE TABLE t AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h FROM generate_series(1, 150000) g',
    'big',
  );
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
});

describe.each([
  ['gcs', gcsProvider],
  ['azure', azureProvider],
  ['s3', s3Provider],
] as const)('a data upload fault during `backup full`: %s', (_name, start) => {
  let provider: Provider;
  let work: Awaited<ReturnType<typeof tempDir>>;
  let configFile: string;

  beforeAll(async () => {
    [provider, work] = await Promise.all([start(), tempDir(`pgvault-faults-${_name}-`)]);
    configFile = join(work.path, 'pgvault.conf');
    const settings = {
      BACKUP_DIR: join(work.path, 'backups'),
      CLUSTER_NAME: 'main',
      PGHOST: cluster.host,
      PGPORT: String(cluster.port),
      PGUSER: cluster.superuser,
      PGDATABASE: 'postgres',
      COMPRESSION: 'none',
      CLOUD_PREFIX: 'vault',
      LOCAL_COPY: 'false',
      S3_REQUEST_TIMEOUT: '2',
      S3_MAX_ATTEMPTS: '3',
      ...provider.settings,
    };
    await writeFile(
      configFile,
      `${Object.entries(settings)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
      { mode: 0o600 },
    );
  }, 120_000);

  afterAll(async () => {
    await Promise.all([provider?.stop(), work?.remove()]);
  });

  function pgvault(args: string[]) {
    return runPgvault(
      ['--config', configFile, ...args],
      { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
      work.path,
    );
  }

  async function visible(): Promise<string[]> {
    const keys: string[] = [];
    for await (const info of provider.target().list('main/')) keys.push(info.key);
    return keys;
  }

  it.each(['reset', 'status500', 'stall'] as const)(
    'on %s: the run fails naming the failure in one line, and nothing of the upload is visible',
    async (fault) => {
      // Prepare
      provider.clear();
      const index = provider.inject(fault);

      // Act
      const run = await pgvault(['backup', 'full', 'manual', '--database', 'big']);
      expect(provider.hits(index)).toBeGreaterThan(0);
      const left = await visible();

      // Assess
      expect(run.code, run.stderr).not.toBe(0);
      const lines = run.stderr.trim().split('\n');
      const last = lines[lines.length - 1]!.replace(/^pgvault: (error: )?/, '');
      expect(last).toMatch(provider.expected[fault]);
      expect(left.filter((k) => k.includes('.big.dump') || k.endsWith('.manifest.json'))).toEqual([]);
      expect(provider.leftovers()).toEqual([]);
    },
    90_000,
  );

  it('on 503 twice, then answers: the retried upload makes a backup that restores equal to the source', async () => {
    // Prepare
    provider.clear();
    const fault = provider.inject('flaky503');

    // Act
    const backup = await pgvault(['backup', 'full', 'manual', '--database', 'big']);
    const answered503 = provider.hits(fault);
    provider.clear();
    const restore = await pgvault(['restore', 'full', 'latest', `big_${_name}`, '--from', 'big']);

    // Assess
    expect(backup.code, backup.stderr).toBe(0);
    expect(answered503).toBe(2);
    const stored = await visible();
    expect(stored.filter((k) => k.includes('.big.dump'))).toHaveLength(1);
    expect(stored.filter((k) => k.endsWith('.manifest.json'))).toHaveLength(1);
    expect(restore.code, restore.stderr).toBe(0);
    expect(await tableContents(cluster, `big_${_name}`, 't')).toBe(await tableContents(cluster, 'big', 't'));
  }, 120_000);
});
