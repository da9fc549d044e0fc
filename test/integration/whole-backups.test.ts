import { execFileSync, spawnSync } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendFailureAlert } from '../../core/alert/failure';
import { collectThresholdInputs, thresholdAlerts } from '../../core/alert/thresholds';
import { backupFull } from '../../core/backup/full';
import { listDrillRecords, writeDrillRecord } from '../../core/catalog/records';
import { parseConfig } from '../../core/config';
import type { TempCluster } from '../../core/pg/cluster';
import { collectReport, writeReport } from '../../core/report/collect';
import { createTargets } from '../../core/storage';
import type { StorageTarget } from '../../core/storage/target';
import { openVault, type Vault } from '../../core/vault';
import { pushWalFile, type WalPushResult } from '../../core/wal/push';
import { createSampleData, startCluster } from '../helpers/pg';
import { recordingReporter, tempDir, testConfig } from '../helpers/vault';

/**
 * Issue 11, the same class of fault as "a backup whose manifest outlived its data": places where
 * pgvault called something fine (or removed something) without checking what is really stored.
 */

let work: { path: string; remove(): Promise<void> };
let cluster: TempCluster;
beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir('pgvault-whole-')]);
  await createSampleData(cluster, 'app');
}, 120_000);
afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

function vaultOf(name: string, extra: Record<string, string> = {}): Vault {
  return openVault(
    testConfig(cluster, join(work.path, name), { CLUSTER_NAME: name, COMPRESSION: 'zstd', ...extra }),
    recordingReporter(),
  );
}

/** A good backup, then a newer one whose data objects are gone (its manifest still listed). */
async function goodThenBroken(vault: Vault) {
  const good = await backupFull(vault, { schedule: 'daily', databases: ['app'] });
  const broken = await backupFull(vault, { schedule: 'daily', databases: ['app'] });
  for (const o of broken.objects) await vault.targets[0]!.delete(o.key);
  return { good, broken };
}

describe('freshness is judged by the newest whole backup', () => {
  it('the age and RPO checks skip a newer backup whose data is gone, and name it; so does the report', async () => {
    const vault = vaultOf('fresh');
    const { good, broken } = await goodThenBroken(vault);
    // The age limit falls between the two backups' ages: only the good one is over it.
    const gap = Date.parse(broken.finishedAt) - Date.parse(good.finishedAt);
    expect(gap).toBeGreaterThan(0);
    const now = new Date(Date.parse(broken.finishedAt) + gap / 4);
    const limits = { ...vault.config.alerts, backupAgeHours: gap / 2 / 3_600_000 };

    const inputs = await collectThresholdInputs(vault, now);
    const alerts = thresholdAlerts(inputs, limits);
    const { data } = await collectReport(vault, now);

    expect(inputs.newestBackup?.id).toBe(good.id);
    expect(inputs.recoveryPoint?.id).toBe(good.id);
    const age = alerts.find((a) => a.kind === 'backup-age');
    expect(age?.what).toContain(good.id);
    const incomplete = alerts.find((a) => a.kind === 'backup-incomplete');
    expect(incomplete?.what).toContain(broken.id);
    expect(incomplete?.what).toContain('missing');
    expect(data.status).toBe('failing');
    expect(data.failing.map((a) => a.kind)).toContain('backup-incomplete');
    expect(data.backups.find((b) => b.type === 'full/daily')?.newestId).toBe(good.id);
  });
});

