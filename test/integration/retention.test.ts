import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inMemorySource, type ObjectSource, runBackup } from '../../core/backup/run';
import type { ManifestBody } from '../../core/catalog/manifest';
import type { BackupType, Schedule } from '../../core/catalog/naming';
import { parseConfig } from '../../core/config';
import type { ServerInfo } from '../../core/pg/server';
import { deleteBackupByHand, runRetention } from '../../core/retention/apply';
import type { StorageTarget } from '../../core/storage/target';
import { openVault, type Vault } from '../../core/vault';
import { archiveIdentityKey, newArchiveIdentity } from '../../core/wal/fetch';
import { formatLsn, segmentName } from '../../core/wal/naming';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { recordingReporter, tempDir } from '../helpers/vault';

/**
 * Retention on a real catalog: backups written by the backup code (runBackup: objects, then the
 * manifest) into a local folder and s3rver at once, WAL objects under their real keys, and the plan
 * carried out through the storage targets. An HTTP proxy in front of s3rver answers DELETE of chosen
 * keys the way S3 answers for an object under Object Lock.
 */

const CLUSTER = 'main';
const DAY = 86_400_000;
/** 1 GiB segments: four per log folder, so a few dozen objects make several folders. */
const SEG = 1024 * 1024 * 1024;
const seg = (n: number, tli = 1) => segmentName(tli, BigInt(n), SEG);
const walKey = (n: number) => `${CLUSTER}/wal/00000001/${seg(n).slice(0, 16)}/${seg(n)}`;
const SERVER: ServerInfo = {
  version: '15.8',
  versionNum: 150008,
  major: 15,
  systemIdentifier: '7345000000000000001',
  superuser: true,
};

let s3: S3TestServer;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [s3, work] = await Promise.all([startS3Server('pgvault-retention'), tempDir('pgvault-retention-')]);
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
  });
});

afterAll(async () => {
  await Promise.all([s3?.stop(), work?.remove()]);
});

function vaultFor(extra: Record<string, string>): Vault {
  return openVault(
    parseConfig({
      CLUSTER_NAME: CLUSTER,
      COMPRESSION: 'none',
      PARALLEL_JOBS: '2',
      ENCRYPTION_ITERATIONS: '1000',
      ...extra,
    }),
    recordingReporter(),
  );
}

function sources(type: BackupType): ObjectSource[] {
  if (type === 'full') {
    return [
      { ...inMemorySource('database', 'dump', 'app', Buffer.from('app data')), part: 'app', database: 'app' },
      { ...inMemorySource('globals', 'sql', 'globals', Buffer.from('globals')), part: 'globals' },
    ];
  }
  if (type === 'base') return [inMemorySource('base', 'tar', 'base', Buffer.from('base tar'))];
  return [inMemorySource(type, type === 'config' ? 'tar' : 'sql', type, Buffer.from(type))];
}

async function take(
  vault: Vault,
  type: BackupType,
  schedule: Schedule,
  at: Date,
  wal?: { start: number; stop: number },
): Promise<ManifestBody> {
  const lsn = (n: number) => formatLsn(BigInt(n) * BigInt(SEG) + 0x28n);
  return runBackup(vault, {
    type,
    schedule,
    server: SERVER,
    tools: {},
    now: at,
    sources: sources(type),
    physical: wal
      ? () => ({
          timeline: 1,
          startLsn: lsn(wal.start),
          stopLsn: lsn(wal.stop),
          startWal: seg(wal.start),
          stopWal: seg(wal.stop),
          walIncluded: true,
          segmentBytes: SEG,
          stopTime: new Date(at.getTime() + 60_000).toISOString(),
        })
      : undefined,
  });
}

async function keys(target: StorageTarget, prefix = `${CLUSTER}/`): Promise<string[]> {
  const out: string[] = [];
  for await (const o of target.list(prefix)) out.push(o.key);
  return out.sort();
}

async function snapshot(vault: Vault): Promise<string[][]> {
  return Promise.all(vault.targets.map((t) => keys(t)));
}

