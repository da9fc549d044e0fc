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

/** backup, restore, memory: the logical part; base, pitr: the physical part; wal: WAL archiving. */
export type Group = 'backup' | 'restore' | 'memory' | 'base' | 'pitr' | 'wal' | 'incremental';

/** The parts a run can be limited to (--only). */
export type Part = 'logical' | 'physical' | 'wal' | 'incremental';
export const PARTS: readonly Part[] = ['logical', 'physical', 'wal', 'incremental'];

export function partOf(group: Group): Part {
  if (group === 'incremental') return 'incremental';
  return group === 'base' || group === 'pitr' ? 'physical' : group === 'wal' ? 'wal' : 'logical';
}

/** The incremental part (bench/incremental.ts), on PostgreSQL 17 in the other major's root. */
export interface IncrementalInfo {
  /** Why the part did not run (no root). */
  readonly skipped?: string;
  readonly serverVersion?: string;
  readonly root?: string;
  readonly pgbackrest?: string;
  readonly pgbackrestSkipped?: string;
  /** Share of every table's heap pages whose rows were updated between the fulls and the incrementals. */
  readonly changeFraction?: number;
  readonly changedRows?: number;
  readonly changeMs?: number;
  readonly pgvaultFullId?: string;
  readonly pgvaultIncrementalId?: string;
  readonly pgvaultFull1Id?: string;
  readonly pgbackrestLabels?: Record<string, string>;
  readonly pitrTarget?: string;
  readonly pitrWalWrittenBytes?: number;
  readonly archiveCommand?: string;
  /** The load average when the part started (the machine is shared). */
  readonly loadAverage?: readonly number[];
  readonly datasetBytes?: number;
}

/** One drained backlog (the WAL part). Times in ms from the moment archive_command was set. */
export interface WalDrain {
  readonly segments: number;
  readonly segmentBytes: number;
  /** When the last segment of the backlog was marked done. */
  readonly drainMs: number;
  readonly perSecond: number;
  /** When the first segment was marked done (start-up: a Node process, an uploader, a spool). */
  readonly firstMs: number;
  /** Intervals between two segments marked done: median, 90th percentile, largest. */
  readonly medianMs: number;
  readonly p90Ms: number;
  readonly maxMs: number;
  /** Failed archive_command runs PostgreSQL counted meanwhile (each one retried). */
  readonly failedAttempts: number;
}

export interface PhysicalInfo {
  /** pgBackRest's version line, when it was found or installed. */
  readonly pgbackrest?: string;
  /** Why the pgBackRest rows are missing. */
  readonly pgbackrestSkipped?: string;
  readonly parallelJobs: number;
  readonly segmentBytes: number;
  /** archive_command while the physical part ran (into both archives). */
  readonly archiveCommand: string;
  readonly pgvaultBaseId?: string;
  readonly pgbackrestLabel?: string;
  /** pg_basebackup's tar stream (pgvault's raw size), bytes. */
  readonly rawTarBytes?: number;
  readonly pitrTarget: string;
  /** WAL written between the base backups and the target, and from pgvault's backup end to it. */
  readonly pitrWalWrittenBytes: number;
  readonly pitrReplayBytes?: number;
  readonly restoredServerSettings: Record<string, string>;
}

export interface WalInfo {
  readonly segments: number;
  readonly segmentBytes: number;
  readonly parallelJobs: number;
  /** archive_command per row id. */
  readonly commands: Record<string, string>;
  readonly pgbackrest?: string;
  readonly pgbackrestSkipped?: string;
}

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
  /** WAL part: the backlog drain of the best run. */
  readonly wal?: WalDrain;
  /** Physical part: the recovery target of a PITR row. */
  readonly pitr?: {
    readonly target: string /** When the tool had laid down the data directory (the server started then). */;
    readonly restoreMs?: number;
  };
}

