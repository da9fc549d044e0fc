/**
 * `npm run demo`: the main job end to end on a throwaway PostgreSQL cluster. Loads sample data,
 * takes a zstd + encrypted full backup into a local folder, verifies it, drops a table, restores
 * it from the backup, checks the data is what it was, and prints a short summary.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatBytes, formatDuration, terminalReporter } from '../cli/output';
import { backupFull } from '../core/backup/full';
import { parseConfig } from '../core/config';
import { errorMessage, PgVaultError } from '../core/errors';
import { TempCluster } from '../core/pg/cluster';
import { restorePartial } from '../core/restore/partial';
import { openVault } from '../core/vault';
import { verifyBackupFile } from '../core/verify/file';

const SAMPLE_SQL = `
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text UNIQUE, profile jsonb);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
  placed_at timestamptz NOT NULL, total numeric(12,2) NOT NULL, note text);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE TABLE embeddings (id bigserial PRIMARY KEY, order_id bigint REFERENCES orders(id), v float4[]);
INSERT INTO customers (name, email, profile)
  SELECT 'customer ' || g, 'c' || g || '@example.com', jsonb_build_object('tier', g % 5, 'tags', jsonb_build_array('a', g % 7))
  FROM generate_series(1, 20000) g;
INSERT INTO orders (customer_id, placed_at, total, note)
  SELECT 1 + (g % 20000), now() - (g || ' minutes')::interval, (g % 997) * 1.25,
         CASE WHEN g % 10 = 0 THEN E'gift\\nwrap "please"' END
  FROM generate_series(1, 100000) g;
INSERT INTO embeddings (order_id, v)
  SELECT g, ARRAY(SELECT (random())::float4 FROM generate_series(1, 32)) FROM generate_series(1, 20000) g;
`;

const CHECKSUM_SQL = `SELECT count(*)::text || ':' || md5(string_agg(o::text, ',' ORDER BY o.id)) AS sum FROM orders o`;

async function main(): Promise<void> {
  const t0 = Date.now();
  const say = (line: string) => process.stdout.write(`${line}\n`);
  say(
    'pgvault demo: throwaway cluster → encrypted zstd backup → verify → drop a table → restore it → validate',
  );
  // PG_BIN_DIR points the demo at another PostgreSQL installation, as it does pgvault.
  const cluster = await TempCluster.start({ binDir: process.env.PG_BIN_DIR || undefined });
  const backupDir = await mkdtemp(join(tmpdir(), 'pgvault-demo-'));
  try {
    say(`  cluster: PostgreSQL on 127.0.0.1:${cluster.port} (removed afterwards)`);
    await cluster.psql('CREATE DATABASE shop');
    await cluster.psql(SAMPLE_SQL, 'shop');
    const before = await cluster.psql(CHECKSUM_SQL, 'shop');

    const config = parseConfig({
      BACKUP_DIR: backupDir,
      COMPRESSION: 'zstd',
      ENCRYPTION: 'true',
      // A fresh key lives only in this process; a real one comes from ENCRYPTION_KEY_FILE.
      ENCRYPTION_KEY: randomBytes(32).toString('base64'),
      PGHOST: cluster.host,
      PGPORT: String(cluster.port),
      PGUSER: cluster.superuser,
      PGDATABASE: 'postgres',
      CLUSTER_NAME: 'demo',
      PG_BIN_DIR: process.env.PG_BIN_DIR ?? '',
    });
    const vault = openVault(config, terminalReporter({}));

    const tBackup = Date.now();
    const manifest = await backupFull(vault, { schedule: 'manual', databases: ['shop'] });
    const backupMs = Date.now() - tBackup;
    say(`  backup:  ${manifest.id} → ${backupDir}`);

    const tVerify = Date.now();
    await verifyBackupFile(vault, manifest.id);
    const verifyMs = Date.now() - tVerify;
    say('  verify:  sha256, HMAC, decrypt, decompress, rows recounted: intact');

    await cluster.psql('DROP TABLE orders CASCADE', 'shop');
    say('  oops:    DROP TABLE orders CASCADE');

    const tRestore = Date.now();
    const restored = await restorePartial(vault, 'latest', 'table', 'orders', { from: 'shop' });
    const restoreMs = Date.now() - tRestore;
    const after = await cluster.psql(CHECKSUM_SQL, 'shop');
    if (after.trim() !== before.trim() || !restored.validation.ok) {
      throw new PgVaultError(
        `restored table differs from the original (${before.trim()} vs ${after.trim()})`,
      );
    }
    const fk = await cluster.psql(
      `SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype IN ('p', 'f')`,
      'shop',
    );
    say(
      `  restore: orders back with ${restored.entries} archive entries (data, keys, indexes); rows and md5 match`,
    );

    const db = manifest.objects.find((o) => o.kind === 'database')!;
    say('');
    say('summary');
    say(
      `  dumped ${formatBytes(db.rawSize)} → stored ${formatBytes(db.storedSize)} (ratio ${(db.storedSize / db.rawSize).toFixed(3)}, zstd + AES-256-CBC)`,
    );
    say(
      `  tables ${db.tables?.length ?? 0}, rows ${db.tables?.reduce((n, t) => n + t.rows, 0) ?? 0} counted while streaming`,
    );
    say(
      `  backup ${formatDuration(backupMs)}, verify ${formatDuration(verifyMs)}, table restore ${formatDuration(restoreMs)}, keys on orders ${fk.trim()}`,
    );
    say(`  total ${formatDuration(Date.now() - t0)}`);
  } finally {
    await cluster.stop();
    await rm(backupDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`pgvault demo: ${errorMessage(err)}\n`);
  process.exit(err instanceof PgVaultError ? err.exitCode : 1);
});
