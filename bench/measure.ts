/**
 * Runs a program (or a bash script) and measures it: wall time, and memory by polling /proc about
 * every 50 ms. Two memory numbers:
 *
 * - tree: the largest sum of VmRSS over the process and all of its live descendants seen in one poll
 *   (a pipeline's processes all count; PostgreSQL server backends are not descendants and do not);
 * - main: the largest VmRSS of the started process alone (for pgvault: node itself). VmHWM, the
 *   kernel's own high-water mark, is read on every poll too, so a peak between two polls is not lost.
 *
 * Each process seen also gets its first and last sighting and its CPU time (utime + stime), which
 * shows where a run spends its time. Processes that live less than one poll may be missed. Optional
 * `watchRoots` (e.g. the postmaster) are followed the same way, for CPU only, and kept apart.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ; 100 on every Linux we run on). */
const CLOCK_TICKS = 100;

export interface ProcessRecord {
  readonly pid: number;
  /** The program name (/proc/<pid>/comm, at most 15 characters). */
  readonly comm: string;
  /** Milliseconds after the start of the measurement when first and last seen. */
  firstSeenMs: number;
  lastSeenMs: number;
  /** CPU time (user + system) used between the start of the measurement and the last sighting, ms. */
  cpuMs: number;
  /** CPU time already used when the measurement began (processes that were running before it), ms. */
  readonly cpuBeforeMs: number;
  /** Largest VmRSS seen, and the VmHWM read last, bytes. */
  peakRssBytes: number;
}

export interface Measurement {
  /** What ran, for reports (never holds secrets: they travel in env or files). */
  readonly label: string;
  readonly wallMs: number;
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Largest sum of VmRSS over the process tree in one poll, bytes. */
  readonly peakTreeRssBytes: number;
  /** Largest RSS of the started process alone (max of sampled VmRSS and VmHWM), bytes. */
  readonly peakMainRssBytes: number;
  readonly samples: number;
  /** Every process of the tree that was seen, in order of appearance. */
  readonly processes: readonly ProcessRecord[];
  /** Processes under `watchRoots` (server backends) that were seen during the run. */
  readonly watched: readonly ProcessRecord[];
  /**
   * CPU time the whole machine spent busy during the run (/proc/stat), ms. Minus the tree, the watched
   * processes and this process (selfCpuMs), it is what other programs on the machine took.
   */
  readonly machineBusyMs: number;
  /** CPU time of this (the measuring) process during the run, ms. */
  readonly selfCpuMs: number;
  /** stdout when asked to capture it. */
  readonly stdout: string;
  /** The last 16 KB of stderr. */
  readonly stderrTail: string;
}

export interface MeasureOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** Keep stdout in memory (small outputs such as --json results); otherwise it is discarded. */
  readonly captureStdout?: boolean;
  /** Poll interval, ms. @default 50 */
  readonly intervalMs?: number;
  /** Processes whose descendants are followed for CPU time, kept apart from the tree. */
  readonly watchRoots?: readonly number[];
  /** Called about every `heartbeatMs` while the command runs (progress lines). */
  readonly onHeartbeat?: (elapsedMs: number) => void;
  readonly heartbeatMs?: number;
  /** Label for reports; default the command line. */
  readonly label?: string;
  /**
   * Adopts into the measured tree a process whose parent is not in it, by its command line: programs
   * that detach (double fork, setsid) are re-parented to init before a poll can see their parent.
   */
  readonly claim?: (commandLine: string) => boolean;
}

interface StatLine {
  readonly ppid: number;
  readonly comm: string;
  readonly cpuTicks: number;
}

function readStat(pid: number): StatLine | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid ..."; comm may hold spaces and parentheses, so split at the last ')'.
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < 0) return undefined;
  const fields = text.slice(close + 2).split(' ');
  // fields[0] is state (field 3); ppid is field 4, utime 14, stime 15.
  return {
    ppid: Number(fields[1]),
    comm: text.slice(open + 1, close),
    cpuTicks: Number(fields[11]) + Number(fields[12]),
  };
}