export interface TargetResult {
  readonly name: string;
  readonly target: string;
  readonly measured: string;
  readonly pass: boolean;
  /** Not evaluated (a row it needs was not measured, e.g. pgBackRest missing). */
  readonly skipped?: boolean;
}

export type DatasetResult = DatasetReport & { vacuumMs: number; sizeAfterVacuumBytes: number };

export interface Report {
  readonly date: string;
  readonly machine: Machine;
  readonly sizeMb: number;
  readonly smallMb: number;
  readonly repeat: number;
  /** The parts that ran (--only). */
  readonly parts: readonly Part[];
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
  readonly physical?: PhysicalInfo;
  readonly wal?: WalInfo;
  readonly incremental?: IncrementalInfo;
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
        `its own start (node start-up, configuration, server checks; the globals are dumped beside it).`,
    );
    if (plain && none && floor) {
      out.push(
        `Without encryption node used ${(plain.cpuSeconds.node ?? 0).toFixed(1)} CPU s (zstd: the main process, ` +
          `which handles only the compressed bytes, and the archive scanner process between pg_dump and zstd, ` +
          `which passes the raw dump on and counts its rows) and ${(none.cpuSeconds.node ?? 0).toFixed(1)} CPU s ` +
          `with no compression at all (no compressor program: the main process reads the ` +
          `${mib(report.floorDumpBytes)} raw dump itself, scans it and writes it to the file; ` +
          `${seconds(none.wallMs)} against the floor's ${seconds(floor.wallMs)}).`,
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

function logicalRows(report: Report): Row[] {
  return report.rows.filter((r) => partOf(r.group) === 'logical');
}

function physicalRows(report: Report): Row[] {
  return report.rows.filter((r) => partOf(r.group) === 'physical');
}

function walRows(report: Report): Row[] {
  return report.rows.filter((r) => r.group === 'wal');
}

function incrementalRows(report: Report): Row[] {
  return report.rows.filter((r) => r.group === 'incremental');
}

const PHYSICAL_HEADER = [
  'run',
  'runs',
  'wall time',
  'size',
  'size / raw',
  'time vs baseline',
  'peak RSS tree',
  'peak RSS main',
];

function physicalCells(report: Report, r: Row): string[] {
  const base = r.baseline ? report.rows.find((x) => x.id === r.baseline) : undefined;
  return [
    r.name,
    r.runsMs.length > 1 ? `best of ${r.runsMs.length}` : '1',
    `${seconds(r.wallMs)}${disturbed(report, r) ? ' †' : ''}`,
    r.sizeBytes !== undefined ? mib(r.sizeBytes) : '',
    r.sizeBytes !== undefined && r.rawBytes ? (r.sizeBytes / r.rawBytes).toFixed(3) : '',
    base ? `${(r.wallMs / base.wallMs).toFixed(2)}× ${base.id}` : '',
    mib(r.peakTreeRssBytes),
    mib(r.peakMainRssBytes),
  ];
}

const WAL_HEADER = [
  'archive_command',
  'runs',
  'backlog',
  'drain time',
  'segments/s',
  'per segment: median / p90 / max',
  'first segment',
  'rate vs baseline',
  'peak RSS',
];

function ms(value: number): string {
  return `${Math.round(value)} ms`;
}

function walCells(report: Report, r: Row): string[] {
  const w = r.wal;
  const base = r.baseline ? report.rows.find((x) => x.id === r.baseline) : undefined;
  return [
    r.name,
    r.runsMs.length > 1 ? `best of ${r.runsMs.length}` : '1',
    w ? `${w.segments} × ${mib(w.segmentBytes)}` : '',
    `${seconds(r.wallMs)}${disturbed(report, r) ? ' †' : ''}`,
    w ? w.perSecond.toFixed(1) : '',
    w ? `${ms(w.medianMs)} / ${ms(w.p90Ms)} / ${ms(w.maxMs)}` : '',
    w ? ms(w.firstMs) : '',
    w && base?.wal ? `${(w.perSecond / base.wal.perSecond).toFixed(2)}× ${base.id}` : '',
    mib(r.peakTreeRssBytes),
  ];
}

function targetWord(t: TargetResult): string {
  return t.skipped ? 'SKIPPED' : t.pass ? 'PASS' : 'FAIL';
}

/** Sentences on the physical and WAL parts, read off this run's numbers. */
function physicalObservations(report: Report): string[] {
  const get = (id: string) => report.rows.find((r) => r.id === id);
  const out: string[] = [];
  const pv = get('pgvault_base');
  const br = get('pgbackrest_base');
  const hand = get('hand_base');
  if (pv) {
    const cpu = (r: Row) => `${(sum(r.cpuSeconds) + r.serverCpuSeconds).toFixed(1)} CPU s (${cpuLine(r)})`;
    out.push(
      `**Base backup.** pgvault took ${seconds(pv.wallMs)}${br ? ` against pgBackRest's ${seconds(br.wallMs)} (${(pv.wallMs / br.wallMs).toFixed(2)}×)` : ''}${hand ? `${br ? ' and' : ' against'} the hand pipeline's ${seconds(hand.wallMs)}` : ''}. ` +
        `CPU: pgvault ${cpu(pv)}${br ? `; pgBackRest ${cpu(br)}` : ''}${hand ? `; hand pipeline ${cpu(hand)}` : ''}.`,
    );
  }
  const pp = get('pgvault_pitr');
  const bp = get('pgbackrest_pitr');
  if (pp) {
    const phases = (r: Row) =>
      r.pitr?.restoreMs !== undefined
        ? `${seconds(r.pitr.restoreMs)} laying down the data directory, ${seconds(r.wallMs - r.pitr.restoreMs)} starting, replaying and promoting`
        : '';
    out.push(
      `**Point-in-time recovery.** pgvault took ${seconds(pp.wallMs)} (${phases(pp)})${bp ? ` against pgBackRest's ${seconds(bp.wallMs)} (${phases(bp)}; ${(pp.wallMs / bp.wallMs).toFixed(2)}×)` : ''}` +
        `${report.physical?.pitrReplayBytes !== undefined ? `; the target lies ${mib(report.physical.pitrReplayBytes)} of WAL after the end of pgvault's base backup` : ''}.`,
    );
  }
  const wal = walRows(report).filter((r) => r.wal);
  if (wal.length > 0) {
    out.push(
      `**WAL archiving.** ${wal
        .map(
          (r) =>
            `${r.name}: ${r.wal!.perSecond.toFixed(1)} segments/s (median ${ms(r.wal!.medianMs)} a segment${r.wal!.failedAttempts ? `, ${r.wal!.failedAttempts} failed attempts` : ''})`,
        )
        .join('; ')}.`,
    );
  }
  return out;
}

export function terminalReport(report: Report): string {
  const m = report.machine;
  const logical = logicalRows(report);
  const physical = physicalRows(report);
  const wal = walRows(report);
  const lines = [
    `pgvault benchmark, ${report.date} (${report.parts.join(', ')})`,
    `machine: ${m.cores} cores, ${m.cpuModel}, ${mib(m.memoryBytes)} RAM, ${mib(m.diskFreeBytes)} free, load ${m.loadAverage.join(' ')} at start`,
    `versions: ${Object.values(m.versions).join(', ')}, server ${report.serverVersion}`,
    ...report.datasets.map(
      (d) =>
        `database ${d.database}: asked ${d.plan.sizeMb} MB, pg_database_size ${mib(d.sizeAfterVacuumBytes)}; generated in ${seconds(d.totalMs)} (${d.mbPerSecond.toFixed(1)} MB/s), VACUUM ANALYZE ${seconds(d.vacuumMs)}`,
    ),
  ];
  if (logical.length > 0) {
    lines.push(
      `floor dump (pg_dump -Fc -Z0) of bench: ${mib(report.floorDumpBytes)}`,
      '',
      table(
        HEADER,
        logical.map((r) => cells(report, r)),
      ),
    );
  }
  if (report.physical || physical.length > 0) {
    const p = report.physical;
    lines.push(
      '',
      `physical backups and PITR${p?.pgbackrestSkipped ? ` (pgBackRest rows skipped: ${p.pgbackrestSkipped})` : ''}:`,
      table(
        PHYSICAL_HEADER,
        physical.map((r) => physicalCells(report, r)),
      ),
    );
    if (p) {
      lines.push(
        `recovery target ${p.pitrTarget}; ${mib(p.pitrWalWrittenBytes)} of WAL written after the base backups${p.pitrReplayBytes !== undefined ? `, ${mib(p.pitrReplayBytes)} from the end of pgvault's base backup to the target` : ''}`,
      );
    }
  }
  if (report.wal || wal.length > 0) {
    lines.push(
      '',
      `WAL archiving: draining a backlog${report.wal?.pgbackrestSkipped ? ` (pgBackRest rows skipped: ${report.wal.pgbackrestSkipped})` : ''}:`,
      table(
        WAL_HEADER,
        wal.map((r) => walCells(report, r)),
      ),
    );
  }
  const incremental = incrementalRows(report);
  if (report.incremental || incremental.length > 0) {
    const i = report.incremental;
    lines.push(
      '',
      `incremental base backups (PostgreSQL ${i?.serverVersion ?? '17'} in the other major's root)${i?.skipped ? `: skipped: ${i.skipped}` : ''}${i?.pgbackrestSkipped ? ` (pgBackRest rows skipped: ${i.pgbackrestSkipped})` : ''}:`,
    );
    if (incremental.length > 0) {
      lines.push(
        table(
          PHYSICAL_HEADER,
          incremental.map((r) => physicalCells(report, r)),
        ),
      );
    }
  }
  lines.push(
    '',
    'CPU seconds by program (best run; "server" = PostgreSQL backends; "other" = the rest of the machine):',
    table(
      ['run', 'runs (s)', 'CPU s', 'other', 'alive (s from start)'],
      report.rows.map((r) => [r.name, allRuns(r), cpuLine(r), r.otherCpuSeconds.toFixed(1), spanLine(r)]),
    ),
    '',
    'targets:',
    ...report.targets.map((t) => `  ${targetWord(t)}  ${t.name}: ${t.measured} (target ${t.target})`),
    '',
    ...[...observations(report), ...physicalObservations(report), ...incrementalObservations(report)].map(
      (o) => o.replaceAll('**', ''),
    ),
    '',
    `total ${seconds(report.totalMs)}, of which ${seconds(report.waitedForQuietMs)} waiting for other programs to finish`,
  );
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
  const evaluated = report.targets.filter((t) => !t.skipped).length;
  const minutes = Math.max(1, Math.round(report.totalMs / 60_000));
  const logical = logicalRows(report);
  const disturbedNote = report.rows.some((r) => disturbed(report, r))
    ? ' † marks a best run during which other programs used more than a tenth of the machine.'
    : '';
  return `# Benchmarks

Written by \`npm run bench\` (\`bench/run.ts\`); every run overwrites this file. The numbers below are
from the last run, on the machine it describes.

## Last run: ${report.date.slice(0, 16).replace('T', ' ')} UTC, ${report.sizeMb} MB database${
    report.parts.length < PARTS.length ? ` (only: ${report.parts.join(', ')})` : ''
  }

**Machine.** ${m.cores} cores (${m.cpuModel}), ${mib(m.memoryBytes)} RAM, Linux ${m.kernel}; ${mib(m.diskFreeBytes)} free on
the file system holding the cluster, the dumps and the backups (all on the same disk); load average
${m.loadAverage.join(', ')} at the start. Versions: ${Object.values(m.versions).join(', ')}; server ${report.serverVersion}.

**Server.** A throwaway cluster (\`TempCluster\`) with ${Object.entries(report.serverSettings)
    .map(([k, v]) => `\`${k}=${v}\``)
    .join(', ')}.

**Data.** Database \`bench\`: asked for ${main.plan.sizeMb} MB, \`pg_database_size\` ${mib(main.sizeAfterVacuumBytes)} after
VACUUM ANALYZE; generated server-side in ${seconds(main.totalMs)} (${main.mbPerSecond.toFixed(1)} MB/s; load ${seconds(main.loadMs)},
keys and indexes ${seconds(main.indexMs)}), VACUUM ANALYZE ${seconds(main.vacuumMs)}.${
    logical.length > 0
      ? ` Its floor dump (\`pg_dump -Fc -Z0\`)
is ${mib(report.floorDumpBytes)}. A second database, \`bench_small\` (${small?.plan.sizeMb ?? '?'} MB asked,
${mib(small?.sizeAfterVacuumBytes ?? 0)}), only serves the memory-growth check.`
      : ''
  }

${mdTable(['table', 'rows', 'size with indexes'], tables)}

Indexes: primary keys, \`customers.email\` and \`products.sku\` unique, btrees on the foreign-key columns and
\`orders.placed_at\`, a GIN (\`jsonb_ops\`) on \`documents.body\`; seven foreign keys.

${
  logical.length > 0
    ? `### Results

${mdTable(
  HEADER,
  logical.map((r) => cells(report, r)),
)}

*size / floor*: output size divided by the \`pg_dump -Fc -Z0\` dump size of the same database.
*time vs baseline*: the floor for the plain tools, the hand pipeline for pgvault's backups,
\`pg_restore -j 2\` for pgvault's restore. *peak RSS tree*: the largest sum of resident memory over the
command and all its child processes at one moment; *main*: the first process alone (node for pgvault,
bash for the shell pipelines). Headline rows are the best of ${report.repeat} runs, the others ran once.${disturbedNote}

`
    : ''
}${physicalSection(report)}${walSection(report)}${incrementalSection(report)}### Targets: ${passed} of ${evaluated} met${evaluated < report.targets.length ? ` (${report.targets.length - evaluated} not evaluated)` : ''}

