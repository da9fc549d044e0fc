/**
 * The physical part of the benchmark, on the same cluster and data as the logical part:
 *
 * - base backups: `pgvault backup base` against `pgbackrest backup --type=full` and a hand pipeline
 *   `pg_basebackup -Ft -X fetch -D - | zstd | openssl enc`, all zstd level 3 with AES-256-CBC and
 *   PARALLEL_JOBS processes;
 * - point-in-time recovery: `pgvault restore pitr <base> "<time>" --pgdata DIR` against
 *   `pgbackrest restore --type=time --target=...`, each followed by starting the server on the
 *   directory, timed until recovery reached the target and the server was promoted and accepts
 *   connections.
 *
 * While it runs, archive_command pushes every segment into both archives (pgBackRest's first, as
 * its backup waits for its own archive), so each tool's base backup has a continuous archive after
 * it. The WAL recovery replays is written after both base backups, so both replay the same WAL.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chmod, chown, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { asServerUser, freePort, type ServerOwner, serverOsUser } from '../core/pg/cluster';
import { findPgBinary, withClient } from '../core/pg/tools';
import {
  enableArchiving,
  readPostmasterPid,
  setArchiveCommand,
  sleep,
  stopProcessesNaming,
  switchWal,
  WAL_LOAD_TABLE,
  waitArchived,
  walSegmentBytes,
  writeWalBytes,
} from './archiving';
import { measureCommand, measureShell, measureTask } from './measure';
import { type AsServer, findPgbackrest, PgBackRest } from './pgbackrest';
import { type Group, mib, type PhysicalInfo, type Row, seconds } from './report';
import { type Context, cleanEnv, heartbeat, pgEnvFor, runStep, type Step, say } from './steps';

export const PARALLEL_JOBS = 2;
export const MARKER_TABLE = 'bench_pitr_marker';

/** Settings of the restored servers: the main cluster's, and never archiving into the archives. */
export const RESTORED_SERVER_SETTINGS: Record<string, string> = {
  fsync: 'off',
  synchronous_commit: 'off',
  shared_buffers: '256MB',
  max_wal_size: '4GB',
  checkpoint_timeout: '30min',
  maintenance_work_mem: '256MB',
  effective_cache_size: '4GB',
  archive_mode: 'off',
  // No connections before promotion: "accepting connections" is then the end of recovery.
  hot_standby: 'off',
};

export interface PhysicalOptions {
  /** WAL written between the base backups and the recovery target, MiB. */
  readonly pitrWalMb: number;
  /** false: leave pgBackRest out. */
  readonly pgbackrest: boolean;
}

/** What the WAL part reuses from the physical part's setup. */
export interface ArchiveSetup {
  readonly root: string;
  readonly passphrase: string;
  /** Key file the server user can read (archive_command and restore_command run as that user). */
  readonly keyFile: string;
  readonly pgbackrest: PgBackRest | undefined;
  readonly pgbackrestVersion: string | undefined;
  readonly pgbackrestMissing: string | undefined;
}

export async function giveToServerUser(path: string, owner?: ServerOwner): Promise<void> {
  const user = owner ?? serverOsUser();
  if (user) await chown(path, user.uid, user.gid);
}

