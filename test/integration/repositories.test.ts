import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { runPgvault } from '../helpers/cli';
import { createSampleData, SAMPLE_TABLES, startCluster, tableContents } from '../helpers/pg';
import { tempDir } from '../helpers/vault';

/**
 * Issue 14, "Repositories", end to end through the built CLI (`npm run build` first): two file
 * repositories (REPO1 = "local", REPO2 = "cloud") with the guide's placement. Real PostgreSQL, real
 * pg_dump/pg_restore; a repository is "down" when its folder cannot be created (a plain file sits
 * where its parent folder should be: the tests run as root, so permissions would not stop a write).
 */
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir('pgvault-repos-')]);
  await createSampleData(cluster, 'shop');
}, 120_000);

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

/** A config file for vault `name`: repo1 and repo2 folders under it, the guide's placement, plus `extra`. */
async function vaultConfig(name: string, extra: Record<string, string> = {}) {
  const repo1 = join(work.path, name, 'local');
  const repo2 = join(work.path, name, 'cloud');
  const settings = {
    CLUSTER_NAME: 'main',
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: 'postgres',
    COMPRESSION: 'zstd',
    RETENTION_CONFIG_COUNT: '10',
    REPO1_TYPE: 'file',
    REPO1_PATH: repo1,
    REPO1_HOLDS: 'full:daily,wal,config,indexes,reports',
    REPO1_RETENTION_DAYS: '7',
    REPO2_TYPE: 'file',
    REPO2_PATH: repo2,
    REPO2_HOLDS: 'full,wal,config,reports',
    REPO2_RETENTION_WEEKS: '4',
    ...extra,
  };
  const file = join(work.path, `${name}.conf`);
  await writeFile(
    file,
    `${Object.entries(settings)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    { mode: 0o600 },
  );
  const pgvault = (args: string[]) =>
    runPgvault(
      ['--config', file, ...args],
      { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
      work.path,
    );
  return { file, repo1, repo2, pgvault };
}

/** Backup ids with a manifest under `folder` of a file repository (cluster main). */
function manifests(repo: string, folder: string): string[] {
  const dir = join(repo, 'main', folder);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.manifest.json'))
    .map((f) => f.replace('.manifest.json', ''))
    .sort();
}

async function sameAsSource(copy: string) {
  for (const table of Object.keys(SAMPLE_TABLES)) {
    expect(await tableContents(cluster, copy, table), table).toBe(
      await tableContents(cluster, 'shop', table),
    );
  }
}

describe('placement (REPO<n>_HOLDS)', () => {
  it("puts each backup only where the guide's table says: daily in both, weekly in the cloud, indexes local", async () => {
    // Prepare
    const { repo1, repo2, pgvault } = await vaultConfig('placement');

    // Act
    const daily = await pgvault(['--json', 'backup', 'full', 'daily', '--database', 'shop']);
    const weekly = await pgvault(['--json', 'backup', 'full', 'weekly', '--database', 'shop']);
    const indexes = await pgvault(['--json', 'backup', 'indexes']);
    const list = await pgvault(['--json', 'repo', 'list']);

    // Assess
    expect(daily.code, daily.stderr).toBe(0);
    expect(weekly.code, weekly.stderr).toBe(0);
    expect(indexes.code, indexes.stderr).toBe(0);
    expect(manifests(repo1, 'full/daily')).toHaveLength(1);
    expect(manifests(repo2, 'full/daily')).toEqual(manifests(repo1, 'full/daily'));
    expect(manifests(repo1, 'full/weekly')).toEqual([]);
    expect(manifests(repo2, 'full/weekly')).toHaveLength(1);
    expect(manifests(repo1, 'indexes')).toHaveLength(1);
    expect(existsSync(join(repo2, 'main', 'indexes'))).toBe(false);
    expect(list.code, list.stderr).toBe(0);
    const rows = JSON.parse(list.stdout).repositories as {
      repository: number;
      type: string;
      location: string;
      holds: string[];
      retention: { days: number; weeks: number };
    }[];
    expect(rows.map((r) => [r.repository, r.type, r.location, r.holds.join(',')])).toEqual([
      [1, 'file', `file://${repo1}`, 'full:daily,wal,config,indexes,reports'],
      [2, 'file', `file://${repo2}`, 'full,wal,config,reports'],
    ]);
    expect(rows[0]!.retention.days).toBe(7);
    expect(rows[1]!.retention.weeks).toBe(4);
  });
});

