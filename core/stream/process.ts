import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { basename, delimiter, join } from 'node:path';
import { Duplex, PassThrough, Readable, Writable } from 'node:stream';
import { MissingToolError, PgVaultError } from '../errors';

/**
 * External programs (compressors, pg_dump, pg_restore, ...) as stream stages.
 *
 * Secrets never go in `args`: any user on the host can read a command line from /proc or `ps`.
 * Pass them in `env` (PGPASSWORD, an openssl `-pass env:VAR`), which only the owner and root can read.
 */

/** stderr kept per child: enough for the last few messages, bounded however chatty the tool is. */
const STDERR_TAIL_BYTES = 8 * 1024;

/** After SIGTERM, a child that is still alive this long later gets SIGKILL. */
const KILL_GRACE_MS = 5_000;

/** A stream stage moves large chunks; 256 KiB buffers keep pipes busy without holding much memory. */
const STAGE_HIGH_WATER_MARK = 256 * 1024;

export interface StartToolOptions {
  /** The child's whole environment (default: this process's). The channel for secrets. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Name used in messages, e.g. `pg_dump (db sales)`; default the command's file name. */
  label?: string;
  /** How to install the program when it is missing; default `apt-get install <command>`. */
  installHint?: string;
  stdin?: 'pipe' | 'ignore' | number;
  /** A number is an open file; a Writable must be a pipe to another program (its stdin), shared. */
  stdout?: 'pipe' | 'ignore' | number | Writable;
  /**
   * Run the program under `stdbuf -o1M` (when installed) so its stdio output reaches the pipe in
   * large writes. pg_dump and pg_basebackup write archives through stdio, which flushes every 4 KiB
   * on a pipe; each flush costs Node one read and one event. Measured on the 500 MB benchmark
   * database: 65,000 reads of 8 KiB and 1.35 CPU-s in Node to read pg_dump's output; with the larger
   * buffer 8,800 reads of 60 KiB and 0.5 CPU-s, and pg_dump itself spends half the system time.
   */
  bufferOutput?: boolean;
  /**
   * A fourth descriptor (fd 3) piped back to Node for the program's own reports, separate from its
   * output and its error messages (ToolProcess.channel).
   */
  channel?: boolean;
}

export interface ToolProcess {
  child: ChildProcess;
  /** The child's stdout; an empty stream when stdout is not a pipe. */
  stdout: Readable;
  /** The child's stdin; a stream refusing writes when stdin is not a pipe. */
  stdin: Writable;
  /**
   * Resolves when the child exits with code 0. Rejects with a ToolExitError (non-zero exit or signal),
   * a MissingToolError (program not found) or a PgVaultError (could not start).
   */
  exited: Promise<void>;
  /** The last few KB the child wrote to stderr. */
  stderrTail(): string;
  /** What the child writes to its fd 3, when started with `channel`. */
  channel?: Readable;
}

/** A program ended with a non-zero exit code or was killed by a signal. */
export class ToolExitError extends PgVaultError {
  constructor(
    readonly label: string,
    readonly toolExitCode: number | null,
    readonly signal: NodeJS.Signals | null,
    readonly stderr: string,
  ) {
    const how = signal ? `was killed by ${signal}` : `failed with exit code ${toolExitCode}`;
    const detail = recoveryConflict(stderr) ?? failureLine(stderr);
    super(
      detail
        ? `${label} ${how}: ${detail}`
        : `${label} ${how} and wrote nothing to stderr; run it by hand to see why`,
    );
  }
}

/**
 * pg_dump on a hot standby cancelled by replay (its last line is then only the COPY it was running):
 * the reason, and the settings that prevent it.
 */
function recoveryConflict(stderr: string): string | undefined {
  if (!/canceling statement due to conflict with recovery/i.test(stderr)) return undefined;
  const why = /DETAIL:\s*(.+)/.exec(stderr)?.[1]?.trim();
  return `canceling statement due to conflict with recovery${why ? ` (${why.replace(/\.$/, '')})` : ''}: the replica's WAL replay needed what the dump was reading; set hot_standby_feedback = on and raise max_standby_streaming_delay on the replicas (Patroni: postgresql.parameters), or back up from the leader (BACKUP_FROM=leader)`;
}