${mdTable(
  ['target', 'wanted', 'measured', 'result'],
  report.targets.map((t) => [t.name, t.target, t.measured, `**${targetWord(t)}**`]),
)}

### Where the time goes

${[...observations(report), ...physicalObservations(report), ...incrementalObservations(report)].join('\n\n')}

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
npm run build && node dist/bench/run.js --only physical --size-mb 50 --repeat 1 --docs /tmp/physical.md
\`\`\`

Flags: \`--size-mb N\` (or \`BENCH_SIZE_MB\`), \`--small-mb N\` (default a quarter of the size), \`--repeat N\`
(runs of the headline measurements, the best kept; default 3), \`--only logical|physical|wal|incremental\` (repeatable or
comma-separated; a partial run writes this file only with an explicit \`--docs PATH\`), \`--wal-segments N\`
(the backlog each archive_command drains; default 64), \`--pitr-wal-mb N\` (WAL between the base backups and
the recovery target; default 256), \`--no-pgbackrest\` (leave pgBackRest out), \`--json\` (everything above as
JSON on stdout), \`--docs PATH\` /
\`--no-docs\`. Progress goes to stderr. It needs the PostgreSQL server binaries (\`initdb\`), the compressors
and openssl, and for the physical and WAL parts pgBackRest (installed with \`apt-get install -y pgbackrest\`
when missing; when that fails its rows are skipped with one line and the rest runs); as root the cluster,
pgBackRest and the restored servers run as the \`postgres\` OS user. It measures a
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
${physicalMeaning(report)}${walMeaning(report)}${incrementalMeaning(report)}- **Noise.** On a shared 2-core VM the same command varies by about 5% between runs; a target missed by
  less than that deserves a re-run before anyone acts on it.
`;
}