/** $WORK/archives: archives, keys and restored data directories, the server user's (0700). */
export async function prepareArchiveSetup(ctx: Context, usePgbackrest: boolean): Promise<ArchiveSetup> {
  // The server user must reach the pgvault snapshot and this folder inside the work directory.
  await chmod(ctx.work, 0o711);
  const root = join(ctx.work, 'archives');
  await mkdir(root, { recursive: true, mode: 0o700 });
  await giveToServerUser(root);
  const passphrase = randomBytes(32).toString('base64');
  const keyFile = join(root, 'encryption-key');
  await writeFile(keyFile, `${passphrase}\n`, { mode: 0o600 });
  await giveToServerUser(keyFile);
  const found: Awaited<ReturnType<typeof findPgbackrest>> = usePgbackrest
    ? await findPgbackrest(say)
    : { missing: 'left out (--no-pgbackrest)' };
  let pgbackrest: PgBackRest | undefined;
  let missing = 'missing' in found ? found.missing : undefined;
  if (!missing) {
    try {
      pgbackrest = await PgBackRest.create({
        root: join(root, 'pgbackrest'),
        cluster: ctx.cluster,
        passphrase,
        processMax: PARALLEL_JOBS,
      });
    } catch (err) {
      missing = `pgBackRest could not be set up: ${(err as Error).message.split('\n')[0]}`;
    }
  }
  if (missing) say(`pgBackRest rows skipped: ${missing}`);
  return {
    root,
    passphrase,
    keyFile,
    pgbackrest,
    pgbackrestVersion: 'version' in found ? found.version : undefined,
    pgbackrestMissing: missing,
  };
}

