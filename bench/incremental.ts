/**
 * The incremental part of the benchmark (issue 15): PostgreSQL 17's incremental base backups, on a
 * PostgreSQL 17 server of the other major's Debian root (test/helpers/pg-other.ts), with the same
 * generated database as the other parts:
 *
 *   data · pgvault full · pgBackRest full · ~5% changed · pgvault --incremental · pgBackRest
 *   --type=incr (block incremental) · pgvault full · WAL · target · PITR from the chain, PITR from
 *   the second full
 *
 * - pgvault `backup base --incremental` against a full `backup base` of the same moment: time and
 *   stored bytes;
 * - PITR (restore, start, recover, promote) from the incremental chain (pgvault combines it with
 *   pg_combinebackup) against the same from the full;
 * - against pgBackRest 2.55's block incremental (`--type=incr` with repo1-bundle=y repo1-block=y) on
 *   the same server.
 *
 * Both tools do the same work as in the physical part: zstd level 3 (pgvault's default compression and
 * level; pgBackRest `compress-type=zst compress-level=3`), AES-256-CBC, PARALLEL_JOBS processes, a
 * fast checkpoint. Everything runs inside the root, as the issue says: the server, its
 * archive_command (pgBackRest's archive-push, then pgvault's `backup wal`), pgvault (as root, this
 * machine's node bind-mounted) and pgBackRest (as the root's postgres user). The backup rows run once
 * each (each one changes what the next one is incremental to); the PITR rows --repeat times.
 *
 * Without the root it is skipped with one line (.ci/pg-other-major builds it).
 */
import { existsSync, realpathSync } from 'node:fs';
import { chmod, mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { OtherMajorSession, otherMajor } from '../test/helpers/pg-other';
import {
  readPostmasterPid,
  setArchiveCommand,
  sleep,
  stopProcessesNaming,
  switchWal,
  WAL_LOAD_TABLE,
  waitArchived,
  writeWalBytes,
} from './archiving';
import { generateDataset, vacuumAnalyze } from './dataset';
import { measureCommand } from './measure';
import { type AsServer, PgBackRest } from './pgbackrest';
import { giveToServerUser, MARKER_TABLE, PARALLEL_JOBS, pgvaultConfig, pitrStep } from './physical';
import {
  type DatasetResult,
  type IncrementalInfo,
  mib,
  type Row,
  seconds,
  type TargetResult,
} from './report';
import { type Context, heartbeat, pgEnvFor, runStep, type Step, say } from './steps';

const REPO_ROOT = resolve(__dirname, '..', '..');

/** The targets for the incremental against pgBackRest's block incremental. */
export const INCREMENTAL_TARGETS = { bytesVsPgbackrest: 1.5, timeVsPgbackrest: 1.0 } as const;

export interface IncrementalOptions {
  readonly sizeMb: number;
  /** The main cluster's settings (shared_buffers, max_wal_size, ...): the same server tuning. */
  readonly serverSettings: Readonly<Record<string, string>>;
  /** Share of every table's heap pages whose rows are updated between the full and the incremental. */
  readonly changeFraction: number;
  /** WAL written after the backups, before the recovery target, MiB. */
  readonly pitrWalMb: number;
  /** false: leave pgBackRest out. */
  readonly pgbackrest: boolean;
}

interface BaseManifest {
  readonly id: string;
  readonly rawSize: number;
  readonly storedSize: number;
  readonly incrementalOf?: string;
}

/** Bytes of the files under a directory (what a backup occupies in a repository). */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir, { recursive: true })) {
    const s = await stat(join(dir, name));
    if (s.isFile()) total += s.size;
  }
  return total;
}