describe('a WAL file that changes size while it is archived', () => {
  it('never has its clean-up delete the object another archiver completed and acknowledged', async () => {
    const vaultDir = join(work.path, 'wal-vault');
    const config = parseConfig({ BACKUP_DIR: vaultDir, CLUSTER_NAME: 'grow', COMPRESSION: 'none' });
    const [target] = createTargets(config);
    const history = join(work.path, '00000002.history');
    writeFileSync(history, '1\t0/3000000\tno recovery target specified\n');
    let listed = false;
    let other: WalPushResult | undefined;
    // Archiver A's target: the file grows after A has looked it up (between its stat and its read),
    // and once A's object is stored a second archiver (B) of the same file finds it and reports it
    // archived to PostgreSQL.
    const real = target!;
    const seen: StorageTarget = {
      kind: real.kind,
      location: real.location,
      putBytes: (key, data) => real.putBytes(key, data),
      get: (key) => real.get(key),
      getBytes: (key) => real.getBytes(key),
      stat: (key) => real.stat(key),
      delete: (key) => real.delete(key),
      probe: (prefix: string) => real.probe(prefix),
      list(prefix: string) {
        if (!listed && prefix.endsWith('00000002.history')) {
          listed = true;
          appendFileSync(history, '2\t0/5000000\tno recovery target specified\n');
        }
        return target!.list(prefix);
      },
      async put(...args: Parameters<StorageTarget['put']>) {
        const done = await real.put(...args);
        if (args[0].endsWith('.history')) other = await pushWalFile({ config, targets: [target!] }, history);
        return done;
      },
    };
    await expect(pushWalFile({ config, targets: [seen] }, history)).rejects.toThrow(/changed size/);
    // B archives it (again, or for the first time when A stored nothing).
    other ??= await pushWalFile({ config, targets: [target!] }, history);
    expect(other.name).toBe('00000002.history');
    // What B reported archived is there, and holds the file as it is now.
    const stored = join(vaultDir, other.key);
    expect(existsSync(stored), `${other.key} (acknowledged by the other archiver) is gone`).toBe(true);
    expect(readFileSync(stored)).toEqual(readFileSync(history));
  });
});

describe('a WAL file written over a damaged copy while another target fails', () => {
  it('keeps the good object it completed, which another archiver has meanwhile acknowledged', async () => {
    const vaultDir = join(work.path, 'wal-damaged');
    const config = parseConfig({ BACKUP_DIR: vaultDir, CLUSTER_NAME: 'dmg', COMPRESSION: 'zstd' });
    const [target] = createTargets(config);
    const real = target!;
    const history = join(work.path, 'dmg-00000003.history');
    const file = join(work.path, 'dmg', '00000003.history');
    mkdirSync(join(work.path, 'dmg'), { recursive: true });
    writeFileSync(history, '1\t0/3000000\tno recovery target specified\n2\t0/5000000\tbefore 2026-03-01\n');
    copyFileSync(history, file);
    // A cut upload the store kept: the first half of the file's zstd object.
    const whole = execFileSync('zstd', ['-c', '-q', history]);
    const key = 'dmg/wal/00000003/00000003.history.zst';
    await real.putBytes(key, whole.subarray(0, Math.floor(whole.length / 2)));
    let other: WalPushResult | undefined;
    // A second target that takes the whole stream, lets another archiver (using the first target
    // only) find the good object and report it archived, and then fails.
    const failing: StorageTarget = {
      kind: 'file',
      location: 'file:///failing',
      putBytes: async () => {},
      get: (k) => real.get(k),
      getBytes: (k) => real.getBytes(k),
      stat: async () => undefined,
      async *list() {},
      delete: async () => {},
      probe: async () => {},
      async put(_key, source) {
        for await (const _ of source) {
          // drained
        }
        for (let i = 0; i < 200; i++) {
          const info = await real.stat(key);
          if (info !== undefined && info.size === whole.length) break;
          await new Promise((r) => setTimeout(r, 10));
        }
        other = await pushWalFile({ config, targets: [real] }, file);
        throw new Error('second target failed');
      },
    };

    const first = pushWalFile({ config, targets: [real, failing] }, file);

    await expect(first).rejects.toThrow(/second target failed/);
    expect(other?.alreadyIn).toEqual([real.location]);
    // What the other archiver reported archived is still there, and decodes to the file.
    expect(existsSync(join(vaultDir, key)), `${key} (acknowledged by the other archiver) is gone`).toBe(true);
    expect(execFileSync('zstd', ['-d', '-c', '-q', join(vaultDir, key)])).toEqual(readFileSync(history));
  });
});

