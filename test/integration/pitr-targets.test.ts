import { execFile } from 'node:child_process';
import { cp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { backupStats } from '../../core/backup/stats';
import type { ManifestBody } from '../../core/catalog/manifest';
import { IntegrityError, UsageError } from '../../core/errors';
import { serverOsUser, type TempCluster } from '../../core/pg/cluster';
import {
  parseRecoveryTarget,
  type RecoveryTarget,
  restorePitrDatabase,
  restorePitrToDataDirectory,
} from '../../core/restore/pitr';
import { startCluster } from '../helpers/pg';
import {
  type ArchivingCluster,
  type Batch,
  batchesAfterRecovery,
  batchesIn,
  between,
  commitBatch,
  PGVAULT_BIN,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * Point-in-time recovery to each kind of target, through pgvault's own archive_command and
 * restore_command: batches committed a second apart, then recovered to a point between two of
 * them in a sandbox and copied back as a new database, which must hold exactly the earlier batches.
 *
 *   batch 0 · base backup · batch 1 · (LSN) · switch · batch 2 · restore point · batch 3 · archived
 */
const run = promisify(execFile);
let a: ArchivingCluster;
/** The configured server restores copy into: a second cluster, so copies add no WAL to a's archive. */
let into: TempCluster;
let base: ManifestBody;
let lsnAfterBatch1: string;
const batches: Batch[] = [];

beforeAll(async () => {
  [a, into] = await Promise.all([startAppCluster(), startCluster()]);
  batches.push(await commitBatch(a.cluster, 0));
  base = await backupBase(a.vault(), { schedule: 'daily' });
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 1));
  const [insert] = await a.cluster.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn');
  lsnAfterBatch1 = insert!.lsn;
  // Batch 1 ends its segment: the gap test deletes that one, with WAL archived after it.
  await switchAndWaitArchived(a.cluster);
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 2));
  await a.cluster.query("SELECT pg_create_restore_point('before_batch_3')");
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 3));
  await switchAndWaitArchived(a.cluster);
}, 120_000);

afterAll(async () => {
  await Promise.all([a?.stop(), into?.stop()]);
});

/** a's vault, with the configured server (PGHOST/PGPORT) being `into`. */
function vaultInto(extra: Record<string, string> = {}) {
  return a.vault({ PGHOST: into.host, PGPORT: String(into.port), ...extra });
}

async function recoverInto(database: string, target: RecoveryTarget, ref = 'auto') {
  return restorePitrDatabase(vaultInto(), ref, target, { database, from: 'app' });
}