/** VmRSS and VmHWM in bytes; undefined when the process is gone (or a zombie without memory). */
function readRss(pid: number): { rss: number; hwm: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'latin1');
  } catch {
    return undefined;
  }
  const rss = /^VmRSS:\s+(\d+) kB/m.exec(text);
  const hwm = /^VmHWM:\s+(\d+) kB/m.exec(text);
  if (!rss) return undefined;
  return { rss: Number(rss[1]) * 1024, hwm: hwm ? Number(hwm[1]) * 1024 : 0 };
}

/** /proc/<pid>/cmdline with spaces between the arguments; '' when the process is gone. */
function readCommandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').replaceAll('\0', ' ').trim();
  } catch {
    return '';
  }
}

function listPids(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    const c = name.charCodeAt(0);
    if (c >= 48 && c <= 57) pids.push(Number(name));
  }
  return pids;
}

/**
 * Follows the descendants of some roots. The parent of every process is read once, when the process
 * first appears; a process whose parent is in the set joins it. (A process re-parented to init after
 * its parent died stays in the set: it was a descendant when it appeared.)
 */
class TreeWatcher {
  private readonly parentOf = new Map<number, number>();
  readonly members = new Set<number>();
  readonly records = new Map<number, ProcessRecord>();

  constructor(
    roots: readonly number[],
    private readonly claim?: (commandLine: string) => boolean,
  ) {
    for (const root of roots) this.members.add(root);
  }

  /** Updates membership from the pids alive now; returns the members alive now. */
  refresh(alive: readonly number[], fresh: ReadonlyMap<number, StatLine | undefined>): number[] {
    const aliveSet = new Set(alive);
    for (const pid of this.parentOf.keys()) if (!aliveSet.has(pid)) this.parentOf.delete(pid);
    // New pids: find their parents (several passes, in case a child is listed before its parent).
    let added = true;
    const pending = alive.filter((pid) => !this.parentOf.has(pid) && !this.members.has(pid));
    for (const pid of pending) {
      const stat = fresh.get(pid);
      this.parentOf.set(pid, stat ? stat.ppid : -1);
      if (this.claim?.(readCommandLine(pid))) this.members.add(pid);
    }
    while (added) {
      added = false;
      for (const pid of pending) {
        if (this.members.has(pid)) continue;
        const parent = this.parentOf.get(pid);
        if (parent !== undefined && this.members.has(parent)) {
          this.members.add(pid);
          added = true;
        }
      }
    }
    return alive.filter((pid) => this.members.has(pid));
  }
}

/** Runs `file args` (no shell) and measures it. Resolves when it has exited, whatever its exit code. */
export function measureCommand(
  file: string,
  args: readonly string[],
  options: MeasureOptions = {},
): Promise<Measurement> {
  const label = options.label ?? [file, ...args].join(' ');
  return new Promise<Measurement>((resolve, reject) => {
    const sampler = new Sampler(options);
    const child = spawn(file, [...args], {
      env: options.env ?? process.env,
      cwd: options.cwd,
      stdio: ['ignore', options.captureStdout ? 'pipe' : 'ignore', 'pipe'],
      // Its own process group, so an interrupted benchmark can stop the whole pipeline.
      detached: true,
    });
    activeGroups.add(child);
    const rootPid = child.pid;
    if (rootPid === undefined) {
      child.once('error', reject);
      return;
    }
    sampler.start({ roots: [rootPid], kind: 'program' });

    const out: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    let err = Buffer.alloc(0);
    child.stderr?.on('data', (b: Buffer) => {
      err = Buffer.concat([err, b]);
      if (err.length > 32 * 1024) err = err.subarray(err.length - 16 * 1024);
    });
    child.once('error', (e) => {
      sampler.stop();
      activeGroups.delete(child);
      reject(e);
    });
    // 'exit' is the moment the process ended (its wall time); 'close' waits for its pipes too.
    let wallMs = 0;
    child.once('exit', () => {
      wallMs = sampler.elapsed();
    });
    child.once('close', (code, signal) => {
      sampler.stop();
      activeGroups.delete(child);
      const totals = sampler.totals();
      resolve({
        label,
        wallMs: wallMs || sampler.elapsed(),
        exitCode: code,
        signal,
        ...totals,
        stdout: Buffer.concat(out).toString('utf8'),
        stderrTail: err.subarray(Math.max(0, err.length - 16 * 1024)).toString('utf8'),
      });
    });
  });
}