function physicalSection(report: Report): string {
  const rows = physicalRows(report);
  const p = report.physical;
  if (!p && rows.length === 0) return '';
  return `### Physical backups and point-in-time recovery

${p?.pgbackrestSkipped ? `pgBackRest rows skipped: ${p.pgbackrestSkipped}.\n\n` : ''}${mdTable(
  PHYSICAL_HEADER,
  rows.map((r) => physicalCells(report, r)),
)}

*time vs baseline*: pgBackRest's time for the same work (the hand pipeline's when pgBackRest is left
out). *peak RSS main*: the first process (node for pgvault's backup, runuser for pgBackRest, bash for the
hand pipeline); for the PITR rows, the largest single process (the restore command or a server process).

${
  p
    ? `Recovery target \`${p.pitrTarget}\`: ${mib(p.pitrWalWrittenBytes)} of WAL written after the base backups${
        p.pitrReplayBytes !== undefined
          ? `, ${mib(p.pitrReplayBytes)} from the end of pgvault's base backup to the target`
          : ''
      }; ${mib(p.segmentBytes)} WAL segments. ${p.pgbackrest ? `${p.pgbackrest}. ` : ''}archive_command during this part: \`${p.archiveCommand}\`.`
    : ''
}

`;
}

function walSection(report: Report): string {
  const rows = walRows(report);
  const w = report.wal;
  if (!w && rows.length === 0) return '';
  return `### WAL archiving: draining a backlog

