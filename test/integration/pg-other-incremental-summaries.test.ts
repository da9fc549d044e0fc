import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import {
  OTHER_MAJOR_SKIP_LINE,
  type OtherArchivingCluster,
  OtherMajorSession,
  otherMajor,
} from '../helpers/pg-other';
import { sleep, switchAndWaitArchived } from './pitr-fixture';

/**
 * An incremental base backup needs the server's WAL summaries from its parent's start onwards. They
 * are missing when summarize_wal was turned on after the parent was taken (or when
 * wal_summary_keep_time removed them): pg_basebackup --incremental then fails on the server. A
 * scheduled incremental (BASE_INCREMENTAL) must not fail every night for it: it takes a full base
 * backup and says why; `--incremental` asked by hand is refused in one line that says what to do.
 */
const other = otherMajor();
if (!other) console.warn(`pg-other-incremental-summaries.test.ts skipped: ${OTHER_MAJOR_SKIP_LINE}`);

function baseFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.includes('base-') && statSync(join(dir, f)).isFile())
    .sort();
}

describe.skipIf(!other)(
  'incremental base backup whose parent predates the WAL summaries',
  { timeout: 300_000 },
  () => {
    let s: OtherMajorSession;
    let a: OtherArchivingCluster;
    let cluster: TempCluster;
    let fullId: string;

    beforeAll(async () => {
      s = await OtherMajorSession.open(other!);
      a = await s.archivingCluster({ clusterName: 'summaries' });
      cluster = a.cluster;
      await cluster.query('CREATE TABLE t (id int PRIMARY KEY, v text)');
      await cluster.query('INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g');
      // The parent: taken while summarize_wal is off.
      const full = await a.pgvault(['--json', 'backup', 'base', 'weekly']);
      expect(full.code, full.stderr).toBe(0);
      fullId = full.json.manifest.id;
      // Then summarize_wal, once the segment of the parent's start is gone from pg_wal (the
      // summarizer starts at the oldest segment there): rounds of a write, a switch archived and a
      // checkpoint, which removes what is archived and older than the previous checkpoint's redo.
      const startWal: string = full.json.manifest.physical.startWal;
      let left = 1;
      for (let round = 0; round < 8 && left > 0; round++) {
        await cluster.query(`UPDATE t SET v = 'round ${round}' WHERE id % 20 = 2`);
        await switchAndWaitArchived(cluster);
        await cluster.query('CHECKPOINT');
        const [row] = await cluster.query<{ n: string }>(
          'SELECT count(*)::text AS n FROM pg_ls_waldir() WHERE name <= $1',
          [startWal],
        );
        left = Number(row!.n);
      }
      expect(left, `${startWal} still in pg_wal`).toBe(0);
      await cluster.query('ALTER SYSTEM SET summarize_wal = on');
      await cluster.query('SELECT pg_reload_conf()');
      await cluster.query("UPDATE t SET v = 'changed' WHERE id % 20 = 0");
      await sleep(500);
    }, 180_000);

    afterAll(async () => {
      await s?.close();
    });

    it('--incremental: refused in one line naming the parent and saying to take a full (exit 2), nothing stored', async () => {
      const before = baseFiles(a.backupDir);
      const r = await a.pgvault(['backup', 'base', 'daily', '--incremental']);
      expect(r.code, r.stderr).toBe(2);
      const lines = r.stderr.trim().split('\n');
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toContain(fullId);
      expect(lines[0]).toContain('WAL summaries');
      expect(lines[0]).toContain('pgvault backup base');
      expect(baseFiles(a.backupDir).filter((f) => !before.includes(f))).toEqual([]);
    });

    // A backup user with REPLICATION only may not look at the summaries (pg_monitor, superuser):
    // then pg_basebackup is what finds out, and the server's refusal is read.
    it('a replication-only user, --incremental: the server refuses, pgvault says why in its last line (exit 2), nothing stored', async () => {
      await cluster.query("CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl-pass'");
      const before = baseFiles(a.backupDir);
      const r = await a.pgvault(['backup', 'base', 'daily', '--incremental'], {
        PGUSER: 'repl',
        PGPASSWORD: 'repl-pass',
      });
      expect(r.code, r.stderr).toBe(2);
      const last = r.stderr.trim().split('\n').at(-1)!;
      expect(last).toContain(`--incremental cannot be taken of ${fullId}`);
      expect(last).toContain('WAL summaries are required');
      expect(last).toContain('take a full base backup: pgvault backup base');
      expect(baseFiles(a.backupDir).filter((f) => !before.includes(f))).toEqual([]);
    });

    it('BASE_INCREMENTAL=true, the replication-only user: takes a full base backup instead, says why, and the next one is incremental to it', async () => {
      const r = await a.pgvault(['--json', 'backup', 'base', 'daily'], {
        BASE_INCREMENTAL: 'true',
        PGUSER: 'repl',
        PGPASSWORD: 'repl-pass',
      });
      expect(r.code, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ incremental: false });
      expect(r.json.manifest.incrementalOf).toBeUndefined();
      expect(r.json.notes, r.stderr).toEqual([
        expect.stringContaining('full base backup: BASE_INCREMENTAL is set'),
      ]);
      expect(r.json.notes[0]).toContain('WAL summaries');
      const newFull = r.json.manifest.id;

      await cluster.query("UPDATE t SET v = 'again' WHERE id % 20 = 1");
      const next = await a.pgvault(['--json', 'backup', 'base', 'daily'], { BASE_INCREMENTAL: 'true' });
      expect(next.code, next.stderr).toBe(0);
      expect(next.json).toMatchObject({ incremental: true, incrementalOf: newFull });
    });
  },
);
