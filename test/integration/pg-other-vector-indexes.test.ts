import { text } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import type { TempCluster } from '../../core/pg/cluster';
import { openBackup, readBackupObject } from '../../core/restore/fetch';
import { openVault } from '../../core/vault';
import { tableContents } from '../helpers/pg';
import type { OtherArchivingCluster } from '../helpers/pg-other';
import {
  openVectorSession,
  type VectorSession,
  vectorPlaceHere,
  vectorPlaceLine,
} from '../helpers/pg-vector';
import { recordingReporter } from '../helpers/vault';

/**
 * pgvector's index types on PostgreSQL 17: `backup indexes`, `verify indexes` and `restore indexes`
 * on HNSW and IVFFlat indexes of every operator class, with their WITH options, next to a unique
 * expression index. Where vectorPlace() (test/helpers/pg-vector.ts) says: the host's own server
 * when it has pgvector (Debian 13, postgresql-17-pgvector), else the server in the other major's
 * root with pgvault inside it too (Debian 12's trixie root, test/helpers/pg-other.ts). Same body.
 */
const place = vectorPlaceHere();
console.warn(`pg-other-vector-indexes.test.ts: ${vectorPlaceLine(place)}`);
let s: VectorSession;
let a: OtherArchivingCluster;
let cluster: TempCluster;

/** HNSW on column a, IVFFlat on column b: one index per (column, operator), so each can be planned. */
const VECTOR_INDEXES = [
  {
    name: 'items_a_l2',
    column: 'a',
    op: '<->',
    using: 'hnsw (a vector_l2_ops) WITH (m = 8, ef_construction = 32)',
  },
  {
    name: 'items_a_cos',
    column: 'a',
    op: '<=>',
    using: 'hnsw (a vector_cosine_ops) WITH (m = 12, ef_construction = 48)',
  },
  {
    name: 'items_a_ip',
    column: 'a',
    op: '<#>',
    using: 'hnsw (a vector_ip_ops) WITH (m = 6, ef_construction = 20)',
  },
  { name: 'items_b_l2', column: 'b', op: '<->', using: 'ivfflat (b vector_l2_ops) WITH (lists = 10)' },
  { name: 'items_b_cos', column: 'b', op: '<=>', using: 'ivfflat (b vector_cosine_ops) WITH (lists = 7)' },
  { name: 'items_b_ip', column: 'b', op: '<#>', using: 'ivfflat (b vector_ip_ops) WITH (lists = 5)' },
] as const;
/** Plain indexes mixed with the vector ones: unique on an expression, and a partial expression one. */
const OTHER_INDEXES = [
  { name: 'items_sku_lower', sql: 'CREATE UNIQUE INDEX items_sku_lower ON items (lower(sku))' },
  { name: 'items_label_len', sql: 'CREATE INDEX items_label_len ON items ((length(label))) WHERE id > 10' },
];
const ALL = [...VECTOR_INDEXES.map((i) => i.name), ...OTHER_INDEXES.map((i) => i.name)];
const PROBE = '[0.3,-0.2,0.9]';

interface IndexRow {
  name: string;
  def: string;
  options: string | null;
  valid: boolean;
}

async function indexes(database: string): Promise<IndexRow[]> {
  return cluster.query<IndexRow>(
    `SELECT c.relname AS name, pg_get_indexdef(c.oid) AS def, array_to_string(c.reloptions, ',') AS options,
            i.indisvalid AS valid
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
      WHERE t.relname IN ('items', 'docs') ORDER BY 1`,
    [],
    database,
  );
}

/** k-NN through the index: HNSW with a search list as big as the table, IVFFlat probing every list. */
async function knn(
  database: string,
  index: (typeof VECTOR_INDEXES)[number],
): Promise<{ plan: string; ids: string }> {
  const settings = `SET enable_seqscan = off; SET hnsw.ef_search = 400; SET ivfflat.probes = 10;`;
  const query = `SELECT id FROM items ORDER BY ${index.column} ${index.op} '${PROBE}' LIMIT 7`;
  const out = await cluster.psql(
    `${settings}
     EXPLAIN (COSTS OFF) ${query};
     SELECT string_agg(id::text, ',') FROM (${query}) k;`,
    database,
  );
  const lines = out.trim().split('\n');
  return { plan: lines.slice(0, -1).join('\n'), ids: lines.at(-1)! };
}