export async function runIncremental(
  base: Context,
  options: IncrementalOptions,
): Promise<{ rows: Row[]; info: IncrementalInfo; dataset?: DatasetResult; targets: TargetResult[] }> {
  let other: ReturnType<typeof otherMajor>;
  try {
    other = otherMajor();
  } catch (err) {
    other = undefined;
    say(`incremental part: ${(err as Error).message}`);
  }
  if (!other || other.major < 17) {
    const why = other
      ? `the other major's root is PostgreSQL ${other.major}; incremental base backups need 17 or newer`
      : 'the PostgreSQL 17 root is not built here: run .ci/pg-other-major (as root), then npm run bench again';
    say(`incremental part skipped: ${why}`);
    return { rows: [], info: { skipped: why }, targets: skippedTargets(why) };
  }

  say(`incremental part: PostgreSQL ${other.major} in ${other.root}`);
  const modules = join(REPO_ROOT, 'node_modules');
  const binds = [REPO_ROOT, ...(existsSync(modules) ? [realpathSync(modules)] : [])];
  const session = await OtherMajorSession.open(other, binds);
  const root = join(base.work, 'incremental');
  try {
    const cluster = await session.startCluster({
      settings: {
        ...options.serverSettings,
        wal_level: 'replica',
        archive_mode: 'on',
        summarize_wal: 'on',
      },
    });
    // Nothing archived while the data is generated; the real command comes before the first backup.
    // (ALTER SYSTEM: a setting on the server's command line could not be changed later.)
    await setArchiveCommand(cluster, 'true');
    const ctx: Context = { ...base, cluster, postmasterPid: readPostmasterPid(cluster.dataDir) };
    const serverVersion =
      (await cluster.query<{ v: string }>("SELECT current_setting('server_version') AS v"))[0]?.v ?? '?';
    say(`  PostgreSQL ${serverVersion} on 127.0.0.1:${cluster.port} (inside the root)`);

    // -- data: the same generator as the other parts.
    say(`generating bench on PostgreSQL ${other.major}: ${options.sizeMb} MB`);
    const conn = cluster.connection();
    const generated = await generateDataset({
      conn,
      database: 'bench',
      sizeMb: options.sizeMb,
      workers: 2,
      log: (line) => say(`  ${line}`),
    });
    const vacuum = await vacuumAnalyze(conn, 'bench', 2);
    const dataset: DatasetResult = {
      ...generated,
      vacuumMs: vacuum.ms,
      sizeAfterVacuumBytes: vacuum.sizeBytes,
    };
    say(`  bench is ${mib(vacuum.sizeBytes)}`);
    await cluster.query('CHECKPOINT');

    // -- archives: pgvault's and pgBackRest's, the root's postgres user's.
    const owner = session.owner;
    // The root's postgres user (archive_command, restore_command) must reach the folders inside.
    await chmod(base.work, 0o711);
    await mkdir(root, { recursive: true, mode: 0o700 });
    await giveToServerUser(root, owner);
    const passphrase = (await import('node:crypto')).randomBytes(32).toString('base64');
    const keyFile = join(root, 'encryption-key');
    await writeFile(keyFile, `${passphrase}\n`, { mode: 0o600 });
    await giveToServerUser(keyFile, owner);
    const vaultDir = join(root, 'vault');
    const configFile = join(root, 'pgvault.env');
    const settings = await pgvaultConfig({ keyFile }, configFile, vaultDir, {}, owner);
    const node = realpathSync(process.execPath);
    const inRoot: AsServer = (file, args) => ({ file: session.enter, args: ['server', file, ...args] });
    let pgbackrest: PgBackRest | undefined;
    let pgbackrestVersion: string | undefined;
    let pgbackrestSkipped: string | undefined;
    if (!options.pgbackrest) pgbackrestSkipped = 'left out (--no-pgbackrest)';
    else {
      const v = await session.run(['client', 'pgbackrest', 'version'], { PATH: process.env.PATH }, '/');
      if (v.code !== 0) pgbackrestSkipped = `pgbackrest does not run in the root: ${v.stderr.trim()}`;
      else {
        pgbackrestVersion = v.stdout.trim();
        try {
          pgbackrest = await PgBackRest.create({
            root: join(root, 'pgbackrest'),
            cluster,
            passphrase,
            processMax: PARALLEL_JOBS,
            global: { 'repo1-bundle': 'y', 'repo1-block': 'y' },
            owner,
            asServer: inRoot,
          });
        } catch (err) {
          pgbackrestSkipped = `pgBackRest could not be set up: ${(err as Error).message.split('\n')[0]}`;
        }
      }
    }
    if (pgbackrestSkipped) say(`  pgBackRest rows skipped: ${pgbackrestSkipped}`);
    const pgvaultArchive = `${node} ${ctx.pgvaultBin} --config ${configFile} backup wal %p`;
    const archiveCommand = pgbackrest
      ? `${pgbackrest.archiveCommand(false)} && ${pgvaultArchive}`
      : pgvaultArchive;
    await setArchiveCommand(cluster, archiveCommand);
    await cluster.query(
      `CREATE TABLE IF NOT EXISTS ${MARKER_TABLE} (n int PRIMARY KEY, at timestamptz NOT NULL)`,
      [],
      'bench',
    );
    await waitArchived(cluster, await switchWal(cluster), 120_000);

    const watchRoots = () => (ctx.postmasterPid ? [ctx.postmasterPid] : []);
    const pgvaultEnv: NodeJS.ProcessEnv = {
      ...ctx.baseEnv,
      ...pgEnvFor(cluster, 'postgres'),
      ...settings,
      TMPDIR: ctx.work,
    };
    const envDisplay = `COMPRESSION=zstd ENCRYPTION=true PARALLEL_JOBS=${PARALLEL_JOBS}`;
    const manifests: Record<string, BaseManifest> = {};
    const pgvaultBase = (id: string, name: string, incremental: boolean, baseline?: string): Step => {
      const args = [
        node,
        ctx.pgvaultBin,
        'backup',
        'base',
        'manual',
        ...(incremental ? ['--incremental'] : []),
      ];
      return {
        id,
        name,
        group: 'incremental',
        display: `${envDisplay} pgvault backup base manual${incremental ? ' --incremental' : ''}`,
        runs: 1,
        baseline,
        measure: () =>
          measureCommand(session.enter, ['client', ...args, '--json'], {
            env: pgvaultEnv,
            cwd: ctx.work,
            captureStdout: true,
            watchRoots: watchRoots(),
            label: name,
            ...heartbeat(name),
          }),
        after: async (m) => {
          const out = JSON.parse(m.stdout) as { ok: boolean; incremental?: boolean; manifest: BaseManifest };
          if (!out.ok || out.incremental !== incremental) {
            throw new Error(`${name}: unexpected result: ${m.stdout.slice(0, 500)}`);
          }
          manifests[id] = out.manifest;
          return { size: out.manifest.storedSize, raw: out.manifest.rawSize };
        },
      };
    };
    const labels: Record<string, string> = {};
    const pgbackrestBackup = (id: string, type: 'full' | 'incr', baseline?: string): Step => {
      const { file, args } = pgbackrest!.command([`--type=${type}`, 'backup']);
      return {
        id,
        name: `pgBackRest backup --type=${type} (block incremental)`,
        group: 'incremental',
        display: `pgbackrest --stanza=bench --type=${type} backup   (repo1-bundle=y, repo1-block=y, compress-type=zst, compress-level=3, process-max=${PARALLEL_JOBS}, repo1-cipher-type=aes-256-cbc, start-fast=y)`,
        runs: 1,
        baseline,
        measure: () =>
          measureCommand(file, args, {
            env: ctx.baseEnv,
            cwd: '/',
            watchRoots: watchRoots(),
            label: `pgbackrest --type=${type}`,
            ...heartbeat(`pgbackrest --type=${type}`),
          }),
        after: async () => {
          const newest = (await pgbackrest!.backups()).at(-1);
          if (!newest || labels[id] !== undefined)
            throw new Error(`pgbackrest --type=${type}: no new backup`);
          labels[id] = newest.label;
          // What this backup added to the repository (its own folder; WAL is in the archive, as pgvault's).
          const size = await bytesUnder(join(pgbackrest!.root, 'repo', 'backup', 'bench', newest.label));
          return { size, raw: newest.databaseBytes };
        },
      };
    };

    const rows: Row[] = [];
    rows.push(
      await runStep(
        pgvaultBase('incr_pgvault_full0', 'pgvault backup base (full, before the change)', false),
      ),
    );
    if (pgbackrest) rows.push(await runStep(pgbackrestBackup('incr_pgbackrest_full', 'full')));

    // -- the change: the rows of the first changeFraction of every table's heap pages, updated.
    const tables = await cluster.query<{ t: string; col: string; pages: string }>(
      `SELECT c.oid::regclass::text AS t, a.attname AS col, c.relpages::text AS pages
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = 1
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '${MARKER_TABLE}'`,
      [],
      'bench',
    );
    const changeStarted = Date.now();
    let changedRows = 0;
    for (const { t, col, pages } of tables) {
      const upTo = Math.max(1, Math.round(Number(pages) * options.changeFraction));
      const [n] = await cluster.query<{ n: string }>(
        `WITH u AS (UPDATE ${t} SET ${col} = ${col} WHERE ctid < '(${upTo},0)'::tid RETURNING 1) SELECT count(*)::text AS n FROM u`,
        [],
        'bench',
      );
      changedRows += Number(n?.n ?? 0);
    }
    const changeMs = Date.now() - changeStarted;
    const [afterSize] = await cluster.query<{ b: string }>(
      "SELECT pg_database_size('bench')::text AS b",
      [],
      'bench',
    );
    say(
      `  changed ${changedRows} rows (the first ${Math.round(options.changeFraction * 100)}% of every table's pages) in ${seconds(changeMs)}; bench is ${mib(Number(afterSize?.b ?? 0))}`,
    );

    rows.push(
      await runStep(
        pgvaultBase(
          'incr_pgvault_incr',
          'pgvault backup base --incremental (after the change)',
          true,
          pgbackrest ? 'incr_pgbackrest_incr' : 'incr_pgvault_full1',
        ),
      ),
    );
    if (pgbackrest) rows.push(await runStep(pgbackrestBackup('incr_pgbackrest_incr', 'incr')));
    rows.push(
      await runStep(pgvaultBase('incr_pgvault_full1', 'pgvault backup base (full, after the change)', false)),
    );
    const incr = manifests.incr_pgvault_incr;
    const full0 = manifests.incr_pgvault_full0;
    if (!incr || !full0 || incr.incrementalOf !== full0.id) {
      throw new Error(
        `the incremental ${incr?.id} is of ${incr?.incrementalOf}, not of the full ${full0?.id}`,
      );
    }

    // -- WAL to replay, then the target between two marker commits (as the physical part).
    say(`writing ${options.pitrWalMb} MiB of WAL for recovery to replay`);
    const walWritten = await writeWalBytes(cluster, options.pitrWalMb * 1024 * 1024);
    const loadRows = Number(
      (
        await cluster.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${WAL_LOAD_TABLE}`, [], 'bench')
      )[0]?.n ?? 0,
    );
    await cluster.query(`DELETE FROM ${MARKER_TABLE}`, [], 'bench');
    await cluster.query(`INSERT INTO ${MARKER_TABLE} VALUES (1, clock_timestamp())`, [], 'bench');
    await sleep(300);
    const [t] = await cluster.query<{ target: string }>(
      `SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' AS target`,
    );
    const target = t!.target;
    await sleep(300);
    await cluster.query(`INSERT INTO ${MARKER_TABLE} VALUES (2, clock_timestamp())`, [], 'bench');
    await waitArchived(cluster, await switchWal(cluster), 600_000);

    const restoreRoot = join(root, 'restore');
    await mkdir(restoreRoot, { recursive: true, mode: 0o700 });
    await giveToServerUser(restoreRoot, owner);
    const server = {
      pgCtl: ((_file, args) => ({ file: join(session.binDir, 'pg_ctl'), args: [...args] })) as AsServer,
      owner,
    };
    const pitr = (id: string, name: string, backupId: string, baseline?: string): Step => {
      const dir = join(restoreRoot, id);
      return pitrStep(ctx, {
        id,
        name,
        dataDir: dir,
        display: `PARALLEL_JOBS=${PARALLEL_JOBS} pgvault restore pitr ${backupId} '${target}' --pgdata $WORK/…/${id}; pg_ctl start`,
        target,
        expect: { markers: [1], loadRows },
        createDir: false,
        baseline,
        restore: () => ({
          file: session.enter,
          args: [
            'client',
            node,
            ctx.pgvaultBin,
            'restore',
            'pitr',
            backupId,
            target,
            '--pgdata',
            dir,
            '--json',
          ],
        }),
        restoreEnv: pgvaultEnv,
        claimAlso: join(ctx.work, 'pgvault', 'dist'),
        server,
        group: 'incremental',
      });
    };
    const full1 = manifests.incr_pgvault_full1!;
    const pitrSteps = [
      pitr(
        'incr_pitr_chain',
        'pgvault restore pitr from the chain (full + incremental), start, recover',
        incr.id,
        'incr_pitr_full',
      ),
      pitr('incr_pitr_full', 'pgvault restore pitr from the full after the change, start, recover', full1.id),
    ];
    for (const step of pitrSteps) rows.push(await runStep(step));

    const info: IncrementalInfo = {
      serverVersion,
      root: other.root,
      pgbackrest: pgbackrestVersion,
      pgbackrestSkipped,
      changeFraction: options.changeFraction,
      changedRows,
      changeMs,
      pgvaultFullId: full0.id,
      pgvaultIncrementalId: incr.id,
      pgvaultFull1Id: full1.id,
      pgbackrestLabels: labels,
      pitrTarget: target,
      pitrWalWrittenBytes: walWritten,
      archiveCommand: archiveCommand.replaceAll(`${ctx.work}/`, '$WORK/').replaceAll(node, 'node'),
    };
    return { rows, info, dataset, targets: incrementalTargets(rows, pgbackrestSkipped) };
  } finally {
    await stopProcessesNaming(root).catch(() => {});
    await session.close();
  }
}

function skippedTargets(why: string): TargetResult[] {
  return [
    {
      name: BYTES_TARGET,
      target: `≤ ${INCREMENTAL_TARGETS.bytesVsPgbackrest}×`,
      measured: `not measured (${why})`,
      pass: false,
      skipped: true,
    },
    {
      name: TIME_TARGET,
      target: `≤ ${INCREMENTAL_TARGETS.timeVsPgbackrest}×`,
      measured: `not measured (${why})`,
      pass: false,
      skipped: true,
    },
  ];
}

const BYTES_TARGET =
  'pgvault backup base --incremental vs pgBackRest --type=incr block incremental (stored bytes)';
const TIME_TARGET =
  'pgvault backup base --incremental vs pgBackRest --type=incr block incremental (wall time)';

export function incrementalTargets(rows: readonly Row[], pgbackrestSkipped?: string): TargetResult[] {
  const a = rows.find((r) => r.id === 'incr_pgvault_incr');
  const b = rows.find((r) => r.id === 'incr_pgbackrest_incr');
  if (!a || !b || a.sizeBytes === undefined || b.sizeBytes === undefined) {
    return skippedTargets(pgbackrestSkipped ?? 'a row is missing');
  }
  const bytes = a.sizeBytes / b.sizeBytes;
  const time = a.wallMs / b.wallMs;
  return [
    {
      name: BYTES_TARGET,
      target: `≤ ${INCREMENTAL_TARGETS.bytesVsPgbackrest}×`,
      measured: `${bytes.toFixed(2)}× (${mib(a.sizeBytes)} vs ${mib(b.sizeBytes)})`,
      pass: bytes <= INCREMENTAL_TARGETS.bytesVsPgbackrest,
    },
    {
      name: TIME_TARGET,
      target: `≤ ${INCREMENTAL_TARGETS.timeVsPgbackrest}×`,
      measured: `${time.toFixed(2)}× (${seconds(a.wallMs)} vs ${seconds(b.wallMs)})`,
      pass: time <= INCREMENTAL_TARGETS.timeVsPgbackrest,
    },
  ];
}
