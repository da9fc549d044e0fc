/**
 * The benchmark's results: their shape (also the --json output), the terminal table and the
 * Markdown written to docs/benchmarks.md.
 */
import { table } from '../cli/output';
import type { DatasetReport } from './dataset';

export const MIB = 1024 * 1024;

export interface Machine {
  readonly cores: number;
  readonly cpuModel: string;
  readonly memoryBytes: number;
  readonly kernel: string;
  readonly diskFreeBytes: number;
  readonly diskPath: string;
  /** 1, 5 and 15 minute load averages when the benchmark started. */
  readonly loadAverage: readonly number[];
  readonly versions: Record<string, string>;
}

export type Group = 'backup' | 'restore' | 'memory';

export interface Row {
  readonly id: string;
  readonly name: string;
  readonly group: Group;
  /** What ran, as a shell would show it (paths shortened). */
  readonly command: string;
  /** Best (smallest) wall time of the runs, ms. */
  readonly wallMs: number;
  readonly runsMs: readonly number[];
  /** Bytes produced (the dump or backup object); undefined for restores and /dev/null. */
  readonly sizeBytes?: number;
  /** For pgvault backups: the raw dump size its manifest records (the floor size of that database). */
  readonly rawBytes?: number;
  /** Row whose time this one is compared with. */
  readonly baseline?: string;
  /** Largest over the runs. */
  readonly peakTreeRssBytes: number;
  readonly peakMainRssBytes: number;
  /** Of the best run: CPU seconds per program, and server CPU (backends are not in the tree). */
  readonly cpuSeconds: Record<string, number>;
  readonly serverCpuSeconds: number;
  /** Of the best run: when each program was alive, seconds from the start. */
  readonly spans: Record<string, { from: number; to: number; count: number }>;
  /**
   * Of the best run: CPU seconds the rest of the machine used meanwhile (other sessions, not this
   * benchmark). Large values mean the run competed for the cores.
   */
  readonly otherCpuSeconds: number;
  /** Runs that started although the machine did not quiet down first. */
  readonly unquietRuns: number;
  readonly note?: string;
}

export interface TargetResult {
  readonly name: string;
  readonly target: string;
  readonly measured: string;
  readonly pass: boolean;
}

export type DatasetResult = DatasetReport & { vacuumMs: number; sizeAfterVacuumBytes: number };

export interface Report {
  readonly date: string;
  readonly machine: Machine;
  readonly sizeMb: number;
  readonly smallMb: number;
  readonly repeat: number;
  readonly serverSettings: Record<string, string>;
  readonly serverVersion: string;
  readonly datasets: readonly DatasetResult[];
  /** pg_dump -Fc -Z0 output size of the main database (from pgvault's manifest), bytes. */
  readonly floorDumpBytes: number;
  readonly rows: readonly Row[];
  readonly targets: readonly TargetResult[];
  readonly totalMs: number;
  /** Time spent waiting for the machine to become idle before runs (part of totalMs). */
  readonly waitedForQuietMs: number;
}

export function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

export function mib(bytes: number): string {
  return `${(bytes / MIB).toFixed(1)} MiB`;
}

/**
 * A run that shared the cores with other programs for more than a tenth of the machine's time (and
 * more than half a CPU second: sampling alone leaves a few tenths unaccounted for).
 */
function disturbed(report: Report, r: Row): boolean {
  return r.otherCpuSeconds > Math.max(0.5, 0.1 * (r.wallMs / 1000) * report.machine.cores);
}

const HEADER = [
  'run',
  'runs',
  'wall time',
  'size',
  'size / floor',
  'time vs baseline',
  'peak RSS tree',
  'peak RSS main',
];

function cells(report: Report, r: Row): string[] {
  const base = r.baseline ? report.rows.find((x) => x.id === r.baseline) : undefined;
  const floor = r.rawBytes ?? report.floorDumpBytes;
  return [
    r.name,
    r.runsMs.length > 1 ? `best of ${r.runsMs.length}` : '1',
    `${seconds(r.wallMs)}${disturbed(report, r) ? ' †' : ''}`,
    r.sizeBytes !== undefined ? mib(r.sizeBytes) : '',
    r.sizeBytes !== undefined && floor > 0 ? (r.sizeBytes / floor).toFixed(3) : '',
    base ? `${(r.wallMs / base.wallMs).toFixed(2)}× ${base.id}` : '',
    mib(r.peakTreeRssBytes),
    mib(r.peakMainRssBytes),
  ];
}

