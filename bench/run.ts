/**
 * `npm run bench`: pgvault against pg_dump, the guide's `pg_dump | gzip` and a hand-made
 * `pg_dump | zstd | openssl` pipeline, on one generated database in one throwaway cluster.
 *
 *   npm run bench                          500 MB (BENCH_SIZE_MB or --size-mb to change)
 *   npm run build && node dist/bench/run.js --size-mb 50 --repeat 1 --json
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
import { generateDataset, vacuumAnalyze } from './dataset';
import {
  cpuByProgram,
  killActiveCommands,
  type Measurement,
  measureCommand,
  measureShell,
  spansByProgram,
  waitForQuiet,
} from './measure';
import {
  type DatasetResult,
  type Group,
  type Machine,
  MIB,
  markdownReport,
  mib,
  type Report,
  type Row,
  seconds,
  type TargetResult,
  terminalReport,
} from './report';

const REPO_ROOT = resolve(__dirname, '..', '..');

/** The product issue's targets. */
const TARGETS = {
  vsHandPipeline: 1.25,
  vsGuide: 0.35,
  restoreVsPgRestore: 1.2,
  nodePeakBytes: 256 * MIB,
  /** "Flat": the larger database's node peak at most this many times the smaller one's. */
  flatGrowth: 1.2,
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
}

function usage(): string {
  return `usage: node dist/bench/run.js [--size-mb N] [--small-mb N] [--repeat N] [--json] [--docs PATH | --no-docs]

  --size-mb N    on-disk size of the main database (pg_database_size), MB; default BENCH_SIZE_MB or 500
  --small-mb N   size of the second database for the memory-growth check; default size / 4
  --repeat N     runs of the headline measurements (best time kept); default 3
  --json         results as JSON on stdout
  --docs PATH    where the Markdown report goes; default docs/benchmarks.md
  --no-docs      do not write the Markdown report`;
}

