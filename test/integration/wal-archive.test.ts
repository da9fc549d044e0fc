import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nextSegment } from '../../core/wal/naming';
import {
  CLUSTER_NAME,
  openWithoutPgvault,
  readSegment,
  SEGMENT_BYTES,
  sha256,
  startWalFixture,
  type WalFixture,
  walKeyPath,
} from './wal-fixture';

/**
 * Synchronous archiving by PostgreSQL's own archiver (archive_command = the built CLI), then
 * restore_command, prefetch and verify wal against the archive it made.
 */
let fx: WalFixture;
/** Segments archived by the first test, with their bytes as PostgreSQL wrote them. */
const segments = new Map<string, Buffer>();

beforeAll(async () => {
  fx = await startWalFixture();
});

afterAll(async () => {
  await fx?.stop();
});

describe('backup wal as archive_command (sync)', () => {
  it("stores every segment PostgreSQL's archiver hands it under its key, decoding to the same bytes", async () => {
    // Act
    const names = await fx.makeSegments(4);
    await fx.waitArchived(names[names.length - 1]!);

    // Assess
    expect(names).toHaveLength(4);
    for (const name of names) {
      const object = walKeyPath(fx.vaultDir, name);
      expect(existsSync(object), object).toBe(true);
      const original = readSegment(fx.cluster, name);
      expect(original.length).toBe(SEGMENT_BYTES);
      expect(sha256(openWithoutPgvault(object, fx.keyFile))).toBe(sha256(original));
      segments.set(name, original);
    }
    const identity = JSON.parse(readFileSync(join(fx.vaultDir, CLUSTER_NAME, 'wal', 'archive.json'), 'utf8'));
    const [control] = await fx.cluster.query<{ id: string }>(
      'SELECT system_identifier::text AS id FROM pg_control_system()',
    );
    expect(identity).toMatchObject({
      systemIdentifier: control!.id,
      segmentBytes: SEGMENT_BYTES,
      cluster: CLUSTER_NAME,
    });
    expect((await fx.archiver()).failed).toBe(0);
  });

  it('archives .backup and .history files too, and restores them', async () => {
    // Prepare: a backup history file from PostgreSQL itself, and a timeline history file as a promotion writes it.
    await fx.cluster.psql("SELECT pg_backup_start('wal test', true); SELECT lsn FROM pg_backup_stop();");
    const history = join(fx.work, 'history', 'pg_wal');
    mkdirSync(history, { recursive: true });
    writeFileSync(join(history, '00000002.history'), '1\t0/3000000\tno recovery target specified\n');
    const restoreDir = join(fx.work, 'history-restore');
    mkdirSync(join(restoreDir, 'pg_wal'), { recursive: true });

    // Act
    const pushed = fx.pgvault(['backup', 'wal', join(history, '00000002.history')]);
    const restored = fx.pgvault(['restore', 'wal', '00000002.history', 'pg_wal/RECOVERYHISTORY'], {
      cwd: restoreDir,
    });
    const backupFiles = readdirSync(
      join(fx.vaultDir, CLUSTER_NAME, 'wal', '00000001', '0000000100000000'),
    ).filter((f) => /^[0-9A-F]{24}\.[0-9A-F]{8}\.backup\.zst\.enc$/.test(f));

    // Assess
    expect(pushed.code, pushed.stderr).toBe(0);
    expect(existsSync(join(fx.vaultDir, CLUSTER_NAME, 'wal', '00000002', '00000002.history.zst.enc'))).toBe(
      true,
    );
    expect(restored.code, restored.stderr).toBe(0);
    expect(readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYHISTORY'), 'utf8')).toBe(
      '1\t0/3000000\tno recovery target specified\n',
    );
    expect(backupFiles).toHaveLength(1);
  });

  it('succeeds again for the same segment and refuses different bytes under an archived name, loudly', () => {
    // Prepare
    const [name] = [...segments.keys()];
    // The server may have recycled the segment since (a checkpoint): its saved copy stands in.
    const same = join(fx.work, 'same', 'pg_wal');
    mkdirSync(same, { recursive: true });
    writeFileSync(join(same, name!), segments.get(name!)!);
    const forged = join(fx.work, 'forged', 'pg_wal');
    mkdirSync(forged, { recursive: true });
    const changed = Buffer.from(segments.get(name!)!);
    changed[5000] = changed[5000]! ^ 0xff;
    writeFileSync(join(forged, name!), changed);

    // Act
    const again = fx.pgvault(['backup', 'wal', join(same, name!)]);
    const different = fx.pgvault(['backup', 'wal', join(forged, name!)]);

    // Assess
    expect(again.code, again.stderr).toBe(0);
    expect(different.code).not.toBe(0);
    expect(different.stderr.trim().split('\n')).toHaveLength(1);
    expect(different.stderr).toMatch(
      new RegExp(
        `WAL file ${name} is already archived with different content.*Two servers archiving into cluster ${CLUSTER_NAME}\\?`,
      ),
    );
  });

  it('refuses a segment from a server with another system identifier', () => {
    // Prepare: a real segment with another xlp_sysid, under the name of a segment not archived yet.
    const [name] = [...segments.keys()];
    const foreign = Buffer.from(segments.get(name!)!);
    foreign.writeBigUInt64LE(foreign.readBigUInt64LE(24) + 1n, 24);
    const futureNumber = 4000n;
    foreign.writeBigUInt64LE(futureNumber * BigInt(SEGMENT_BYTES), 8);
    const futureName = `0000000100000000${futureNumber.toString(16).toUpperCase().padStart(8, '0')}`;
    const dir = join(fx.work, 'foreign', 'pg_wal');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, futureName), foreign);

    // Act
    const result = fx.pgvault(['backup', 'wal', join(dir, futureName)]);

    // Assess
    expect(result.code).toBe(3);
    expect(result.stderr).toMatch(
      /comes from a server with system identifier \d+.*re-initialised cluster or a reused bucket/,
    );
    expect(existsSync(walKeyPath(fx.vaultDir, futureName))).toBe(false);
  });

  it('fails while the target is unwritable, PostgreSQL keeps the segments, and archives all of them once it is back', async () => {
    // Prepare: the folder the next segments go to refuses the server's user.
    const [name] = [...segments.keys()];
    const folder = join(fx.vaultDir, CLUSTER_NAME, 'wal', name!.slice(0, 8), name!.slice(0, 16));
    const before = await fx.archiver();
    chmodSync(folder, 0o500);

    // Act
    const names = await fx.makeSegments(3);
    const deadline = Date.now() + 20_000;
    while ((await fx.archiver()).failed <= before.failed && Date.now() < deadline) await sleep(100);
    const during = await fx.archiver();
    const ready = readdirSync(join(fx.cluster.dataDir, 'pg_wal', 'archive_status')).filter((f) =>
      f.endsWith('.ready'),
    );
    const originals = names.map((n) => readSegment(fx.cluster, n));
    chmodSync(folder, 0o700);
    // A new segment wakes the archiver at once instead of at its next retry round.
    const [nudge] = await fx.makeSegments(1);
    await fx.waitArchived(nudge!, 90_000);

    // Assess
    expect(during.failed).toBeGreaterThan(before.failed);
    expect(during.archived).toBe(before.archived);
    expect(ready).toContain(`${names[0]}.ready`);
    expect(fx.cluster.readLog()).toMatch(/not writable \(EACCES\)/);
    names.forEach((n, i) => {
      expect(sha256(openWithoutPgvault(walKeyPath(fx.vaultDir, n), fx.keyFile)), n).toBe(
        sha256(originals[i]!),
      );
      segments.set(n, originals[i]!);
    });
  });
});

