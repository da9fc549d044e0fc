import { existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { runPgvault } from '../helpers/cli';
import {
  OTHER_MAJOR_SKIP_LINE,
  type OtherArchivingCluster,
  OtherMajorSession,
  otherMajor,
} from '../helpers/pg-other';
import {
  type ArchivingCluster,
  type Batch,
  batchesIn,
  between,
  commitBatch,
  createAppTable,
  sleep,
  startArchivingCluster,
  switchAndWaitArchived,
  waitForPromotion,
} from './pitr-fixture';

/**
 * Incremental base backups (PostgreSQL 17's pg_basebackup --incremental) on the other major's root
 * (test/helpers/pg-other.ts), pgvault run inside it:
 *
 *   big (20 000 rows) · batch 0 · full · ~5% of big changed · batch 1 · incr 1 · ~5% changed ·
 *   batch 2 · incr 2 · batch 3 · batch 4 · archived
 *
 * and, on the host's own PostgreSQL (older than 17), what --incremental and BASE_INCREMENTAL do there.
 */
const other = otherMajor();
if (!other) console.warn(`pg-other-incremental.test.ts skipped: ${OTHER_MAJOR_SKIP_LINE}`);
const ENV = { PATH: process.env.PATH, TZ: 'UTC' };

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => statSync(join(dir, f)).isFile())
    .sort();
}

/** Stored object files of one backup (not its manifest). */
function objectFiles(backupDir: string, id: string): string[] {
  return filesUnder(backupDir)
    .filter((f) => f.includes(id) && !f.endsWith('.manifest.json') && !f.includes('manifest'))
    .map((f) => join(backupDir, f));
}

function backupFiles(backupDir: string, id: string): string[] {
  return filesUnder(backupDir)
    .filter((f) => f.includes(id))
    .map((f) => join(backupDir, f));
}

async function bigDigest(cluster: TempCluster, db: string): Promise<string> {
  const [row] = await cluster.query<{ d: string }>(
    "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) AS d FROM big",
    [],
    db,
  );
  return row!.d;
}

