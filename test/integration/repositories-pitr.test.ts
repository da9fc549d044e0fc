import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import type { ManifestBody } from '../../core/catalog/manifest';
import { TempCluster } from '../../core/pg/cluster';
import { parseRecoveryTarget, restorePitrToDataDirectory } from '../../core/restore/pitr';
import { S3Target } from '../../core/storage/s3';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { tempDir } from '../helpers/vault';
import {
  type ArchivingCluster,
  type Batch,
  batchesIn,
  between,
  commitBatch,
  giveToServerUser,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
  waitForPromotion,
} from './pitr-fixture';
import { killProcessesNaming } from './wal-fixture';

/**
 * Issue 14, "Repositories", round trip with point-in-time recovery: a real server archives its WAL
 * through pgvault into two repositories at once, repo1 a folder and repo2 S3 (s3rver behind the
 * fault proxy); base backups go to both. Recovery reads repo1 first and falls back to repo2 (its
 * restore_command reads the REPO<n> keys from the config file pgvault writes for it).
 *
 *   batch 0 · base A (both) · batch 1 · batch 2 · switch · base B (repo2 down) · batch 3 · batch 4 · switch
 *
 * `npm run build` first: archive_command, restore_command and the commands under test are the built CLI.
 */
const CLUSTER = 'twin';
const PREFIX = 'vault';
let s3: S3TestServer;
let proxy: FaultProxy;
let a: ArchivingCluster;
let dirs: Awaited<ReturnType<typeof tempDir>>;
let repo1: string;
let baseA: ManifestBody;
const batches: Batch[] = [];

const savedEnv = { ...process.env };

beforeAll(async () => {
  s3 = await startS3Server('pgvault-repos-pitr');
  proxy = await startFaultProxy(s3.endpoint);
  // The server, its archive_command and restore_command inherit the credentials (never in a file).
  process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey;
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  dirs = await tempDir('pgvault-repos-pitr-');
  await chmod(dirs.path, 0o755);
  repo1 = join(dirs.path, 'repo1');
  await mkdir(join(repo1, CLUSTER), { recursive: true, mode: 0o700 });
  await giveToServerUser(repo1);
  await giveToServerUser(join(repo1, CLUSTER));
  a = await startAppCluster({
    cluster: CLUSTER,
    extra: {
      REPO1_TYPE: 'file',
      REPO1_PATH: repo1,
      REPO2_TYPE: 's3',
      REPO2_BUCKET: s3.bucket,
      REPO2_PREFIX: PREFIX,
      REPO2_S3_ENDPOINT: proxy.endpoint,
      REPO2_S3_MAX_ATTEMPTS: '2',
      REPO2_HOLDS: 'full,base,wal,config,reports',
    },
  });
  batches.push(await commitBatch(a.cluster, 0));
  baseA = await backupBase(a.vault(), { schedule: 'daily' });
  batches.push(await commitBatch(a.cluster, 1));
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 2));
  await switchAndWaitArchived(a.cluster);
}, 180_000);

afterAll(async () => {
  await a?.stop();
  await proxy?.stop();
  await s3?.stop();
  await dirs?.remove();
  process.env = savedEnv;
});

function pgvault(args: string[]) {
  return runPgvault(
    ['--config', a.configFile, ...args],
    {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/root',
      AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    },
    a.work,
  );
}

function bucket(): S3Target {
  return new S3Target({
    bucket: s3.bucket,
    prefix: PREFIX,
    region: s3.region,
    endpoint: s3.endpoint,
    credentials: s3.credentials,
  });
}

/** repo1's WAL segment objects (not .history / .backup), by segment name. */
function repo1Segments(): Map<string, string> {
  const root = join(repo1, CLUSTER, 'wal');
  const found = new Map<string, string>();
  for (const rel of readdirSync(root, { recursive: true }) as string[]) {
    const m = /(?:^|\/)([0-9A-F]{24})\.[a-z.]+$/.exec(rel);
    if (m) found.set(m[1]!, join(root, rel));
  }
  return found;
}

/** Flips one byte in the middle of a file; returns the original bytes to put back. */
function flipByte(path: string): Buffer {
  const original = readFileSync(path);
  const changed = Buffer.from(original);
  changed[changed.length >> 1]! ^= 0xff;
  writeFileSync(path, changed);
  return original;
}

/**
 * PITR into a new data directory (restore pitr --pgdata's core), then the server started on it: the
 * batches it holds and its log (restore_command's stderr goes there).
 */