${w?.pgbackrestSkipped ? `pgBackRest rows skipped: ${w.pgbackrestSkipped}.\n\n` : ''}${mdTable(
  WAL_HEADER,
  rows.map((r) => walCells(report, r)),
)}

*drain time*: from setting archive_command to the last segment archived. *per segment*: intervals between
two segments PostgreSQL marked done. *first segment*: when the first one was done (start-up of the command,
and of an uploader or async worker). *peak RSS*: the archive commands and what they started, summed.

`;
}

function physicalMeaning(report: Report): string {
  if (!report.parts.includes('physical')) return '';
  return `- **Physical part.** After the logical part the server is restarted with \`archive_mode=on\`; from then on
  archive_command pushes every segment into pgBackRest's repository and then pgvault's (one command, the
  same for every base backup measured, so each tool's backup has a continuous archive behind it). The base
  backups (hand pipeline, pgBackRest, pgvault) all read the whole cluster (\`bench\`, and \`bench_small\` when
  the logical part ran) with a fast checkpoint, compress with zstd level 3 over ${report.physical?.parallelJobs ?? 2} processes and
  encrypt with AES-256-CBC. pgBackRest copies the files itself and leaves the WAL to its archive (its backup
  waits until the last segment is archived); pg_basebackup streams one tar with the WAL inside (\`-X fetch\`),
  which pgvault stores as one object with a manifest. *size / raw* divides the stored bytes by the data the
  tool read: pgBackRest's database size, pg_basebackup's tar stream for the others.
- **PITR** is timed from the restore command's start to the first moment the restored server accepts
  connections: the tool lays down the data directory (\`pgvault restore pitr <base> "<time>" --pgdata DIR\` /
  \`pgbackrest restore --type=time --target=... --target-action=promote\`), \`pg_ctl start\` (with
  ${Object.entries(report.physical?.restoredServerSettings ?? {})
    .map(([k, v]) => `\`${k}=${v}\``)
    .join(', ')}), recovery fetches WAL through the tool's restore_command (pgvault prefetches,
  pgBackRest's archive-get runs asynchronously with its queue) to the target, and the server promotes. With
  \`hot_standby=off\` the postmaster reports "ready" (postmaster.pid, polled every 20 ms) only then. The WAL
  replayed was written after both base backups, so both replay the same WAL. Afterwards each recovered server
  is checked: the row committed before the target is there, the one after it is not, and the load table holds
  exactly the rows it held at the target.
`;
}

