import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chown, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { parseManifest } from '../../core/catalog/manifest';
import { IntegrityError, PostgresError } from '../../core/errors';
import { serverOsUser, type TempCluster } from '../../core/pg/cluster';
import { TarScanner } from '../../core/pg/tar';
import { verifyBackupFile } from '../../core/verify/file';
import { parseLsn } from '../../core/wal/naming';
import { createSampleData, startCluster } from '../helpers/pg';
import { tempDir, testVault } from '../helpers/vault';

/**
 * `backup base` against a real server: pg_basebackup's tar streamed into the targets with its
 * backup_label and manifest read on the way, `verify file` running pg_verifybackup on it, and the
 * servers it refuses.
 */
const run = promisify(execFile);
const BIN = join(__dirname, '..', '..', 'bin', 'pgvault.js');
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster({ initdbArgs: ['--wal-segsize=1'] }), tempDir()]);
  await createSampleData(cluster, 'app');
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('backup base', () => {
  it('streams pg_basebackup into one object, its server manifest beside it, and records where its WAL starts and stops', async () => {
    // Prepare
    const vault = testVault(cluster, join(work.path, 'enc'), {
      ENCRYPTION: 'true',
      ENCRYPTION_KEY: 'base key 1',
    });
    const before = await cluster.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');

    // Act
    const m = await backupBase(vault, { schedule: 'weekly' });

    // Assess
    expect(m.id).toMatch(/^base-weekly-\d{8}-\d{6}$/);
    // The tar, then the server's backup_manifest as an object of its own (what an incremental reads).
    expect(m.objects.map((o) => o.kind)).toEqual(['base', 'server-manifest']);
    expect(m.objects[0]).toMatchObject({ kind: 'base', format: 'tar' });
    expect(m.objects[0]!.key).toBe(`default/base/weekly/${m.id}.tar.zst.enc`);
    expect(m.objects[1]!.key).toBe(`default/base/weekly/${m.id}.server-manifest.json.zst.enc`);
    const p = m.physical!;
    expect(p.timeline).toBe(1);
    expect(p.segmentBytes).toBe(1024 * 1024);
    expect(p.walIncluded).toBe(true);
    expect(parseLsn(p.startLsn)).toBeGreaterThanOrEqual(parseLsn(before[0]!.lsn));
    expect(parseLsn(p.stopLsn)).toBeGreaterThan(parseLsn(p.startLsn));
    expect(p.startWal).toMatch(/^00000001[0-9A-F]{16}$/);
    expect(p.stopWal >= p.startWal).toBe(true);
    expect(p.serverManifestSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(p.stopTime! >= m.startedAt && p.stopTime! <= m.finishedAt).toBe(true);
    expect(m.tools.pg_basebackup).toMatch(/^\d+\.\d+/);

    // The same backup passes verify file, pg_verifybackup included.
    const verified = await verifyBackupFile(vault, m.id);
    expect(verified.objects[0]).toMatchObject({
      dataDirectoryVerified: true,
      rawSize: m.objects[0]!.rawSize,
    });
  });

  it('verify file refuses a stored object with one flipped byte', async () => {
    // Prepare
    const backupDir = join(work.path, 'flip');
    const vault = testVault(cluster, backupDir, { ENCRYPTION: 'true', ENCRYPTION_KEY: 'base key 2' });
    const m = await backupBase(vault, { schedule: 'daily' });
    const path = join(backupDir, m.objects[0]!.key);
    const bytes = await readFile(path);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x10;
    await writeFile(path, bytes);
    // A TMPDIR of its own: test files running beside this one verify backups in the shared one.
    const ownTmp = await mkdtemp(join(tmpdir(), 'pgvault-flip-tmp-'));
    const sharedTmp = process.env.TMPDIR;
    process.env.TMPDIR = ownTmp;

    // Act
    let leftovers: string[];
    try {
      const result = verifyBackupFile(vault, m.id);

      // Assess
      await expect(result).rejects.toThrow(IntegrityError);
      await expect(verifyBackupFile(vault, m.id)).rejects.toThrow(/corrupt/);
    } finally {
      if (sharedTmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = sharedTmp;
      leftovers = (await readdir(ownTmp)).filter((n) => n.startsWith('pgvault-verify-'));
      await rm(ownTmp, { recursive: true, force: true });
    }
    expect(leftovers).toEqual([]);
  });

  it('verify file runs pg_verifybackup: a changed data file with matching digests is still caught', async () => {
    // Prepare: unencrypted and uncompressed, so the tar can be edited and the digests recomputed,
    // which leaves only the server's own manifest to notice.
    const backupDir = join(work.path, 'edit');
    const vault = testVault(cluster, backupDir, { COMPRESSION: 'none' });
    const m = await backupBase(vault, { schedule: 'manual' });
    const object = m.objects[0]!;
    const path = join(backupDir, object.key);
    const tar = await readFile(path);
    let pgVersionAt = -1;
    await pipeline(
      Readable.from([tar]),
      new TarScanner({
        onEntry: (e) => {
          if (e.name === 'PG_VERSION') pgVersionAt = e.offset + 512;
        },
      }),
      new Writable({ write: (_c, _e, cb) => cb() }),
    );
    expect(pgVersionAt).toBeGreaterThan(0);
    tar[pgVersionAt] = '9'.charCodeAt(0); // "15\n" becomes "95\n"
    await writeFile(path, tar);
    const manifestPath = join(backupDir, `default/base/manual/${m.id}.manifest.json`);
    const manifest = parseManifest(await readFile(manifestPath, 'utf8'), manifestPath);
    const digest = sha256(tar);
    manifest.objects[0] = { ...object, sha256: digest, rawSha256: digest };
    await writeFile(manifestPath, JSON.stringify(manifest, null, 2));

    // Act
    const result = verifyBackupFile(vault, m.id);

    // Assess
    await expect(result).rejects.toThrow(/fails pg_verifybackup: .*PG_VERSION/);
  });

  it('the CLI takes a base backup and verifies it', async () => {
    // Prepare
    const config = join(work.path, 'cli.conf');
    await writeFile(
      config,
      [
        `BACKUP_DIR=${join(work.path, 'cli')}`,
        `PGHOST=${cluster.host}`,
        `PGPORT=${cluster.port}`,
        `PGUSER=${cluster.superuser}`,
        'ENCRYPTION=true',
        'ENCRYPTION_KEY=cli base key',
        'ENCRYPTION_ITERATIONS=1000',
        '',
      ].join('\n'),
    );

    // Act
    const backup = await run(process.execPath, [
      BIN,
      '--config',
      config,
      '--json',
      'backup',
      'base',
      'daily',
    ]);
    const id = (JSON.parse(backup.stdout) as { manifest: { id: string } }).manifest.id;
    const verify = await run(process.execPath, [BIN, '--config', config, 'verify', 'file', id]);

    // Assess
    expect(id).toMatch(/^base-daily-/);
    expect(verify.stdout).toMatch(/is intact/);
    expect(verify.stdout).toMatch(/pg_verifybackup/);
  });

  it('refuses a server with a tablespace beyond pg_default, storing nothing', async () => {
    // Prepare
    const location = await mkdtemp(join(tmpdir(), 'pgvault-ts-'));
    const user = serverOsUser();
    if (user) await chown(location, user.uid, user.gid);
    await cluster.query(`CREATE TABLESPACE extra_space LOCATION '${location}'`);
    const backupDir = join(work.path, 'ts');
    try {
      // Act
      const result = backupBase(testVault(cluster, backupDir), { schedule: 'daily' });

      // Assess
      await expect(result).rejects.toThrow(PostgresError);
      await expect(backupBase(testVault(cluster, backupDir), { schedule: 'daily' })).rejects.toThrow(
        /tablespaces beyond pg_default and pg_global \(extra_space\)/,
      );
      // No object at all (the target probe may have made the empty cluster folder).
      const stored = await readdir(backupDir, { recursive: true, withFileTypes: true }).catch(() => []);
      expect(stored.filter((e) => !e.isDirectory()).map((e) => e.name)).toEqual([]);
    } finally {
      await cluster.query('DROP TABLESPACE extra_space');
      await rm(location, { recursive: true, force: true });
    }
  });

  it('refuses wal_level = minimal with the setting to change', async () => {
    const minimal = await startCluster({ settings: { wal_level: 'minimal', max_wal_senders: '0' } });
    try {
      await expect(
        backupBase(testVault(minimal, join(work.path, 'min')), { schedule: 'daily' }),
      ).rejects.toThrow(/wal_level is minimal.*set wal_level = replica/);
    } finally {
      await minimal.stop();
    }
  });
});
