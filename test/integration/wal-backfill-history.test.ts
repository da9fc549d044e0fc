import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  giveToServer,
  openWithoutPgvault,
  readSegment,
  SEGMENT_BYTES,
  sha256,
  startWalFixture,
  type WalFixture,
  walKeyPath,
} from './wal-fixture';

/*
 * The backfill hook on one real server, in both archiving modes: a segment PostgreSQL archived
 * (.done) is removed from the archive, as if the leader of a failover had never archived it, and a
 * timeline history file whose switch point lies after it is handed to the archiver, as a promotion
 * does. Archiving the history file (archive_command; with ARCHIVE_ASYNC the uploader) queues the
 * missing segment again (.ready), and PostgreSQL's archiver stores it: the archive holds it, with
 * the bytes of the server's pg_wal. (The Patroni test, patroni-failover-gap.test.ts, does it for real
 * with kill -9; this one covers the uploader's path too.)
 */

function lsnOfSegment(n: bigint): string {
  const lsn = n * BigInt(SEGMENT_BYTES);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

async function waitFor(what: string, test: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

for (const mode of ['archive_command', 'ARCHIVE_ASYNC=true'] as const) {
  describe(`a .history file archived with ${mode}`, () => {
    let fx: WalFixture;

    beforeAll(async () => {
      fx = await startWalFixture(mode === 'archive_command' ? {} : { ARCHIVE_ASYNC: 'true' });
    }, 120_000);

    afterAll(async () => {
      await fx?.stop();
    });

    it('queues the old timeline segment the archive lacks, and PostgreSQL archives it again with the same bytes', async () => {
      // Prepare: three segments archived; the middle one removed from the archive, still in pg_wal.
      const segments = await fx.makeSegments(3);
      await fx.waitArchived(segments[2]!);
      const lost = segments[1]!;
      const pgWal = join(fx.cluster.dataDir, 'pg_wal');
      expect(existsSync(join(pgWal, 'archive_status', `${lost}.done`))).toBe(true);
      rmSync(walKeyPath(fx.vaultDir, lost));
      // A promotion's history file: timeline 2 begins two segments after the last one archived.
      const switchSegment = BigInt(`0x${segments[2]!.slice(16)}`) + 2n;
      const history = join(pgWal, '00000002.history');
      writeFileSync(history, `1\t${lsnOfSegment(switchSegment)}\tno recovery target specified\n`);
      writeFileSync(join(pgWal, 'archive_status', '00000002.history.ready'), '');
      giveToServer(history);
      giveToServer(join(pgWal, 'archive_status', '00000002.history.ready'));

      // Act: a new segment wakes the archiver, which takes the history file first.
      await fx.makeSegments(1);
      await waitFor(`${lost} archived again`, () => existsSync(walKeyPath(fx.vaultDir, lost)));

      // Assess: the same bytes as the server's copy; the segments the archive held were not queued.
      expect(sha256(openWithoutPgvault(walKeyPath(fx.vaultDir, lost), fx.keyFile))).toBe(
        sha256(readSegment(fx.cluster, lost)),
      );
      for (const held of [segments[0]!, segments[2]!])
        expect(existsSync(join(pgWal, 'archive_status', `${held}.ready`))).toBe(false);
      if (mode === 'ARCHIVE_ASYNC=true') {
        const log = readFileSync(join(pgWal, 'pgvault-spool', 'uploader.log'), 'utf8');
        expect(log).toContain(`WAL backfill after the timeline switch 1 → 2`);
        expect(log).toContain(lost);
      }
    }, 180_000);
  });
}