function walMeaning(report: Report): string {
  if (!report.parts.includes('wal')) return '';
  return `- **WAL archiving** measures PostgreSQL's own archiver draining a backlog, as after an outage of the archive:
  archive_command is emptied, N segments of WAL are written (rows copied from the data set, so the WAL
  compresses like a real server's), a checkpoint is taken, then the clock starts with \`ALTER SYSTEM SET
  archive_command\` and \`pg_reload_conf()\`, and stops when the last segment's \`.ready\` file is renamed to
  \`.done\` (polled every 10 ms). The archiver runs one command at a time, oldest segment first, so the
  interval between two segments is the latency PostgreSQL sees per segment. Each command stores into its own
  repository; async modes push ahead in the background and the command confirms: pgBackRest with
  \`process-max=${report.wal?.parallelJobs ?? 2}\`, pgvault with \`PARALLEL_JOBS=${report.wal?.parallelJobs ?? 2}\` (one Node uploader, ${2 * (report.wal?.parallelJobs ?? 2)} zstd lanes). \`cp\`
  neither compresses, encrypts nor fsyncs: it shows what the archiver alone costs. CPU of the archive commands
  and whatever they start (uploaders, async workers) is the row's; the archiver itself is *server*.
`;
}

/** Sentences on the incremental part, read off this run's numbers. */
export function incrementalObservations(report: Report): string[] {
  const get = (id: string) => report.rows.find((r) => r.id === id);
  const pv = get('incr_pgvault_incr');
  if (!pv) return [];
  const br = get('incr_pgbackrest_incr');
  const full = get('incr_pgvault_full1');
  const out: string[] = [];
  const cpu = (r: Row) => `${(sum(r.cpuSeconds) + r.serverCpuSeconds).toFixed(1)} CPU s (${cpuLine(r)})`;
  const span = (r: Row, comm: string) => {
    const s = r.spans[comm];
    return s ? `${comm} alive ${s.from.toFixed(1)}–${s.to.toFixed(1)} s` : '';
  };
  const size = (r: Row | undefined) => (r?.sizeBytes !== undefined ? mib(r.sizeBytes) : '?');
  out.push(
    `**Incremental base backup.** pgvault's incremental took ${seconds(pv.wallMs)} and stored ${size(pv)}` +
      `${full ? `, against ${seconds(full.wallMs)} and ${size(full)} for a full base backup of the same moment` : ''}` +
      `${br ? `; pgBackRest's block incremental took ${seconds(br.wallMs)} and stored ${size(br)} (pgvault/pgBackRest: ${(pv.wallMs / br.wallMs).toFixed(2)}× the time, ${pv.sizeBytes !== undefined && br.sizeBytes ? (pv.sizeBytes / br.sizeBytes).toFixed(2) : '?'}× the bytes)` : ''}. ` +
      `CPU: pgvault ${cpu(pv)}; ${[span(pv, 'pg_basebackup'), span(pv, 'zstd')].filter(Boolean).join(', ')} of ${(pv.wallMs / 1000).toFixed(1)} s` +
      `${br ? `; pgBackRest ${cpu(br)}` : ''}.` +
      `${pv.spans.tar ? ` Before pg_basebackup starts, pgvault reads the parent's server manifest (tar alive ${pv.spans.tar.from.toFixed(1)}–${pv.spans.tar.to.toFixed(1)} s): backup_manifest is the last member of the full's tar, so the whole stored full is fetched, decrypted and decompressed to get it; this part grows with the full's size (and its download from a remote target), not with the change.` : ''}`,
  );
  const chain = get('incr_pitr_chain');
  const fromFull = get('incr_pitr_full');
  if (chain && fromFull) {
    const phase = (r: Row) =>
      r.pitr?.restoreMs !== undefined
        ? `${seconds(r.pitr.restoreMs)} laying down the data directory, ${seconds(r.wallMs - r.pitr.restoreMs)} starting, replaying and promoting`
        : '';
    out.push(
      `**PITR from the chain.** ${seconds(chain.wallMs)} (${phase(chain)}) against ${seconds(fromFull.wallMs)} from the full (${phase(fromFull)}): ${(chain.wallMs / fromFull.wallMs).toFixed(2)}×. ` +
        `The chain's restore fetches and unpacks two backups and then pg_combinebackup writes the combined data directory${chain.spans.pg_combinebackup ? ` (pg_combinebackup alive ${chain.spans.pg_combinebackup.from.toFixed(1)}–${chain.spans.pg_combinebackup.to.toFixed(1)} s)` : ''}.`,
    );
  }
  return out;
}

