import { existsSync, readdirSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { installedMajors } from '../../core/pg/tools';
import { runPgvault } from '../helpers/cli';
import { createSampleData, SAMPLE_TABLES, tableContents } from '../helpers/pg';
import {
  OTHER_MAJOR_SKIP_LINE,
  type OtherArchivingCluster,
  OtherMajorSession,
  otherMajor,
} from '../helpers/pg-other';
import { vectorPlaceHere, vectorPlaceLine } from '../helpers/pg-vector';
import {
  type Batch,
  batchesIn,
  between,
  commitBatch,
  createAppTable,
  sleep,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * The other PostgreSQL major (17 on Debian 12, 15 on Debian 13; .ci/pg-other-major builds it) through
 * the same commands as the release's own: a server inside the other release's root, archiving with
 * pgvault's own archive_command, and pgvault run inside that root too (test/helpers/pg-other.ts).
 *
 *   shop (sample data + pgvector HNSW) · batch 0 · base backup · batch 1 · batch 2 · archived
 */
const other = otherMajor();
if (!other) console.warn(`pg-other-major.test.ts skipped: ${OTHER_MAJOR_SKIP_LINE}`);
/**
 * The pgvector part of the round trip runs here when vectorPlace() chooses this root (Debian 12);
 * when it chooses the host's server (Debian 13, whose bookworm root has no pgvector), the round
 * trip of vector columns and indexes runs there, in pg-other-vector-indexes.test.ts.
 */
const place = vectorPlaceHere({ other });
const vectorHere = place?.where === 'root';
let s: OtherMajorSession;
/** The server the tests share, archiving with pgvault inside the root. */
let a: OtherArchivingCluster;
let cluster: TempCluster;
const batches: Batch[] = [];
const original = new Map<string, string>();
let baseId: string;

const ENV = { PATH: process.env.PATH, TZ: 'UTC' };
/** The host's newest client major (15 on Debian 12, 17 on Debian 13). */
const hostMajor = Number(installedMajors()[0]);

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => statSync(join(dir, f)).isFile())
    .sort();
}