describe('retention on a local folder and S3 at once', () => {
  // The run's clock is two days ahead of the objects' write times, so objects without a manifest
  // written now are "older than a day" for it. Backups are dated in real time (a manifest from the
  // future is refused), so the run sees each two days older than its name says.
  const now = new Date(Date.now() + 2 * DAY);
  const midnight = Math.floor(Date.now() / DAY) * DAY;
  /** hour:00 UTC, `days` days before yesterday: always in the past, never across a day boundary. */
  const ago = (days: number, hour = 10) => new Date(midnight - (days + 1) * DAY + hour * 3600_000);
  let vault: Vault;
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    vault = vaultFor({
      BACKUP_DIR: `${work.path}/both`,
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      CLOUD_PREFIX: 'both',
      S3_ENDPOINT: s3.endpoint,
      LOCAL_COPY: 'true',
      RETENTION_DAYS: '2',
      RETENTION_WEEKS: '1',
      RETENTION_MONTHS: '1',
      RETENTION_CONFIG_COUNT: '2',
      RETENTION_INDEXES_COUNT: '1',
      RETENTION_WAL_DAYS: '5',
    });
    expect(vault.targets.map((t) => t.kind)).toEqual(['file', 's3']);
    // Full backups: one a day for 10 days, a second one today, and a manual one from long ago.
    for (let i = 0; i < 10; i++) ids[`full${i}`] = (await take(vault, 'full', 'daily', ago(i, 10))).id;
    ids.fullToday2 = (await take(vault, 'full', 'daily', ago(0, 9))).id;
    ids.manual = (await take(vault, 'full', 'manual', ago(100))).id;
    for (let i = 0; i < 4; i++) ids[`config${i}`] = (await take(vault, 'config', 'daily', ago(i, 11))).id;
    for (let i = 0; i < 3; i++) ids[`indexes${i}`] = (await take(vault, 'indexes', 'daily', ago(i, 11))).id;
    // Base backups and the WAL they need: segment n on timeline 1, four per log folder.
    ids.base40 = (await take(vault, 'base', 'weekly', ago(40, 12), { start: 4, stop: 5 })).id;
    ids.base10 = (await take(vault, 'base', 'daily', ago(9, 12), { start: 21, stop: 22 })).id;
    ids.base2 = (await take(vault, 'base', 'daily', ago(1, 12), { start: 28, stop: 29 })).id;
    ids.base1 = (await take(vault, 'base', 'daily', ago(0, 12), { start: 36, stop: 37 })).id;
    for (const t of vault.targets) {
      await t.putBytes(
        archiveIdentityKey(CLUSTER),
        JSON.stringify(newArchiveIdentity(CLUSTER, SERVER.systemIdentifier, SEG, 1000)),
      );
      for (let n = 0; n < 44; n++) await t.putBytes(walKey(n), 'wal');
      await t.putBytes(`${CLUSTER}/wal/00000002/00000002.history`, '1\tB/0\tno recovery target specified\n');
      // A backup that failed long ago: objects, no manifest.
      await t.putBytes(`${CLUSTER}/full/daily/full-daily-20200101-020000.app.dump`, 'partial');
    }
  });

  it('--dry-run prints the plan with a rule for every backup and deletes nothing', async () => {
    // Prepare
    const before = await snapshot(vault);

    // Act
    const result = await runRetention(vault, { dryRun: true, now });

    // Assess
    expect(await snapshot(vault)).toEqual(before);
    const rule = (id: string) => result.plan.backups.find((b) => b.id === id)!;
    expect(rule(ids.full0!).rules[0]).toBe('newest full');
    expect(rule(ids.full1!).rules.join('; ')).toMatch(/^daily \d{4}-\d\d-\d\d \(#2 of 2\)/);
    expect(rule(ids.fullToday2!)).toMatchObject({ action: 'delete' });
    expect(rule(ids.fullToday2!).rules[0]).toMatch(/^superseded by /);
    expect(rule(ids.full5!)).toMatchObject({
      action: 'delete',
      rules: ['outside the GFS slots (daily 2, weekly 1, monthly 1)'],
    });
    expect(rule(ids.manual!)).toMatchObject({
      action: 'keep',
      rules: ['manual: kept until deleted by hand (backup delete)'],
    });
    expect(rule(ids.config1!)).toMatchObject({ action: 'keep', rules: ['config #2 of 2'] });
    expect(rule(ids.config2!)).toMatchObject({ action: 'delete' });
    expect(rule(ids.indexes1!)).toMatchObject({ action: 'delete' });
    expect(rule(ids.base10!)).toMatchObject({ action: 'keep', rules: ['starts the 5-day PITR window'] });
    expect(rule(ids.base40!)).toMatchObject({ action: 'delete' });
    expect(result.plan.wal.keepFrom).toBe(seg(21));
    expect(result.plan.wal.folders.map((f) => [f.folder, f.whole, f.segments])).toEqual([
      [seg(0).slice(0, 16), true, 4],
      [seg(4).slice(0, 16), true, 4],
      [seg(8).slice(0, 16), true, 4],
      [seg(12).slice(0, 16), true, 4],
      [seg(16).slice(0, 16), true, 4],
      [seg(20).slice(0, 16), false, 1],
    ]);
    expect(result.plan.leftovers).toMatchObject([{ id: 'full-daily-20200101-020000', action: 'delete' }]);
  });

  it('deletes what the plan says from every target, keeps the rest whole, and a second run deletes nothing', async () => {
    // Act
    const result = await runRetention(vault, { now });
    const again = await runRetention(vault, { now });

    // Assess
    expect(result.failed).toEqual([]);
    expect(result.locked).toEqual([]);
    const deleted = result.plan.backups.filter((b) => b.action === 'delete');
    const keptIds = result.plan.backups.filter((b) => b.action === 'keep').map((b) => b.id);
    expect(result.deleted.backups.sort()).toEqual(deleted.map((b) => b.id).sort());
    expect(deleted.length).toBe(8 + 1 + 2 + 2 + 1); // fulls 2..9 and today's second, config, indexes, base40
    expect((await vault.catalog.list()).map((e) => e.manifest.id).sort()).toEqual(keptIds.sort());
    for (const target of vault.targets) {
      const all = await keys(target);
      for (const b of deleted) expect(all.filter((k) => k.includes(b.id))).toEqual([]);
      for (const e of await vault.catalog.list())
        for (const o of e.manifest.objects) expect(all).toContain(o.key);
      expect(all.filter((k) => k.includes('20200101'))).toEqual([]);
      // WAL from base10's start on is all there; below it nothing; the history file stays.
      const wal = all.filter((k) => k.includes('/wal/00000001/')).map((k) => k.slice(-24));
      expect(wal).toEqual(Array.from({ length: 44 - 21 }, (_, i) => seg(21 + i)));
      expect(all).toContain(`${CLUSTER}/wal/00000002/00000002.history`);
      expect(all).toContain(archiveIdentityKey(CLUSTER));
    }
    expect(result.deleted.walObjects).toBe(2 * 21);
    expect(again.deleted).toEqual({ backups: [], leftoverObjects: 0, walObjects: 0 });
    expect(again.plan.backups.every((b) => b.action === 'keep')).toBe(true);
  });

  it('finishes a deletion that stopped halfway: a manifest gone in one target, the objects left in both', async () => {
    // Prepare: a backup retention will delete; the run "crashed" after removing its manifest from the
    // local folder (still complete in S3), and another after removing both manifests (objects left).
    const halfInS3 = await take(vault, 'full', 'daily', ago(30, 5));
    const objectsOnly = await take(vault, 'config', 'daily', ago(30, 5));
    const [local, bucket] = vault.targets;
    await local!.delete(`${CLUSTER}/full/daily/${halfInS3.id}.manifest.json`);
    for (const t of [local!, bucket!]) await t.delete(`${CLUSTER}/config/${objectsOnly.id}.manifest.json`);
    const listed = (await vault.catalog.list()).find((e) => e.manifest.id === halfInS3.id);
    expect(listed?.targets.map((t) => t.kind)).toEqual(['s3']);

    // Act
    const result = await runRetention(vault, { now });

    // Assess
    expect(result.deleted.backups).toEqual([halfInS3.id]);
    expect(result.plan.leftovers.map((l) => [l.id, l.action])).toEqual([
      [objectsOnly.id, 'delete'],
      [halfInS3.id, 'delete'],
    ]);
    for (const t of vault.targets) {
      const all = await keys(t);
      expect(all.filter((k) => k.includes(halfInS3.id) || k.includes(objectsOnly.id))).toEqual([]);
    }
  });

  it('backup delete removes a manual backup only with --yes', async () => {
    // Act
    const refused = await deleteBackupByHand(vault, ids.manual!, {}).catch((e: Error) => e);
    const stillThere = await snapshot(vault);
    const done = await deleteBackupByHand(vault, ids.manual!, { yes: true });

    // Assess
    expect(refused).toBeInstanceOf(Error);
    expect((refused as Error).message).toMatch(/add --yes to delete it$/);
    expect(stillThere.every((k) => k.some((key) => key.includes(ids.manual!)))).toBe(true);
    expect(done).toMatchObject({ id: ids.manual, objects: 2, locked: [], failed: [] });
    for (const t of vault.targets) expect((await keys(t)).filter((k) => k.includes(ids.manual!))).toEqual([]);
    await expect(deleteBackupByHand(vault, ids.manual!, { yes: true })).rejects.toThrow(/not found/);
  });
});