describe.skipIf(!other)(
  `incremental base backups on PostgreSQL ${other?.major ?? '(other major)'}`,
  { timeout: 300_000 },
  () => {
    let s: OtherMajorSession;
    let a: OtherArchivingCluster;
    let cluster: TempCluster;
    const batches: Batch[] = [];
    let fullId: string;
    let incr1Id: string;
    let incr2Id: string;
    let fullStored: number;
    let incr1Stored: number;
    let digestAfterIncr2: string;

    beforeAll(async () => {
      s = await OtherMajorSession.open(other!);
      a = await s.archivingCluster({ clusterName: 'incr' });
      cluster = a.cluster;
      await createAppTable(cluster);
      await cluster.query(
        `CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL) WITH (fillfactor = 90);
         INSERT INTO big SELECT g, 0, repeat(md5(g::text), 6) FROM generate_series(1, 20000) g;`,
        [],
        'app',
      );
      batches.push(await commitBatch(cluster, 0));
    }, 180_000);

    afterAll(async () => {
      await s?.close();
    });

    it('summarize_wal off: --incremental is refused in one line naming the setting (exit 2), nothing stored', async () => {
      const before = filesUnder(a.backupDir);
      const r = await a.pgvault(['backup', 'base', 'weekly', '--incremental']);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain('summarize_wal = on');
      expect(filesUnder(a.backupDir).filter((f) => !before.includes(f) && f.includes('base-'))).toEqual([]);
    });

    it('full, ~5% changed, incremental, ~5% changed, incremental: each names its parent, much smaller than the full', async () => {
      await cluster.query('ALTER SYSTEM SET summarize_wal = on');
      await cluster.query('SELECT pg_reload_conf()');
      await sleep(500);
      const full = await a.pgvault(['--json', 'backup', 'base', 'weekly']);
      expect(full.code, full.stderr).toBe(0);
      expect(full.json).toMatchObject({ incremental: false });
      expect(full.json.manifest.incrementalOf).toBeUndefined();
      fullId = full.json.manifest.id;
      fullStored = full.json.manifest.storedSize;

      await cluster.query('UPDATE big SET v = 1 WHERE id % 20 = 0', [], 'app');
      await sleep(1100);
      batches.push(await commitBatch(cluster, 1));
      const i1 = await a.pgvault(['--json', 'backup', 'base', 'daily', '--incremental']);
      expect(i1.code, i1.stderr).toBe(0);
      expect(i1.json).toMatchObject({ incremental: true, incrementalOf: fullId });
      expect(i1.json.manifest.incrementalOf).toBe(fullId);
      incr1Id = i1.json.manifest.id;
      incr1Stored = i1.json.manifest.storedSize;

      await cluster.query('UPDATE big SET v = 2 WHERE id % 20 = 1', [], 'app');
      await sleep(1100);
      batches.push(await commitBatch(cluster, 2));
      // Text output: says it is incremental and of what.
      const i2 = await a.pgvault(['backup', 'base', 'daily', '--incremental']);
      expect(i2.code, i2.stderr).toBe(0);
      const m = /backup (base-daily-\S+) complete/.exec(i2.stdout);
      expect(m, i2.stdout).not.toBeNull();
      incr2Id = m![1]!;
      expect(i2.stdout).toContain(`incremental of ${incr1Id}`);
      digestAfterIncr2 = await bigDigest(cluster, 'app');

      await sleep(1100);
      batches.push(await commitBatch(cluster, 3));
      await sleep(1100);
      batches.push(await commitBatch(cluster, 4));
      await switchAndWaitArchived(cluster);

      // The stored manifest itself records the parent (what retention and restores read).
      const manifests = filesUnder(a.backupDir).filter(
        (f) => f.includes(incr2Id) && f.endsWith('manifest.json'),
      );
      expect(manifests.length).toBeGreaterThan(0);
      expect(JSON.parse(readFileSync(join(a.backupDir, manifests[0]!), 'utf8')).incrementalOf).toBe(incr1Id);
      // About 5% of the pages changed: the incremental stores a fraction of the full's bytes.
      expect(incr1Stored).toBeLessThan(fullStored / 3);
    });

    it('restore pitr --pgdata to a time after the second incremental: the chain combined, exactly the rows up to the target', async () => {
      const target = between(batches[3]!.commitTime, batches[4]!.commitTime);
      const pgdata = join(a.work, 'pitr-data');
      const r = await a.pgvault(['--json', 'restore', 'pitr', 'auto', target, '--pgdata', pgdata]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json.backupId).toBe(incr2Id);
      expect(r.json.combinedChain).toBe(`full ${fullId} + incr ${incr1Id} + incr ${incr2Id}`);
      expect(r.stderr).toContain(`combined chain: full ${fullId} + incr ${incr1Id} + incr ${incr2Id}`);
      // Nothing staged is left beside the directory.
      expect(readdirSync(a.work).filter((n) => n.startsWith('.pgvault-chain-'))).toEqual([]);

      const server = await s.startOn({ dataDir: pgdata });
      try {
        await waitForPromotion(server);
        expect(await batchesIn(server, 'app')).toEqual({ 0: 50, 1: 50, 2: 50, 3: 50 });
        expect(await bigDigest(server, 'app')).toBe(digestAfterIncr2);
      } finally {
        await server.stop();
      }
    });

    it('drill --pitr recovers the chain in a sandbox to the same point', async () => {
      const target = between(batches[3]!.commitTime, batches[4]!.commitTime);
      const r = await a.pgvault(['--json', 'drill', '--pitr', '--target-time', target]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ ok: true, kind: 'pitr', backupId: incr2Id });
      expect(r.stderr).toContain('combined chain:');
      expect(r.json.databases.find((d: { database: string }) => d.database === 'app')).toMatchObject({
        rows: 200 + 20000,
      });
    });

    it('verify restore of the second incremental recovers its combined chain in a sandbox', async () => {
      const r = await a.pgvault(['--json', 'verify', 'restore', incr2Id]);
      expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
      expect(r.stderr).toContain(`combined chain: full ${fullId} + incr ${incr1Id} + incr ${incr2Id}`);
    });

    it('verify all passes over the chain', async () => {
      const r = await a.pgvault(['--json', 'verify', 'all']);
      expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
      expect(r.json).toMatchObject({ ok: true });
    });

    it('a missing middle member: refused in one line naming it, the target untouched; verify all names the broken chain', async () => {
      const aside = join(a.work, 'aside');
      const moved = backupFiles(a.backupDir, incr1Id);
      expect(moved.length).toBeGreaterThan(1);
      const { mkdirSync } = await import('node:fs');
      mkdirSync(aside);
      const places = moved.map((f, i) => [f, join(aside, String(i))] as const);
      for (const [from, to] of places) renameSync(from, to);
      try {
        const pgdata = join(a.work, 'missing-member');
        const target = between(batches[3]!.commitTime, batches[4]!.commitTime);
        const r = await a.pgvault(['restore', 'pitr', incr2Id, target, '--pgdata', pgdata]);
        expect(r.code, r.stderr).not.toBe(0);
        expect(
          r.stderr
            .trim()
            .split('\n')
            .filter((l) => l.startsWith('pgvault:')),
        ).toHaveLength(1);
        expect(r.stderr).toContain(incr1Id);
        expect(existsSync(pgdata)).toBe(false);
        expect(readdirSync(a.work).filter((n) => n.startsWith('.pgvault-chain-'))).toEqual([]);

        const v = await a.pgvault(['--json', 'verify', 'all', '--quick']);
        expect(v.code).not.toBe(0);
        expect(
          v.json.faults.find((f: { kind: string }) => f.kind === 'chain'),
          JSON.stringify(v.json.faults),
        ).toMatchObject({ backup: incr2Id });
      } finally {
        for (const [from, to] of places) renameSync(to, from);
      }
    });

    it('a corrupt member: refused with the integrity exit (3), one line naming it, the target untouched', async () => {
      const [object] = objectFiles(a.backupDir, incr1Id);
      expect(object).toBeDefined();
      const original = readFileSync(object!);
      const bad = Buffer.from(original);
      const at = Math.floor(bad.length / 2);
      bad[at] = bad[at]! ^ 0xff;
      writeFileSync(object!, bad);
      try {
        const pgdata = join(a.work, 'corrupt-member');
        const target = between(batches[3]!.commitTime, batches[4]!.commitTime);
        const r = await a.pgvault(['restore', 'pitr', incr2Id, target, '--pgdata', pgdata]);
        expect(r.code, r.stderr).toBe(3);
        const lines = r.stderr
          .trim()
          .split('\n')
          .filter((l) => l.startsWith('pgvault:'));
        expect(lines, r.stderr).toHaveLength(1);
        expect(lines[0]).toContain(incr1Id);
        expect(existsSync(pgdata)).toBe(false);
        expect(readdirSync(a.work).filter((n) => n.startsWith('.pgvault-chain-'))).toEqual([]);
      } finally {
        writeFileSync(object!, original);
      }
    });

    it('retention: a policy that would drop the full keeps it while its incrementals are kept', async () => {
      // One daily and no weekly: the weekly full is not kept by any rule of its own.
      const env = { ...ENV, RETENTION_DAYS: '1', RETENTION_WEEKS: '0', RETENTION_MONTHS: '0' };
      const r = await a.pgvault(['--json', 'backup', 'retention', '--dry-run'], env);
      expect(r.code, r.stderr).toBe(0);
      const decisions = r.json.plan.backups as { id: string; action: string; rules: string[] }[];
      const full = decisions.find((d) => d.id === fullId)!;
      expect(full.action, JSON.stringify(full)).toBe('keep');
      expect(full.rules.join('; ')).toContain('in the chain of incremental');
      const apply = await a.pgvault(['--json', 'backup', 'retention'], env);
      expect(apply.code, apply.stderr).toBe(0);
      expect(backupFiles(a.backupDir, fullId).length).toBeGreaterThan(1);
      expect(backupFiles(a.backupDir, incr1Id).length).toBeGreaterThan(1);
    });
  },
);