// Servers inside the root and pgvault started there: slower than the host's under load.
describe.skipIf(!other)(
  `PostgreSQL ${other?.major ?? 'of the other release'} (the other major)`,
  { timeout: 300_000 },
  () => {
    beforeAll(async () => {
      s = await OtherMajorSession.open(other!);
      a = await s.archivingCluster();
      cluster = a.cluster;
      await createSampleData(cluster, 'shop');
      if (vectorHere)
        await cluster.psql(
          `CREATE EXTENSION vector;
       CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL, embedding vector(3) NOT NULL);
       INSERT INTO items SELECT g, 'item ' || g, ARRAY[g % 17, g % 5, g / 10.0]::vector(3) FROM generate_series(1, 300) g;
       CREATE INDEX items_embedding_hnsw ON items USING hnsw (embedding vector_l2_ops) WITH (m = 8, ef_construction = 32);`,
          'shop',
        );
      else console.warn(`pg-other-major.test.ts: ${vectorPlaceLine(place)}`);
      for (const table of [...Object.keys(SAMPLE_TABLES), ...(vectorHere ? ['public.items'] : [])])
        original.set(table, await tableContents(cluster, 'shop', table));
      await createAppTable(cluster);
      batches.push(await commitBatch(cluster, 0));
    }, 180_000);

    afterAll(async () => {
      await s?.close();
    });

    it(`the server is PostgreSQL ${other?.major}, its own tools inside the root`, async () => {
      const [row] = await cluster.query<{ v: string }>("SELECT current_setting('server_version_num') AS v");
      expect(Math.floor(Number(row!.v) / 10000)).toBe(other!.major);
      const version = await s.run(
        ['client', `/usr/lib/postgresql/${other!.major}/bin/pg_dump`, '--version'],
        ENV,
        '/',
      );
      expect(version.stdout).toMatch(new RegExp(`\\(PostgreSQL\\) ${other!.major}\\.`));
    });

    it('logical round trip: backup full, restore full into a new database, equal table by table (pgvector HNSW too)', async () => {
      // Act
      const backup = await a.pgvault(['--json', 'backup', 'full', 'daily', '--database', 'shop']);
      expect(backup.code, backup.stderr).toBe(0);
      const restore = await a.pgvault(['--json', 'restore', 'full', 'latest', 'shop_copy', '--from', 'shop']);

      // Assess
      expect(restore.code, restore.stderr).toBe(0);
      for (const [table, contents] of original)
        expect(await tableContents(cluster, 'shop_copy', table), table).toBe(contents);
      if (!vectorHere) return; // the pgvector part runs where vectorPlace() said (the line above)
      const indexdef = "SELECT indexdef FROM pg_indexes WHERE indexname = 'items_embedding_hnsw'";
      const [source] = await cluster.query<{ indexdef: string }>(indexdef, [], 'shop');
      const [copy] = await cluster.query<{ indexdef: string }>(indexdef, [], 'shop_copy');
      expect(copy?.indexdef).toBe(source!.indexdef);
      expect(copy?.indexdef).toMatch(
        /USING hnsw \(embedding vector_l2_ops\) WITH \(m='?8'?, ef_construction='?32'?\)/,
      );
      // The restored index answers a nearest-neighbour query, with the source's answer.
      const knn = `SET enable_seqscan = off;
      EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY embedding <-> '[3,1,2]' LIMIT 5;
      SELECT string_agg(id::text, ',') FROM (SELECT id FROM items ORDER BY embedding <-> '[3,1,2]' LIMIT 5) k;`;
      const plan = await cluster.psql(knn, 'shop_copy');
      expect(plan).toContain('Index Scan using items_embedding_hnsw');
      expect(plan.trim().split('\n').at(-1)).toBe(
        (await cluster.psql(knn, 'shop')).trim().split('\n').at(-1),
      );
    });

    it('base backup, then PITR to a time between two commits: the earlier batch is there, the next is not', async () => {
      // Prepare
      const base = await a.pgvault(['--json', 'backup', 'base', 'weekly']);
      expect(base.code, base.stderr).toBe(0);
      baseId = base.json.manifest.id;
      expect(baseId).toMatch(/^base-weekly-/);
      await sleep(1100);
      batches.push(await commitBatch(cluster, 1));
      await sleep(1100);
      batches.push(await commitBatch(cluster, 2));
      await switchAndWaitArchived(cluster);
      const target = between(batches[1]!.commitTime, batches[2]!.commitTime);

      // Act
      const r = await a.pgvault(['--json', 'restore', 'pitr', 'auto', target, 'app_pitr', '--from', 'app']);

      // Assess
      expect(r.code, r.stderr).toBe(0);
      expect(await batchesIn(cluster, 'app_pitr')).toEqual({ 0: 50, 1: 50 });
      const [last] = await cluster.query<{ n: string }>('SELECT max(id)::text AS n FROM t', [], 'app_pitr');
      const [next] = await cluster.query<{ n: string }>(
        'SELECT min(id)::text AS n FROM t WHERE batch = 2',
        [],
        'app',
      );
      expect(Number(next!.n)).toBeGreaterThan(Number(last!.n));
    });

    it('verify all passes over the full backup, the base backup and the WAL archive', async () => {
      const r = await a.pgvault(['--json', 'verify', 'all']);
      expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
      expect(r.json).toMatchObject({ ok: true });
    });

    it('drill --pitr recovers the base backup and the WAL to the target in a sandbox of this major', async () => {
      const target = between(batches[1]!.commitTime, batches[2]!.commitTime);
      const r = await a.pgvault(['--json', 'drill', '--pitr', '--target-time', target]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ ok: true, kind: 'pitr', backupId: baseId });
      expect(r.json.restoredOn.serverVersion).toMatch(new RegExp(`^${other!.major}\\.`));
      // Batches 0 and 1 only: recovery stopped at the target.
      expect(r.json.databases.find((d: { database: string }) => d.database === 'app')).toMatchObject({
        rows: 100,
      });
    });

    it('async WAL archiving (ARCHIVE_ASYNC=true): every segment the server archived is in the archive', async () => {
      // Prepare: a second server of this major, archiving through the launcher with ARCHIVE_ASYNC.
      const async = await s.archivingCluster({ clusterName: 'async', extra: { ARCHIVE_ASYNC: 'true' } });
      const server = async.cluster;

      // Act: five segments' worth of writes, each switch waited for.
      await server.query('CREATE TABLE w (id int, pad text)');
      const archived: string[] = [];
      for (let i = 0; i < 5; i++) {
        await server.query("INSERT INTO w SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g");
        archived.push(await switchAndWaitArchived(server));
      }

      // Assess: each segment stored, the uploader ran (its log), verify wal passes.
      const stored = filesUnder(join(async.backupDir, 'async', 'wal')).map((f) =>
        f.split('/').at(-1)!.slice(0, 24),
      );
      for (const name of archived) expect(stored).toContain(name);
      const spool = readdirSync(join(server.dataDir, 'pg_wal')).find((f) => f.startsWith('pgvault-spool'));
      expect(spool, 'the async spool in pg_wal').toBeDefined();
      const verify = await async.pgvault(['--json', 'verify', 'wal']);
      expect(verify.code, verify.stderr).toBe(0);
    });

    describe(`pgvault on the host (PostgreSQL ${hostMajor} clients) against this server`, () => {
      let hostDir: string;
      let hostConfig: string;
      beforeAll(async () => {
        // The host's own folder: its only writer is pgvault on the host, as root.
        hostDir = join(a.work, 'host-backups');
        hostConfig = join(a.work, 'host.conf');
        const settings = { ...a.settings, BACKUP_DIR: hostDir, CLUSTER_NAME: 'host', ENCRYPTION: 'false' };
        await writeFile(
          hostConfig,
          `${Object.entries(settings)
            .map(([k, v]) => `${k}=${v}`)
            .join('\n')}\n`,
        );
      });

      it('its own clients: refused by name when older than this server (exit 2, one line naming both versions, nothing written), else used', async () => {
        const older = hostMajor < other!.major;
        const commands = [
          ['backup', 'full', 'daily', '--database', 'shop'],
          ['backup', 'base', 'weekly'],
        ];
        // wal receive runs until stopped when it works: asked only where it must refuse.
        if (older) commands.push(['wal', 'receive']);
        for (const command of commands) {
          const r = await runPgvault(['--config', hostConfig, ...command], ENV, a.work);
          if (!older) {
            expect(r.code, r.stderr).toBe(0);
            continue;
          }
          expect(r.code, r.stderr).toBe(2);
          const tool = { full: 'pg_dump', base: 'pg_basebackup', receive: 'pg_receivewal' }[command[1]!];
          expect(r.stderr.trim()).toMatch(
            new RegExp(
              `^pgvault: the server runs PostgreSQL ${other!.major}\\.\\d+.*, newer than ${tool} ${hostMajor} \\(/usr/lib/postgresql/${hostMajor}/bin/${tool}\\)`,
            ),
          );
          expect(r.stderr.trim().split('\n')).toHaveLength(1);
          expect(r.stderr).toContain(`install postgresql-client-${other!.major}`);
          // No object, no staging file: at most the empty folder the targets' write probe made.
          expect(filesUnder(hostDir), `${command.join(' ')} wrote into ${hostDir}`).toEqual([]);
        }
      });

      it('with PG_BIN_DIR set to the wrappers of the root’s tools, the same backups work', async () => {
        const env = { ...ENV, PG_BIN_DIR: s.binDir };
        const full = await runPgvault(
          ['--config', hostConfig, '--json', 'backup', 'full', 'daily', '--database', 'shop'],
          env,
          a.work,
        );
        expect(full.code, full.stderr).toBe(0);
        const base = await runPgvault(
          ['--config', hostConfig, '--json', 'backup', 'base', 'weekly'],
          env,
          a.work,
        );
        expect(base.code, base.stderr).toBe(0);
        const verify = await runPgvault(
          ['--config', hostConfig, '--json', 'verify', 'file', 'latest'],
          env,
          a.work,
        );
        expect(verify.code, verify.stderr).toBe(0);
      });
    });
  },
);