function cpuLine(r: Row): string {
  const parts = Object.entries(r.cpuSeconds)
    .filter(([, s]) => s >= 0.05)
    .sort((a, b) => b[1] - a[1])
    .map(([comm, s]) => `${comm} ${s.toFixed(1)}`);
  parts.push(`server ${r.serverCpuSeconds.toFixed(1)}`);
  return parts.join(', ');
}

function spanLine(r: Row): string {
  return Object.entries(r.spans)
    .sort((a, b) => a[1].from - b[1].from)
    .map(([comm, s]) => `${comm}${s.count > 1 ? ` ×${s.count}` : ''} ${s.from.toFixed(1)}–${s.to.toFixed(1)}`)
    .join('; ');
}

function allRuns(r: Row): string {
  return r.runsMs.map((ms) => (ms / 1000).toFixed(2)).join(', ');
}

function sum(values: Record<string, number>, except: readonly string[] = []): number {
  return Object.entries(values)
    .filter(([k]) => !except.includes(k))
    .reduce((n, [, v]) => n + v, 0);
}

/**
 * Sentences read off this run's numbers: where pgvault's extra time goes, from the CPU per program
 * and from when each program was alive.
 */
export function observations(report: Report): string[] {
  const get = (id: string) => report.rows.find((r) => r.id === id);
  const out: string[] = [];
  const hand = get('hand');
  const enc = get('zstd_enc');
  const plain = get('zstd');
  const none = get('none');
  const floor = get('floor');
  if (hand && enc) {
    const node = enc.cpuSeconds.node ?? 0;
    const openssl = hand.cpuSeconds.openssl ?? 0;
    const handTotal = sum(hand.cpuSeconds, ['bash']) + hand.serverCpuSeconds;
    const encTotal = sum(enc.cpuSeconds) + enc.serverCpuSeconds;
    out.push(
      `**Backup.** pgvault zstd+encryption took ${seconds(enc.wallMs)} against the hand pipeline's ${seconds(hand.wallMs)} ` +
        `(${(enc.wallMs / hand.wallMs).toFixed(2)}×). The programs they share cost about the same ` +
        `(zstd ${(enc.cpuSeconds.zstd ?? 0).toFixed(1)} vs ${(hand.cpuSeconds.zstd ?? 0).toFixed(1)} CPU s, pg_dump ` +
        `${(enc.cpuSeconds.pg_dump ?? 0).toFixed(1)} vs ${(hand.cpuSeconds.pg_dump ?? 0).toFixed(1)}, server ` +
        `${enc.serverCpuSeconds.toFixed(1)} vs ${hand.serverCpuSeconds.toFixed(1)}); the difference is node: ` +
        `${node.toFixed(1)} CPU s where the hand pipeline's openssl used ${openssl.toFixed(1)}. In all ` +
        `${encTotal.toFixed(1)} against ${handTotal.toFixed(1)} CPU s, on ${report.machine.cores} cores, so the run is CPU-bound and ` +
        `node's extra work slows the whole pipeline. pgvault starts pg_dump ${(enc.spans.pg_dump?.from ?? 0).toFixed(1)} s after ` +
        `its own start (node start-up, configuration, server checks, pg_dumpall --globals-only).`,
    );
    if (plain && none && floor) {
      out.push(
        `Without encryption node used ${(plain.cpuSeconds.node ?? 0).toFixed(1)} CPU s (zstd) and ` +
          `${(none.cpuSeconds.node ?? 0).toFixed(1)} CPU s with no compression at all, where it only passes ` +
          `${mib(report.floorDumpBytes)} from pg_dump to the file (${seconds(none.wallMs)} against the floor's ` +
          `${seconds(floor.wallMs)}): most of node's time goes into passing the raw dump through (reading it from ` +
          `pg_dump, scanning it for row counts, writing it to the compressor), not into encryption.`,
      );
    }
  }
  const restore = get('pgvault_restore');
  const base = get('pg_restore');
  if (restore && base) {
    const fetch = restore.spans.zstd;
    const pgr = restore.spans.pg_restore;
    const baseSpan = base.spans.pg_restore;
    if (fetch && pgr && baseSpan) {
      const after = restore.wallMs / 1000 - pgr.to;
      out.push(
        `**Restore.** pgvault took ${seconds(restore.wallMs)} against ${seconds(base.wallMs)}. Its phases: ` +
          `${fetch.from.toFixed(1)} s to start, ${(fetch.to - fetch.from).toFixed(1)} s decrypting and decompressing into the ` +
          `staging file (zstd alive ${fetch.from.toFixed(1)}–${fetch.to.toFixed(1)} s) before pg_restore may start, ` +
          `pg_restore itself ${(pgr.to - pgr.from).toFixed(1)} s (${(restore.cpuSeconds.pg_restore ?? 0).toFixed(1)} CPU s) where the ` +
          `baseline's took ${(baseSpan.to - baseSpan.from).toFixed(1)} s (${(base.cpuSeconds.pg_restore ?? 0).toFixed(1)} CPU s, ` +
          `decompressing zlib on the way), then ${after.toFixed(1)} s after pg_restore (row counts against the manifest).`,
      );
    }
  }
  const big = get('zstd_enc');
  const small = get('zstd_enc_small');
  if (big && small) {
    out.push(
      `**Memory.** node peaked at ${mib(big.peakMainRssBytes)} on the ${report.sizeMb} MB database and ` +
        `${mib(small.peakMainRssBytes)} on the ${report.smallMb} MB one; the tree adds the compressor ` +
        `(zstd with 2 threads about 60–70 MiB) and pg_dump.`,
    );
  }
  const noisy = report.rows.filter((r) => disturbed(report, r));
  if (noisy.length > 0) {
    out.push(
      `**Disturbed runs (†).** Other programs used more than a tenth of the machine during the best run of: ${noisy
        .map((r) => `${r.name} (${r.otherCpuSeconds.toFixed(1)} CPU s)`)
        .join(', ')}. Their times are pessimistic; re-run on a quiet machine before acting on them.`,
    );
  }
  return out;
}

