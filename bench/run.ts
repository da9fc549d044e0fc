/**
 * `npm run bench`: on one generated database in one throwaway cluster,
 *
 * - logical: pgvault against pg_dump, the guide's `pg_dump | gzip` and a hand-made
 *   `pg_dump | zstd | openssl` pipeline (this file);
 * - physical: `pgvault backup base` and `restore pitr` against pgBackRest and a hand-made
 *   `pg_basebackup | zstd | openssl` pipeline (physical.ts, pgbackrest.ts);
 * - wal: how fast each archive_command drains a backlog of WAL segments (wal-drain.ts);
 * - incremental: PostgreSQL 17's incremental base backups against full ones and pgBackRest's block
 *   incremental, on a PostgreSQL 17 server in the other major's root (incremental.ts; skipped with
 *   one line when the root is not built).
 *
 *   npm run bench                          500 MB (BENCH_SIZE_MB or --size-mb to change)
 *   npm run build && node dist/bench/run.js --size-mb 50 --repeat 1 --json
 *   npm run build && node dist/bench/run.js --only physical --size-mb 50 --repeat 1 --no-docs
 *   npm run build && node dist/bench/run.js --only incremental --docs /tmp/incremental.md
 *
 * Progress goes to stderr; the results to stdout (a table, or JSON with --json) and, as Markdown,
 * into docs/benchmarks.md (--docs PATH to write elsewhere, --no-docs to skip). Everything it makes
 * (cluster, dumps, backups) lives in temporary directories that are removed at the end, also on
 * failure or Ctrl-C.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, stat, statfs, symlink } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join, relative, resolve } from 'node:path';
import type { PgConnection } from '../core/config';
import { TempCluster } from '../core/pg/cluster';
import { findPgBinary } from '../core/pg/tools';
import { dropWalLoad, killProcessesNamingSync, readPostmasterPid, stopProcessesNaming } from './archiving';
import { generateDataset, vacuumAnalyze } from './dataset';
import { runIncremental } from './incremental';
import { killActiveCommands, measureCommand, measureShell } from './measure';
import { type ArchiveSetup, runPhysical } from './physical';
import {
  type DatasetResult,
  type Group,
  type IncrementalInfo,
  type Machine,
  MIB,
  markdownReport,
  mib,
  PARTS,
  type Part,
  type PhysicalInfo,
  partOf,
  type Report,
  type Row,
  seconds,
  type TargetResult,
  terminalReport,
  type WalInfo,
} from './report';
import {
  benchElapsedMs,
  type Context,
  cleanEnv,
  clock,
  heartbeat,
  pgEnvFor,
  runStep,
  type Step,
  say,
  totalQuietWaitMs,
} from './steps';
import { runWalDrain } from './wal-drain';

const REPO_ROOT = resolve(__dirname, '..', '..');

/** The product issue's targets. */
const TARGETS = {
  vsHandPipeline: 1.25,
  vsGuide: 0.35,
  restoreVsPgRestore: 1.2,
  nodePeakBytes: 256 * MIB,
  /** "Flat": the larger database's node peak at most this many times the smaller one's. */
  flatGrowth: 1.2,
  /** Issue 3: base backup time at most this many times pgBackRest's full backup. */
  baseVsPgbackrest: 1.0,
  /** Issue 3: PITR (restore, start, recover, promote) at most this many times pgBackRest's. */
  pitrVsPgbackrest: 1.2,
  /** Issue 3: async archiving at least as many segments per second as pgBackRest async. */
  walVsPgbackrestAsync: 1.0,
} as const;

const SERVER_SETTINGS: Record<string, string> = {
  shared_buffers: '256MB',
  max_wal_size: '4GB',
  checkpoint_timeout: '30min',
  maintenance_work_mem: '256MB',
  effective_cache_size: '4GB',
};

const PGVAULT_COMPRESSIONS = ['zstd', 'gzip', 'lz4', 'xz', 'bzip2', 'none'] as const;

interface Options {
  sizeMb: number;
  smallMb: number;
  repeat: number;
  json: boolean;
  docs: string | undefined;
  /** --docs given explicitly (a partial run writes docs/benchmarks.md only then). */
  docsExplicit: boolean;
  parts: Part[];
  walSegments: number;
  pitrWalMb: number;
  /** false: leave pgBackRest out (its rows are skipped with one line). */
  pgbackrest: boolean;
}