describe('restore wal as restore_command', () => {
  it('exits 1 with one short line for a file the archive does not have', () => {
    // Act
    const result = fx.pgvault(['restore', 'wal', '00000009.history', 'pg_wal/RECOVERYHISTORY'], {
      cwd: fx.work,
    });

    // Assess
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/WAL file 00000009.history is not in the archive/);
  });

  it('prefetches the next segments and serves them from the local folder', async () => {
    // Prepare: a data directory to recover into.
    const restoreDir = join(fx.work, 'restore');
    mkdirSync(join(restoreDir, 'pg_wal'), { recursive: true });
    const [first, second, third] = [...segments.keys()];

    // Act: serving the first starts the prefetcher; the second's object is then removed from the target.
    const served = fx.pgvault(['restore', 'wal', first!, 'pg_wal/RECOVERYXLOG', '--json'], {
      cwd: restoreDir,
    });
    const prefetched = join(restoreDir, 'pg_wal', 'pgvault-prefetch', second!);
    const deadline = Date.now() + 20_000;
    while (!existsSync(prefetched) && Date.now() < deadline) await sleep(50);
    const object = walKeyPath(fx.vaultDir, second!);
    const kept = readFileSync(object);
    unlinkSync(object);
    const fromPrefetch = fx.pgvault(['restore', 'wal', second!, 'pg_wal/RECOVERYXLOG', '--json'], {
      cwd: restoreDir,
    });
    const restoredSecond = readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG'));
    writeFileSync(object, kept);
    const thirdResult = fx.pgvault(['restore', 'wal', third!, 'pg_wal/RECOVERYXLOG'], { cwd: restoreDir });
    const restoredThird = readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG'));
    // The launcher serves a prefetched segment by itself: here Node cannot even start.
    const fourth = [...segments.keys()][3]!;
    const prefetchedFourth = join(restoreDir, 'pg_wal', 'pgvault-prefetch', fourth);
    while (!existsSync(prefetchedFourth) && Date.now() < deadline + 20_000) await sleep(50);
    const withoutNode = fx.pgvault(['restore', 'wal', fourth, 'pg_wal/RECOVERYXLOG'], {
      cwd: restoreDir,
      env: { PGVAULT_NODE: '/bin/false' },
    });
    const restoredFourth = readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG'));
    const wanted = readFileSync(join(restoreDir, 'pg_wal', 'pgvault-prefetch', 'want'), 'utf8');
    // Recovery probes for the next timelines' history files; the prefetcher has looked them up
    // (an earlier test archived 00000002.history; there is no 00000003.history).
    const prefetchDir = join(restoreDir, 'pg_wal', 'pgvault-prefetch');
    while (
      !(
        existsSync(join(prefetchDir, '00000002.history')) &&
        existsSync(join(prefetchDir, '00000003.history.absent'))
      ) &&
      Date.now() < deadline + 20_000
    )
      await sleep(50);
    const noNode = { cwd: restoreDir, env: { PGVAULT_NODE: '/bin/false' } };
    const presentProbe = fx.pgvault(['restore', 'wal', '00000002.history', 'pg_wal/RECOVERYHISTORY'], noNode);
    const history = readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYHISTORY'), 'utf8');
    const absentProbe = fx.pgvault(['restore', 'wal', '00000003.history', 'pg_wal/RECOVERYHISTORY3'], noNode);

    // Assess
    expect(served.code, served.stderr).toBe(0);
    expect(JSON.parse(served.stdout)).toMatchObject({ servedFrom: 'archive' });
    expect(fromPrefetch.code, fromPrefetch.stderr).toBe(0);
    expect(JSON.parse(fromPrefetch.stdout)).toMatchObject({ servedFrom: 'prefetch' });
    expect(sha256(restoredSecond)).toBe(sha256(segments.get(second!)!));
    expect(thirdResult.code, thirdResult.stderr).toBe(0);
    expect(sha256(restoredThird)).toBe(sha256(segments.get(third!)!));
    expect(withoutNode.code, withoutNode.stderr).toBe(0);
    expect(sha256(restoredFourth)).toBe(sha256(segments.get(fourth)!));
    expect(wanted).toBe(`${fourth}\n`);
    expect(presentProbe.code, presentProbe.stderr).toBe(0);
    expect(history).toBe(readFileSync(join(prefetchDir, '00000002.history'), 'utf8'));
    expect(history).toMatch(/^1\t/);
    expect(absentProbe.code).toBe(1);
    expect(absentProbe.stderr).toBe('pgvault: WAL file 00000003.history is not in the archive\n');
    expect(existsSync(join(restoreDir, 'pg_wal', 'RECOVERYHISTORY3'))).toBe(false);
  });

  it('at the end of the archive answers without Node: the next segment is missing, the last is served again', async () => {
    // Prepare: the newest archived segment of timeline 1 and the one after it.
    const folder = join(fx.vaultDir, CLUSTER_NAME, 'wal', '00000001', '0000000100000000');
    const last = readdirSync(folder)
      .map((f) => f.slice(0, 24))
      .sort()
      .at(-1)!;
    const next = nextSegment(last, SEGMENT_BYTES);
    const restoreDir = join(fx.work, 'restore-end');
    mkdirSync(join(restoreDir, 'pg_wal'), { recursive: true });
    const prefetchDir = join(restoreDir, 'pg_wal', 'pgvault-prefetch');

    // Act: recovery is given the last segment; the prefetcher finds the next one missing and has
    // the last one ready again (recovery reads it once more when it ends).
    const served = fx.pgvault(['restore', 'wal', last, 'pg_wal/RECOVERYXLOG'], { cwd: restoreDir });
    const deadline = Date.now() + 20_000;
    while (
      !(existsSync(join(prefetchDir, `${next}.absent`)) && existsSync(join(prefetchDir, last))) &&
      Date.now() < deadline
    )
      await sleep(50);
    const noNode = { cwd: restoreDir, env: { PGVAULT_NODE: '/bin/false' } };
    const missing = fx.pgvault(['restore', 'wal', next, 'pg_wal/RECOVERYXLOG2'], noNode);
    const again = fx.pgvault(['restore', 'wal', last, 'pg_wal/RECOVERYXLOG'], noNode);

    // Assess
    expect(served.code, served.stderr).toBe(0);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe(`pgvault: WAL file ${next} is not in the archive\n`);
    expect(existsSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG2'))).toBe(false);
    expect(again.code, again.stderr).toBe(0);
    expect(sha256(readFileSync(join(restoreDir, 'pg_wal', 'RECOVERYXLOG')))).toBe(
      sha256(openWithoutPgvault(walKeyPath(fx.vaultDir, last), fx.keyFile)),
    );
  });

  it('never serves a corrupt object: exits non-zero naming the key, leaves nothing at the path', () => {
    // Prepare
    const name = [...segments.keys()][3]!;
    const object = walKeyPath(fx.vaultDir, name);
    const original = readFileSync(object);
    const damaged = Buffer.from(original);
    damaged[damaged.length >> 1] = damaged[damaged.length >> 1]! ^ 0x01;
    writeFileSync(object, damaged);
    const dir = join(fx.work, 'corrupt', 'pg_wal');
    mkdirSync(dir, { recursive: true });

    // Act
    const result = fx.pgvault(['restore', 'wal', name, join(dir, 'RECOVERYXLOG')], { cwd: fx.work });
    writeFileSync(object, original);

    // Assess
    expect(result.code, result.stderr).toBe(3);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain(`${CLUSTER_NAME}/wal/00000001/${name.slice(0, 16)}/${name}.zst.enc`);
    // Only the prefetch folder (it caches the archive's identity): no file, no temp file.
    expect(readdirSync(dir).filter((f) => f !== 'pgvault-prefetch')).toEqual([]);
  });
});