describe('incremental base backups on a server older than 17 (the host’s PostgreSQL)', {
  timeout: 120_000,
}, () => {
  let a: ArchivingCluster;
  beforeAll(async () => {
    a = await startArchivingCluster({ cluster: 'old' });
    await createAppTable(a.cluster);
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
  });

  it('--incremental is refused in one line naming the version (exit 2), nothing stored', async () => {
    const major = Math.floor(
      Number((await a.cluster.query<{ v: string }>('SHOW server_version_num'))[0]!.v) / 10000,
    );
    if (major >= 17) return; // The host's own major is 17 on Debian 13: the other file covers it.
    const r = await runPgvault(
      ['--config', a.configFile, 'backup', 'base', 'weekly', '--incremental'],
      ENV,
      a.work,
    );
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('--incremental needs PostgreSQL 17 or newer');
    expect(filesUnder(join(a.backupDir, 'old')).filter((f) => !f.startsWith('wal/'))).toEqual([]);
  });

  it('BASE_INCREMENTAL=true takes a full base backup and says so', async () => {
    const major = Math.floor(
      Number((await a.cluster.query<{ v: string }>('SHOW server_version_num'))[0]!.v) / 10000,
    );
    if (major >= 17) return;
    const env = { ...ENV, BASE_INCREMENTAL: 'true' };
    const r = await runPgvault(['--config', a.configFile, '--json', 'backup', 'base', 'weekly'], env, a.work);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.incremental).toBe(false);
    expect(out.manifest.incrementalOf).toBeUndefined();
    expect(out.notes.join('\n')).toContain(
      'full base backup: BASE_INCREMENTAL is set, but incremental base backups need PostgreSQL 17',
    );
    const text = await runPgvault(['--config', a.configFile, 'backup', 'base', 'daily'], env, a.work);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain('full base backup: BASE_INCREMENTAL is set');
  });
});