/** pgvault's settings as a config file the server user reads (archive_command), and as env. */
export async function pgvaultConfig(
  setup: Pick<ArchiveSetup, 'keyFile'>,
  file: string,
  vaultDir: string,
  extra: Record<string, string> = {},
  /** The server's OS user when it is not this host's postgres (a server in another root). */
  owner?: ServerOwner,
): Promise<Record<string, string>> {
  await mkdir(join(vaultDir, 'bench'), { recursive: true, mode: 0o700 });
  await giveToServerUser(vaultDir, owner);
  await giveToServerUser(join(vaultDir, 'bench'), owner);
  const settings: Record<string, string> = {
    BACKUP_DIR: vaultDir,
    CLUSTER_NAME: 'bench',
    COMPRESSION: 'zstd',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY_FILE: setup.keyFile,
    PARALLEL_JOBS: String(PARALLEL_JOBS),
    ...extra,
  };
  await writeFile(
    file,
    `${Object.entries(settings)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    { mode: 0o600 },
  );
  await giveToServerUser(file, owner);
  return settings;
}

/** bin/pgvault (the sh launcher archive_command is meant to run) of the snapshot. */
export function pgvaultLauncher(ctx: Context): string {
  return join(ctx.pgvaultBin, '..', 'pgvault');
}

function short(ctx: Context, text: string): string {
  return text
    .replaceAll(`${ctx.work}/`, '$WORK/')
    .replaceAll(/\/usr\/lib\/postgresql\/\d+\/bin\//g, '')
    .replaceAll(process.execPath, 'node');
}

interface BaseManifest {
  readonly id: string;
  readonly rawSize: number;
  readonly storedSize: number;
  readonly physical?: { stopLsn?: string; stopTime?: string };
}

export async function runPhysical(
  ctx: Context,
  options: PhysicalOptions,
): Promise<{ rows: Row[]; info: PhysicalInfo; setup: ArchiveSetup }> {
  const { cluster } = ctx;
  say('physical part: archive_mode on (restart), archives for pgvault and pgBackRest');
  await enableArchiving(ctx);
  const setup = await prepareArchiveSetup(ctx, options.pgbackrest);
  const { root, pgbackrest } = setup;
  const vaultDir = join(root, 'vault');
  const configFile = join(root, 'pgvault.env');
  const settings = await pgvaultConfig(setup, configFile, vaultDir);
  const pgvaultArchive = `${pgvaultLauncher(ctx)} --config ${configFile} backup wal %p`;
  const archiveCommand = pgbackrest
    ? `${pgbackrest.archiveCommand(false)} && ${pgvaultArchive}`
    : pgvaultArchive;
  await setArchiveCommand(cluster, archiveCommand);
  await cluster.query(
    `CREATE TABLE IF NOT EXISTS ${MARKER_TABLE} (n int PRIMARY KEY, at timestamptz NOT NULL)`,
    [],
    'bench',
  );
  // Both archives work before anything is timed (and the first push writes pgvault's archive.json).
  await waitArchived(cluster, await switchWal(cluster), 120_000);
  const segmentBytes = await walSegmentBytes(cluster);
  const watchRoots = () => (ctx.postmasterPid ? [ctx.postmasterPid] : []);

  const pgvaultEnv: NodeJS.ProcessEnv = {
    ...ctx.baseEnv,
    ...pgEnvFor(cluster, 'postgres'),
    ...settings,
    TMPDIR: ctx.work,
  };
  const envDisplay = `COMPRESSION=zstd ENCRYPTION=true PARALLEL_JOBS=${PARALLEL_JOBS}`;
  let pgvaultBase: BaseManifest | undefined;
  let pgbackrestLabel: string | undefined;
  const handOutput = join(root, 'hand.tar.zst.enc');
  const pgBasebackup = findPgBinary('pg_basebackup');
  const handScript = `${pgBasebackup} -Ft -X fetch --checkpoint=fast -D - | zstd -q -T${PARALLEL_JOBS} -3 | openssl enc -aes-256-cbc -pbkdf2 -iter 100000 -md sha256 -pass file:${setup.keyFile} > ${handOutput}`;
  const baseBaseline = pgbackrest ? 'pgbackrest_base' : 'hand_base';

  const baseSteps: Step[] = [
    {
      id: 'hand_base',
      name: 'hand: pg_basebackup | zstd | openssl',
      group: 'base',
      display: short(ctx, handScript),
      runs: ctx.repeat,
      before: () => rm(handOutput, { force: true }),
      measure: () =>
        measureShell(handScript, {
          env: { ...ctx.baseEnv, ...pgEnvFor(cluster, 'postgres') },
          cwd: ctx.work,
          watchRoots: watchRoots(),
          label: 'hand base backup',
          ...heartbeat('hand base backup'),
        }),
      after: async () => {
        const size = (await stat(handOutput)).size;
        await rm(handOutput, { force: true });
        return { size };
      },
    },
  ];
  if (pgbackrest) {
    const { file, args } = pgbackrest.command(['--type=full', 'backup']);
    baseSteps.push({
      id: 'pgbackrest_base',
      name: 'pgBackRest backup --type=full',
      group: 'base',
      display: `pgbackrest --stanza=bench --type=full backup   (compress-type=zst, process-max=${PARALLEL_JOBS}, repo1-cipher-type=aes-256-cbc, start-fast=y)`,
      runs: ctx.repeat,
      measure: () =>
        measureCommand(file, args, {
          env: ctx.baseEnv,
          cwd: '/',
          watchRoots: watchRoots(),
          label: 'pgbackrest backup',
          ...heartbeat('pgbackrest backup'),
        }),
      after: async () => {
        const newest = (await pgbackrest.backups()).at(-1);
        if (!newest) throw new Error('pgbackrest backup exited 0 but `pgbackrest info` lists no backup');
        pgbackrestLabel = newest.label;
        await pgbackrest.keepNewestOnly();
        return { size: newest.repositoryBytes, raw: newest.databaseBytes };
      },
    });
  }
  baseSteps.push({
    id: 'pgvault_base',
    name: 'pgvault backup base (zstd + encryption)',
    group: 'base',
    display: `${envDisplay} pgvault backup base manual`,
    runs: ctx.repeat,
    baseline: baseBaseline,
    // One base backup at a time in the vault, as in pgBackRest's repository: the last run's is kept.
    before: () => rm(join(vaultDir, 'bench', 'base'), { recursive: true, force: true }),
    measure: () =>
      measureCommand(process.execPath, [ctx.pgvaultBin, 'backup', 'base', 'manual', '--json'], {
        env: pgvaultEnv,
        cwd: ctx.work,
        captureStdout: true,
        watchRoots: watchRoots(),
        label: 'pgvault backup base',
        ...heartbeat('pgvault backup base'),
      }),
    after: async (m) => {
      const out = JSON.parse(m.stdout) as { ok: boolean; manifest: BaseManifest };
      if (!out.ok) throw new Error(`pgvault backup base reported failure: ${m.stdout.slice(0, 500)}`);
      pgvaultBase = out.manifest;
      return { size: out.manifest.storedSize, raw: out.manifest.rawSize };
    },
  });

  const rows: Row[] = [];
  for (const step of baseSteps) rows.push(await runStep(step));
  // The hand pipeline stores the same tar stream pgvault reads.
  const rawTar = pgvaultBase?.rawSize;
  const withRaw = rows.map((r) => (r.id === 'hand_base' && rawTar ? { ...r, rawBytes: rawTar } : r));
  rows.length = 0;
  rows.push(...withRaw);

  // -- WAL to replay, then the target between two marker commits.
  say(`writing ${options.pitrWalMb} MiB of WAL for recovery to replay`);
  const walWritten = await writeWalBytes(cluster, options.pitrWalMb * 1024 * 1024);
  const loadRows = Number(
    (await cluster.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${WAL_LOAD_TABLE}`, [], 'bench'))[0]
      ?.n ?? 0,
  );
  await cluster.query(`DELETE FROM ${MARKER_TABLE}`, [], 'bench');
  await cluster.query(`INSERT INTO ${MARKER_TABLE} VALUES (1, clock_timestamp())`, [], 'bench');
  await sleep(300);
  const [t] = await cluster.query<{ target: string; lsn: string }>(
    `SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' AS target, pg_current_wal_lsn()::text AS lsn`,
  );
  const target = t!.target;
  await sleep(300);
  await cluster.query(`INSERT INTO ${MARKER_TABLE} VALUES (2, clock_timestamp())`, [], 'bench');
  await waitArchived(cluster, await switchWal(cluster), 600_000);
  const replayFrom = pgvaultBase?.physical?.stopLsn;
  let replayBytes: number | undefined;
  if (replayFrom) {
    const [d] = await cluster.query<{ bytes: string }>(
      'SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint::text AS bytes',
      [t!.lsn, replayFrom],
    );
    replayBytes = Number(d?.bytes ?? 0);
  }
  say(
    `  recovery target ${target}: ${mib(walWritten)} of WAL written after the base backups, ${loadRows} rows in ${WAL_LOAD_TABLE}`,
  );

  const restoreRoot = join(root, 'restore');
  await mkdir(restoreRoot, { recursive: true, mode: 0o700 });
  await giveToServerUser(restoreRoot);
  const pitrSteps: Step[] = [];
  const expect = { markers: [1], loadRows };
  if (pgbackrest) {
    const dir = join(restoreRoot, 'pgbackrest');
    pitrSteps.push(
      pitrStep(ctx, {
        id: 'pgbackrest_pitr',
        name: 'pgBackRest restore --type=time, start, recover',
        dataDir: dir,
        display: `pgbackrest --stanza=bench --pg1-path=$WORK/…/pgbackrest --type=time --target='${target}' --target-action=promote restore; pg_ctl start (archive-get async, process-max=${PARALLEL_JOBS})`,
        target,
        expect,
        createDir: true,
        restore: () =>
          pgbackrest.command([
            `--pg1-path=${dir}`,
            '--type=time',
            `--target=${target}`,
            '--target-action=promote',
            'restore',
          ]),
        restoreEnv: ctx.baseEnv,
        claimAlso: pgbackrest.root,
        // WAL the previous run's async archive-get queued must not serve this run.
        prepare: () =>
          rm(join(pgbackrest.spoolPath, 'archive', 'bench', 'in'), { recursive: true, force: true }),
      }),
    );
  }
  const pgvaultDir = join(restoreRoot, 'pgvault');
  const baseId = pgvaultBase?.id ?? 'latest';
  pitrSteps.push(
    pitrStep(ctx, {
      id: 'pgvault_pitr',
      name: 'pgvault restore pitr --pgdata, start, recover',
      dataDir: pgvaultDir,
      display: `PARALLEL_JOBS=${PARALLEL_JOBS} pgvault restore pitr ${baseId} '${target}' --pgdata $WORK/…/pgvault; pg_ctl start`,
      target,
      expect,
      createDir: false,
      baseline: pgbackrest ? 'pgbackrest_pitr' : undefined,
      restore: () => ({
        file: process.execPath,
        args: [ctx.pgvaultBin, 'restore', 'pitr', baseId, target, '--pgdata', pgvaultDir, '--json'],
      }),
      restoreEnv: pgvaultEnv,
      claimAlso: join(ctx.work, 'pgvault', 'dist'),
    }),
  );
  for (const step of pitrSteps) rows.push(await runStep(step));
  await stopProcessesNaming(root);

  return {
    rows,
    setup,
    info: {
      pgbackrest: setup.pgbackrestVersion,
      pgbackrestSkipped: setup.pgbackrestMissing,
      parallelJobs: PARALLEL_JOBS,
      segmentBytes,
      archiveCommand: short(ctx, archiveCommand),
      pgvaultBaseId: pgvaultBase?.id,
      pgbackrestLabel,
      rawTarBytes: rawTar,
      pitrTarget: target,
      pitrWalWrittenBytes: walWritten,
      pitrReplayBytes: replayBytes,
      restoredServerSettings: RESTORED_SERVER_SETTINGS,
    },
  };
}