/** The exact answer: no index at all. */
async function exactKnn(database: string, index: (typeof VECTOR_INDEXES)[number]): Promise<string> {
  const out = await cluster.psql(
    `SET enable_indexscan = off; SET enable_bitmapscan = off;
     SELECT string_agg(id::text, ',') FROM (SELECT id FROM items ORDER BY ${index.column} ${index.op} '${PROBE}' LIMIT 7) k;`,
    database,
  );
  return out.trim().split('\n').at(-1)!;
}

async function dropIndexes(database: string, names: readonly string[]): Promise<void> {
  await cluster.psql(names.map((n) => `DROP INDEX ${n};`).join('\n'), database);
}

// Servers inside the root and pgvault started there: slower than the host's under load.
describe.skipIf(!place)(
  `pgvector HNSW and IVFFlat indexes on PostgreSQL ${place?.major ?? '(none here has pgvector)'} (${place?.where ?? 'nowhere'})`,
  { timeout: 300_000 },
  () => {
    const before = new Map<string, IndexRow>();
    const answers = new Map<string, string>();
    let indexBackupId: string;
    let sql: string;

    beforeAll(async () => {
      s = await openVectorSession(place!);
      a = await s.archivingCluster({
        extra: { INDEX_BUILD_MAINTENANCE_WORK_MEM: '96MB', INDEX_BUILD_PARALLEL_WORKERS: '1' },
      });
      cluster = a.cluster;
      await cluster.query('CREATE DATABASE vec');
      await cluster.query('CREATE DATABASE nov');
      // Vectors from sines: no two rows at the same distance from the probe, so k-NN has one answer.
      await cluster.psql(
        `CREATE EXTENSION vector;
         CREATE TABLE items (id int PRIMARY KEY, sku text NOT NULL, label text NOT NULL, a vector(3) NOT NULL, b vector(3) NOT NULL);
         INSERT INTO items SELECT g, 'SKU-' || g, 'item ' || g,
                ARRAY[sin(g), cos(g * 1.3), sin(g * 0.7 + 1)]::vector(3),
                ARRAY[cos(g * 0.9), sin(g * 1.1 + 2), cos(g * 0.5)]::vector(3)
           FROM generate_series(1, 400) g;
         ${VECTOR_INDEXES.map((i) => `CREATE INDEX ${i.name} ON items USING ${i.using};`).join('\n')}
         ${OTHER_INDEXES.map((i) => `${i.sql};`).join('\n')}
         ANALYZE items;`,
        'vec',
      );
      // Another database whose vector index will lose its extension, next to a plain index.
      await cluster.psql(
        `CREATE EXTENSION vector;
         CREATE TABLE docs (id int PRIMARY KEY, title text NOT NULL, e vector(2) NOT NULL);
         INSERT INTO docs SELECT g, 't' || g, ARRAY[g, g % 7]::vector(2) FROM generate_series(1, 50) g;
         CREATE INDEX docs_e ON docs USING hnsw (e vector_l2_ops) WITH (m = 4, ef_construction = 8);
         CREATE INDEX docs_title ON docs (title);`,
        'nov',
      );
      for (const row of await indexes('vec')) before.set(row.name, row);
      for (const index of VECTOR_INDEXES) {
        const r = await knn('vec', index);
        expect(r.plan, index.name).toContain(`Index Scan using ${index.name}`);
        answers.set(index.name, r.ids);
      }
    }, 180_000);

    afterAll(async () => {
      await s?.close();
    });

    it('backup indexes keeps every operator class and WITH option as the server states them', async () => {
      // Act
      const full = await a.pgvault(['--json', 'backup', 'full', 'daily']);
      expect(full.code, full.stderr).toBe(0);
      const r = await a.pgvault(['--json', 'backup', 'indexes']);

      // Assess
      expect(r.code, r.stderr).toBe(0);
      indexBackupId = r.json.manifest.id;
      const vault = openVault(parseConfig({ ...a.settings }), recordingReporter());
      const entry = await vault.catalog.resolve(indexBackupId, 'indexes');
      const manifest = await openBackup(entry, vault.config);
      sql = await text(await readBackupObject(vault, entry, manifest.objects[0]!));
      for (const name of ALL) {
        const def = before
          .get(name)!
          .def.replace(/^CREATE (UNIQUE )?INDEX /, 'CREATE $1INDEX IF NOT EXISTS ');
        expect(sql, name).toContain(`${def};`);
      }
      expect(sql).toMatch(/USING hnsw \(a vector_cosine_ops\) WITH \(m='?12'?, ef_construction='?48'?\)/);
      expect(sql).toMatch(/USING ivfflat \(b vector_ip_ops\) WITH \(lists='?5'?\)/);
    });

    it('verify indexes rebuilds them in a PostgreSQL sandbox of the same major, pgvector loaded there', async () => {
      const r = await a.pgvault(['--json', 'verify', 'indexes', indexBackupId]);

      expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
      expect(r.json.ok).toBe(true);
      expect(r.json.restoredOn).toMatchObject({ kind: 'sandbox' });
      expect(r.json.restoredOn.serverVersion).toMatch(new RegExp(`^${place!.major}\\.`));
      const vec = r.json.databases.find((d: { database: string }) => d.database === 'vec');
      // Every non-constraint index of vec built there (the primary key comes with its constraint).
      expect(vec).toMatchObject({ created: ALL.length, failed: [], invalid: [] });
    });

    it('verify indexes where the sandbox cannot load pgvector: one line saying so, naming the extension, exit 4', async () => {
      // Act: pgvault where the server's extension folder shows a copy without pgvector.
      const r = await s.pgvaultWithoutVector(a.configFile, ['verify', 'indexes', indexBackupId], a.work);

      // Assess
      expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(4);
      // Progress lines aside, one error line: the sandbox, the extension, the package, the way out.
      const lines = r.stderr
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('pgvault:'));
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(
        new RegExp(
          `the sandbox \\(a sandbox server \\(PostgreSQL ${place!.major}\\.\\d+\\).*\\) cannot load extension "vector"`,
        ),
      );
      expect(lines[0]).toContain(`postgresql-${place!.major}-pgvector`);
      expect(lines[0]).toContain('--on-server');
      expect(lines[0]!.match(/cannot load/g)).toHaveLength(1);
      expect(r.stdout).toMatch(/vec: not checked: the sandbox .* cannot load extension "vector"/);
    });

    it('after the indexes are dropped, restore indexes rebuilds the same definitions, reports each build time, and the planner and k-NN answers are as before', async () => {
      // Prepare
      await dropIndexes('vec', ALL);

      // Act
      const r = await a.pgvault(['--json', 'restore', 'indexes', 'vec']);
      const textRun = await a.pgvault(['restore', 'indexes', 'vec']);

      // Assess: the same definitions and options, all valid.
      expect(r.code, r.stderr).toBe(0);
      expect([...r.json.created].sort()).toEqual(ALL.map((n) => `public.${n}`).sort());
      const after = await indexes('vec');
      expect(after).toEqual([...before.values()]);
      expect(after.every((i) => i.valid)).toBe(true);
      expect(after.find((i) => i.name === 'items_a_l2')?.options).toBe('m=8,ef_construction=32');
      expect(after.find((i) => i.name === 'items_b_cos')?.options).toBe('lists=7');
      // Rebuild time: seconds per index and in total, in --json and in the text output.
      expect(r.json.builds.map((b: { index: string }) => b.index).sort()).toEqual(
        ALL.map((n) => `public.${n}`).sort(),
      );
      for (const b of r.json.builds) expect(b.seconds).toBeGreaterThanOrEqual(0);
      const sum = r.json.builds.reduce((t: number, b: { seconds: number }) => t + b.seconds, 0);
      expect(r.json.totalSeconds).toBeCloseTo(sum, 2);
      // INDEX_BUILD_* were the builds' settings (the server's defaults: 64MB, 2 workers).
      expect(r.json.settings).toEqual({ maintenanceWorkMem: '96MB', parallelWorkers: 1 });
      // The second run found them all there: nothing created, so no time lines.
      expect(textRun.code, textRun.stderr).toBe(0);
      expect(textRun.stdout).toContain(`${ALL.length} already present`);
      // The planner uses each rebuilt index, and each gives the answer it gave before the drop.
      for (const index of VECTOR_INDEXES) {
        const k = await knn('vec', index);
        expect(k.plan, index.name).toContain(`Index Scan using ${index.name}`);
        expect(k.ids, index.name).toBe(answers.get(index.name));
      }
      // IVFFlat probing every list is exact: the answer without any index.
      for (const index of VECTOR_INDEXES.filter((i) => i.column === 'b'))
        expect(answers.get(index.name), index.name).toBe(await exactKnn('vec', index));
    });

    it('restore indexes prints seconds per index and the total', async () => {
      await dropIndexes('vec', ['items_a_cos', 'items_b_l2']);

      const r = await a.pgvault(['restore', 'indexes', 'vec']);

      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^ {2}created public\.items_a_cos in \d+\.\d{3} s$/m);
      expect(r.stdout).toMatch(/^ {2}created public\.items_b_l2 in \d+\.\d{3} s$/m);
      expect(r.stdout).toMatch(/rebuild time: \d+\.\d{3} s in total \(maintenance_work_mem 96MB/);
    });

    it('restore indexes --reindex rebuilds the ones there and reports each rebuild time too', async () => {
      const r = await a.pgvault(['--json', 'restore', 'indexes', 'vec', '--reindex']);

      expect(r.code, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ created: [], existing: ALL.length, reindexed: ALL.length });
      expect(
        r.json.builds.map((b: { index: string; kind: string }) => `${b.kind} ${b.index}`).sort(),
      ).toEqual(ALL.map((n) => `reindexed public.${n}`).sort());
      const sum = r.json.builds.reduce((t: number, b: { seconds: number }) => t + b.seconds, 0);
      expect(r.json.totalSeconds).toBeCloseTo(sum, 2);
      expect(await indexes('vec')).toEqual([...before.values()]);
    });

    it('restore full of the database brings the vector columns back row for row and every vector index the same, planned and answering as before', async () => {
      const r = await a.pgvault(['--json', 'restore', 'full', 'latest', 'vec_copy', '--from', 'vec']);

      expect(r.code, r.stderr).toBe(0);
      expect(await tableContents(cluster, 'vec_copy', 'public.items')).toBe(
        await tableContents(cluster, 'vec', 'public.items'),
      );
      expect(await indexes('vec_copy')).toEqual([...before.values()]);
      for (const index of VECTOR_INDEXES) {
        const k = await knn('vec_copy', index);
        expect(k.plan, index.name).toContain(`Index Scan using ${index.name}`);
        expect(k.ids, index.name).toBe(answers.get(index.name));
      }
    });

    it('an index whose extension the database lacks: one line naming CREATE EXTENSION vector, exit 2, nothing built, no INVALID index', async () => {
      // Prepare: the database lost pgvector (and with it the vector column and its index), and its
      // plain index was dropped too.
      await cluster.psql('DROP EXTENSION vector CASCADE; DROP INDEX docs_title;', 'nov');

      // Act
      const r = await a.pgvault(['restore', 'indexes', 'nov']);

      // Assess
      expect(r.code, r.stdout).toBe(2);
      const lines = r.stderr.trim().split('\n');
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/extension "vector"/);
      expect(lines[0]).toContain('CREATE EXTENSION vector;');
      expect(lines[0]).toContain('"nov"');
      const left = await indexes('nov');
      expect(left.map((i) => i.name)).toEqual(['docs_pkey']);
      expect(left.every((i) => i.valid)).toBe(true);
    });
  },
);