describe('restore pitr into a sandbox, copying the database back', () => {
  it('to a time between two commits brings back exactly the earlier batches', async () => {
    // Prepare
    const target = parseRecoveryTarget({ time: between(batches[1]!.commitTime, batches[2]!.commitTime) });

    // Act
    const r = await recoverInto('pitr_time', target);

    // Assess
    expect(await batchesIn(into, 'pitr_time')).toEqual({ 0: 50, 1: 50 });
    expect(r.backupId).toBe(base.id);
    expect(r.choice).toMatch(/newest base backup that ended before the target/);
    expect(r.createdDatabase).toBe(true);
    expect(r.recovered.lastTransactionTime?.slice(0, 22)).toBe(batches[1]!.commitTimeText.slice(0, 22));
    expect(r.recovered.stopReason).toMatch(/before commit of transaction/);
    expect(r.recovered.segmentsRestored).toBeGreaterThan(0);
  });

  it('to an LSN taken between two commits', async () => {
    const r = await recoverInto('pitr_lsn', parseRecoveryTarget({ lsn: lsnAfterBatch1 }));
    expect(await batchesIn(into, 'pitr_lsn')).toEqual({ 0: 50, 1: 50 });
    expect(r.recovered.lsn).toBeDefined();
  });

  it('to a transaction id, including that transaction (recovery_target_inclusive default)', async () => {
    const r = await recoverInto('pitr_xid', parseRecoveryTarget({ xid: batches[2]!.xid }));
    expect(await batchesIn(into, 'pitr_xid')).toEqual({ 0: 50, 1: 50, 2: 50 });
    expect(r.choice).toMatch(/cannot tell from the catalog when transaction/);
  });

  it('to a named restore point', async () => {
    await recoverInto('pitr_name', parseRecoveryTarget({ name: 'before_batch_3' }), base.id);
    expect(await batchesIn(into, 'pitr_name')).toEqual({ 0: 50, 1: 50, 2: 50 });
  });

  it('--immediate: only what the base backup holds', async () => {
    await recoverInto('pitr_immediate', parseRecoveryTarget({ immediate: true }), 'latest');
    expect(await batchesIn(into, 'pitr_immediate')).toEqual({ 0: 50 });
  });

  it('the CLI form `restore pitr auto "<time>" <database>`: a local time in TZ, the one user database as source', async () => {
    // Act: the time as a clock in New York shows it, without a zone; no --from (the recovered
    // cluster holds postgres and app, so app is the source, not the target's name or PGDATABASE).
    const moment = new Date(between(batches[2]!.commitTime, batches[3]!.commitTime));
    const time = wallClock(moment, 'America/New_York');
    const { stdout, stderr } = await run(
      process.execPath,
      [PGVAULT_BIN, '--config', a.configFile, '--json', 'restore', 'pitr', 'auto', time, 'pitr_cli'],
      {
        env: {
          ...process.env,
          PGVAULT_CONFIG: '',
          PGHOST: into.host,
          PGPORT: String(into.port),
          PGDATABASE: 'postgres',
          TZ: 'America/New_York',
        },
      },
    );

    // Assess
    const out = JSON.parse(stdout) as {
      ok: boolean;
      backupId: string;
      source: string;
      durationMs: number;
      recovered: { lsn?: string };
      targetTime: { utc: string; local: string; timeZone: string };
    };
    expect(out).toMatchObject({ ok: true, backupId: base.id, source: 'app' });
    const utc = moment.toISOString(); // 2026-12-05T12:00:01.234Z
    expect(out.targetTime.utc).toBe(`${utc.slice(0, 10)} ${utc.slice(11, 23)}000 UTC`);
    expect(out.targetTime.local.startsWith(time.replace('T', ' '))).toBe(true);
    expect(out.targetTime.timeZone).toBe('America/New_York');
    expect(stderr).toContain(
      `target time ${out.targetTime.utc} = ${out.targetTime.local} (America/New_York)`,
    );
    expect(out.recovered.lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(await batchesIn(into, 'pitr_cli')).toEqual({ 0: 50, 1: 50, 2: 50 });
  });
});

/** `date` as a wall clock in `timeZone` shows it, without a zone: 2026-12-05 07:00:01.234. */
function wallClock(date: Date, timeZone: string): string {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    })
      .formatToParts(date)
      .map((p) => [p.type, p.value]),
  );
  const ms = String(date.getUTCMilliseconds()).padStart(3, '0');
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second}.${ms}`;
}

describe('restore pitr when recovery stops short', () => {
  it("fails with PostgreSQL's reason and copies nothing", async () => {
    // An xid cannot be placed from the catalog, so planning lets it through; recovery cannot reach it.
    const result = recoverInto('never_xid', parseRecoveryTarget({ xid: '99999999' }));
    await expect(result).rejects.toThrow(
      /^recovery failed: recovery ended before configured recovery target was reached; .*nothing was copied/,
    );
    const [exists] = await into.query("SELECT 1 FROM pg_database WHERE datname = 'never_xid'");
    expect(exists).toBeUndefined();
  });
});

describe('restore pitr --pgdata', () => {
  it('lays down a data directory that recovers to the target and promotes when started', async () => {
    // Prepare
    const pgdata = join(a.work, 'restored-data');
    const target = parseRecoveryTarget({ time: between(batches[2]!.commitTime, batches[3]!.commitTime) });

    // Act
    const r = await restorePitrToDataDirectory(a.vault(), 'auto', target, { pgdata });
    const auto = await readFile(join(pgdata, 'postgresql.auto.conf'), 'utf8');
    const rows = await batchesAfterRecovery(pgdata);

    // Assess
    expect(rows).toEqual({ 0: 50, 1: 50, 2: 50 });
    expect(r.keyFileWritten).toBe(false);
    expect(r.keyFile).toBe(a.settings.ENCRYPTION_KEY_FILE);
    expect(auto).toMatch(
      /restore_command = 'PGVAULT_NODE=\S*node\S* \S*bin\/pgvault --config \S*restored-data\.pgvault-recovery\.conf restore wal %f %p'/,
    );
    expect(auto).toMatch(/recovery_target_time = '/);
    expect(auto).toMatch(/recovery_target_action = 'promote'/);
    expect(auto).toMatch(/recovery_target_timeline = 'latest'/);
    expect(auto).not.toMatch(/pitr test key, long enough/);
    const conf = await readFile(r.configFile, 'utf8');
    expect(conf).toMatch(/ENCRYPTION_KEY_FILE=/);
    expect(conf).not.toMatch(/pitr test key, long enough|PGPASSWORD/);
  });

  it('with an inline key, writes it to a 0600 key file beside the config and says so', async () => {
    // Prepare
    const pgdata = join(a.work, 'inline-key-data');
    const key = (await readFile(a.settings.ENCRYPTION_KEY_FILE!, 'utf8')).trim();
    const vault = a.vault({ ENCRYPTION_KEY_FILE: '', ENCRYPTION_KEY: key });

    // Act
    const r = await restorePitrToDataDirectory(vault, 'latest', parseRecoveryTarget({ immediate: true }), {
      pgdata,
    });

    // Assess
    expect(r.keyFileWritten).toBe(true);
    expect(r.keyFile).toBe(join(a.work, 'inline-key-data.pgvault-recovery.key'));
    expect((await readFile(r.keyFile!, 'utf8')).trim()).toBe(key);
    const { stdout } = await run('stat', ['-c', '%a %U', r.keyFile!]);
    expect(stdout.trim()).toMatch(/^600 (postgres|\S+)$/);
  });

  it('refuses a directory that is not empty unless --force', async () => {
    const pgdata = join(a.work, 'restored-data'); // laid down by the test above
    await expect(
      restorePitrToDataDirectory(a.vault(), 'latest', parseRecoveryTarget({ immediate: true }), { pgdata }),
    ).rejects.toThrow(/is not empty .* pass --force/);
    const r = await restorePitrToDataDirectory(
      a.vault(),
      'latest',
      parseRecoveryTarget({ immediate: true }),
      {
        pgdata,
        force: true,
      },
    );
    expect(r.backupId).toBe(base.id);
    expect(await readdir(pgdata)).toContain('recovery.signal');
  });
});

describe('restore pitr --pgdata from a damaged base backup', () => {
  it('names the object corrupt and leaves no directory', async () => {
    // Prepare: a copy of the vault whose base backup has one flipped byte in the middle.
    const copy = join(a.work, 'flipped-backups');
    await cp(a.backupDir, copy, { recursive: true, preserveTimestamps: true });
    const object = join(copy, base.objects[0]!.key);
    const bytes = await readFile(object);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x10;
    await writeFile(object, bytes);
    const user = serverOsUser();
    if (user) await run('chown', ['-R', `${user.uid}:${user.gid}`, copy]);
    const pgdata = join(a.work, 'from-flipped');

    // Act
    const result = restorePitrToDataDirectory(
      vaultInto({ BACKUP_DIR: copy }),
      base.id,
      parseRecoveryTarget({ immediate: true }),
      { pgdata },
    );

    // Assess
    await expect(result).rejects.toThrow(IntegrityError);
    await expect(result).rejects.toThrow(new RegExp(`object ${base.objects[0]!.key} in .* is corrupt`));
    // Built beside it and never renamed into place (core/restore/datadir.ts).
    await expect(readdir(pgdata)).rejects.toThrow(/ENOENT/);
  });
});

describe('restore pitr refuses before restoring anything', () => {
  it('a target before the oldest base backup, showing the reachable window', async () => {
    const pgdata = join(a.work, 'too-early');
    const early = parseRecoveryTarget({
      time: new Date(batches[0]!.commitTime.getTime() - 1000).toISOString(),
    });
    const result = restorePitrToDataDirectory(a.vault(), 'auto', early, { pgdata });
    await expect(result).rejects.toThrow(UsageError);
    await expect(restorePitrToDataDirectory(a.vault(), 'auto', early, { pgdata })).rejects.toThrow(
      new RegExp(`before the oldest base backup \\(${base.id}.*Reachable: from ${base.id}: .* to .*segment`),
    );
    await expect(readdir(pgdata)).rejects.toThrow(/ENOENT/);
  });

  it('a target after the last archived WAL', async () => {
    const late = parseRecoveryTarget({ time: new Date(Date.now() + 3_600_000).toISOString() });
    await expect(recoverInto('never_late', late)).rejects.toThrow(
      /after the last archived WAL .* Reachable:/,
    );
    const [exists] = await into.query("SELECT 1 FROM pg_database WHERE datname = 'never_late'");
    expect(exists).toBeUndefined();
  });

  it('an existing database that is not empty on the configured server', async () => {
    await into.query('CREATE DATABASE busy');
    await into.query('CREATE TABLE keep_me (id int)', [], 'busy');
    const time = parseRecoveryTarget({ time: between(batches[1]!.commitTime, batches[2]!.commitTime) });
    await expect(recoverInto('busy', time)).rejects.toThrow(/database "busy" already exists .* not empty/);
    expect(await into.query("SELECT 1 FROM pg_tables WHERE tablename = 'keep_me'", [], 'busy')).toHaveLength(
      1,
    );
  });

  it('the wrong key', async () => {
    const pgdata = join(a.work, 'wrong-key');
    const vault = a.vault({ ENCRYPTION_KEY_FILE: '', ENCRYPTION_KEY: 'not the key' });
    const target = parseRecoveryTarget({ immediate: true });
    await expect(restorePitrToDataDirectory(vault, 'auto', target, { pgdata })).rejects.toThrow(
      IntegrityError,
    );
    await expect(restorePitrToDataDirectory(vault, 'auto', target, { pgdata })).rejects.toThrow(
      /wrong encryption key/,
    );
    await expect(readdir(pgdata)).rejects.toThrow(/ENOENT/);
  });

  it('a segment missing in the middle of the archive, naming it', async () => {
    // Prepare: a copy of the archive (archive times kept) without the segment holding batch 1,
    // between the base backup and the target, with more WAL after it.
    const [segment] = await a.cluster.query<{ name: string }>('SELECT pg_walfile_name($1::pg_lsn) AS name', [
      lsnAfterBatch1,
    ]);
    const missing = segment!.name;
    const copy = join(a.work, 'gap-backups');
    await cp(a.backupDir, copy, { recursive: true, preserveTimestamps: true });
    const folder = join(copy, 'pitr', 'wal', '00000001', missing.slice(0, 16));
    const victim = (await readdir(folder)).find((n) => n.startsWith(`${missing}.`));
    expect(victim).toBeDefined();
    await rm(join(folder, victim!));
    const vault = vaultInto({ BACKUP_DIR: copy });
    const time = parseRecoveryTarget({ time: between(batches[2]!.commitTime, batches[3]!.commitTime) });

    // Act
    const result = restorePitrDatabase(vault, 'auto', time, { database: 'never_gap', from: 'app' });

    // Assess
    await expect(result).rejects.toThrow(new RegExp(`gap in the WAL archive: ${missing} missing`));
    const [exists] = await into.query("SELECT 1 FROM pg_database WHERE datname = 'never_gap'");
    expect(exists).toBeUndefined();
    const withGap = await backupStats(vault);
    expect(withGap.recoverable?.missingWal).toBeGreaterThanOrEqual(1);
  });
});

describe('backup stats', () => {
  it('shows the PITR window from the base backup to the last archived WAL, and the RPO', async () => {
    // Act
    const stats = await backupStats(a.vault());

    // Assess
    const w = stats.recoverable!;
    expect(w.missingWal).toBe(0);
    expect(w.from).toBe(base.physical?.stopTime ?? base.finishedAt);
    expect(Date.parse(w.to!)).toBeGreaterThanOrEqual(batches[3]!.commitTime.getTime() - 1000);
    expect(w.rpoSeconds).toBeGreaterThanOrEqual(0);
    expect(stats.byType.map((t) => t.type)).toContain('base/daily');
  });
});