function usage(): string {
  return `usage: node dist/bench/run.js [--size-mb N] [--small-mb N] [--repeat N] [--only PART] [--wal-segments N]
                            [--pitr-wal-mb N] [--no-pgbackrest] [--json] [--docs PATH | --no-docs]

  --size-mb N        on-disk size of the main database (pg_database_size), MB; default BENCH_SIZE_MB or 500
  --small-mb N       size of the second database for the memory-growth check; default size / 4
  --repeat N         runs of the headline measurements (best time kept); default 3
  --only PART        run only logical, physical, wal or incremental (repeatable, or comma-separated);
                     default all four (incremental needs the PostgreSQL 17 root, .ci/pg-other-major)
  --wal-segments N   WAL segments in the backlog each archive_command drains (wal part); default 64
  --pitr-wal-mb N    WAL written between the base backups and the PITR target, MiB; default 256
  --no-pgbackrest    leave pgBackRest out (its rows and targets are skipped)
  --json             results as JSON on stdout
  --docs PATH        where the Markdown report goes; default docs/benchmarks.md (a run with --only
                     writes one only when --docs is given)
  --no-docs          do not write the Markdown report`;
}

function parseArgs(argv: readonly string[]): Options {
  const envSize = process.env.BENCH_SIZE_MB;
  const options: Options = {
    sizeMb: envSize ? Number(envSize) : 500,
    smallMb: Number.NaN,
    repeat: 3,
    json: false,
    docs: join(REPO_ROOT, 'docs', 'benchmarks.md'),
    docsExplicit: false,
    parts: [],
    walSegments: 64,
    pitrWalMb: 256,
    pgbackrest: true,
  };
  const number = (flag: string, value: string | undefined, min: number): number => {
    const n = Number(value);
    if (value === undefined || !Number.isFinite(n) || n < min) {
      throw new Error(`${flag} needs a number of at least ${min} (got ${value ?? 'nothing'})\n${usage()}`);
    }
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [flag, inline] = arg.includes('=') ? (arg.split('=', 2) as [string, string]) : [arg, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--size-mb':
        options.sizeMb = number(flag, value(), 10);
        break;
      case '--small-mb':
        options.smallMb = number(flag, value(), 5);
        break;
      case '--repeat':
        options.repeat = Math.round(number(flag, value(), 1));
        break;
      case '--json':
        options.json = true;
        break;
      case '--docs':
        options.docs = resolve(value() ?? '');
        options.docsExplicit = true;
        break;
      case '--no-docs':
        options.docs = undefined;
        options.docsExplicit = true;
        break;
      case '--only':
        for (const part of (value() ?? '').split(',').map((p) => p.trim())) {
          if (!(PARTS as readonly string[]).includes(part)) {
            throw new Error(`--only takes ${PARTS.join(', ')} (got ${part || 'nothing'})\n${usage()}`);
          }
          if (!options.parts.includes(part as Part)) options.parts.push(part as Part);
        }
        break;
      case '--no-pgbackrest':
        options.pgbackrest = false;
        break;
      case '--wal-segments':
        options.walSegments = Math.round(number(flag, value(), 2));
        break;
      case '--pitr-wal-mb':
        options.pitrWalMb = Math.round(number(flag, value(), 1));
        break;
      case '-h':
      case '--help':
        process.stdout.write(`${usage()}\n`);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${arg}\n${usage()}`);
    }
  }
  if (!Number.isFinite(options.sizeMb) || options.sizeMb < 10) {
    throw new Error(`BENCH_SIZE_MB / --size-mb must be at least 10 (got ${options.sizeMb})`);
  }
  if (Number.isNaN(options.smallMb)) options.smallMb = Math.max(5, Math.round(options.sizeMb / 4));
  if (options.parts.length === 0) options.parts = [...PARTS];
  else {
    options.parts.sort((a, b) => PARTS.indexOf(a) - PARTS.indexOf(b));
    // A partial report would replace the whole of docs/benchmarks.md: only where asked to.
    if (!options.docsExplicit) options.docs = undefined;
  }
  return options;
}

// ---------------------------------------------------------------------------------------------
// Machine

/** "zstd 1.5.4": the name and the first dotted version number the program prints. */
function versionOf(name: string, file: string, args: readonly string[] = ['--version']): string {
  const line = firstLine(file, args);
  const version = /\bv?(\d+\.\d+(?:\.\d+)*[a-z]?)/.exec(line)?.[1];
  return version ? `${name} ${version}` : `${name} (${line || 'not installed'})`;
}

function firstLine(file: string, args: readonly string[]): string {
  try {
    const out = execFileSync(file, [...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 10_000,
    });
    return (
      out
        .split('\n')
        .find((l) => l.trim() !== '')
        ?.trim() ?? ''
    );
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    const text = `${e.stdout ?? ''}\n${e.stderr ?? ''}`;
    return (
      text
        .split('\n')
        .find((l) => l.trim() !== '')
        ?.trim() ?? 'not installed'
    );
  }
}

async function describeMachine(workDir: string): Promise<Machine> {
  let cpuModel = cpus()[0]?.model ?? 'unknown';
  try {
    cpuModel =
      /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpuModel;
  } catch {
    // Not Linux: os.cpus() is good enough.
  }
  const fs = await statfs(workDir);
  return {
    cores: availableParallelism(),
    cpuModel,
    memoryBytes: totalmem(),
    kernel: release(),
    diskFreeBytes: Number(fs.bavail) * Number(fs.bsize),
    diskPath: workDir,
    loadAverage: loadavg().map((n) => Number(n.toFixed(2))),
    versions: {
      node: `node ${process.version.replace(/^v/, '')}`,
      pg_dump: versionOf('pg_dump', findPgBinary('pg_dump')),
      zstd: versionOf('zstd', 'zstd'),
      openssl: versionOf('OpenSSL', 'openssl', ['version']),
      gzip: versionOf('gzip', 'gzip'),
      pigz: versionOf('pigz', 'pigz'),
      xz: versionOf('xz', 'xz'),
      lz4: versionOf('lz4', 'lz4'),
      lbzip2: versionOf('lbzip2', 'lbzip2'),
      pg_basebackup: versionOf('pg_basebackup', findPgBinary('pg_basebackup')),
      pgbackrest: versionOf('pgBackRest', 'pgbackrest', ['version']),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The run

/** A bash pipeline with the cluster's connection in its environment. */
function shellStep(
  ctx: Context,
  spec: {
    id: string;
    name: string;
    group?: Group;
    script: string;
    database?: string;
    output?: string;
    runs?: number;
    baseline?: string;
    note?: string;
    keepOutput?: boolean;
  },
): Step {
  const display = spec.script
    .replaceAll(`${ctx.work}/`, '$WORK/')
    .replaceAll(/\/usr\/lib\/postgresql\/\d+\/bin\//g, '');
  return {
    id: spec.id,
    name: spec.name,
    group: spec.group ?? 'backup',
    display,
    runs: spec.runs ?? 1,
    baseline: spec.baseline,
    note: spec.note,
    before: async () => {
      if (spec.output) await rm(spec.output, { force: true });
    },
    measure: () =>
      measureShell(spec.script, {
        env: { ...ctx.baseEnv, ...pgEnvFor(ctx.cluster, spec.database ?? 'bench') },
        cwd: ctx.work,
        watchRoots: ctx.postmasterPid ? [ctx.postmasterPid] : [],
        label: display,
        ...heartbeat(spec.name),
      }),
    after: async () => {
      if (!spec.output) return {};
      const size = (await stat(spec.output)).size;
      if (!spec.keepOutput) await rm(spec.output, { force: true });
      return { size };
    },
  };
}

interface PgvaultManifest {
  readonly rawSize: number;
  readonly storedSize: number;
  readonly objects: readonly { kind: string; database?: string; rawSize: number; storedSize: number }[];
}

/** `pgvault backup full manual --database DB` with one compression, into its own BACKUP_DIR. */
function pgvaultBackupStep(
  ctx: Context,
  spec: {
    id: string;
    name: string;
    compression: string;
    encryption: boolean;
    database?: string;
    runs?: number;
    group?: Group;
    /** Row to compare the time with; default the hand pipeline, null for none. */
    baseline?: string | null;
    keep?: boolean;
    note?: string;
    onManifest?: (m: PgvaultManifest) => void;
  },
): Step {
  const database = spec.database ?? 'bench';
  const backupDir = join(ctx.work, `vault-${spec.id}`);
  const env: NodeJS.ProcessEnv = {
    ...ctx.baseEnv,
    ...pgEnvFor(ctx.cluster, 'postgres'),
    BACKUP_DIR: backupDir,
    CLUSTER_NAME: 'bench',
    COMPRESSION: spec.compression,
    PARALLEL_JOBS: '2',
    TMPDIR: ctx.work,
    ...(spec.encryption ? { ENCRYPTION: 'true', ENCRYPTION_KEY_FILE: ctx.keyFile } : { ENCRYPTION: 'false' }),
  };
  const settings = `COMPRESSION=${spec.compression}${spec.encryption ? ' ENCRYPTION=true' : ''} PARALLEL_JOBS=2`;
  const args = [ctx.pgvaultBin, 'backup', 'full', 'manual', '--database', database, '--json'];
  return {
    id: spec.id,
    name: spec.name,
    group: spec.group ?? 'backup',
    display: `${settings} pgvault backup full manual --database ${database}`,
    runs: spec.runs ?? 1,
    baseline: spec.baseline === null ? undefined : (spec.baseline ?? 'hand'),
    note: spec.note,
    before: async () => {
      await rm(backupDir, { recursive: true, force: true });
      await mkdir(backupDir, { recursive: true, mode: 0o700 });
    },
    measure: () =>
      measureCommand(process.execPath, args, {
        env,
        cwd: ctx.work,
        captureStdout: true,
        watchRoots: ctx.postmasterPid ? [ctx.postmasterPid] : [],
        label: `pgvault backup ${spec.id}`,
        ...heartbeat(spec.name),
      }),
    after: async (m) => {
      const out = JSON.parse(m.stdout) as { ok: boolean; manifest: PgvaultManifest };
      if (!out.ok) throw new Error(`${spec.name}: pgvault reported failure: ${m.stdout.slice(0, 500)}`);
      spec.onManifest?.(out.manifest);
      const db = out.manifest.objects.find((o) => o.kind === 'database' && o.database === database);
      if (!db) throw new Error(`${spec.name}: the manifest has no object for database ${database}`);
      if (!spec.keep) await rm(backupDir, { recursive: true, force: true });
      return { size: db.storedSize, raw: db.rawSize };
    },
  };
}

/**
 * Copies the built CLI (dist/, bin/, package.json; node_modules linked) into the work directory, so
 * that a rebuild of dist/ while the benchmark runs cannot change, or break, what is measured.
 */
async function snapshotPgvault(work: string): Promise<string> {
  const root = join(work, 'pgvault');
  await mkdir(root, { recursive: true });
  await cp(join(REPO_ROOT, 'dist'), join(root, 'dist'), { recursive: true });
  await cp(join(REPO_ROOT, 'bin'), join(root, 'bin'), { recursive: true });
  await cp(join(REPO_ROOT, 'package.json'), join(root, 'package.json'));
  await symlink(join(REPO_ROOT, 'node_modules'), join(root, 'node_modules'));
  return join(root, 'bin', 'pgvault.js');
}

async function dropDatabase(cluster: TempCluster, name: string): Promise<void> {
  await cluster.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
}

async function runBenchmark(options: Options): Promise<Report> {
  const work = await mkdtemp(join(tmpdir(), 'pgvault-bench-'));
  cleanupPaths.add(work);
  let cluster: TempCluster | undefined;
  try {
    const pgvaultBin = await snapshotPgvault(work);
    const machine = await describeMachine(work);
    say(
      `machine: ${machine.cores} cores, ${mib(machine.memoryBytes)} RAM, ${machine.cpuModel}; ${mib(machine.diskFreeBytes)} free in ${tmpdir()}`,
    );
    say(
      `starting a PostgreSQL cluster (${Object.entries(SERVER_SETTINGS)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')})`,
    );
    cluster = await TempCluster.start({ settings: SERVER_SETTINGS });
    activeCluster = cluster;
    say(`  PostgreSQL on 127.0.0.1:${cluster.port}, files in ${cluster.baseDir}; work files in ${work}`);
    const serverVersion =
      (await cluster.query<{ v: string }>("SELECT current_setting('server_version') AS v"))[0]?.v ?? '?';
    const postmasterPid = readPostmasterPid(cluster.dataDir);
    const keyFile = join(work, 'encryption-key');
    writeFileSync(keyFile, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
    const ctx: Context = {
      pgvaultBin,
      cluster,
      work,
      keyFile,
      postmasterPid,
      baseEnv: cleanEnv(),
      repeat: options.repeat,
    };
    const conn: PgConnection = cluster.connection();

    // -- data
    const datasets: DatasetResult[] = [];
    const logical = options.parts.includes('logical');
    // bench_small only serves the logical part's memory-growth check.
    // The incremental part generates its own on PostgreSQL 17; the host's bench serves the others.
    const hostParts = options.parts.some((p) => p !== 'incremental');
    const databases: Array<readonly [string, number]> = hostParts ? [['bench', options.sizeMb]] : [];
    if (logical) databases.push(['bench_small', options.smallMb]);
    for (const [database, sizeMb] of databases) {
      say(`generating ${database}: ${sizeMb} MB`);
      const report = await generateDataset({
        conn,
        database,
        sizeMb,
        workers: 2,
        log: (line) => say(`  ${line}`),
      });
      say(
        `  ${database}: ${mib(report.sizeBytes)} in ${seconds(report.totalMs)} (${report.mbPerSecond.toFixed(1)} MB/s); VACUUM ANALYZE`,
      );
      const vacuum = await vacuumAnalyze(conn, database, 2);
      say(`  VACUUM ANALYZE ${seconds(vacuum.ms)}; ${database} is ${mib(vacuum.sizeBytes)}`);
      datasets.push({ ...report, vacuumMs: vacuum.ms, sizeAfterVacuumBytes: vacuum.sizeBytes });
    }
    // Whatever the load left for the checkpointer is written before anything is timed.
    await cluster.query('CHECKPOINT');

    const rows: Row[] = [];
    let floorDumpBytes = 0;
    if (logical) {
      const pgDump = findPgBinary('pg_dump');
      const pgRestore = findPgBinary('pg_restore');
      const createdb = join(pgDump, '..', 'createdb');
      const fcFile = join(work, 'pg_dump-Fc.dump');
      const headline = options.repeat;
      const onMainManifest = (m: PgvaultManifest) => {
        const db = m.objects.find((o) => o.kind === 'database' && o.database === 'bench');
        if (db) floorDumpBytes = db.rawSize;
      };

      const steps: Step[] = [
        shellStep(ctx, {
          id: 'floor',
          name: 'floor: pg_dump -Fc -Z0 > /dev/null',
          script: `${pgDump} -Fc -Z0 > /dev/null`,
          runs: headline,
        }),
        shellStep(ctx, {
          id: 'pg_dump_fc',
          name: 'pg_dump -Fc (default compression)',
          script: `${pgDump} -Fc > ${fcFile}`,
          output: fcFile,
          keepOutput: true,
          baseline: 'floor',
        }),
        shellStep(ctx, {
          id: 'guide',
          name: 'guide: pg_dump | gzip',
          script: `${pgDump} | gzip > ${join(work, 'guide.sql.gz')}`,
          output: join(work, 'guide.sql.gz'),
          baseline: 'floor',
        }),
        shellStep(ctx, {
          id: 'hand',
          name: 'hand: pg_dump -Z0 | zstd | openssl',
          script: `${pgDump} -Fc -Z0 | zstd -T0 -3 | openssl enc -aes-256-cbc -pbkdf2 -iter 100000 -md sha256 -pass file:${keyFile} > ${join(work, 'hand.dump.zst.enc')}`,
          output: join(work, 'hand.dump.zst.enc'),
          runs: headline,
          baseline: 'floor',
        }),
        pgvaultBackupStep(ctx, {
          id: 'zstd_enc',
          name: 'pgvault zstd + encryption',
          compression: 'zstd',
          encryption: true,
          runs: headline,
          keep: true,
          onManifest: onMainManifest,
        }),
        pgvaultBackupStep(ctx, {
          id: 'zstd',
          name: 'pgvault zstd',
          compression: 'zstd',
          encryption: false,
          runs: headline,
        }),
        ...PGVAULT_COMPRESSIONS.filter((c) => c !== 'zstd').map((c) =>
          pgvaultBackupStep(ctx, { id: c, name: `pgvault ${c}`, compression: c, encryption: false }),
        ),
        pgvaultBackupStep(ctx, {
          id: 'zstd_enc_small',
          name: `pgvault zstd + encryption, ${options.smallMb} MB database`,
          compression: 'zstd',
          encryption: true,
          database: 'bench_small',
          group: 'memory',
          baseline: null,
          note: 'memory-growth check: the same backup of a database a quarter of the size',
        }),
        {
          ...shellStep(ctx, {
            id: 'pg_restore',
            name: 'pg_restore -j 2 (local pg_dump -Fc file)',
            group: 'restore',
            script: `${createdb} -T template0 restore_pg && ${pgRestore} -j 2 -d restore_pg ${fcFile}`,
            runs: headline,
            database: 'postgres',
          }),
          // Dropped right after each run too, so autovacuum on it cannot land in the next measurement.
          before: () => dropDatabase(cluster!, 'restore_pg'),
          after: async () => {
            await dropDatabase(cluster!, 'restore_pg');
            return {};
          },
        },
        pgvaultRestoreStep(ctx, headline),
      ];

      for (const step of steps) rows.push(await runStep(step));
      await dropDatabase(cluster, 'restore_pg');
      await dropDatabase(cluster, 'restore_vault');
    }

    let physicalInfo: PhysicalInfo | undefined;
    let walInfo: WalInfo | undefined;
    let archiveSetup: ArchiveSetup | undefined;
    if (options.parts.includes('physical')) {
      const physical = await runPhysical(ctx, {
        pitrWalMb: options.pitrWalMb,
        pgbackrest: options.pgbackrest,
      });
      rows.push(...physical.rows);
      physicalInfo = physical.info;
      archiveSetup = physical.setup;
    }
    if (options.parts.includes('wal')) {
      const wal = await runWalDrain(
        ctx,
        { segments: options.walSegments, pgbackrest: options.pgbackrest },
        archiveSetup,
      );
      rows.push(...wal.rows);
      walInfo = {
        ...wal.info,
        pgbackrest: wal.setup.pgbackrestVersion,
        pgbackrestSkipped: wal.setup.pgbackrestMissing,
      };
    }
    await dropWalLoad(cluster).catch(() => {});
    let incrementalInfo: IncrementalInfo | undefined;
    const incrementalTargets: TargetResult[] = [];
    if (options.parts.includes('incremental')) {
      const loadAverage = loadavg().map((n) => Number(n.toFixed(2)));
      const incr = await runIncremental(ctx, {
        sizeMb: options.sizeMb,
        serverSettings: SERVER_SETTINGS,
        changeFraction: 0.05,
        pitrWalMb: Math.min(options.pitrWalMb, 64),
        pgbackrest: options.pgbackrest,
      });
      rows.push(...incr.rows);
      incrementalTargets.push(...incr.targets);
      incrementalInfo = { ...incr.info, loadAverage, datasetBytes: incr.dataset?.sizeAfterVacuumBytes };
      if (datasets.length === 0 && incr.dataset) datasets.push(incr.dataset);
    }

    // The floor's "size" is the dump it threw away, as pgvault measured it.
    const withFloor = rows.map((r) => (r.id === 'floor' ? { ...r, sizeBytes: floorDumpBytes } : r));
    return {
      date: new Date().toISOString(),
      machine,
      sizeMb: options.sizeMb,
      smallMb: options.smallMb,
      repeat: options.repeat,
      parts: options.parts,
      serverSettings: { fsync: 'off', synchronous_commit: 'off', ...SERVER_SETTINGS },
      serverVersion,
      datasets,
      floorDumpBytes,
      rows: withFloor,
      targets: [
        ...(logical ? checkTargets(withFloor.filter((r) => partOf(r.group) === 'logical')) : []),
        ...checkPhysicalTargets(withFloor, options.parts, physicalInfo, walInfo),
        ...incrementalTargets,
      ],
      totalMs: benchElapsedMs(),
      waitedForQuietMs: totalQuietWaitMs(),
      physical: physicalInfo,
      wal: walInfo,
      incremental: incrementalInfo,
    };
  } finally {
    say('cleaning up (cluster and temporary files)');
    // Uploaders, async workers and prefetchers started by archive and restore commands.
    await stopProcessesNaming(work).catch(() => {});
    if (cluster) await cluster.stop();
    activeCluster = undefined;
    await rm(work, { recursive: true, force: true });
    cleanupPaths.delete(work);
  }
}

function pgvaultRestoreStep(ctx: Context, runs: number): Step {
  const env: NodeJS.ProcessEnv = {
    ...ctx.baseEnv,
    ...pgEnvFor(ctx.cluster, 'postgres'),
    BACKUP_DIR: join(ctx.work, 'vault-zstd_enc'),
    CLUSTER_NAME: 'bench',
    PARALLEL_JOBS: '2',
    TMPDIR: ctx.work,
    ENCRYPTION: 'true',
    ENCRYPTION_KEY_FILE: ctx.keyFile,
  };
  return {
    id: 'pgvault_restore',
    name: 'pgvault restore (zstd + encryption)',
    group: 'restore',
    display: 'PARALLEL_JOBS=2 pgvault restore full latest restore_vault --from bench',
    runs,
    baseline: 'pg_restore',
    before: () => dropDatabase(ctx.cluster, 'restore_vault'),
    measure: () =>
      measureCommand(
        process.execPath,
        [ctx.pgvaultBin, 'restore', 'full', 'latest', 'restore_vault', '--from', 'bench', '--json'],
        {
          env,
          cwd: ctx.work,
          captureStdout: true,
          watchRoots: ctx.postmasterPid ? [ctx.postmasterPid] : [],
          label: 'pgvault restore',
          ...heartbeat('pgvault restore'),
        },
      ),
    after: async (m) => {
      const out = JSON.parse(m.stdout) as { ok: boolean };
      if (!out.ok) throw new Error(`pgvault restore reported failure: ${m.stdout.slice(0, 500)}`);
      await dropDatabase(ctx.cluster, 'restore_vault');
      return {};
    },
  };
}

function checkTargets(rows: readonly Row[]): TargetResult[] {
  const get = (id: string) => rows.find((r) => r.id === id);
  const results: TargetResult[] = [];
  const ratio = (a: Row | undefined, b: Row | undefined) => (a && b ? a.wallMs / b.wallMs : Number.NaN);
  const headline = get('zstd_enc');
  const hand = ratio(headline, get('hand'));
  results.push({
    name: 'pgvault zstd+encryption vs hand pipeline (wall time)',
    target: `≤ ${TARGETS.vsHandPipeline}×`,
    measured: `${hand.toFixed(2)}× (${seconds(headline?.wallMs ?? 0)} vs ${seconds(get('hand')?.wallMs ?? 0)})`,
    pass: hand <= TARGETS.vsHandPipeline,
  });
  const guide = ratio(headline, get('guide'));
  results.push({
    name: 'pgvault zstd+encryption vs `pg_dump | gzip` (wall time)',
    target: `≤ ${TARGETS.vsGuide}×`,
    measured: `${guide.toFixed(2)}× (${seconds(headline?.wallMs ?? 0)} vs ${seconds(get('guide')?.wallMs ?? 0)})`,
    pass: guide <= TARGETS.vsGuide,
  });
  const restore = ratio(get('pgvault_restore'), get('pg_restore'));
  results.push({
    name: 'pgvault restore vs `pg_restore -j 2` from a local file (wall time)',
    target: `≤ ${TARGETS.restoreVsPgRestore}×`,
    measured: `${restore.toFixed(2)}× (${seconds(get('pgvault_restore')?.wallMs ?? 0)} vs ${seconds(get('pg_restore')?.wallMs ?? 0)})`,
    pass: restore <= TARGETS.restoreVsPgRestore,
  });
  const pgvaultRows = rows.filter(
    (r) => r.id.startsWith('pgvault') || r.baseline === 'hand' || r.group === 'memory',
  );
  const worst = pgvaultRows.reduce((a, b) => (b.peakMainRssBytes > a.peakMainRssBytes ? b : a));
  results.push({
    name: 'pgvault peak memory (node process), every pgvault run',
    target: `< ${mib(TARGETS.nodePeakBytes)}`,
    measured: `${mib(worst.peakMainRssBytes)} at most (${worst.name})`,
    pass: worst.peakMainRssBytes < TARGETS.nodePeakBytes,
  });
  const big = get('zstd_enc');
  const small = get('zstd_enc_small');
  const growth = big && small ? big.peakMainRssBytes / small.peakMainRssBytes : Number.NaN;
  results.push({
    name: 'pgvault peak memory flat as the database grows (zstd+encryption, node process)',
    target: `larger ≤ ${TARGETS.flatGrowth}× smaller`,
    measured: `${mib(big?.peakMainRssBytes ?? 0)} vs ${mib(small?.peakMainRssBytes ?? 0)} (${growth.toFixed(2)}×)`,
    pass: growth <= TARGETS.flatGrowth,
  });
  return results;
}

function checkPhysicalTargets(
  rows: readonly Row[],
  parts: readonly Part[],
  physical: PhysicalInfo | undefined,
  wal: WalInfo | undefined,
): TargetResult[] {
  const get = (id: string) => rows.find((r) => r.id === id);
  const results: TargetResult[] = [];
  const versus = (
    name: string,
    mine: string,
    theirs: string,
    limit: number,
    skippedWhy: string | undefined,
  ) => {
    const a = get(mine);
    const b = get(theirs);
    if (!a || !b) {
      results.push({
        name,
        target: `≤ ${limit}×`,
        measured: `not measured (${skippedWhy ?? `${!a ? mine : theirs} missing`})`,
        pass: false,
        skipped: true,
      });
      return;
    }
    const ratio = a.wallMs / b.wallMs;
    results.push({
      name,
      target: `≤ ${limit}×`,
      measured: `${ratio.toFixed(2)}× (${seconds(a.wallMs)} vs ${seconds(b.wallMs)})`,
      pass: ratio <= limit,
    });
  };
  if (parts.includes('physical')) {
    const why = physical?.pgbackrestSkipped;
    versus(
      'pgvault backup base vs `pgbackrest backup --type=full` (wall time)',
      'pgvault_base',
      'pgbackrest_base',
      TARGETS.baseVsPgbackrest,
      why,
    );
    versus(
      'pgvault restore pitr + recovery vs `pgbackrest restore --type=time` + recovery (wall time)',
      'pgvault_pitr',
      'pgbackrest_pitr',
      TARGETS.pitrVsPgbackrest,
      why,
    );
  }
  if (parts.includes('wal')) {
    const a = get('wal_pgvault_async')?.wal;
    const b = get('wal_pgbackrest_async')?.wal;
    const name =
      'pgvault async archiving vs pgBackRest archive-push --archive-async (segments/s draining a backlog)';
    const target = `≥ ${TARGETS.walVsPgbackrestAsync}×`;
    if (!a || !b) {
      results.push({
        name,
        target,
        measured: `not measured (${wal?.pgbackrestSkipped ?? 'a row is missing'})`,
        pass: false,
        skipped: true,
      });
    } else {
      const ratio = a.perSecond / b.perSecond;
      results.push({
        name,
        target,
        measured: `${ratio.toFixed(2)}× (${a.perSecond.toFixed(1)} vs ${b.perSecond.toFixed(1)} segments/s)`,
        pass: ratio >= TARGETS.walVsPgbackrestAsync,
      });
    }
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Cleanup on interruption

const cleanupPaths = new Set<string>();
let activeCluster: TempCluster | undefined;

function cleanupSync(): void {
  killActiveCommands();
  for (const path of cleanupPaths) killProcessesNamingSync(path);
  // TempCluster's own exit hook stops the server; files are removed here.
  for (const path of cleanupPaths) {
    try {
      rmSync(path, { recursive: true, force: true });
    } catch {
      // Exiting anyway.
    }
  }
  if (activeCluster?.running) activeCluster.stopSync();
}

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    process.stderr.write(`\n[${clock()}] ${signal}: stopping, removing the cluster and temporary files\n`);
    cleanupSync();
    process.exit(130);
  });
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  say(
    `pgvault benchmark: ${options.sizeMb} MB database (+ ${options.smallMb} MB for the memory check), headline runs best of ${options.repeat}`,
  );
  const report = await runBenchmark(options);
  if (options.docs && report.datasets.length === 0) {
    say('no data set was generated (the incremental part was skipped): no Markdown report written');
  } else if (options.docs) {
    writeFileSync(options.docs, markdownReport(report));
    say(`wrote ${relative(process.cwd(), options.docs) || options.docs}`);
  }
  if (options.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else process.stdout.write(`${terminalReport(report)}\n`);
  say(`done in ${seconds(benchElapsedMs())}`);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `[${clock()}] benchmark failed: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  cleanupSync();
  process.exit(1);
});