export function terminalReport(report: Report): string {
  const m = report.machine;
  const lines = [
    `pgvault benchmark, ${report.date}`,
    `machine: ${m.cores} cores, ${m.cpuModel}, ${mib(m.memoryBytes)} RAM, ${mib(m.diskFreeBytes)} free, load ${m.loadAverage.join(' ')} at start`,
    `versions: ${Object.values(m.versions).join(', ')}, server ${report.serverVersion}`,
    ...report.datasets.map(
      (d) =>
        `database ${d.database}: asked ${d.plan.sizeMb} MB, pg_database_size ${mib(d.sizeAfterVacuumBytes)}; generated in ${seconds(d.totalMs)} (${d.mbPerSecond.toFixed(1)} MB/s), VACUUM ANALYZE ${seconds(d.vacuumMs)}`,
    ),
    `floor dump (pg_dump -Fc -Z0) of bench: ${mib(report.floorDumpBytes)}`,
    '',
    table(
      HEADER,
      report.rows.map((r) => cells(report, r)),
    ),
    '',
    'CPU seconds by program (best run; "server" = PostgreSQL backends; "other" = the rest of the machine):',
    table(
      ['run', 'runs (s)', 'CPU s', 'other', 'alive (s from start)'],
      report.rows.map((r) => [r.name, allRuns(r), cpuLine(r), r.otherCpuSeconds.toFixed(1), spanLine(r)]),
    ),
    '',
    'targets:',
    ...report.targets.map(
      (t) => `  ${t.pass ? 'PASS' : 'FAIL'}  ${t.name}: ${t.measured} (target ${t.target})`,
    ),
    '',
    ...observations(report).map((o) => o.replaceAll('**', '')),
    '',
    `total ${seconds(report.totalMs)}, of which ${seconds(report.waitedForQuietMs)} waiting for other programs to finish`,
  ];
  return lines.join('\n');
}

