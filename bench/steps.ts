/**
 * What every part of the benchmark shares: progress lines, the context a step runs in, and
 * runStep, which waits for a quiet machine, measures a step's runs and turns the best into a Row.
 */
import type { TempCluster } from '../core/pg/cluster';
import { cpuByProgram, type Measurement, spansByProgram, waitForQuiet } from './measure';
import { type Group, mib, type Row, seconds } from './report';

// ---------------------------------------------------------------------------------------------
// Progress

const benchStarted = Date.now();

export function benchElapsedMs(): number {
  return Date.now() - benchStarted;
}

export function clock(): string {
  const s = Math.round((Date.now() - benchStarted) / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

export function say(line: string): void {
  process.stderr.write(`[${clock()}] ${line}\n`);
}

// ---------------------------------------------------------------------------------------------
// Context

export interface Context {
  /** bin/pgvault.js of the snapshot taken at the start. */
  readonly pgvaultBin: string;
  readonly cluster: TempCluster;
  readonly work: string;
  readonly keyFile: string;
  /** The main cluster's postmaster; it changes when the physical part restarts the server. */
  postmasterPid: number | undefined;
  readonly baseEnv: NodeJS.ProcessEnv;
  readonly repeat: number;
}

/** Only what the tools need, so nothing from the caller's shell (PG*, BACKUP_DIR, ...) leaks in. */
export function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const key of ['PATH', 'HOME', 'LANG', 'LC_ALL', 'USER', 'LOGNAME']) {
    if (process.env[key] !== undefined) env[key] = process.env[key];
  }
  return env;
}

export function pgEnvFor(cluster: TempCluster, database: string): NodeJS.ProcessEnv {
  return {
    PGHOST: cluster.host,
    PGPORT: String(cluster.port),
    PGUSER: cluster.superuser,
    PGDATABASE: database,
  };
}

// ---------------------------------------------------------------------------------------------
// Steps

/** What a step's check returns: the bytes it produced and, for pgvault, the raw bytes behind them. */
export interface StepOutput {
  readonly size?: number;
  readonly raw?: number;
  /** Fields the row takes from this run (WAL drain figures, PITR details, a note). */
  readonly extra?: Partial<Pick<Row, 'wal' | 'pitr' | 'note'>>;
}

export interface Step {
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
  readonly after: (m: Measurement) => Promise<StepOutput>;
  /** Ranks runs; the smallest wins. @default the wall time */
  readonly rank?: (m: Measurement, out: StepOutput) => number;
}

/** Total time the benchmark may spend waiting for an idle machine before each run gets 10 s at most. */
let quietBudgetMs = 6 * 60_000;
let waitedForQuietMs = 0;

export function totalQuietWaitMs(): number {
  return waitedForQuietMs;
}

export async function runStep(step: Step): Promise<Row> {
  const measurements: Measurement[] = [];
  const outputs: StepOutput[] = [];
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
    const out = await step.after(m);
    const other = otherCpuSeconds(m);
    say(
      `  ${seconds(m.wallMs)}${out.size !== undefined ? `, ${mib(out.size)}` : ''}, peak RSS tree ${mib(m.peakTreeRssBytes)} / main ${mib(m.peakMainRssBytes)}${other > 0.5 ? `; other programs used ${other.toFixed(1)} CPU s meanwhile` : ''}`,
    );
    measurements.push(m);
    outputs.push(out);
  }
  const rank = step.rank ?? ((m: Measurement) => m.wallMs);
  let bestIndex = 0;
  measurements.forEach((m, i) => {
    if (rank(m, outputs[i]!) < rank(measurements[bestIndex]!, outputs[bestIndex]!)) bestIndex = i;
  });
  const best = measurements[bestIndex]!;
  const { size, raw, extra } = outputs[bestIndex]!;
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
    ...extra,
  };
}

/** CPU the rest of the machine used during a measurement, seconds (never negative). */
export function otherCpuSeconds(m: Measurement): number {
  const own =
    m.processes.reduce((n, p) => n + p.cpuMs, 0) + m.watched.reduce((n, p) => n + p.cpuMs, 0) + m.selfCpuMs;
  return Math.max(0, (m.machineBusyMs - own) / 1000);
}

export function heartbeat(name: string) {
  return {
    heartbeatMs: 15_000,
    onHeartbeat: (ms: number) => say(`  ${name}: still running (${seconds(ms)})`),
  };
}