/** What a Sampler follows: the processes whose descendants form the measured tree, and how to count them. */
interface SampledTree {
  readonly roots: readonly number[];
  /**
   * 'program': one started program; the roots are members, and the main peak is the first root's
   * (VmRSS and VmHWM). 'task': work this process drives; the roots themselves do not count, the main
   * peak is the largest member's VmRSS, and a tree member is never also a watched process.
   */
  readonly kind: 'program' | 'task';
}

/** The parts of a Measurement a Sampler gathers. */
type SampledTotals = Pick<
  Measurement,
  | 'peakTreeRssBytes'
  | 'peakMainRssBytes'
  | 'samples'
  | 'processes'
  | 'watched'
  | 'machineBusyMs'
  | 'selfCpuMs'
>;

/**
 * The sampling loop of measureCommand and measureTask: the clocks (wall, machine CPU, this process's
 * CPU) start when it is made; start() begins polling /proc every intervalMs (and the heartbeat),
 * stop() ends it, totals() reads the clocks again and reports.
 */
class Sampler {
  private readonly machineBefore = readMachineCpu();
  private readonly selfBefore = process.cpuUsage();
  private readonly started = process.hrtime.bigint();
  private readonly server: TreeWatcher;
  private tree: TreeWatcher | undefined;
  private sampled: SampledTree | undefined;
  private peakTree = 0;
  private peakMain = 0;
  private samples = 0;
  private readonly known = new Set<number>();
  private timer: NodeJS.Timeout | undefined;
  private beat: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: Pick<
      MeasureOptions,
      'intervalMs' | 'watchRoots' | 'onHeartbeat' | 'heartbeatMs' | 'claim'
    >,
  ) {
    this.server = new TreeWatcher(options.watchRoots ?? []);
  }

  /** Milliseconds since the sampler was made. */
  readonly elapsed = (): number => Number(process.hrtime.bigint() - this.started) / 1e6;

  /** Follows `sampled` from now on: one poll at once, then every intervalMs. */
  start(sampled: SampledTree): void {
    const options = this.options;
    this.sampled = sampled;
    this.tree = new TreeWatcher(sampled.roots, options.claim);
    this.timer = setInterval(this.poll, options.intervalMs ?? 50);
    let lastBeat = 0;
    this.beat = options.onHeartbeat
      ? setInterval(
          () => {
            const now = this.elapsed();
            if (now - lastBeat >= (options.heartbeatMs ?? 15_000)) {
              lastBeat = now;
              options.onHeartbeat?.(now);
            }
          },
          Math.min(1000, options.heartbeatMs ?? 15_000),
        )
      : undefined;
    this.poll();
  }

  /** One look at /proc. */
  readonly poll = (): void => {
    const tree = this.tree;
    const sampled = this.sampled;
    if (!tree || !sampled) return;
    const { roots, kind } = sampled;
    const watchRoots = this.options.watchRoots;
    const now = this.elapsed();
    const alive = listPids();
    const fresh = new Map<number, StatLine | undefined>();
    for (const pid of alive) {
      if (!this.known.has(pid)) {
        this.known.add(pid);
        fresh.set(pid, readStat(pid));
      }
    }
    const aliveSet = new Set(alive);
    for (const pid of this.known) if (!aliveSet.has(pid)) this.known.delete(pid);
    const refreshed = tree.refresh(alive, fresh);
    const members = new Set(kind === 'task' ? refreshed.filter((pid) => !roots.includes(pid)) : refreshed);
    let sum = 0;
    for (const pid of members) {
      const stat = fresh.get(pid) ?? readStat(pid);
      const mem = readRss(pid);
      if (!stat || !mem) continue;
      sum += mem.rss;
      track(tree.records, pid, stat, now, Math.max(mem.rss, mem.hwm), this.samples === 0);
      if (kind === 'task') this.peakMain = Math.max(this.peakMain, mem.rss);
      else if (pid === roots[0]) this.peakMain = Math.max(this.peakMain, mem.rss, mem.hwm);
    }
    if (watchRoots && watchRoots.length > 0) {
      for (const pid of this.server.refresh(alive, fresh)) {
        if (watchRoots.includes(pid) || (kind === 'task' && members.has(pid))) continue;
        const stat = fresh.get(pid) ?? readStat(pid);
        if (stat) track(this.server.records, pid, stat, now, 0, this.samples === 0);
      }
    }
    this.peakTree = Math.max(this.peakTree, sum);
    this.samples++;
  };

  stop(): void {
    clearInterval(this.timer);
    if (this.beat) clearInterval(this.beat);
  }

  /** What was seen, with the machine's and this process's CPU since the sampler was made. */
  totals(): SampledTotals {
    const byAppearance = (a: ProcessRecord, b: ProcessRecord) => a.firstSeenMs - b.firstSeenMs;
    const machineAfter = readMachineCpu();
    const self = process.cpuUsage(this.selfBefore);
    return {
      peakTreeRssBytes: this.peakTree,
      peakMainRssBytes: this.peakMain,
      samples: this.samples,
      processes: [...(this.tree?.records.values() ?? [])].sort(byAppearance),
      watched: [...this.server.records.values()].sort(byAppearance),
      machineBusyMs: machineAfter.busyMs - this.machineBefore.busyMs,
      selfCpuMs: (self.user + self.system) / 1000,
    };
  }
}