describe('verify wal', () => {
  it('reports a continuous archive, then names a deleted segment in the middle as a gap (exit 3)', () => {
    // Prepare
    const names = [...segments.keys()].sort();
    const middle = names[2]!;

    // Act
    const clean = fx.pgvault(['verify', 'wal', '--json']);
    rmSync(walKeyPath(fx.vaultDir, middle));
    const gap = fx.pgvault(['verify', 'wal', '--json']);
    const text = fx.pgvault(['verify', 'wal']);
    const measured = fx.pgvault(['verify', 'wal', '--json'], { env: { PGVAULT_METRICS: 'emf' } });

    // Assess
    expect(clean.code, clean.stderr).toBe(0);
    const cleanReport = JSON.parse(clean.stdout);
    expect(cleanReport.ok).toBe(true);
    expect(cleanReport.rpoSeconds).toBeGreaterThanOrEqual(0);
    expect(cleanReport.timelines[0]).toMatchObject({ timeline: 1, gaps: [] });
    expect(gap.code).toBe(3);
    const gapReport = JSON.parse(gap.stdout);
    expect(gapReport.ok).toBe(false);
    expect(gapReport.gaps).toEqual([{ timeline: 1, from: middle, to: middle, count: 1 }]);
    expect(gap.stderr).toContain(middle);
    expect(text.code).toBe(3);
    expect(text.stdout).toContain(`GAP on timeline 1: ${middle} missing`);
    // Recorded as a failed verification (the CloudWatch metric the stack alarms on), not a success.
    expect(measured.code).toBe(3);
    expect(measured.stderr).toMatch(/"VerificationFailed":1/);
    expect(measured.stderr).not.toMatch(/VerificationSucceeded/);
  });
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