describe("a failed backup's alert", () => {
  it('names the newest whole backup as the last success, not a newer one whose data is gone', async () => {
    const vault = vaultOf('failing');
    const { good, broken } = await goodThenBroken(vault);
    const hintFile = join(work.path, 'failing-hint.txt');
    const configFile = join(work.path, 'failing-alert.env');
    const settings = {
      BACKUP_DIR: join(work.path, 'failing'),
      CLUSTER_NAME: 'failing',
      ALERT_COMMAND: `printf '%s' "$PGVAULT_ALERT_HINT" > ${hintFile}`,
    };
    writeFileSync(
      configFile,
      `${Object.entries(settings)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
      { mode: 0o600 },
    );

    await sendFailureAlert({
      configFile,
      commandPath: 'backup full',
      argv: ['backup', 'full'],
      error: new Error('pg_dump failed'),
      startedAt: new Date(),
      write: () => {},
    });

    const hint = readFileSync(hintFile, 'utf8');
    expect(hint).toContain(`Last successful backup of this type: ${good.id}`);
    expect(hint).not.toContain(broken.id);
  });
});

/** Runs the built CLI (dist/) against the vault `name` of this file, with --json. */
function cliJson(
  name: string,
  args: string[],
): { code: number | null; json: Record<string, unknown>; stdout: string } {
  const file = join(work.path, `${name}.env`);
  const lines = {
    BACKUP_DIR: join(work.path, name),
    CLUSTER_NAME: name,
    COMPRESSION: 'zstd',
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: 'postgres',
  };
  writeFileSync(
    file,
    `${Object.entries(lines)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    { mode: 0o600 },
  );
  const run = spawnSync(
    process.execPath,
    [resolve(__dirname, '../../bin/pgvault.js'), '--config', file, ...args],
    {
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
    },
  );
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(run.stdout) as Record<string, unknown>;
  } catch {
    // left empty: the assertions below then name the output
  }
  return { code: run.status, json, stdout: `${run.stdout}${run.stderr}` };
}

describe('restore list and backup stats mark a backup whose data is gone', () => {
  it('restore list: state incomplete with the missing object (JSON and text); backup stats: last success is the whole one', async () => {
    const vault = vaultOf('listed');
    const { good, broken } = await goodThenBroken(vault);

    const list = cliJson('listed', ['restore', 'list', '--json']);
    const text = cliJson('listed', ['restore', 'list']);
    const stats = cliJson('listed', ['backup', 'stats', '--json']);

    expect(list.code, list.stdout).toBe(0);
    const rows = list.json.backups as { id: string; state: string; missing?: string }[];
    expect(rows.find((r) => r.id === good.id)?.state).toBe('complete');
    const row = rows.find((r) => r.id === broken.id);
    expect(row?.state).toBe('incomplete');
    expect(row?.missing).toContain(broken.objects[0]!.key);
    expect(text.stdout).toMatch(new RegExp(`${broken.id}.*INCOMPLETE`));
    expect(stats.code, stats.stdout).toBe(0);
    const daily = (
      stats.json.byType as { type: string; lastId?: string; incomplete?: { id: string }[] }[]
    ).find((t) => t.type === 'full/daily');
    expect(daily?.lastId).toBe(good.id);
    expect(daily?.incomplete?.map((b) => b.id)).toEqual([broken.id]);
  });
});

describe('drill records and reports of the same second', () => {
  it('two drill records started in the same second are both kept', async () => {
    const vault = vaultOf('drills');
    const startedAt = '2026-03-01T02:00:00.000Z';
    const record = (backupId: string, ok: boolean) =>
      writeDrillRecord(vault, {
        kind: 'drill',
        backupId,
        startedAt,
        finishedAt: '2026-03-01T02:00:00.900Z',
        ok,
        ...(ok ? { rtoMs: 900 } : { error: 'restore failed' }),
      });
    // Two hosts (or a retry beside cron) drilling at once: one passes, one fails.
    await Promise.all([
      record('full-daily-20260301-010000', true),
      record('full-daily-20260301-010001', false),
    ]);

    const records = await listDrillRecords(vault);
    expect(records.map((r) => `${r.backupId} ${r.ok}`).sort()).toEqual([
      'full-daily-20260301-010000 true',
      'full-daily-20260301-010001 false',
    ]);
  });

  it('two reports of the same second are both stored, neither over the other', async () => {
    const vault = vaultOf('reports');
    await backupFull(vault, { schedule: 'daily', databases: ['app'] });
    const now = new Date();
    const { data } = await collectReport(vault, now);
    const other = { ...data, cluster: 'other-host-view' };

    const [a, b] = await Promise.all([writeReport(vault, data), writeReport(vault, other)]);

    expect(a[0]!.json).not.toBe(b[0]!.json);
    expect(JSON.parse(readFileSync(a[0]!.json, 'utf8')).cluster).toBe(data.cluster);
    expect(JSON.parse(readFileSync(b[0]!.json, 'utf8')).cluster).toBe('other-host-view');
    expect(readFileSync(b[0]!.html, 'utf8')).toContain('other-host-view');
  });
});