async function recoverTo(name: string, time: string): Promise<{ rows: Record<number, number>; log: string }> {
  const pgdata = join(a.work, name);
  await restorePitrToDataDirectory(a.vault(), 'auto', parseRecoveryTarget({ time }), { pgdata });
  const server = await TempCluster.startOn({ dataDir: pgdata });
  try {
    await waitForPromotion(server);
    return { rows: await batchesIn(server, 'app'), log: server.readLog() };
  } finally {
    await server.stop();
    killProcessesNaming(pgdata);
  }
}

describe('PITR with a file and an S3 repository', () => {
  it('(a) both up: the base backup and every segment are in both; PITR between two commits brings exactly the rows', async () => {
    // Prepare
    const inS3: string[] = [];
    for await (const o of bucket().list(`${CLUSTER}/`)) inS3.push(o.key);

    // Act
    const { rows } = await recoverTo('both-up', between(batches[1]!.commitTime, batches[2]!.commitTime));

    // Assess
    expect(inS3).toContain(`${CLUSTER}/base/daily/${baseA.id}.manifest.json`);
    expect(existsSync(join(repo1, CLUSTER, 'base', 'daily', `${baseA.id}.manifest.json`))).toBe(true);
    for (const name of repo1Segments().keys())
      expect(
        inS3.some((k) => k.includes(`/${name}.`)),
        name,
      ).toBe(true);
    expect(rows).toEqual({ 0: 50, 1: 50 });
  });

  it("(b) repo1's WAL corrupt: recovery falls back to repo2, says so in the server's log, rows exact", async () => {
    // Prepare: every segment of repo1 from the base backup on gets one byte flipped.
    const originals = new Map<string, Buffer>();
    for (const [name, path] of repo1Segments()) {
      if (name >= baseA.physical!.startWal) originals.set(path, flipByte(path));
    }

    // Act
    let result: Awaited<ReturnType<typeof recoverTo>>;
    try {
      result = await recoverTo('repo1-corrupt', between(batches[1]!.commitTime, batches[2]!.commitTime));
    } finally {
      for (const [path, bytes] of originals) writeFileSync(path, bytes);
    }

    // Assess
    expect(originals.size).toBeGreaterThan(0);
    expect(result.log).toMatch(/is corrupt/);
    expect(result.log).toMatch(
      new RegExp(
        `${baseA.physical!.startWal} is unusable in file://${repo1}; read it from s3://${s3.bucket}/${PREFIX}`,
      ),
    );
    expect(result.rows).toEqual({ 0: 50, 1: 50 });
  });

  it('repo sync refuses a corrupt WAL object of repo1 (exit 3, named), copies nothing; the good copy in repo2 refills repo1', async () => {
    // Prepare: a segment repo2 lacks, whose only copy (repo1's) has a flipped byte.
    const [name, path] = [...repo1Segments()].find(([n]) => n >= baseA.physical!.startWal)!;
    const key = `${CLUSTER}/${path.slice(join(repo1, CLUSTER).length + 1)}`;
    const cloud = bucket();
    const good = await cloud.getBytes(key);
    await cloud.delete(key);
    const original = flipByte(path);

    // Act
    let refused: Awaited<ReturnType<typeof pgvault>>;
    let lacking: Awaited<ReturnType<S3Target['stat']>>;
    let refilled: Awaited<ReturnType<typeof pgvault>>;
    try {
      refused = await pgvault(['--json', 'repo', 'sync', '--to', '2']);
      lacking = await cloud.stat(key);
      // The other way round: repo2 holds the good copy, repo1's is wrong. repo sync never
      // overwrites an object the destination has (nor reads it: verify's work); remove the bad
      // copy and repo sync brings the good one back.
      await cloud.putBytes(key, good);
      rmSync(path);
      refilled = await pgvault(['--json', 'repo', 'sync', '--to', '1']);
    } finally {
      if (!existsSync(path)) writeFileSync(path, original);
      if ((await cloud.stat(key)) === undefined) await cloud.putBytes(key, good);
    }

    // Assess
    expect(refused.code, refused.stderr).toBe(3);
    expect(refused.stderr).toContain(key);
    expect(refused.stderr).toContain(`file://${repo1}`);
    const failed = JSON.parse(refused.stdout).failed as { name: string; integrity: boolean }[];
    expect(failed).toEqual([expect.objectContaining({ name: key, integrity: true })]);
    expect(lacking).toBeUndefined();
    expect(refilled.code, refilled.stderr).toBe(0);
    const copied = JSON.parse(refilled.stdout).copied as { kind: string; name: string }[];
    expect(copied).toContainEqual(expect.objectContaining({ kind: 'wal', name: key }));
    expect(readFileSync(path).equals(original), name).toBe(true);
  });

  it('verify all with repo2 unreachable: a failing check naming repo2, not a crash, not skipped', async () => {
    // Prepare: every request to the S3 repository answers 503.
    proxy.addRule({ action: { kind: 'status', status: 503 } });

    // Act
    let verify: Awaited<ReturnType<typeof pgvault>>;
    let reported: Awaited<ReturnType<typeof pgvault>>;
    try {
      verify = await pgvault(['--json', 'verify', 'all', '--quick']);
      reported = await pgvault(['--json', 'verify', 'report']);
    } finally {
      proxy.clearRules();
    }

    // Assess
    expect(verify.code, verify.stderr).toBe(3);
    const report = JSON.parse(verify.stdout) as {
      ok: boolean;
      faults: { problem: string; target?: string }[];
    };
    expect(report.ok).toBe(false);
    const repo2 = `repo2 (s3://${s3.bucket}/${PREFIX})`;
    expect(
      report.faults.some((f) => f.problem.startsWith(`cannot list ${repo2}:`)),
      verify.stdout,
    ).toBe(true);
    // Unreachable is not "missing": no advice to copy backups into a repository nobody could read.
    expect(
      report.faults.filter((f) => /repo sync|is not in repo2/.test(`${f.problem}`)),
      verify.stdout,
    ).toEqual([]);
    expect(verify.stderr).toContain(`cannot list ${repo2}`);
    // The report's repository rows: repo2 unreachable, not "missing" its backups.
    const rows = JSON.parse(reported.stdout).report.repositories as {
      repository: number;
      missing: string[];
      unreachable?: string;
    }[];
    expect(
      rows.map((r) => [r.repository, r.missing, r.unreachable !== undefined]),
      reported.stdout,
    ).toEqual([
      [1, [], false],
      [2, [], true],
    ]);
    // ... and the report is failing because of it: never "every check passes" over a copy nobody saw.
    const data = JSON.parse(reported.stdout).report as {
      status: string;
      failing: { kind: string; what: string }[];
    };
    expect(data.status, reported.stdout).toBe('failing');
    expect(
      data.failing.filter((a) => a.kind === 'repository').map((a) => a.what.split(' could not')[0]),
    ).toEqual([repo2]);
  });

  it('(c) repo2 down during a base backup: fails naming it, repo1 whole; repo sync fills repo2; verify all passes; PITR from repo2 alone exact', async () => {
    // Prepare
    const down = proxy.addRule({
      method: 'PUT',
      key: new RegExp(`^${PREFIX}/${CLUSTER}/base/`),
      action: { kind: 'status', status: 503 },
    });

    // Act
    const backup = await pgvault(['--json', 'backup', 'base', 'weekly']);
    const hits = proxy.hits(down);
    proxy.clearRules();
    const before = await pgvault(['--json', 'verify', 'all', '--quick']);
    batches.push(await commitBatch(a.cluster, 3));
    await sleep(1100);
    batches.push(await commitBatch(a.cluster, 4));
    await switchAndWaitArchived(a.cluster);
    const sync = await pgvault(['--json', 'repo', 'sync', '--to', '2']);
    const verify = await pgvault(['--json', 'verify', 'all']);
    rmSync(join(repo1, CLUSTER), { recursive: true });
    const { rows, log } = await recoverTo(
      'repo2-alone',
      between(batches[3]!.commitTime, batches[4]!.commitTime),
    );

    // Assess
    expect(hits, backup.stderr).toBeGreaterThan(0);
    expect(backup.code).not.toBe(0);
    expect(backup.stderr).toMatch(new RegExp(`but not in repo2 \\(s3://${s3.bucket}/${PREFIX}\\)`));
    expect(backup.stderr).not.toContain(s3.credentials.secretAccessKey);
    const gaps = JSON.parse(before.stdout).faults as { problem: string }[];
    expect(
      gaps.some((f) => /repo2|s3:\/\//.test(f.problem)),
      before.stdout,
    ).toBe(true);
    expect(sync.code, sync.stderr).toBe(0);
    const copied = JSON.parse(sync.stdout).copied as { kind: string; name: string }[];
    expect(copied.filter((c) => c.kind === 'backup')).toHaveLength(1);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    const report = JSON.parse(verify.stdout) as { copies: { backup: string; target: string; ok: boolean }[] };
    const weekly = report.copies.filter((c) => c.backup.startsWith('base-weekly'));
    expect(weekly.map((c) => [c.target, c.ok])).toEqual([
      [`file://${repo1}`, true],
      [`s3://${s3.bucket}/${PREFIX}`, true],
    ]);
    expect(log).toMatch(new RegExp(`is not in file://${repo1}; read it from s3://`));
    expect(rows).toEqual({ 0: 50, 1: 50, 2: 50, 3: 50 });
  });
});
