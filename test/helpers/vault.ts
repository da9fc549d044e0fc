import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Config, parseConfig } from '../../core/config';
import type { TempCluster } from '../../core/pg/cluster';
import { openVault, type Reporter, type Vault } from '../../core/vault';

/** Collects what core reports, so tests can assert on warnings. */
export function recordingReporter(): Reporter & { lines: string[]; warnings: string[] } {
  const lines: string[] = [];
  const warnings: string[] = [];
  return { lines, warnings, info: (l) => lines.push(l), warn: (l) => warnings.push(l), progress: () => {} };
}

/** A config pointing at a test cluster and a fresh backup folder, as a user's .env would. */
export function testConfig(
  cluster: TempCluster,
  backupDir: string,
  extra: Record<string, string> = {},
): Config {
  return parseConfig({
    BACKUP_DIR: backupDir,
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: 'postgres',
    PARALLEL_JOBS: '2',
    ENCRYPTION_ITERATIONS: '1000',
    ...extra,
  });
}

export function testVault(
  cluster: TempCluster,
  backupDir: string,
  extra: Record<string, string> = {},
): Vault {
  return openVault(testConfig(cluster, backupDir, extra), recordingReporter());
}

export async function tempDir(prefix = 'pgvault-test-'): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  // Retries: a WAL prefetcher of a recovered test server may still be finishing a file in there.
  return { path, remove: () => rm(path, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }) };
}