/** s3rver behind a proxy that refuses DELETE of locked keys exactly as S3 does under Object Lock. */
async function lockingProxy(
  upstream: string,
  locked: Set<string>,
): Promise<{ endpoint: string; server: Server }> {
  const target = new URL(upstream);
  const server = createServer((req, res) => {
    const path = decodeURIComponent((req.url ?? '').split('?')[0] ?? '');
    if (req.method === 'DELETE' && [...locked].some((k) => path.endsWith(`/${k}`))) {
      req.resume();
      res.writeHead(403, { 'content-type': 'application/xml' });
      res.end(
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied because object protected by object lock.</Message><RequestId>LOCK</RequestId></Error>',
      );
      return;
    }
    const forward = request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

describe('retention with S3 Object Lock', () => {
  it('reports locked objects as locked, not as failures, and deletes them once unlocked', async () => {
    // Prepare
    const locked = new Set<string>();
    const proxy = await lockingProxy(s3.endpoint, locked);
    try {
      const vault = vaultFor({
        BACKUP_DIR: `${work.path}/locked`,
        CLOUD_PROVIDER: 's3',
        CLOUD_BUCKET: s3.bucket,
        CLOUD_PREFIX: 'locked',
        S3_ENDPOINT: proxy.endpoint,
        LOCAL_COPY: 'false',
        RETENTION_DAYS: '1',
        RETENTION_WEEKS: '0',
        RETENTION_MONTHS: '0',
      });
      const now = new Date(Date.now() + 2 * DAY);
      const newest = await take(vault, 'full', 'daily', new Date(Date.now() - 60_000));
      const lockedManifest = await take(vault, 'full', 'daily', new Date(Date.now() - DAY));
      const lockedObject = await take(vault, 'full', 'daily', new Date(Date.now() - 2 * DAY));
      locked.add(`${lockedManifest.id}.manifest.json`);
      locked.add(lockedObject.objects[0]!.key.split('/').pop()!);

      // Act
      const first = await runRetention(vault, { now });
      const listedAfter = (await vault.catalog.list()).map((e) => e.manifest.id);
      const left = await keys(vault.targets[0]!);
      locked.clear();
      const second = await runRetention(vault, { now });

      // Assess
      expect(first.failed).toEqual([]);
      expect(first.locked.map((l) => [l.key.split('/').pop(), l.detail])).toEqual(
        expect.arrayContaining([
          [`${lockedManifest.id}.manifest.json`, 'still locked (S3 Object Lock)'],
          [lockedObject.objects[0]!.key.split('/').pop(), 'still locked (S3 Object Lock)'],
        ]),
      );
      expect(first.locked).toHaveLength(2);
      // The backup whose manifest is locked stays whole; the other lost all but its locked object.
      expect(listedAfter.sort()).toEqual([newest.id, lockedManifest.id].sort());
      for (const o of lockedManifest.objects) expect(left).toContain(o.key);
      expect(left.filter((k) => k.includes(lockedObject.id))).toEqual([lockedObject.objects[0]!.key]);
      expect(second.locked).toEqual([]);
      expect(second.deleted.backups).toEqual([lockedManifest.id]);
      expect(second.deleted.leftoverObjects).toBe(1);
      // What is left: the newest backup, and the archive's key check (retention never deletes it).
      expect((await keys(vault.targets[0]!)).filter((k) => !k.includes(newest.id))).toEqual([
        'main/keys.json',
      ]);
    } finally {
      proxy.server.close();
    }
  });
});

describe('the CLI', () => {
  const BIN = resolve(__dirname, '../../bin/pgvault.js');
  it('backup retention --dry-run --json, and backup delete asking for --yes', async () => {
    // Prepare
    const dir = `${work.path}/cli`;
    const vault = vaultFor({
      BACKUP_DIR: dir,
      RETENTION_DAYS: '1',
      RETENTION_WEEKS: '0',
      RETENTION_MONTHS: '0',
    });
    const newest = await take(vault, 'full', 'daily', new Date(Date.now() - 60_000));
    const old = await take(vault, 'full', 'daily', new Date(Date.now() - 3 * DAY));
    const manual = await take(vault, 'full', 'manual', new Date(Date.now() - 9 * DAY));
    const configFile = `${dir}/pgvault.env`;
    writeFileSync(
      configFile,
      [
        `BACKUP_DIR=${dir}`,
        `CLUSTER_NAME=${CLUSTER}`,
        'RETENTION_DAYS=1',
        'RETENTION_WEEKS=0',
        'RETENTION_MONTHS=0',
      ].join('\n'),
    );
    const pgvault = (args: string[]) => {
      const r = spawnSync(process.execPath, [BIN, '--config', configFile, ...args], {
        encoding: 'utf8',
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' },
      });
      return { code: r.status, stdout: r.stdout, stderr: r.stderr };
    };

    // Act
    const plan = pgvault(['backup', 'retention', '--dry-run', '--json']);
    const text = pgvault(['backup', 'retention', '--dry-run']);
    const noYes = pgvault(['backup', 'delete', manual.id]);
    const listed = (await vault.catalog.list()).map((e) => e.manifest.id);
    const apply = pgvault(['backup', 'retention']);
    const yes = pgvault(['backup', 'delete', manual.id, '--yes']);

    // Assess
    expect(plan.code, plan.stderr).toBe(0);
    const json = JSON.parse(plan.stdout);
    expect(json).toMatchObject({ ok: true, dryRun: true });
    expect(json.plan.backups.map((b: { id: string; action: string }) => [b.id, b.action])).toEqual([
      [newest.id, 'keep'],
      [old.id, 'delete'],
      [manual.id, 'keep'],
    ]);
    expect(text.stdout).toMatch(
      new RegExp(`${old.id}\\s+delete\\s+outside the GFS slots \\(daily 1, weekly 0, monthly 0\\)`),
    );
    expect(text.stdout).toContain('manual: kept until deleted by hand');
    expect(noYes.code).toBe(2);
    expect(noYes.stderr.trim().split('\n')).toHaveLength(1);
    expect(noYes.stderr).toMatch(/add --yes to delete it/);
    expect(listed).toContain(manual.id);
    expect(apply.code, apply.stderr).toBe(0);
    expect(apply.stdout).toMatch(/deleted: 1 backup\(s\)/);
    expect(yes.code, yes.stderr).toBe(0);
    expect((await vault.catalog.list()).map((e) => e.manifest.id)).toEqual([newest.id]);
  });
});