function mdEscape(text: string): string {
  return text.replaceAll('|', '\\|');
}

function mdTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  return [
    `| ${header.map(mdEscape).join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(mdEscape).join(' | ')} |`),
  ].join('\n');
}

export function markdownReport(report: Report): string {
  const m = report.machine;
  const main = report.datasets[0]!;
  const small = report.datasets[1];
  const commands = report.rows.map((r) => [r.name, `\`${r.command}\``]);
  const tables = main.tables.map((t) => [t.table, t.rows.toLocaleString('en-US'), mib(t.bytes)]);
  const passed = report.targets.filter((t) => t.pass).length;
  const minutes = Math.max(1, Math.round(report.totalMs / 60_000));
  return `# Benchmarks

Written by \`npm run bench\` (\`bench/run.ts\`); every run overwrites this file. The numbers below are
from the last run, on the machine it describes.

## Last run: ${report.date.slice(0, 16).replace('T', ' ')} UTC, ${report.sizeMb} MB database

**Machine.** ${m.cores} cores (${m.cpuModel}), ${mib(m.memoryBytes)} RAM, Linux ${m.kernel}; ${mib(m.diskFreeBytes)} free on
the file system holding the cluster, the dumps and the backups (all on the same disk); load average
${m.loadAverage.join(', ')} at the start. Versions: ${Object.values(m.versions).join(', ')}; server ${report.serverVersion}.

**Server.** A throwaway cluster (\`TempCluster\`) with ${Object.entries(report.serverSettings)
    .map(([k, v]) => `\`${k}=${v}\``)
    .join(', ')}.