function incrementalSection(report: Report): string {
  const rows = incrementalRows(report);
  const i = report.incremental;
  if (!i && rows.length === 0) return '';
  if (i?.skipped) return `### Incremental base backups (PostgreSQL 17)\n\nSkipped: ${i.skipped}.\n\n`;
  return `### Incremental base backups (PostgreSQL 17)

${i?.pgbackrestSkipped ? `pgBackRest rows skipped: ${i.pgbackrestSkipped}.\n\n` : ''}${mdTable(
  PHYSICAL_HEADER,
  rows.map((r) => physicalCells(report, r)),
)}

PostgreSQL ${i?.serverVersion ?? '17'} in the Debian root ${i?.root ? `\`${i.root}\`` : ''} (test/helpers/pg-other.ts), the
database generated as above${i?.datasetBytes !== undefined ? ` (${mib(i.datasetBytes)})` : ''}${i?.loadAverage ? `; load average ${i.loadAverage.join(', ')} when the part started` : ''}. Between the full backups and the
incrementals the rows of the first ${Math.round((i?.changeFraction ?? 0) * 100)}% of every table's heap pages were updated
(${(i?.changedRows ?? 0).toLocaleString('en-US')} rows${i?.changeMs !== undefined ? ` in ${seconds(i.changeMs)}` : ''}). *time vs baseline*: pgvault's incremental against pgBackRest's; the PITR from the
chain against the PITR from the full taken after the change. *size*: pgvault's stored bytes from its manifest
(the base backup's object, WAL of the backup inside, \`-X fetch\`); pgBackRest's the files of that backup's
folder in its repository (its WAL is in the archive). *size / raw*: stored bytes over the data the tool read
(pg_basebackup's tar stream; pgBackRest's database size, the whole cluster for an incremental too).
${i?.pgbackrest ? `${i.pgbackrest}. ` : ''}Recovery target \`${i?.pitrTarget ?? '?'}\`${i?.pitrWalWrittenBytes !== undefined ? `, ${mib(i.pitrWalWrittenBytes)} of WAL written after the backups` : ''}. archive_command: \`${i?.archiveCommand ?? ''}\`.

`;
}

function incrementalMeaning(report: Report): string {
  if (!report.parts.includes('incremental') || report.incremental?.skipped) return '';
  return `- **Incremental part** (\`bench/incremental.ts\`, \`--only incremental\`). PostgreSQL 17 runs inside the
  other major's Debian root (\`.ci/pg-other-major\`), and so do its archive_command, pgvault (this machine's
  node, bind-mounted) and pgBackRest (the root's 2.55, its own config file and repository in the run's
  temporary directory). Order: data, pgvault full, pgBackRest full (\`repo1-bundle=y repo1-block=y\`: block
  incremental needs bundling), the change, pgvault \`backup base --incremental\` (pg_basebackup
  \`--incremental\` against the full's server manifest, with \`summarize_wal=on\`), pgBackRest
  \`--type=incr\`, a pgvault full of the same moment, WAL, the recovery target, then the two PITRs (each
  timed as in the physical part). Both tools compress with zstd level 3 (pgvault's default) and encrypt with
  AES-256-CBC over 2 processes. The backup rows ran once each (each changes what the
  next is incremental to); the PITR rows are the best of ${report.repeat}. The chroot launcher execs into the
  program, so *peak RSS main* is node's for pgvault, pgbackrest's main process for pgBackRest.
`;
}
