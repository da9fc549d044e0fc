import { spawn } from 'node:child_process';
import { existsSync, renameSync, utimesSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { backupConfig } from '../../core/backup/config-backup';
import { backupFull } from '../../core/backup/full';
import { inMemorySource, runBackup } from '../../core/backup/run';
import { runUndoSteps } from '../../core/cleanup';
import type { TempCluster } from '../../core/pg/cluster';
import { restoreFull } from '../../core/restore/full';
import { planPitr } from '../../core/restore/pitr';
import { deleteBackupByHand, runRetention } from '../../core/retention/apply';
import { S3Target } from '../../core/storage/s3';
import { openVault, type Vault } from '../../core/vault';
import { verifyAll } from '../../core/verify/all';
import { verifyBackupFile } from '../../core/verify/file';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { createSampleData, startCluster } from '../helpers/pg';
import { startS3Server } from '../helpers/s3-server';
import { recordingReporter, tempDir, testConfig } from '../helpers/vault';

/**
 * Backups that run at the same time, and backups whose writes fail half-way in S3 (issue 11):
 * - two runs started in the same second (a retry beside cron, two hosts sharing one bucket) get
 *   distinct ids and both verify; neither writes into the other's objects;
 * - a manifest whose PUT was stored but whose answer was lost is settled by reading it back, and
 *   an undo never removes the data while the manifest stays;
 * - a manifest that outlived its data is never `latest`, and `verify all --quick` names it.
 * The S3 faults come from a fault-injecting proxy in front of s3rver (test/helpers/fault-proxy.ts).
 */
const BIN = resolve(__dirname, '../../bin/pgvault.js');
const KEY = 'concurrency test passphrase';
let cluster: TempCluster;
let s3: Awaited<ReturnType<typeof startS3Server>>;
let proxy: FaultProxy;
let work: Awaited<ReturnType<typeof tempDir>>;
let n = 0;

beforeAll(async () => {
  [cluster, s3, work] = await Promise.all([startCluster(), startS3Server(), tempDir()]);
  proxy = await startFaultProxy(s3.endpoint);
  await createSampleData(cluster, 'app');
  await cluster.psql('CREATE TABLE generation (v int); INSERT INTO generation VALUES (0)', 'app');
  process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey;
}, 120_000);

afterAll(async () => {
  await Promise.all([cluster?.stop(), proxy?.stop(), s3?.stop(), work?.remove()]);
});

/** Settings of one "host": its own BACKUP_DIR, optionally the shared bucket (through the proxy). */
function settings(
  clusterName: string,
  dir: string,
  s3Mode: 'none' | 's3' | 's3+local',
): Record<string, string> {
  const base: Record<string, string> = {
    BACKUP_DIR: `${work.path}/${dir}`,
    CLUSTER_NAME: clusterName,
    COMPRESSION: 'zstd',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: KEY,
  };
  if (s3Mode === 'none') return base;
  return {
    ...base,
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    S3_ENDPOINT: proxy.endpoint,
    LOCAL_COPY: s3Mode === 's3+local' ? 'true' : 'false',
  };
}

function vaultOf(extra: Record<string, string>): Vault & { reporter: ReturnType<typeof recordingReporter> } {
  const reporter = recordingReporter();
  return openVault(testConfig(cluster, extra.BACKUP_DIR!, extra), reporter) as Vault & {
    reporter: typeof reporter;
  };
}

async function setGeneration(v: number): Promise<void> {
  await cluster.psql(`UPDATE generation SET v = ${v}`, 'app');
}

async function restoredGeneration(vault: Vault, ref: string): Promise<number> {
  const database = `restored_${++n}`;
  const result = await restoreFull(vault, ref, { database });
  expect(result.validation.ok).toBe(true);
  const rows = await cluster.query<{ v: number }>('SELECT v FROM generation', [], database);
  return rows[0]!.v;
}

/** Runs the built CLI with a config file; resolves with its exit code and output. */
function cli(
  extra: Record<string, string>,
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const file = `${work.path}/cli-${++n}.env`;
  const lines = Object.entries({
    ...extra,
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: 'postgres',
    ENCRYPTION_ITERATIONS: '1000',
  }).map(([k, v]) => `${k}=${v}`);
  writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
  return new Promise((done) => {
    const child = spawn(process.execPath, [BIN, '--config', file, ...args], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/root',
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      },
      cwd: work.path,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

const SAME_SECOND = new Date('2026-03-01T02:00:00.000Z');

/** Both runs succeeded, with two different ids of that second (the plain one or a -N suffix). */
function expectDistinctIds(ids: string[], base: string): void {
  expect(ids).toHaveLength(2);
  for (const id of ids) expect(id).toMatch(new RegExp(`^${base}(-\\d+)?$`));
  expect(new Set(ids).size).toBe(2);
}

describe('two backups started in the same second', () => {
  it('file target: both succeed with distinct ids, both verify and restore', async () => {
    // Prepare: two runs on one host, one BACKUP_DIR, the same clock.
    const extra = settings('same1', 'same1', 'none');
    const [a, b] = [vaultOf(extra), vaultOf(extra)];

    // Act
    const results = await Promise.allSettled([
      backupFull(a, { schedule: 'daily', databases: ['app'], now: SAME_SECOND }),
      backupFull(b, { schedule: 'daily', databases: ['app'], now: SAME_SECOND }),
    ]);

    // Assess
    const ids = results.map((r) => (r.status === 'fulfilled' ? r.value.id : `failed: ${String(r.reason)}`));
    expectDistinctIds(ids, 'full-daily-20260301-020000');
    const listed = await a.catalog.list();
    expect(listed.map((e) => e.manifest.id).sort()).toEqual([...ids].sort());
    for (const id of ids) {
      const verified = await verifyBackupFile(a, id);
      expect(verified.objects.length).toBe(2);
      expect(await restoredGeneration(a, id)).toBe(0);
    }
  });

  it('S3 shared by two hosts (each with its own local copy): distinct ids, both verify', async () => {
    // Prepare: two hosts, two BACKUP_DIRs, one bucket: only the bucket can tell them apart.
    const a = vaultOf(settings('same2', 'hostA', 's3+local'));
    const b = vaultOf(settings('same2', 'hostB', 's3+local'));
    const bucketOnly = vaultOf(settings('same2', 'reader', 's3'));

    // Act
    const results = await Promise.allSettled([
      backupFull(a, { schedule: 'daily', databases: ['app'], now: SAME_SECOND }),
      backupFull(b, { schedule: 'daily', databases: ['app'], now: SAME_SECOND }),
    ]);

    // Assess
    const ids = results.map((r) => (r.status === 'fulfilled' ? r.value.id : `failed: ${String(r.reason)}`));
    expectDistinctIds(ids, 'full-daily-20260301-020000');
    const listed = await bucketOnly.catalog.list();
    expect(listed.map((e) => e.manifest.id).sort()).toEqual([...ids].sort());
    for (const id of ids) {
      await verifyBackupFile(bucketOnly, id);
      expect(await restoredGeneration(bucketOnly, id)).toBe(0);
    }
    // Each host's local copy holds its own backup only.
    const local = async (v: Vault) =>
      (await v.catalog.list())
        .filter((e) => e.targets.some((t) => t.kind === 'file'))
        .map((e) => e.manifest.id);
    expect(await local(a)).toEqual([ids[0]]);
    expect(await local(b)).toEqual([ids[1]]);
  });

  it('config backups share the same rule (run.ts): distinct ids in the bucket', async () => {
    // Prepare
    const a = vaultOf(settings('same3', 'cfgA', 's3'));
    const b = vaultOf(settings('same3', 'cfgB', 's3'));

    // Act
    const results = await Promise.allSettled([
      backupConfig(a, { now: SAME_SECOND }),
      backupConfig(b, { now: SAME_SECOND }),
    ]);

    // Assess
    const ids = results.map((r) => (r.status === 'fulfilled' ? r.value.id : `failed: ${String(r.reason)}`));
    expectDistinctIds(ids, 'config-20260301-020000');
    for (const id of ids) await verifyBackupFile(a, id);
  });
});

describe('a manifest PUT whose answer is lost (S3 through the fault proxy)', () => {
  const MANIFEST = /\.manifest\.json$/;

  it('stored, answer lost, DELETE failing: settled by read-back, the backup succeeds and is the latest', async () => {
    // Prepare
    const extra = settings('lost1', 'lost1', 's3');
    const vault = vaultOf(extra);
    await setGeneration(1);
    const good = await backupFull(vault, {
      schedule: 'daily',
      databases: ['app'],
      now: new Date('2026-03-01T01:00:00Z'),
    });
    await setGeneration(2);
    proxy.addRule({ method: 'PUT', key: MANIFEST, action: { kind: 'lose-response' } });
    proxy.addRule({ method: 'DELETE', key: MANIFEST, action: { kind: 'status', status: 500 } });

    // Act
    let outcome: string;
    try {
      outcome = (
        await backupFull(vault, {
          schedule: 'daily',
          databases: ['app'],
          now: new Date('2026-03-01T02:00:00Z'),
        })
      ).id;
    } catch (err) {
      outcome = `failed: ${String(err)}`;
    } finally {
      proxy.clearRules();
    }

    // Assess: the run and the catalog agree, and latest restores what the run said.
    const latest = await vault.catalog.resolve('latest');
    expect(outcome).toBe('full-daily-20260301-020000');
    expect(latest.manifest.id).toBe(outcome);
    expect(await restoredGeneration(vault, 'latest')).toBe(2);
    const report = await verifyAll(vault, { quick: true });
    expect(report.faults.filter((f) => f.kind !== 'wal')).toEqual([]);
    expect(good.id).not.toBe(outcome);
  });

  it('stored, answer lost, read-back impossible, DELETE failing: the run fails, the data stays, the backup stays whole', async () => {
    // Prepare
    const vault = vaultOf(settings('lost2', 'lost2', 's3'));
    await setGeneration(3);
    proxy.addRule({ method: 'PUT', key: MANIFEST, action: { kind: 'lose-response' } });
    proxy.addRule({ method: 'GET', key: MANIFEST, action: { kind: 'status', status: 503 } });
    proxy.addRule({ method: 'HEAD', key: MANIFEST, action: { kind: 'status', status: 503 } });
    proxy.addRule({ method: 'DELETE', key: MANIFEST, action: { kind: 'status', status: 500 } });

    // Act
    const attempt = backupFull(vault, {
      schedule: 'daily',
      databases: ['app'],
      now: new Date('2026-03-01T02:00:00Z'),
    });
    const failure = await attempt.then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    proxy.clearRules();

    // Assess: it says it failed and why the objects were kept; whatever is listed is whole.
    expect(failure?.message).toMatch(/manifest/);
    expect(vault.reporter.warnings.join('\n')).toMatch(/kept/);
    const listed = await vault.catalog.list();
    for (const entry of listed) await verifyBackupFile(vault, entry.manifest.id);
    expect(await restoredGeneration(vault, 'latest')).toBe(3);
  });

  it('stored, answer lost, read-back impossible, DELETE works: the run fails and nothing of it is listed or left', async () => {
    // Prepare
    const vault = vaultOf(settings('lost3', 'lost3', 's3'));
    proxy.addRule({ method: 'PUT', key: MANIFEST, action: { kind: 'lose-response' } });
    proxy.addRule({ method: 'GET', key: MANIFEST, action: { kind: 'status', status: 503 } });
    proxy.addRule({ method: 'HEAD', key: MANIFEST, action: { kind: 'status', status: 503 } });

    // Act
    const failure = await backupFull(vault, { schedule: 'daily', databases: ['app'] }).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    proxy.clearRules();

    // Assess
    expect(failure).toBeInstanceOf(Error);
    expect(await vault.catalog.list()).toEqual([]);
    const left: string[] = [];
    for await (const o of vault.targets[0]!.list('lost3/')) left.push(o.key);
    // keys.json, written before the first object, stays: it names the key this writer used.
    expect(left).toEqual(['lost3/keys.json']);
  });

  it('CLI: the exit code and the catalog agree when the manifest answer is lost but stored', async () => {
    // Prepare
    const extra = settings('lost4', 'lost4', 's3');
    proxy.addRule({ method: 'PUT', key: MANIFEST, action: { kind: 'lose-response' } });

    // Act
    const run = await cli(extra, ['backup', 'full', 'manual', '--json']);
    proxy.clearRules();

    // Assess
    const listed = await vaultOf(extra).catalog.list();
    if (run.code === 0) {
      const id = JSON.parse(run.stdout).manifest.id as string;
      expect(listed.map((e) => e.manifest.id)).toEqual([id]);
    } else {
      expect(listed).toEqual([]);
    }
    expect(run.code, run.stderr).toBe(0);
  });
});

describe('a manifest that outlived its data', () => {
  it('is never latest: restore full latest uses the previous good backup; verify all --quick names it (exit 3)', async () => {
    // Prepare: a good backup, then a newer one whose data objects went (as the old undo left them).
    const extra = settings('orphan', 'orphan', 's3');
    const vault = vaultOf(extra);
    await setGeneration(5);
    const good = await backupFull(vault, {
      schedule: 'daily',
      databases: ['app'],
      now: new Date('2026-03-01T01:00:00Z'),
    });
    await setGeneration(6);
    const broken = await backupFull(vault, {
      schedule: 'daily',
      databases: ['app'],
      now: new Date('2026-03-01T02:00:00Z'),
    });
    for (const o of broken.objects) await vault.targets[0]!.delete(o.key);

    // Act
    const latest = await vault.catalog.resolve('latest');
    const generation = await restoredGeneration(vault, 'latest');
    const report = await verifyAll(vault, { quick: true });
    const verifyCli = await cli(extra, ['verify', 'all', '--quick', '--json']);

    // Assess
    expect(latest.manifest.id).toBe(good.id);
    expect(generation).toBe(5);
    expect(report.ok).toBe(false);
    expect(report.faults.some((f) => f.backup === broken.id && f.kind === 'missing')).toBe(true);
    expect(verifyCli.code).toBe(3);
    expect(`${verifyCli.stdout}${verifyCli.stderr}`).toContain(broken.id);
  });
});

describe('retention beside a backup that completes while it runs', () => {
  it('never deletes a backup whose manifest appeared after the listing (neither as incomplete nor as leftovers)', async () => {
    // Prepare: a finished config backup whose manifest is held back, as if its run were still
    // writing it; it lands right after retention has listed the config folder.
    const vault = vaultOf(settings('race', 'race', 'none'));
    const manifest = await runBackup(vault, {
      type: 'config',
      schedule: 'manual',
      server: { version: '15.0', versionNum: 150000, major: 15, systemIdentifier: '1', superuser: true },
      tools: {},
      sources: [inMemorySource('config', 'tar', 'config', Buffer.alloc(4096, 7))],
      now: new Date('2026-03-01T00:00:00Z'),
    });
    const manifestPath = `${work.path}/race/race/config/${manifest.id}.manifest.json`;
    renameSync(manifestPath, `${work.path}/race-held-back`);
    const target = vault.targets[0]!;
    const list = target.list.bind(target);
    target.list = async function* (prefix: string) {
      yield* list(prefix);
      if (prefix === 'race/config/' && !existsSync(manifestPath))
        renameSync(`${work.path}/race-held-back`, manifestPath);
    };

    // Act: two days on, the objects are well past the leftover age.
    const result = await runRetention(vault, { now: new Date(Date.now() + 2 * 24 * 3600 * 1000) });

    // Assess
    expect(result.deleted.backups).toEqual([]);
    expect(result.deleted.leftoverObjects).toBe(0);
    const entry = await vault.catalog.resolve('latest', 'config');
    expect(entry.manifest.id).toBe(manifest.id);
    expect(await vault.catalog.whole(entry)).toBeDefined();
  });
});

describe('an interrupt while the manifest is being written', () => {
  it('removes the manifest first; where that fails the objects stay, so no manifest outlives its data', async () => {
    // Prepare: the manifest lands in the folder but its put has not returned when SIGINT comes, and
    // the manifest cannot be deleted (a permission, a lost connection).
    const vault = vaultOf(settings('sigint', 'sigint', 'none'));
    const target = vault.targets[0]!;
    const putBytes = target.putBytes.bind(target);
    const remove = target.delete.bind(target);
    let stored: () => void = () => {};
    const manifestInPlace = new Promise<void>((r) => {
      stored = r;
    });
    let release: () => void = () => {};
    const released = new Promise<void>((r) => {
      release = r;
    });
    target.putBytes = async (key, data) => {
      await putBytes(key, data);
      if (key.endsWith('.manifest.json')) {
        stored();
        await released;
      }
    };
    target.delete = async (key) => {
      if (key.endsWith('.manifest.json')) throw new Error('injected: delete refused');
      return remove(key);
    };
    const backup = runBackup(vault, {
      type: 'config',
      schedule: 'manual',
      server: { version: '15.0', versionNum: 150000, major: 15, systemIdentifier: '1', superuser: true },
      tools: {},
      sources: [inMemorySource('config', 'tar', 'config', Buffer.alloc(4096, 9))],
    });
    backup.catch(() => {});
    await manifestInPlace;

    // Act: the CLI's SIGINT handling; the put returns meanwhile.
    const undo = runUndoSteps(10_000);
    setTimeout(release, 100);
    await undo;

    // Assess: the manifest stayed, and so did every object it lists.
    const [entry] = await vault.catalog.list('config');
    expect(entry).toBeDefined();
    expect(await vault.catalog.whole(entry!)).toBeDefined();
    expect(vault.reporter.warnings.join('\n')).toMatch(/kept/);
  });
});

describe('point-in-time recovery beside a manifest that outlived its data', () => {
  it('auto and latest choose the newest whole base backup', async () => {
    // Prepare
    const vault = vaultOf(settings('pitr', 'pitr', 'none'));
    const older = await backupBase(vault, { schedule: 'daily' });
    const newer = await backupBase(vault, { schedule: 'daily' });
    for (const o of newer.objects) await vault.targets[0]!.delete(o.key);

    // Act
    const latest = await planPitr(vault, 'latest', { kind: 'immediate' });
    const auto = await planPitr(vault, 'auto', { kind: 'immediate' });

    // Assess
    expect(newer.id).not.toBe(older.id);
    expect(latest.manifest.id).toBe(older.id);
    expect(auto.manifest.id).toBe(older.id);
  });
});

describe('a data upload cut off in S3', () => {
  it('fails the backup; nothing of it is listed or left, and latest is still the previous backup', async () => {
    // Prepare
    const vault = vaultOf(settings('cut', 'cut', 's3'));
    await setGeneration(7);
    const good = await backupFull(vault, {
      schedule: 'daily',
      databases: ['app'],
      now: new Date('2026-03-01T01:00:00Z'),
    });
    await setGeneration(8);
    proxy.addRule({ method: 'PUT', key: /\.app\.dump/, action: { kind: 'reset-request', afterBytes: 1000 } });

    // Act
    const failure = await backupFull(vault, {
      schedule: 'daily',
      databases: ['app'],
      now: new Date('2026-03-01T02:00:00Z'),
    }).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    proxy.clearRules();

    // Assess
    expect(failure?.message).toMatch(/S3/);
    expect((await vault.catalog.list()).map((e) => e.manifest.id)).toEqual([good.id]);
    const left: string[] = [];
    for await (const o of vault.targets[0]!.list('cut/full/daily/full-daily-20260301-020000'))
      left.push(o.key);
    expect(left).toEqual([]);
    expect(await restoredGeneration(vault, 'latest')).toBe(7);
  });
});

describe('a claim whose PUT answer is lost', () => {
  it('fails the backup before any data is written, and leaves no claim behind', async () => {
    // Prepare
    const vault = vaultOf(settings('claim', 'claim', 's3'));
    proxy.addRule({ method: 'PUT', key: /\.claim-/, action: { kind: 'lose-response' } });

    // Act
    const failure = await backupFull(vault, { schedule: 'daily', databases: ['app'] }).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    proxy.clearRules();

    // Assess
    expect(failure?.message).toMatch(/S3/);
    const left: string[] = [];
    for await (const o of vault.targets[0]!.list('claim/')) left.push(o.key);
    // keys.json, written before the first object, stays: it names the key this writer used.
    expect(left).toEqual(['claim/keys.json']);
    expect(proxy.requests.some((r) => r.key.startsWith('claim/') && r.key.includes('.dump'))).toBe(false);
  });
});

describe('a manifest PUT stored whose answer never comes', () => {
  it('times out, is settled as stored by reading it back, and the backup succeeds', async () => {
    // Prepare: a target with a short request timeout (the S3 default is 60 s) and one attempt.
    const opened = vaultOf(settings('stall', 'stall', 's3'));
    const target = new S3Target({
      bucket: s3.bucket,
      endpoint: proxy.endpoint,
      region: s3.region,
      credentials: s3.credentials,
      requestTimeoutMs: 1500,
      maxAttempts: 1,
    });
    const vault: Vault = { ...opened, targets: [target] };
    const dropped = proxy.addRule({
      method: 'PUT',
      key: /\.manifest\.json$/,
      nth: 1,
      action: { kind: 'lose-response', answer: 'stall' },
    });

    // Act
    const outcome = await backupFull(vault, { schedule: 'manual', databases: ['app'] }).then(
      (m) => m.id,
      (err: unknown) => `failed: ${String(err)}`,
    );
    const droppedHits = proxy.hits(dropped);
    proxy.clearRules();

    // Assess
    expect(droppedHits).toBeGreaterThan(0);
    expect(outcome).toMatch(/^full-manual-/);
    expect((await opened.catalog.resolve('latest')).manifest.id).toBe(outcome);
    await verifyBackupFile(opened, outcome);
  });
});

describe('backup delete when the manifest DELETE answer is lost', () => {
  it('settles the delete by looking, then removes the objects too', async () => {
    // Prepare
    const vault = vaultOf(settings('del', 'del', 's3'));
    const doomed = await backupFull(vault, { schedule: 'manual', databases: ['app'] });
    proxy.addRule({ method: 'DELETE', key: /\.manifest\.json$/, action: { kind: 'lose-response' } });

    // Act
    const result = await deleteBackupByHand(vault, doomed.id, { yes: true });
    proxy.clearRules();

    // Assess
    expect(result.failed).toEqual([]);
    const left: string[] = [];
    for await (const o of vault.targets[0]!.list('del/')) left.push(o.key);
    // keys.json, written before the first object, stays: it names the key this writer used.
    expect(left).toEqual(['del/keys.json']);
  });
});

describe('an object removed while its backup still runs', () => {
  it('fails the backup before the manifest, instead of a manifest pointing at nothing', async () => {
    // Prepare: a long dump; the globals, finished early, vanish meanwhile (retention took them for
    // day-old leftovers, or a hand did).
    const vault = vaultOf(settings('vanish', 'vanish', 'none'));
    const dump = new Readable({ read() {} });
    const backup = runBackup(vault, {
      type: 'full',
      schedule: 'manual',
      server: { version: '15.0', versionNum: 150000, major: 15, systemIdentifier: '1', superuser: true },
      tools: {},
      sources: [
        {
          part: 'app',
          kind: 'database',
          format: 'dump',
          database: 'app',
          label: 'dump app',
          open: () => ({ source: dump, upstream: [] }),
        },
        {
          part: 'globals',
          kind: 'globals',
          format: 'sql',
          label: 'globals',
          small: true,
          open: () => ({ source: Readable.from([Buffer.from('CREATE ROLE app;\n')]), upstream: [] }),
        },
      ],
    });
    backup.catch(() => {});
    const target = vault.targets[0]!;
    let globals: string | undefined;
    for (let i = 0; i < 100 && globals === undefined; i++) {
      for await (const o of target.list('vanish/full/manual/'))
        if (o.key.includes('.globals.')) globals = o.key;
      if (globals === undefined) await new Promise((r) => setTimeout(r, 50));
    }
    expect(globals).toBeDefined();

    // Act
    await target.delete(globals!);
    dump.push(Buffer.alloc(1024, 1));
    dump.push(null);

    // Assess
    await expect(backup).rejects.toThrow(/globals.* is gone .* before the manifest was written/);
    expect(await vault.catalog.list()).toEqual([]);
  });
});

describe('retention beside a backup that runs for more than a day', () => {
  it('keeps the early objects of the running backup: its claim is written again while it runs', async () => {
    // Prepare: a dump still streaming; its globals and claim look two days old (a long run), and
    // the claim refresh is made fast for the test (an hour by default).
    const vault = vaultOf(settings('longrun', 'longrun', 'none'));
    const dump = new Readable({ read() {} });
    const backup = runBackup(vault, {
      type: 'full',
      schedule: 'manual',
      server: { version: '15.0', versionNum: 150000, major: 15, systemIdentifier: '1', superuser: true },
      tools: {},
      claimRefreshMs: 100,
      sources: [
        {
          part: 'app',
          kind: 'database',
          format: 'dump',
          database: 'app',
          label: 'dump app',
          open: () => ({ source: dump, upstream: [] }),
        },
        {
          part: 'globals',
          kind: 'globals',
          format: 'sql',
          label: 'globals',
          small: true,
          open: () => ({ source: Readable.from([Buffer.from('CREATE ROLE app;\n')]), upstream: [] }),
        },
      ],
    });
    backup.catch(() => {});
    const target = vault.targets[0]!;
    const early = async () => {
      const keys: string[] = [];
      for await (const o of target.list('longrun/full/manual/')) keys.push(o.key);
      return keys;
    };
    for (let i = 0; i < 100 && !(await early()).some((k) => k.includes('.globals.')); i++)
      await new Promise((r) => setTimeout(r, 50));
    const twoDaysAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000);
    for (const key of await early()) utimesSync(`${work.path}/longrun/${key}`, twoDaysAgo, twoDaysAgo);
    await new Promise((r) => setTimeout(r, 500));

    // Act
    const result = await runRetention(vault);
    dump.push(Buffer.alloc(1024, 1));
    dump.push(null);

    // Assess
    expect(result.deleted.leftoverObjects).toBe(0);
    const manifest = await backup;
    const entry = await vault.catalog.resolve(manifest.id);
    expect(await vault.catalog.whole(entry)).toBeDefined();
    expect((await early()).filter((k) => k.includes('.claim-'))).toEqual([]);
  });
});