describe('one repository down during a backup', () => {
  it('fails naming it, keeps a whole restorable copy in the other; repo sync then fills it and verify passes', async () => {
    // Prepare: repo2's parent folder is a plain file, so nothing can be written there.
    const blocked = join(work.path, 'down-remote');
    const repo2 = join(blocked, 'cloud');
    const { repo1, pgvault } = await vaultConfig('down', { REPO2_PATH: repo2 });
    writeFileSync(blocked, 'not a folder');

    // Act
    const backup = await pgvault(['--json', 'backup', 'full', 'daily', '--database', 'shop']);
    const restore = await pgvault([
      '--json',
      'restore',
      'full',
      'latest',
      'shop_from_repo1',
      '--from',
      'shop',
    ]);
    // repo2 comes back (an empty folder), and catches up.
    rmSync(blocked);
    await mkdir(repo2, { recursive: true });
    const before = await pgvault(['--json', 'verify', 'all', '--quick']);
    const report = await pgvault(['--json', 'verify', 'report']);
    const dry = await pgvault(['--json', 'repo', 'sync', '--dry-run']);
    const afterDry = manifests(repo2, 'full/daily');
    const sync = await pgvault(['--json', 'repo', 'sync']);
    const again = await pgvault(['--json', 'repo', 'sync']);
    const after = await pgvault(['--json', 'verify', 'all', '--quick']);

    // Assess
    expect(backup.code).not.toBe(0);
    expect(backup.stderr).toMatch(/is stored in repo1 \(file:\/\/.*\) but not in repo2 \(file:\/\/.*cloud\)/);
    expect(backup.stderr).toContain('pgvault repo sync');
    const [id] = manifests(repo1, 'full/daily');
    expect(id).toBeDefined();
    expect(restore.code, restore.stderr).toBe(0);
    await sameAsSource('shop_from_repo1');
    const placement = (out: string) =>
      (JSON.parse(out).faults as { kind: string; problem: string }[]).filter((f) =>
        /REPO2_HOLDS/.test(f.problem),
      );
    expect(placement(before.stdout).map((f) => f.problem)).toEqual([
      expect.stringContaining(`backup ${id} is not in repo2`),
    ]);
    const rows = JSON.parse(report.stdout).report.repositories as {
      repository: number;
      missing: string[];
      backups: number;
    }[];
    expect(rows.map((r) => [r.repository, r.backups, r.missing])).toEqual([
      [1, 1, []],
      [2, 0, [id]],
    ]);
    const stored = JSON.parse(report.stdout).stored as { markdown: string }[];
    expect(readFileSync(stored[0]!.markdown, 'utf8')).toMatch(/## Repositories[\s\S]*repo2 .*FAILING: /);
    expect(dry.code, dry.stderr).toBe(0);
    expect((JSON.parse(dry.stdout).copied as { name: string }[]).map((c) => c.name)).toContain(id);
    expect(afterDry).toEqual([]);
    expect(sync.code, sync.stderr).toBe(0);
    const copied = JSON.parse(sync.stdout).copied as {
      from: number;
      to: number;
      kind: string;
      name: string;
    }[];
    expect(copied.filter((c) => c.kind === 'backup')).toEqual([
      expect.objectContaining({ from: 1, to: 2, kind: 'backup', name: id }),
    ]);
    expect(manifests(repo2, 'full/daily')).toEqual([id]);
    // The copy is byte for byte the original.
    for (const f of readdirSync(join(repo1, 'main', 'full', 'daily'))) {
      expect(
        readFileSync(join(repo2, 'main', 'full', 'daily', f)).equals(
          readFileSync(join(repo1, 'main', 'full', 'daily', f)),
        ),
        f,
      ).toBe(true);
    }
    expect(JSON.parse(again.stdout).copied).toEqual([]);
    expect(placement(after.stdout)).toEqual([]);
    const copies = JSON.parse(after.stdout).copies as { backup: string; target: string; ok: boolean }[];
    expect(copies.filter((c) => c.backup === id).map((c) => [c.target, c.ok])).toEqual([
      [`file://${repo1}`, true],
      [`file://${repo2}`, true],
    ]);
  });
});

describe('repo sync over an object the destination already holds', () => {
  it("refuses to copy the backup's manifest over a leftover that is not the backup's object, naming it", async () => {
    // Prepare: a backup in both; in repo2 its manifest is gone and its object is a killed write's
    // leftover (the first half of the bytes), as a backup killed while writing repo2 leaves them.
    const { repo1, repo2, pgvault } = await vaultConfig('leftover');
    const backup = await pgvault(['--json', 'backup', 'full', 'daily', '--database', 'shop']);
    expect(backup.code, backup.stderr).toBe(0);
    const [id] = manifests(repo2, 'full/daily');
    const folder = join(repo2, 'main', 'full', 'daily');
    rmSync(join(folder, `${id}.manifest.json`));
    const object = readdirSync(folder).find((f) => f.startsWith(id!) && !f.endsWith('.manifest.json'))!;
    const whole = readFileSync(join(folder, object));
    writeFileSync(join(folder, object), whole.subarray(0, Math.floor(whole.length / 2)));

    // Act
    const sync = await pgvault(['--json', 'repo', 'sync']);

    // Assess: no manifest over the leftover; the failure names the object and what to do.
    expect(sync.code).not.toBe(0);
    const failed = JSON.parse(sync.stdout).failed as { name: string; error: string }[];
    expect(failed).toEqual([
      expect.objectContaining({
        name: id,
        error: expect.stringMatching(
          new RegExp(`${object}.*already there and is not the backup's.*delete that object`),
        ),
      }),
    ]);
    expect(manifests(repo2, 'full/daily')).toEqual([]);
    expect(manifests(repo1, 'full/daily')).toEqual([id]);
  });
});

describe('a restore that falls back to the next repository', () => {
  it("restores from repo2 when repo1's copy is corrupt, and when it is missing, saying so", async () => {
    // Prepare
    const { repo1, pgvault } = await vaultConfig('fallback');
    const backup = await pgvault(['--json', 'backup', 'full', 'daily', '--database', 'shop']);
    expect(backup.code, backup.stderr).toBe(0);
    const folder = join(repo1, 'main', 'full', 'daily');
    const dump = readdirSync(folder).find((f) => f.includes('.shop.'))!;
    const bytes = readFileSync(join(folder, dump));
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    writeFileSync(join(folder, dump), bytes);

    // Act
    const corrupt = await pgvault(['restore', 'full', 'latest', 'shop_corrupt1', '--from', 'shop']);
    rmSync(join(folder, dump));
    const missing = await pgvault(['restore', 'full', 'latest', 'shop_missing1', '--from', 'shop']);

    // Assess
    expect(corrupt.code, corrupt.stderr).toBe(0);
    expect(corrupt.stderr).toMatch(/local.* is corrupt.*trying the next copy/);
    await sameAsSource('shop_corrupt1');
    expect(missing.code, missing.stderr).toBe(0);
    expect(missing.stderr).toMatch(/is missing in file:\/\/.*local.*reading it from file:\/\/.*cloud/);
    await sameAsSource('shop_missing1');
  });
});

describe('retention per repository', () => {
  it("deletes by each repository's own policy, only in that repository", async () => {
    // Prepare: two config backups in both; repo1 keeps the newest 1, repo2 the newest 10.
    const { repo1, repo2, pgvault } = await vaultConfig('retention', {
      REPO1_RETENTION_CONFIG_COUNT: '1',
    });
    for (let i = 0; i < 2; i++) {
      const b = await pgvault(['--json', 'backup', 'config']);
      expect(b.code, b.stderr).toBe(0);
    }
    const both = manifests(repo1, 'config');
    expect(both).toHaveLength(2);
    expect(manifests(repo2, 'config')).toEqual(both);

    // Act
    const run = await pgvault(['--json', 'backup', 'retention']);

    // Assess
    expect(run.code, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout) as {
      repositories: { repository: number; deleted: { backups: string[] } }[];
    };
    expect(result.repositories.map((r) => [r.repository, r.deleted.backups])).toEqual([
      [1, [both[0]]],
      [2, []],
    ]);
    expect(manifests(repo1, 'config')).toEqual([both[1]]);
    expect(manifests(repo2, 'config')).toEqual(both);
  });
});