/**
 * The line that says why a tool failed: its last line, except when pg_dump & co. end a failed query's
 * report with the query itself (`pg_dump: detail: Query was: LOCK TABLE ...`, `Command was: COPY
 * ...`) after the server's DETAIL lines: then the tool's last `error:` line (`query failed: ERROR:
 * deadlock detected`).
 */
function failureLine(stderr: string): string {
  const last = lastMeaningfulLine(stderr);
  const errors = stderr.split(/\r?\n/).filter((line) => /^\S+: error: /.test(line.trim()));
  if (/^\S+: detail: (Query|Command) was: /.test(last)) return errors.at(-1)?.trim() ?? last;
  // A server error relayed by the tool ends with its DETAIL or HINT line (pg_basebackup: "error:
  // could not initiate base backup: ERROR: ..." then "DETAIL: ..."): the error, then that line.
  const error = errors.at(-1)?.trim();
  if (/^(DETAIL|HINT):\s/.test(last) && error !== undefined) return `${error} (${last.replace(/\s+/g, ' ')})`;
  return last;
}

/** The last non-blank stderr line: tools print their reason for failing last. */
export function lastMeaningfulLine(text: string): string {
  const lines = text.split(/\r?\n/).map((line) => line.trim());
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i];
    if (line) return line;
  }
  return '';
}

/** Keeps the last `limit` bytes written to it, whatever the total. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly limit: number) {}

  append(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.chunks.length > 1 && this.size - this.chunks[0]!.length >= this.limit) {
      this.size -= this.chunks.shift()!.length;
    }
  }

  toString(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit)).toString('utf8');
  }
}

function isSpawnNotFound(err: NodeJS.ErrnoException): boolean {
  return err.code === 'ENOENT' && typeof err.syscall === 'string' && err.syscall.startsWith('spawn');
}

/**
 * Starts a program with piped stderr (kept as a bounded tail for messages). The returned `exited`
 * promise is already marked handled, so a caller that only cares about the streams cannot crash the
 * process with an unhandled rejection; a caller that awaits it still sees the failure.
 */
export function startTool(command: string, args: string[], options: StartToolOptions = {}): ToolProcess {
  return spawnTool(command, args, options, true);
}

/** `hold`: see heldOutput; false only for a caller that attaches to stdout before it returns. */
function spawnTool(command: string, args: string[], options: StartToolOptions, hold: boolean): ToolProcess {
  const label = options.label ?? basename(command);
  const stderrTail = new TailBuffer(STDERR_TAIL_BYTES);
  const [file, argv] =
    options.bufferOutput && isOnPath('stdbuf') ? ['stdbuf', ['-o1M', command, ...args]] : [command, args];
  const child = spawn(file, argv, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    stdio: [
      options.stdin ?? 'pipe',
      options.stdout ?? 'pipe',
      'pipe',
      ...(options.channel ? ['pipe' as const] : []),
    ],
    windowsHide: true,
  });

  // A dead child's pipes report EPIPE / ECONNRESET; the exit status says why it died, so the pipe
  // errors are only recorded here (consumers such as toolStage decide what to report).
  child.stdin?.on('error', () => {});
  child.stdout?.on('error', () => {});

  const stderrDone = new Promise<void>((resolve) => {
    if (!child.stderr) return resolve();
    child.stderr.on('data', (chunk: Buffer) => stderrTail.append(chunk));
    child.stderr.on('error', () => resolve());
    child.stderr.on('close', () => resolve());
  });

  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', (err: NodeJS.ErrnoException) => {
      // 'error' also fires when a kill fails on a live child; only a failed spawn ends the story.
      if (child.pid !== undefined) return;
      if (isSpawnNotFound(err) && !(options.cwd && !existsSync(options.cwd))) {
        const hint = options.installHint ?? `apt-get install ${basename(command)}`;
        reject(new MissingToolError(`${basename(command)} is not installed; install it with: ${hint}`));
      } else {
        reject(new PgVaultError(`could not start ${label}: ${err.message}`, { cause: err }));
      }
    });
    child.once('exit', (code, signal) => {
      // Wait briefly for the rest of stderr: the reason for a failure is usually its last line. A
      // grandchild holding stderr open must not hold up the verdict, hence the bound.
      const grace = new Promise<void>((r) => setTimeout(r, 1_000).unref());
      void Promise.race([stderrDone, grace]).then(() => {
        if (code === 0) resolve();
        else reject(new ToolExitError(label, code, signal, stderrTail.toString()));
      });
    });
  });
  exited.catch(() => {});

  return {
    child,
    stdout: child.stdout ? (hold ? heldOutput(child.stdout) : child.stdout) : Readable.from([]),
    stdin:
      child.stdin ??
      new Writable({
        write(_chunk, _encoding, callback) {
          callback(
            new PgVaultError(`${label} was started without a stdin pipe; nothing can be written to it`),
          );
        },
      }),
    exited,
    stderrTail: () => stderrTail.toString(),
    ...(options.channel ? { channel: heldOutput(child.stdio[3] as Readable) } : {}),
  };
}

