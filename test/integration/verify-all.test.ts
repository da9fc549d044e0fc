import { spawnSync } from 'node:child_process';
import { appendFile, chmod, cp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { backupConfig } from '../../core/backup/config-backup';
import { backupFull } from '../../core/backup/full';
import { backupIndexes } from '../../core/backup/indexes';
import type { ManifestBody } from '../../core/catalog/manifest';
import { verifyAll } from '../../core/verify/all';
import {
  type ArchivingCluster,
  commitBatch,
  createAppTable,
  PGVAULT_BIN,
  startArchivingCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * `verify all` over a real repository (encrypted, zstd, WAL archived by pgvault's own
 * archive_command): two older full backups, the newest full, a base backup, config and index
 * backups. Each fault is planted in a copy of the repository, so every test starts from good backups.
 */
let a: ArchivingCluster;
let olderFull: ManifestBody;
let newestFull: ManifestBody;
let base: ManifestBody;
/** A WAL segment after the base backup's start with archived WAL after it. */
let middleSegment: string;
let copies = 0;

const DAY = 86_400_000;

beforeAll(async () => {
  a = await startArchivingCluster({ cluster: 'va' });
  await createAppTable(a.cluster);
  await commitBatch(a.cluster, 0);
  const vault = a.vault();
  olderFull = await backupFull(vault, { schedule: 'daily', now: new Date(Date.now() - 2 * DAY) });
  await backupFull(vault, { schedule: 'daily', now: new Date(Date.now() - DAY) });
  base = await backupBase(vault, { schedule: 'weekly' });
  const archived: string[] = [];
  for (let i = 1; i <= 3; i++) {
    await commitBatch(a.cluster, i);
    archived.push(await switchAndWaitArchived(a.cluster));
  }
  middleSegment = archived[1]!;
  await backupConfig(vault);
  await backupIndexes(vault);
  newestFull = await backupFull(vault, { schedule: 'daily' });
}, 180_000);

afterAll(async () => {
  await a?.stop();
});

/** A copy of the repository with one fault planted; returns the vault reading it. */
async function plantedCopy(plant: (dir: string) => Promise<void>) {
  const dir = join(a.work, `copy-${++copies}`);
  await cp(a.backupDir, dir, { recursive: true });
  await plant(dir);
  return a.vault({ BACKUP_DIR: dir });
}

function objectPath(dir: string, m: ManifestBody, database: string): string {
  const o = m.objects.find(
    (x) => x.database === database || (database === 'globals' && x.kind === 'globals'),
  );
  return join(dir, o!.key);
}

function manifestPath(dir: string, m: ManifestBody): string {
  return join(dir, m.objects[0]!.key.replace(/[^/]+$/, `${m.id}.manifest.json`));
}

async function flipByte(path: string, at: 'middle' | number = 'middle'): Promise<void> {
  const bytes = await readFile(path);
  const i = at === 'middle' ? Math.floor(bytes.length / 2) : at;
  bytes[i] = bytes[i]! ^ 0xff;
  await writeFile(path, bytes);
}

describe('verify all', () => {
  it('passes on good backups: every copy digested, the newest of each type read through, WAL continuous', async () => {
    // Act
    const r = await verifyAll(a.vault());

    // Assess
    expect(r.faults).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.backups).toBe(6);
    expect(r.readThrough.map((t) => [t.type, t.ok])).toEqual([
      ['full', true],
      ['base', true],
      ['config', true],
      ['indexes', true],
    ]);
    expect(r.readThrough.find((t) => t.type === 'full')?.backup).toBe(newestFull.id);
    expect(r.readThrough.find((t) => t.type === 'full')?.tablesMatched).toBeGreaterThan(0);
    expect(r.readThrough.find((t) => t.type === 'base')?.dataDirectoryVerified).toBe(true);
    expect(r.copies.filter((c) => c.checked === 'sha256').map((c) => c.backup)).toHaveLength(2);
    // Every stored byte once: the older fulls digested, the newest of each type read through.
    const stored = [olderFull, newestFull, base].reduce((n, m) => n + m.storedSize, 0);
    expect(r.bytesRead).toBeGreaterThan(stored);
    expect(r.wal?.gaps).toEqual([]);
    expect(r.wal?.segments).toBeGreaterThan(3);
    // The server feeding the archive was asked, and archives into it.
    expect(r.server).toMatchObject({ checked: true, archiveMode: 'on', problems: [] });
  });

  it('names a missing object: which backup, which object, what to do', async () => {
    const key = olderFull.objects.find((o) => o.database === 'app')!.key;
    const vault = await plantedCopy((dir) => rm(objectPath(dir, olderFull, 'app')));

    const r = await verifyAll(vault);

    expect(r.ok).toBe(false);
    expect(r.faults).toHaveLength(1);
    expect(r.faults[0]).toMatchObject({ kind: 'missing', backup: olderFull.id, object: key });
    expect(r.faults[0]!.problem).toContain(`object ${key} of backup ${olderFull.id} is missing`);
    expect(r.faults[0]!.action).toMatch(/another target|new backup/);
    expect(r.copies.find((c) => c.backup === olderFull.id)?.ok).toBe(false);
  });

  it('names an object of the wrong size', async () => {
    const vault = await plantedCopy((dir) => appendFile(objectPath(dir, olderFull, 'globals'), 'x'));

    const r = await verifyAll(vault);

    expect(r.faults).toHaveLength(1);
    expect(r.faults[0]).toMatchObject({ kind: 'size', backup: olderFull.id });
    expect(r.faults[0]!.problem).toMatch(/is \d+ bytes, the manifest says \d+/);
  });

  it('names a flipped byte in an older backup (sha256) and in the newest (read-through)', async () => {
    const vault = await plantedCopy(async (dir) => {
      await flipByte(objectPath(dir, olderFull, 'app'));
      await flipByte(objectPath(dir, newestFull, 'app'));
    });

    const r = await verifyAll(vault);

    expect(r.faults.map((f) => [f.kind, f.backup, f.object])).toEqual([
      ['read-through', newestFull.id, newestFull.objects.find((o) => o.database === 'app')!.key],
      ['sha256', olderFull.id, olderFull.objects.find((o) => o.database === 'app')!.key],
    ]);
    expect(r.faults[1]!.problem).toContain('sha256 differs from the manifest');
    expect(r.readThrough.find((t) => t.type === 'full')?.ok).toBe(false);
    // The other types are still read through.
    expect(r.readThrough.filter((t) => t.ok).map((t) => t.type)).toEqual(['base', 'config', 'indexes']);
  });

  it('names a missing WAL segment', async () => {
    const vault = await plantedCopy(async (dir) => {
      const folder = join(dir, 'va', 'wal', middleSegment.slice(0, 8), middleSegment.slice(0, 16));
      const file = (await readdir(folder)).find((f) => f.startsWith(middleSegment))!;
      await rm(join(folder, file));
    });

    const r = await verifyAll(vault);

    expect(r.faults).toHaveLength(1);
    expect(r.faults[0]!.kind).toBe('wal');
    expect(r.faults[0]!.problem).toContain(`segment ${middleSegment} is missing`);
    expect(r.faults[0]!.problem).toContain(base.id);
    expect(r.faults[0]!.action).toContain('pgvault backup base');
    expect(r.wal?.gaps).toHaveLength(1);
  });

  it('names a tampered manifest (HMAC)', async () => {
    const vault = await plantedCopy(async (dir) => {
      const path = manifestPath(dir, olderFull);
      const m = JSON.parse(await readFile(path, 'utf8'));
      const app = m.objects.find((o: { database?: string }) => o.database === 'app');
      app.tables[0].rows += 1;
      await writeFile(path, JSON.stringify(m, null, 2));
    });

    const r = await verifyAll(vault);

    expect(r.faults).toHaveLength(1);
    expect(r.faults[0]).toMatchObject({ kind: 'manifest', backup: olderFull.id });
    expect(r.faults[0]!.problem).toMatch(/has been modified since the backup was made \(HMAC mismatch\)/);
  });

  it('names a manifest that no longer parses, which listings would skip', async () => {
    const vault = await plantedCopy((dir) => writeFile(manifestPath(dir, olderFull), '{ "format": '));

    const r = await verifyAll(vault);

    expect(r.faults).toHaveLength(1);
    expect(r.faults[0]!.kind).toBe('catalog');
    expect(r.faults[0]!.problem).toContain(`${olderFull.id}.manifest.json`);
  });

  it('--quick reads no object: it catches a missing object, not a flipped byte', async () => {
    const flipped = await plantedCopy((dir) => flipByte(objectPath(dir, olderFull, 'app')));
    const missing = await plantedCopy((dir) => rm(objectPath(dir, olderFull, 'app')));

    const [r1, r2] = [await verifyAll(flipped, { quick: true }), await verifyAll(missing, { quick: true })];

    expect(r1.ok).toBe(true);
    expect(r1.bytesRead).toBe(0);
    expect(r1.readThrough).toEqual([]);
    expect(r2.faults.map((f) => f.kind)).toEqual(['missing']);
  });

  it('the CLI prints every fault and exits 3; --json carries the same report', async () => {
    const vault = await plantedCopy(async (dir) => {
      await rm(objectPath(dir, olderFull, 'app'));
      await appendFile(objectPath(dir, olderFull, 'globals'), 'x');
    });
    const env = { ...process.env, BACKUP_DIR: vault.config.backupDir };
    const cli = (args: string[]) =>
      spawnSync(process.execPath, [PGVAULT_BIN, '--config', a.configFile, ...args], {
        encoding: 'utf8',
        env,
        timeout: 120_000,
      });

    const text = cli(['verify', 'all']);
    const json = cli(['--json', 'verify', 'all']);

    expect(text.status).toBe(3);
    expect(text.stdout).toContain(`object ${olderFull.objects.find((o) => o.database === 'app')!.key}`);
    expect(text.stdout).toMatch(/2 fault\(s\):/);
    expect(text.stdout).toContain('what to do:');
    expect(text.stderr).toMatch(/^pgvault: verify all found 2 fault\(s\); first: /m);
    expect(json.status).toBe(3);
    const report = JSON.parse(json.stdout);
    expect(report.ok).toBe(false);
    expect(report.faults.map((f: { kind: string }) => f.kind).sort()).toEqual(['missing', 'size']);
  });
});

describe('verify all and the server feeding the WAL archive', () => {
  const cli = (args: string[], env: Record<string, string> = {}) =>
    spawnSync(process.execPath, [PGVAULT_BIN, '--config', a.configFile, ...args], {
      encoding: 'utf8',
      env: { ...process.env, ...env },
      timeout: 120_000,
    });

  it('says the server check was skipped, and passes, when no server answers', async () => {
    // Act: a port nothing listens on (the verify Lambda reaches no database either).
    const r = await verifyAll(a.vault({ PGHOST: '127.0.0.1', PGPORT: '1' }), { quick: true });

    // Assess
    expect(r.faults).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.server.checked).toBe(false);
    expect(r.server.skipped).toMatch(/^no server reachable/);
  });

  it('is not OK when archive_command fails: the fault names the archiver failure and what to do, exit 1', async () => {
    // Prepare: archive_command fails (the server's OS user can no longer read its config file);
    // the next segment completed fails to archive.
    await chmod(a.configFile, 0o000);
    try {
      await commitBatch(a.cluster, 10); // a switch with nothing written since the last is no switch
      const [row] = await a.cluster.query<{ name: string }>(
        'SELECT pg_walfile_name(pg_switch_wal()) AS name',
      );
      const failing = row!.name;
      for (let i = 0; ; i++) {
        const [s] = await a.cluster.query<{ failed: string | null }>(
          'SELECT last_failed_wal AS failed FROM pg_stat_archiver',
        );
        if (s?.failed === failing) break;
        if (i > 300) throw new Error(`${failing} never failed to archive`);
        await new Promise((r) => setTimeout(r, 100));
      }

      // Act
      const r = await verifyAll(a.vault(), { quick: true });
      const text = cli(['verify', 'all', '--quick']);
      const json = cli(['--json', 'verify', 'all', '--quick']);

      // Assess
      expect(r.ok).toBe(false);
      expect(r.server.checked).toBe(true);
      expect(r.faults).toHaveLength(1);
      expect(r.faults[0]!.kind).toBe('archiving');
      expect(r.faults[0]!.problem).toContain(`the archiver's last attempt failed (${failing}`);
      expect(r.faults[0]!.action).toContain('pgvault check');
      expect(text.status).toBe(1);
      expect(text.stdout).not.toContain('all backups verified');
      expect(text.stdout).toContain(`PROBLEM: the archiver's last attempt failed (${failing}`);
      expect(text.stdout).toContain('what to do: run `pgvault check`');
      expect(text.stderr).toMatch(/^pgvault: verify all found 1 fault\(s\); first: WAL archiving on /m);
      expect(json.status).toBe(1);
      const report = JSON.parse(json.stdout);
      expect(report.ok).toBe(false);
      expect(report.faults.map((f: { kind: string }) => f.kind)).toEqual(['archiving']);
    } finally {
      await chmod(a.configFile, 0o600);
    }
    // Archiving works again: the segments waiting go out, and verify all passes once more.
    await switchAndWaitArchived(a.cluster, 120_000);
    const after = await verifyAll(a.vault(), { quick: true });
    expect(after.faults).toEqual([]);
    expect(after.server).toMatchObject({ checked: true, problems: [] });
  });
});