function track(
  records: Map<number, ProcessRecord>,
  pid: number,
  stat: StatLine,
  now: number,
  rss: number,
  firstPoll: boolean,
): void {
  const totalCpuMs = (stat.cpuTicks * 1000) / CLOCK_TICKS;
  const record = records.get(pid);
  if (!record) {
    // A process already running when the measurement began counts only the CPU it uses from now on.
    const cpuBeforeMs = firstPoll ? totalCpuMs : 0;
    records.set(pid, {
      pid,
      comm: stat.comm,
      firstSeenMs: now,
      lastSeenMs: now,
      cpuBeforeMs,
      cpuMs: totalCpuMs - cpuBeforeMs,
      peakRssBytes: rss,
    });
    return;
  }
  record.lastSeenMs = now;
  record.cpuMs = Math.max(record.cpuMs, totalCpuMs - record.cpuBeforeMs);
  record.peakRssBytes = Math.max(record.peakRssBytes, rss);
  // A pid that execs (bash → pg_dump) keeps its pid and changes its name: keep the latest name.
  if (record.comm !== stat.comm) (record as { comm: string }).comm = stat.comm;
}

/** Busy and total CPU time of the whole machine since boot, from the first line of /proc/stat, ms. */
export function readMachineCpu(): { busyMs: number; totalMs: number } {
  try {
    const line = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!;
    // cpu user nice system idle iowait irq softirq steal guest guest_nice
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
    const total = busy + (f[3] ?? 0) + (f[4] ?? 0);
    return { busyMs: (busy * 1000) / CLOCK_TICKS, totalMs: (total * 1000) / CLOCK_TICKS };
  } catch {
    return { busyMs: 0, totalMs: 0 };
  }
}

/**
 * Waits until the machine is quiet: less than `busyFraction` of all cores busy over a `windowMs`
 * window (other sessions' tests, autovacuum after a restore). Gives up after `maxWaitMs`.
 * Returns how long it waited and whether it found quiet.
 */
export async function waitForQuiet(
  options: { busyFraction?: number; windowMs?: number; maxWaitMs?: number } = {},
): Promise<{ waitedMs: number; quiet: boolean }> {
  const busyFraction = options.busyFraction ?? 0.1;
  const windowMs = options.windowMs ?? 1000;
  const maxWaitMs = options.maxWaitMs ?? 120_000;
  const started = Date.now();
  for (;;) {
    const before = readMachineCpu();
    await new Promise((r) => setTimeout(r, windowMs));
    const after = readMachineCpu();
    const total = after.totalMs - before.totalMs;
    if (total <= 0) return { waitedMs: Date.now() - started, quiet: true };
    if ((after.busyMs - before.busyMs) / total < busyFraction) {
      return { waitedMs: Date.now() - started, quiet: true };
    }
    if (Date.now() - started >= maxWaitMs) return { waitedMs: Date.now() - started, quiet: false };
  }
}