/**
 * A child's stdout, read from now on so no byte is lost. Node resumes a child's stdout that nothing
 * reads once the child has exited (child_process flushStdio) and drops what it wrote: a compressor
 * given a 40-byte timeline history file exits within milliseconds, before a consumer that awaited
 * anything in between attaches, and the stored object came out empty while the tool said 0. The
 * returned stream buffers (with backpressure on the child) until its consumer reads; destroying it
 * closes the child's stdout, as destroying the child's own stream did.
 */
function heldOutput(stdout: Readable): Readable {
  const held = new PassThrough({ highWaterMark: STAGE_HIGH_WATER_MARK });
  stdout.pipe(held);
  held.once('close', () => {
    if (!stdout.destroyed) stdout.destroy();
  });
  return held;
}

export interface ToolStageOptions extends StartToolOptions {
  /**
   * What to do when the program exits 0 before reading all of its input (the writes then fail with
   * EPIPE), as `pg_restore -l` does after the table of contents. false (default): the stage fails,
   * because a compressor or decompressor that skips input loses data. true: the rest of the input
   * is read and discarded, and the program's exit status is the verdict.
   */
  discardUnreadInput?: boolean;
}

function isBrokenPipe(err: NodeJS.ErrnoException): boolean {
  return err.code === 'EPIPE' || err.code === 'ECONNRESET' || err.code === 'ERR_STREAM_DESTROYED';
}

/**
 * A program as a Duplex: writes feed its stdin, reads come from its stdout, with backpressure both
 * ways. The stage never ends successfully before the program has exited 0: 'finish' (writable side)
 * and 'end' (readable side) wait for the exit status, and a non-zero exit, a signal or a failed start
 * destroys the stage with the program's own error, even after all of its output was read. A stdin
 * EPIPE (the program died) is reported as the program's error, never as EPIPE. Destroying the stage
 * kills the program.
 */
class ToolStage extends Duplex {
  private readonly tool: ToolProcess;
  private readonly label: string;
  private readonly discardUnreadInput: boolean;
  /** The program closed its stdin early (EPIPE); set once its exit status is known to be 0. */
  private discarding = false;
  private stdinBroken = false;