**Data.** Database \`bench\`: asked for ${main.plan.sizeMb} MB, \`pg_database_size\` ${mib(main.sizeAfterVacuumBytes)} after
VACUUM ANALYZE; generated server-side in ${seconds(main.totalMs)} (${main.mbPerSecond.toFixed(1)} MB/s; load ${seconds(main.loadMs)},
keys and indexes ${seconds(main.indexMs)}), VACUUM ANALYZE ${seconds(main.vacuumMs)}. Its floor dump (\`pg_dump -Fc -Z0\`)
is ${mib(report.floorDumpBytes)}. A second database, \`bench_small\` (${small?.plan.sizeMb ?? '?'} MB asked,
${mib(small?.sizeAfterVacuumBytes ?? 0)}), only serves the memory-growth check.

${mdTable(['table', 'rows', 'size with indexes'], tables)}

Indexes: primary keys, \`customers.email\` and \`products.sku\` unique, btrees on the foreign-key columns and
\`orders.placed_at\`, a GIN (\`jsonb_ops\`) on \`documents.body\`; seven foreign keys.

### Results

${mdTable(
  HEADER,
  report.rows.map((r) => cells(report, r)),
)}

*size / floor*: output size divided by the \`pg_dump -Fc -Z0\` dump size of the same database.
*time vs baseline*: the floor for the plain tools, the hand pipeline for pgvault's backups,
\`pg_restore -j 2\` for pgvault's restore. *peak RSS tree*: the largest sum of resident memory over the
command and all its child processes at one moment; *main*: the first process alone (node for pgvault,
bash for the shell pipelines). Headline rows are the best of ${report.repeat} runs, the others ran once.${
    report.rows.some((r) => disturbed(report, r))
      ? ' † marks a best run during which other programs used more than a tenth of the machine.'
      : ''
  }

### Targets: ${passed} of ${report.targets.length} met

${mdTable(
  ['target', 'wanted', 'measured', 'result'],
  report.targets.map((t) => [t.name, t.target, t.measured, t.pass ? '**PASS**' : '**FAIL**']),
)}

### Where the time goes

${observations(report).join('\n\n')}

CPU seconds per program in the best run (\`/proc/<pid>/stat\`, sampled every 50 ms), and when each
program was alive (seconds from the start). *server* is the CPU of the PostgreSQL backends, which are
not children of the command (the backend serving pg_dump's COPY, pg_restore's sessions, parallel index
builds, the checkpointer); *other* is what the rest of the machine used meanwhile.

${mdTable(
  ['run', 'runs (s)', 'CPU seconds', 'other', 'alive (s from start)'],
  report.rows.map((r) => [r.name, allRuns(r), cpuLine(r), r.otherCpuSeconds.toFixed(1), spanLine(r)]),
)}

### Commands

\`$WORK\` is the benchmark's temporary directory. The connection (PGHOST, PGPORT, PGUSER, PGDATABASE)
and pgvault's settings are in the environment, the encryption key in a file, never on a command line.

${mdTable(['run', 'command'], commands)}

## How to reproduce

\`\`\`bash
npm ci
npm run bench                                  # 500 MB; ${minutes} min here at ${report.sizeMb} MB (${Math.round(report.waitedForQuietMs / 1000)} s of it waiting for an idle machine)
BENCH_SIZE_MB=50 npm run bench                 # a quick run
npm run build && node dist/bench/run.js --size-mb 2000 --repeat 1 --json > bench.json
\`\`\`

Flags: \`--size-mb N\` (or \`BENCH_SIZE_MB\`), \`--small-mb N\` (default a quarter of the size), \`--repeat N\`
(runs of the headline measurements, the best kept; default 3), \`--json\` (everything above as JSON on
stdout), \`--docs PATH\` / \`--no-docs\`. Progress goes to stderr. It needs the PostgreSQL server binaries
(\`initdb\`), the compressors and openssl; as root the cluster runs as the \`postgres\` OS user. It measures a
copy of \`dist/\` taken when it starts (a rebuild meanwhile changes nothing), and removes the cluster and
every file it made when it ends, also after a failure or Ctrl-C. Before each measured run it waits (up to
two minutes, six in all) until the machine is idle; other work on the machine still makes the numbers worse, and the
*other* column shows how much there was.

## What the numbers mean

- **One data set, one cluster, one order.** Every command reads the same database from the same warm
  server; the data fits in RAM, so this measures CPU and pipes, not disk reads. The order: floor,
  \`pg_dump -Fc\`, \`pg_dump | gzip\`, the hand pipeline, pgvault with each compression, the small database,
  the restores. Each restore goes into a new database, dropped right after the run.
- **floor** is \`pg_dump -Fc -Z0 > /dev/null\`: the server reading and sending the rows and pg_dump writing
  the archive, nothing else. Nothing built on pg_dump can be faster.
- **The hand pipeline** (\`pg_dump -Fc -Z0 | zstd -T0 -3 | openssl enc ...\`) is what an expert would write
  by hand for the same stored format. pgvault does the same work plus what makes a backup checkable: the
  digests and sizes its manifest records, each table's row count read from the archive as it streams, the
  globals (\`pg_dumpall --globals-only\`), the manifest itself, and an fsync of the file before renaming it
  into place (the shell pipelines write without fsync). Its bytes also take a longer road: pg_dump → node →
  zstd → node → file, where the shell pipe goes pg_dump → zstd → openssl → file.
- **pgvault restore** is everything the command does: reading the manifest and checking the key, decrypting
  and decompressing into a private staging file while checking it against the manifest, \`CREATE DATABASE\`,
  \`pg_restore -j 2\` from that file, and counting every table's rows against the manifest. The baseline is
  \`createdb\` plus \`pg_restore -j 2\` from a local \`pg_dump -Fc\` file (zlib-compressed; written to a file, so
  its table of contents holds the data offsets).
- **Memory** is resident set size (VmRSS) sampled every 50 ms; the main process's also from VmHWM, so a
  peak between samples is not lost. The server's memory (shared_buffers, backends) is in no column. The
  target concerns node's own memory, which must not grow with the database: the ${report.smallMb} MB run checks that.
- **Sizes** are bytes of the produced file or backup object (for pgvault the database's object; the globals
  object adds a few KB). MiB = 1,048,576 bytes; "MB" for database sizes means the same, as in PostgreSQL.
- **Noise.** On a shared 2-core VM the same command varies by about 5% between runs; a target missed by
  less than that deserves a re-run before anyone acts on it.
`;
}