/** Runs a bash script with `set -o pipefail` (a failing stage fails the whole command). */
export function measureShell(script: string, options: MeasureOptions = {}): Promise<Measurement> {
  return measureCommand('/bin/bash', ['-o', 'pipefail', '-c', script], { label: script, ...options });
}

export interface TaskOptions {
  /** Processes whose descendants (not themselves) count as the task's own, e.g. PostgreSQL's archiver. */
  readonly treeRoots?: readonly number[];
  /** Processes whose descendants are followed for CPU time, kept apart from the task's (server backends). */
  readonly watchRoots?: readonly number[];
  readonly claim?: (commandLine: string) => boolean;
  readonly intervalMs?: number;
  readonly onHeartbeat?: (elapsedMs: number) => void;
  readonly heartbeatMs?: number;
  readonly label: string;
}

/** What a task reports back: its own wall time when it knows better (e.g. from a trigger), and output. */
export interface TaskResult {
  readonly wallMs?: number;
  readonly stdout?: string;
}

/**
 * Measures work this process drives itself (start programs one after the other, wait for a server,
 * watch files) like measureCommand measures one program: the tree is every descendant of this
 * process (this process itself excluded; its CPU is selfCpuMs) and of `treeRoots`, plus claimed
 * processes. Resolves with exitCode 0 when the task resolves, 1 with the error's message as
 * stderrTail when it throws. peakMainRssBytes is the largest single process of the tree.
 */
export function measureTask(
  task: (elapsedMs: () => number) => Promise<TaskResult | undefined>,
  options: TaskOptions,
): Promise<Measurement> {
  const sampler = new Sampler(options);
  sampler.start({ roots: [process.pid, ...(options.treeRoots ?? [])], kind: 'task' });
  const finish = (exitCode: number, result: TaskResult | undefined, error: string): Measurement => {
    const wallMs = sampler.elapsed();
    sampler.poll();
    sampler.stop();
    return {
      label: options.label,
      wallMs: result?.wallMs ?? wallMs,
      exitCode,
      signal: null,
      ...sampler.totals(),
      stdout: result?.stdout ?? '',
      stderrTail: error.slice(-16 * 1024),
    };
  };
  return task(sampler.elapsed).then(
    (result) => finish(0, result ?? undefined, ''),
    (err: unknown) => finish(1, undefined, err instanceof Error ? err.message : String(err)),
  );
}

/** Children still running (each the leader of its own process group), for an interrupted run. */
const activeGroups = new Set<import('node:child_process').ChildProcess>();

/** Stops every measured command that is still running (SIGTERM to its whole process group). */
export function killActiveCommands(): void {
  for (const child of activeGroups) {
    if (child.pid !== undefined && child.exitCode === null) {
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // Already gone.
      }
    }
  }
}

/** CPU seconds per program name over a run's processes (e.g. { pg_dump: 5.2, zstd: 9.1 }). */
export function cpuByProgram(records: readonly ProcessRecord[]): Record<string, number> {
  const totals: Record<string, number> = {};
  for (const r of records) totals[r.comm] = (totals[r.comm] ?? 0) + r.cpuMs / 1000;
  return totals;
}

/** When each program was alive: first and last sighting over all its processes, seconds. */
export function spansByProgram(
  records: readonly ProcessRecord[],
): Record<string, { from: number; to: number; count: number }> {
  const spans: Record<string, { from: number; to: number; count: number }> = {};
  for (const r of records) {
    const s = spans[r.comm];
    if (!s) spans[r.comm] = { from: r.firstSeenMs / 1000, to: r.lastSeenMs / 1000, count: 1 };
    else {
      s.from = Math.min(s.from, r.firstSeenMs / 1000);
      s.to = Math.max(s.to, r.lastSeenMs / 1000);
      s.count++;
    }
  }
  return spans;
}