/**
 * One timed recovery: the tool lays down the data directory, then the server starts on it, replays
 * WAL to the target and promotes; the clock stops when the postmaster reports "ready" (with
 * hot_standby off, the first moment it accepts connections). Checked afterwards: the rows committed
 * before the target are there, the one after is not.
 */
export function pitrStep(
  ctx: Context,
  spec: {
    id: string;
    name: string;
    dataDir: string;
    display: string;
    target: string;
    expect: { markers: number[]; loadRows: number };
    createDir: boolean;
    baseline?: string;
    restore: () => { file: string; args: string[] };
    restoreEnv: NodeJS.ProcessEnv;
    /** Also adopt processes naming this (detached WAL fetchers). */
    claimAlso: string;
    /** Before each run, after the previous run's directory is gone (not timed). */
    prepare?: () => Promise<void>;
    /** A server of another root: its pg_ctl (which switches user itself) and its OS user. */
    server?: { readonly pgCtl: AsServer; readonly owner: ServerOwner };
    /** @default 'pitr' */
    group?: Group;
  },
): Step {
  const pgCtl = (args: readonly string[]) =>
    spec.server ? spec.server.pgCtl('pg_ctl', args) : asServerUser(findPgBinary('pg_ctl'), args);
  const runDir = `${spec.dataDir}.run`;
  const logFile = join(runDir, 'server.log');
  let port = 0;
  let restoreMs: number | undefined;
  const cleanup = async () => {
    await stopServer(spec.dataDir, pgCtl);
    await stopProcessesNaming(spec.dataDir);
    await stopProcessesNaming(join(ctx.work, 'pgvault', 'dist', 'cli', 'commands', 'wal.js prefetch'));
    for (const path of [
      spec.dataDir,
      runDir,
      `${spec.dataDir}.pgvault-recovery.conf`,
      `${spec.dataDir}.pgvault-recovery.key`,
    ]) {
      await rm(path, { recursive: true, force: true });
    }
  };
  return {
    id: spec.id,
    name: spec.name,
    group: spec.group ?? 'pitr',
    display: spec.display,
    runs: ctx.repeat,
    baseline: spec.baseline,
    before: async () => {
      await cleanup();
      await spec.prepare?.();
      await mkdir(runDir, { mode: 0o700 });
      await giveToServerUser(runDir, spec.server?.owner);
      if (spec.createDir) {
        await mkdir(spec.dataDir, { mode: 0o700 });
        await giveToServerUser(spec.dataDir, spec.server?.owner);
      }
      port = await freePort();
    },
    measure: () =>
      measureTask(
        async (elapsed) => {
          restoreMs = undefined;
          const r = spec.restore();
          const restored = await runChild(r.file, r.args, spec.restoreEnv);
          if (restored.code !== 0) {
            throw new Error(
              `restore failed (exit ${restored.code}): ${restored.stderr.trim() || restored.stdout.trim()}`,
            );
          }
          restoreMs = elapsed();
          const opts = [
            '-p',
            String(port),
            '-k',
            runDir,
            '-c',
            'listen_addresses=',
            ...Object.entries(RESTORED_SERVER_SETTINGS).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
          ].join(' ');
          const ctl = pgCtl(['start', '-D', spec.dataDir, '-W', '-l', logFile, '-o', opts]);
          const started = await runChild(ctl.file, ctl.args, cleanEnv());
          if (started.code !== 0) throw new Error(`pg_ctl start failed: ${started.stderr.trim()}`);
          await waitUntilReady(spec.dataDir, logFile, 3_600_000);
          return { stdout: restored.stdout };
        },
        {
          label: spec.name,
          watchRoots: ctx.postmasterPid ? [ctx.postmasterPid] : [],
          claim: (cmd) => cmd.includes(spec.dataDir) || cmd.includes(spec.claimAlso),
          ...heartbeat(spec.name),
        },
      ),
    after: async () => {
      try {
        const conn = { host: runDir, port, user: 'postgres', database: 'bench' };
        const found = await withClient(conn, 'bench', async (c) => {
          const markers = await c.query<{ n: number }>(`SELECT n FROM ${MARKER_TABLE} ORDER BY n`);
          const load = await c.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${WAL_LOAD_TABLE}`);
          const recovery = await c.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
          return {
            markers: markers.rows.map((r) => r.n),
            loadRows: Number(load.rows[0]?.n ?? -1),
            inRecovery: recovery.rows[0]?.r,
          };
        });
        if (
          found.inRecovery !== false ||
          JSON.stringify(found.markers) !== JSON.stringify(spec.expect.markers) ||
          found.loadRows !== spec.expect.loadRows
        ) {
          throw new Error(
            `${spec.name}: recovered to the wrong point: markers ${JSON.stringify(found.markers)} (want ${JSON.stringify(spec.expect.markers)}), ${found.loadRows} load rows (want ${spec.expect.loadRows}), in recovery ${found.inRecovery}`,
          );
        }
      } finally {
        await cleanup();
      }
      return { extra: { pitr: { target: spec.target, restoreMs } } };
    },
  };
}

/** Polls postmaster.pid for the "ready" status; fails with the log's tail when the server exits. */
async function waitUntilReady(dataDir: string, logFile: string, timeoutMs: number): Promise<void> {
  const started = Date.now();
  let pid: number | undefined;
  for (;;) {
    let lines: string[] = [];
    try {
      lines = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n');
    } catch {
      lines = [];
    }
    pid ??= Number(lines[0]) || undefined;
    // Line 8 is the postmaster's status: "starting", "standby" (recovery, hot_standby off), "ready".
    if (lines[7]?.trim() === 'ready') return;
    const gone = pid !== undefined ? !alive(pid) : Date.now() - started > 30_000;
    if (gone) {
      let log = '(no server log)';
      try {
        log = readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-6).join('\n    ');
      } catch {
        // Keep the placeholder.
      }
      throw new Error(
        `the restored server stopped before accepting connections; its log ends with:\n    ${log}`,
      );
    }
    if (Date.now() - started > timeoutMs) {
      throw new Error(`the restored server did not finish recovery in ${seconds(timeoutMs)}`);
    }
    await sleep(20);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function stopServer(
  dataDir: string,
  pgCtl: (args: readonly string[]) => { file: string; args: string[] },
): Promise<void> {
  if (readPostmasterPid(dataDir) === undefined) return;
  const ctl = pgCtl(['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '60']);
  await runChild(ctl.file, ctl.args, cleanEnv());
}

function runChild(
  file: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(file, [...args], { env, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => {
      err = (err + b.toString('utf8')).slice(-16 * 1024);
    });
    child.once('error', (e) => resolve({ code: 127, stdout: '', stderr: e.message }));
    child.once('close', (code) =>
      resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString('utf8'), stderr: err }),
    );
  });
}