function parseArgs(argv: readonly string[]): Options {
  const envSize = process.env.BENCH_SIZE_MB;
  const options: Options = {
    sizeMb: envSize ? Number(envSize) : 500,
    smallMb: Number.NaN,
    repeat: 3,
    json: false,
    docs: join(REPO_ROOT, 'docs', 'benchmarks.md'),
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
        break;
      case '--no-docs':
        options.docs = undefined;
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
  return options;
}

// ---------------------------------------------------------------------------------------------
// Progress

const benchStarted = Date.now();

function clock(): string {
  const s = Math.round((Date.now() - benchStarted) / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

function say(line: string): void {
  process.stderr.write(`[${clock()}] ${line}\n`);
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
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The run

interface Context {
  /** bin/pgvault.js of the snapshot taken at the start. */
  readonly pgvaultBin: string;
  readonly cluster: TempCluster;
  readonly work: string;
  readonly keyFile: string;
  readonly postmasterPid: number | undefined;
  readonly baseEnv: NodeJS.ProcessEnv;
  readonly repeat: number;
}

/** Only what the tools need, so nothing from the caller's shell (PG*, BACKUP_DIR, ...) leaks in. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const key of ['PATH', 'HOME', 'LANG', 'LC_ALL', 'USER', 'LOGNAME']) {
    if (process.env[key] !== undefined) env[key] = process.env[key];
  }
  return env;
}

function pgEnvFor(cluster: TempCluster, database: string): NodeJS.ProcessEnv {
  return {
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: database,
  };
}

interface Step {
  readonly id: string;
  readonly name: string;
  readonly group: Group;
  readonly display: string;
  readonly runs: number;
  readonly baseline?: string;
  readonly note?: string;
  /** Runs before each measured run (not timed): clean up the previous run's output. */
  readonly before?: () => Promise<void>;
  readonly measure: () => Promise<Measurement>;
  /**
   * Checks the run; returns the bytes it produced and, for pgvault, the raw (uncompressed dump)
   * bytes they came from.
   */
  readonly after: (m: Measurement) => Promise<{ size?: number; raw?: number }>;
}

/** Total time the benchmark may spend waiting for an idle machine before each run gets 10 s at most. */
let quietBudgetMs = 6 * 60_000;
let waitedForQuietMs = 0;

async function runStep(step: Step): Promise<Row> {
  const measurements: Measurement[] = [];
  let size: number | undefined;
  let raw: number | undefined;
  let unquiet = 0;
  for (let i = 1; i <= step.runs; i++) {
    await step.before?.();
    // Other sessions' work on the machine would land in the numbers: wait for it to pass, within a
    // budget, so a busy machine slows the benchmark down by minutes, not hours.
    const quiet = await waitForQuiet({ maxWaitMs: Math.max(10_000, Math.min(120_000, quietBudgetMs)) });
    quietBudgetMs -= quiet.waitedMs;
    waitedForQuietMs += quiet.waitedMs;
    if (!quiet.quiet) {
      unquiet++;
      say(`  the machine stayed busy for ${seconds(quiet.waitedMs)} (other programs); measuring anyway`);
    } else if (quiet.waitedMs > 3_000) {
      say(`  waited ${seconds(quiet.waitedMs)} for the machine to quiet down`);
    }
    say(`${step.name}${step.runs > 1 ? ` (run ${i}/${step.runs})` : ''}: ${step.display}`);
    const m = await step.measure();
    if (m.exitCode !== 0) {
      const tail = m.stderrTail.trim().split('\n').slice(-5).join('\n    ');
      throw new Error(
        `${step.name} failed (exit ${m.exitCode ?? m.signal}):\n    ${tail || '(nothing on stderr)'}`,
      );
    }
    ({ size, raw } = await step.after(m));
    const other = otherCpuSeconds(m);
    say(
      `  ${seconds(m.wallMs)}${size !== undefined ? `, ${mib(size)}` : ''}, peak RSS tree ${mib(m.peakTreeRssBytes)} / main ${mib(m.peakMainRssBytes)}${other > 0.5 ? `; other programs used ${other.toFixed(1)} CPU s meanwhile` : ''}`,
    );
    measurements.push(m);
  }
  const best = measurements.reduce((a, b) => (b.wallMs < a.wallMs ? b : a));
  const server = cpuByProgram(best.watched);
  return {
    id: step.id,
    name: step.name,
    group: step.group,
    command: step.display,
    wallMs: best.wallMs,
    runsMs: measurements.map((m) => m.wallMs),
    sizeBytes: size,
    rawBytes: raw,
    baseline: step.baseline,
    peakTreeRssBytes: Math.max(...measurements.map((m) => m.peakTreeRssBytes)),
    peakMainRssBytes: Math.max(...measurements.map((m) => m.peakMainRssBytes)),
    cpuSeconds: cpuByProgram(best.processes),
    serverCpuSeconds: Object.values(server).reduce((a, b) => a + b, 0),
    spans: spansByProgram(best.processes),
    otherCpuSeconds: otherCpuSeconds(best),
    unquietRuns: unquiet,
    note: step.note,
  };
}

/** CPU the rest of the machine used during a measurement, seconds (never negative). */
function otherCpuSeconds(m: Measurement): number {
  const own =
    m.processes.reduce((n, p) => n + p.cpuMs, 0) + m.watched.reduce((n, p) => n + p.cpuMs, 0) + m.selfCpuMs;
  return Math.max(0, (m.machineBusyMs - own) / 1000);
}

function heartbeat(name: string) {
  return {
    heartbeatMs: 15_000,
    onHeartbeat: (ms: number) => say(`  ${name}: still running (${seconds(ms)})`),
  };
}

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
    let postmasterPid: number | undefined;
    try {
      postmasterPid = Number(readFileSync(join(cluster.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    } catch {
      postmasterPid = undefined;
    }
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
    for (const [database, sizeMb] of [
      ['bench', options.sizeMb],
      ['bench_small', options.smallMb],
    ] as const) {
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

    const pgDump = findPgBinary('pg_dump');
    const pgRestore = findPgBinary('pg_restore');
    const createdb = join(pgDump, '..', 'createdb');
    const fcFile = join(work, 'pg_dump-Fc.dump');
    const headline = options.repeat;
    let floorDumpBytes = 0;
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

    const rows: Row[] = [];
    for (const step of steps) rows.push(await runStep(step));
    await dropDatabase(cluster, 'restore_pg');
    await dropDatabase(cluster, 'restore_vault');

    // The floor's "size" is the dump it threw away, as pgvault measured it.
    const withFloor = rows.map((r) => (r.id === 'floor' ? { ...r, sizeBytes: floorDumpBytes } : r));
    return {
      date: new Date().toISOString(),
      machine,
      sizeMb: options.sizeMb,
      smallMb: options.smallMb,
      repeat: options.repeat,
      serverSettings: { fsync: 'off', synchronous_commit: 'off', ...SERVER_SETTINGS },
      serverVersion,
      datasets,
      floorDumpBytes,
      rows: withFloor,
      targets: checkTargets(withFloor),
      totalMs: Date.now() - benchStarted,
      waitedForQuietMs,
    };
  } finally {
    say('cleaning up (cluster and temporary files)');
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

// ---------------------------------------------------------------------------------------------
// Cleanup on interruption

const cleanupPaths = new Set<string>();
let activeCluster: TempCluster | undefined;

function cleanupSync(): void {
  killActiveCommands();
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
  if (options.docs) {
    writeFileSync(options.docs, markdownReport(report));
    say(`wrote ${relative(process.cwd(), options.docs) || options.docs}`);
  }
  if (options.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else process.stdout.write(`${terminalReport(report)}\n`);
  say(`done in ${seconds(Date.now() - benchStarted)}`);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `[${clock()}] benchmark failed: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  cleanupSync();
  process.exit(1);
});