  constructor(command: string, args: string[], options: ToolStageOptions) {
    super({ readableHighWaterMark: STAGE_HIGH_WATER_MARK, writableHighWaterMark: STAGE_HIGH_WATER_MARK });
    this.label = options.label ?? basename(command);
    this.discardUnreadInput = options.discardUnreadInput ?? false;
    // Its 'data' handler is attached below, before anything can be awaited: no need to hold stdout.
    this.tool = spawnTool(command, args, options, false);
    const { stdout, stdin, exited } = this.tool;

    exited.catch((err: unknown) => this.destroy(err as Error));

    stdout.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) stdout.pause();
    });
    // A stdout failure of a dying program is explained by its exit status; of a live one, by itself.
    stdout.on('error', (err) => {
      exited.then(
        () => this.destroy(err),
        () => {},
      );
    });
    stdout.on('end', () => {
      // The program closed its stdout; only its exit status may end the stage.
      exited.then(
        () => this.push(null),
        () => {},
      );
    });
    stdin.on('error', (err) => this.failOnPipeError(err));
  }

  /** The running program (its pid, for tests and logs). */
  get child(): ChildProcess {
    return this.tool.child;
  }

  /** Resolves on exit code 0; the same promise as ToolProcess.exited. */
  get exited(): Promise<void> {
    return this.tool.exited;
  }

  stderrTail(): string {
    return this.tool.stderrTail();
  }

  private failOnPipeError(err: NodeJS.ErrnoException): void {
    if (!isBrokenPipe(err)) {
      this.destroy(err);
      return;
    }
    this.stdinBroken = true;
    // The program is gone or going: its exit status explains why (the exited handler destroys the
    // stage on failure). Exit 0 with unread input is judged here.
    this.tool.exited.then(
      () => {
        if (this.discardUnreadInput) {
          this.discarding = true;
          this.releasePendingWrite();
        } else {
          this.destroy(this.unreadInputError());
        }
      },
      () => {},
    );
  }

  private unreadInputError(): PgVaultError {
    return new PgVaultError(
      `${this.label} exited before reading all of its input; the data after that point was not processed`,
    );
  }

  private pendingWrite: ((error?: Error | null) => void) | undefined;

  private releasePendingWrite(): void {
    const callback = this.pendingWrite;
    this.pendingWrite = undefined;
    callback?.();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.discarding) {
      callback();
      return;
    }
    if (this.stdinBroken) {
      // Held until the exit status decides: discard (callback released) or fail (stage destroyed).
      this.pendingWrite = callback;
      return;
    }
    if (this.tool.stdin.write(chunk)) {
      callback();
      return;
    }
    this.pendingWrite = callback;
    this.tool.stdin.once('drain', () => this.releasePendingWrite());
  }

  override _final(callback: (error?: Error | null) => void): void {
    // A destroyed stage has already reported its error; its final callback must not report success.
    const finishWhenExited = () =>
      this.tool.exited.then(
        () => {
          if (this.destroyed) return;
          callback(this.stdinBroken && !this.discardUnreadInput ? this.unreadInputError() : null);
        },
        (err: Error) => callback(err),
      );
    if (this.stdinBroken || this.discarding) {
      void finishWhenExited();
      return;
    }
    this.tool.stdin.end((err?: Error | null) => {
      // The EPIPE of the last write can reach this callback before the stdin 'error' event.
      if (err && isBrokenPipe(err)) this.stdinBroken = true;
      void finishWhenExited();
    });
  }

  override _read(): void {
    this.tool.stdout.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const { child } = this.tool;
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }, KILL_GRACE_MS);
      killer.unref();
      child.once('exit', () => clearTimeout(killer));
    }
    this.tool.stdin.destroy();
    this.tool.stdout.destroy();
    callback(error);
  }
}

export type ToolStageDuplex = Duplex & {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  stderrTail(): string;
};

/** Runs `command args` as a stream stage; see ToolStage for the guarantees. */
export function toolStage(command: string, args: string[], options: ToolStageOptions = {}): ToolStageDuplex {
  return new ToolStage(command, args, options);
}

const pathLookups = new Map<string, boolean>();

/** Whether an executable of this name is on PATH; looked up once per process and name. */
export function isOnPath(name: string): boolean {
  const cached = pathLookups.get(name);
  if (cached !== undefined) return cached;
  let found = false;
  for (const directory of (process.env.PATH ?? '').split(delimiter)) {
    if (!directory) continue;
    try {
      accessSync(join(directory, name), constants.X_OK);
      found = true;
      break;
    } catch {
      // not in this directory
    }
  }
  pathLookups.set(name, found);
  return found;
}

/** What `<program> --version` printed (stdout and stderr), or why it could not run. */
export interface VersionOutput {
  readonly text: string;
  readonly error?: Error;
}

const versionOutputs = new Map<string, Promise<VersionOutput>>();

/**
 * Runs `<command> --version` once per process and command: the backup's checks and its manifest's
 * tool list ask for the same programs, and each start costs a fork of this (large) process.
 */
export function toolVersionOutput(command: string): Promise<VersionOutput> {
  let output = versionOutputs.get(command);
  if (!output) {
    output = new Promise((resolve) => {
      const child = execFile(
        command,
        ['--version'],
        { timeout: 30_000, maxBuffer: 64 * 1024 },
        (error, stdout, stderr) => {
          resolve({ text: `${stdout}\n${stderr}`, ...(error ? { error } : {}) });
        },
      );
      // bzip2 prints its version and then compresses stdin: give it an empty one.
      child.stdin?.on('error', () => {});
      child.stdin?.end();
    });
    versionOutputs.set(command, output);
  }
  return output;
}
