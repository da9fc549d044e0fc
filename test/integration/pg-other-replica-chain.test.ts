import { existsSync, mkdirSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { PGVAULT_CLI } from '../helpers/cli';
import {
  OTHER_MAJOR_SKIP_LINE,
  type OtherArchivingCluster,
  OtherMajorSession,
  otherMajor,
} from '../helpers/pg-other';
import { createAppTable, sleep, switchAndWaitArchived } from './pitr-fixture';

/**
 * Issue 15: a Patroni replica built by `pgvault restore replica` (create_replica_methods) when the
 * newest base backup is an incremental: the chain (full + incremental) is combined into the new data
 * directory, which then runs as a standby of the primary, replays the archive and streams.
 *
 * Why Patroni itself is not in this test: incremental base backups need PostgreSQL 17, which runs here
 * only inside the other major's root (test/helpers/pg-other.ts), and Patroni (test/helpers/patroni.ts)
 * runs only with the host's PostgreSQL 15 (the root has no Patroni, and its servers run chrooted as
 * the root's postgres user). So this test does what Patroni does around the hook, by hand: it calls
 * `restore replica` with the arguments Patroni passes (`--scope`, `--role=replica`, `--datadir`,
 * `--connstring`, README "Patroni integration"), then starts the directory as Patroni would start a
 * replica: standby.signal, primary_conninfo to the leader and recovery_conf's restore_command
 * (`pgvault restore wal %f %p`). test/integration/patroni-vault-replica.test.ts covers the hook with a
 * real Patroni on full base backups.
 */
const other = otherMajor();
if (!other) console.warn(`pg-other-replica-chain.test.ts skipped: ${OTHER_MAJOR_SKIP_LINE}`);

/** Polls `check` until it returns true, at most `timeoutMs`; false when it never did. */
async function waitUntil(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return true;
    await sleep(250);
  }
  return false;
}

describe.skipIf(!other)(
  `restore replica from an incremental chain on PostgreSQL ${other?.major ?? '(other major)'}`,
  { timeout: 300_000 },
  () => {
    let s: OtherMajorSession;
    let a: OtherArchivingCluster;
    let primary: TempCluster;
    let standby: TempCluster | undefined;
    let fullId: string;
    let incrId: string;

    const notes = async (server: TempCluster) =>
      (await server.query<{ note: string }>('SELECT note FROM t ORDER BY id', [], 'app')).map((r) => r.note);

    beforeAll(async () => {
      s = await OtherMajorSession.open(other!);
      a = await s.archivingCluster({ clusterName: 'chainreplica' });
      primary = a.cluster;
      await createAppTable(primary);
      await primary.query('ALTER SYSTEM SET summarize_wal = on');
      await primary.query('SELECT pg_reload_conf()');
      await primary.query(
        `CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
         INSERT INTO big SELECT g, 0, repeat(md5(g::text), 6) FROM generate_series(1, 5000) g;
         INSERT INTO t (batch, note) VALUES (0, 'before the full');`,
        [],
        'app',
      );
      const full = await a.pgvault(['--json', 'backup', 'base', 'weekly']);
      expect(full.code, full.stderr).toBe(0);
      fullId = full.json.manifest.id;
      await primary.query(
        "UPDATE big SET v = 1 WHERE id % 20 = 0; INSERT INTO t (batch, note) VALUES (1, 'between full and incremental');",
        [],
        'app',
      );
      await sleep(1100);
      const incr = await a.pgvault(['--json', 'backup', 'base', 'daily', '--incremental']);
      expect(incr.code, incr.stderr).toBe(0);
      expect(incr.json).toMatchObject({ incremental: true, incrementalOf: fullId });
      incrId = incr.json.manifest.id;
      await primary.query("INSERT INTO t (batch, note) VALUES (2, 'after the incremental')", [], 'app');
      await switchAndWaitArchived(primary);
    }, 240_000);

    afterAll(async () => {
      await standby?.stop().catch(() => {});
      await s?.close();
    });

    it("restore replica with Patroni's arguments combines the chain into the data directory", async () => {
      // Patroni's data_dir sits in a folder its postgres user owns (the server writes beside it).
      const members = join(a.work, 'members');
      mkdirSync(members, { mode: 0o700 });
      s.chownToServer(members);
      const datadir = join(members, 'replica-data');
      const r = await a.pgvault([
        '--json',
        'restore',
        'replica',
        '--scope=chainreplica',
        '--role=replica',
        `--datadir=${datadir}`,
        `--connstring=host=${primary.host} port=${primary.port} user=${primary.superuser} dbname=postgres`,
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ ok: true, backupId: incrId, datadir });
      expect(r.stderr).toContain(`combined chain: full ${fullId} + incr ${incrId}`);
      // A data directory a standby can start from; nothing staged is left beside it.
      expect(existsSync(join(datadir, 'PG_VERSION'))).toBe(true);
      expect(existsSync(join(datadir, 'backup_label'))).toBe(true);
      expect(existsSync(join(datadir, 'recovery.signal'))).toBe(false);
      expect(readdirSync(members)).toEqual(['replica-data']);
    });

    it('started as Patroni starts a replica, it streams from the primary and has its rows, old and new', async () => {
      const datadir = join(a.work, 'members', 'replica-data');
      // What Patroni writes for a replica: standby.signal, primary_conninfo, recovery_conf's restore_command.
      writeFileSync(join(datadir, 'standby.signal'), '');
      s.chownToServer(join(datadir, 'standby.signal'));
      standby = await s.startOn({
        dataDir: datadir,
        settings: {
          hot_standby: 'on',
          primary_conninfo: `host=${primary.host} port=${primary.port} user=${primary.superuser} application_name=chainreplica`,
          restore_command: `${realpathSync(process.execPath)} ${PGVAULT_CLI} --config ${a.configFile} restore wal %f %p`,
          archive_mode: 'off',
        },
      });
      const [rec] = await standby.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
      expect(rec!.r).toBe(true);

      const streaming = await waitUntil(async () => {
        const [w] = await standby!.query<{ status: string }>('SELECT status FROM pg_stat_wal_receiver');
        const [p] = await primary.query<{ n: string }>(
          "SELECT count(*)::text AS n FROM pg_stat_replication WHERE application_name = 'chainreplica' AND state = 'streaming'",
        );
        return w?.status === 'streaming' && p?.n === '1';
      }, 120_000);
      expect(streaming, 'the standby never reached streaming').toBe(true);

      // Written before the replica was built (after the incremental: from the archive or the stream).
      expect(await notes(standby)).toEqual([
        'before the full',
        'between full and incremental',
        'after the incremental',
      ]);
      // Written on the primary now: only streaming brings it.
      await primary.query("INSERT INTO t (batch, note) VALUES (3, 'while the standby streams')", [], 'app');
      const arrived = await waitUntil(
        async () => (await notes(standby!)).includes('while the standby streams'),
        60_000,
      );
      expect(arrived, 'the row inserted on the primary never reached the standby').toBe(true);
      const [{ d: onPrimary }] = (await primary.query<{ d: string }>(
        "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) AS d FROM big",
        [],
        'app',
      )) as [{ d: string }];
      const [{ d: onStandby }] = (await standby.query<{ d: string }>(
        "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) AS d FROM big",
        [],
        'app',
      )) as [{ d: string }];
      expect(onStandby).toBe(onPrimary);
    });
  },
);
