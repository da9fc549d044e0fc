import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFull } from '../../core/backup/full';
import type { TempCluster } from '../../core/pg/cluster';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { tempDir, testVault } from '../helpers/vault';

/** A disaster must never depend on pgvault running: openssl, the compressor and pg_restore suffice. */
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir()]);
  await createSampleData(cluster, 'app');
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

describe.each([
  { compression: 'zstd', decompress: 'zstd -d -q', encrypted: true },
  { compression: 'gzip', decompress: 'gunzip', encrypted: true },
  { compression: 'xz', decompress: 'unxz', encrypted: false },
])('a $compression backup (encrypted=$encrypted)', ({ compression, decompress, encrypted }) => {
  it('opens with openssl + the compressor + pg_restore alone', async () => {
    // Prepare
    const dir = `${work.path}/${compression}`;
    const key = `disaster key ${compression}`;
    const vault = testVault(cluster, dir, {
      COMPRESSION: compression,
      ENCRYPTION: String(encrypted),
      ENCRYPTION_KEY: key,
    });
    const manifest = await backupFull(vault, { schedule: 'manual', databases: ['app'] });
    const object = manifest.objects.find((o) => o.database === 'app')!;
    const file = join(dir, object.key);
    const target = `by_hand_${compression}`;
    await cluster.psql(`CREATE DATABASE ${target}`);

    // Act: exactly what the README tells an operator to type (the key travels in the environment).
    const iter = manifest.encryption?.iterations;
    const decrypt = encrypted
      ? `openssl enc -d -aes-256-cbc -pbkdf2 -iter ${iter} -md sha256 -pass env:BACKUP_KEY -in "$F"`
      : 'cat "$F"';
    execFileSync(
      'bash',
      ['-c', `set -o pipefail; ${decrypt} | ${decompress} > "$OUT" && pg_restore -d "$DB" "$OUT"`],
      {
        env: {
          ...process.env,
          F: file,
          OUT: `${dir}/app.dump`,
          BACKUP_KEY: key,
          DB: target,
          PGHOST: cluster.host,
          PGPORT: String(cluster.port),
          PGUSER: cluster.superuser,
        },
      },
    );
    const sha = execFileSync('sha256sum', [file], { encoding: 'utf8' }).split(' ')[0];

    // Assess
    expect(sha).toBe(object.sha256);
    for (const t of Object.keys(SAMPLE_TABLES))
      expect(await tableContents(cluster, target, t)).toBe(await tableContents(cluster, 'app', t));
  });
});
