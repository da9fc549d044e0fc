import { type Duplex, PassThrough, type Writable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { createGunzip, createGzip } from 'node:zlib';
import type { Compression } from '../config';
import { ConfigError, IntegrityError } from '../errors';
import {
  isOnPath,
  startTool,
  ToolExitError,
  type ToolProcess,
  toolStage,
  toolVersionOutput,
} from './process';
import { ZstdFileReports } from './zstd-frames';

/**
 * Compression as a stream stage, run by the standard tools so every stored object opens with
 * `zstd -d`, `gunzip`, `bunzip2`, `unxz` or `lz4 -d` alone. Multi-core variants are preferred where
 * installed (pigz, lbzip2 / pbzip2, zstd -T, xz -T).
 *
 * Default levels, measured on this project's 2-core build machine with 100 MB of mixed dump-like
 * data (text rows, JSON, 12% incompressible blobs), 2 threads, ratio = output / input:
 *
 *   zstd -1   0.364  409 MB/s     zstd -3  0.362  226 MB/s     zstd -9  0.360   57 MB/s
 *   pigz -1   0.549  119 MB/s     pigz -6  0.523   53 MB/s     gzip -6  0.529   24 MB/s
 *   lbzip2 -9 0.367   29 MB/s     bzip2 -9 0.367   11 MB/s     lz4 -1   0.757  360 MB/s
 *   xz -0     0.390   25 MB/s     xz -1    0.362   13 MB/s     xz -2    0.358  7.6 MB/s
 *   xz -3     0.356  3.2 MB/s     xz -4    0.342  3.0 MB/s     xz -6    0.335  1.2 MB/s
 *
 * (Speeds are noisy on a shared machine; a repeat run gave xz -1 16, -3 2.6, -6 0.9 MB/s, same order.)
 *
 * xz defaults to -1, not its own -6: -6 saves 7.5% of the size at a tenth of the speed (1.2 MB/s is
 * a day for 100 GB), and -2 / -3 cost 2-4x the time of -1 for under 2%. -1 is the knee of the curve.
 * Operators who want the smallest files set COMPRESSION_LEVEL=6 (or 9) knowing the cost.
 * zstd keeps its own default 3 (the best trade here); gzip 6 and bzip2 9 are the tools' defaults.
 */

interface LevelRange {
  readonly min: number;
  readonly max: number;
  readonly default: number;
}

const LEVELS: Record<Exclude<Compression, 'none'>, LevelRange> = {
  zstd: { min: 1, max: 22, default: 3 },
  gzip: { min: 1, max: 9, default: 6 },
  bzip2: { min: 1, max: 9, default: 9 },
  xz: { min: 0, max: 9, default: 1 },
  lz4: { min: 1, max: 12, default: 1 },
};

/** The package that provides the preferred tool, for the "install it with" message. */
const INSTALL_HINTS: Record<Exclude<Compression, 'none'>, string> = {
  zstd: 'apt-get install zstd',
  gzip: 'apt-get install pigz',
  bzip2: 'apt-get install lbzip2',
  xz: 'apt-get install xz-utils',
  lz4: 'apt-get install lz4',
};

/**
 * Variables through which these tools take extra options (XZ_OPT=--format=lzma, BZIP2=-s, ...). They
 * are removed from the child's environment so that what is written is exactly what the flags say.
 */
const TOOL_OPTION_VARIABLES = [
  'GZIP',
  'PIGZ',
  'BZIP',
  'BZIP2',
  'LBZIP2',
  'XZ_OPT',
  'XZ_DEFAULTS',
  'ZSTD_CLEVEL',
  'ZSTD_NBTHREADS',
];

const EXTENSIONS: Record<Compression, string> = {
  gzip: '.gz',
  bzip2: '.bz2',
  xz: '.xz',
  zstd: '.zst',
  lz4: '.lz4',
  none: '',
};

export function compressionExtension(algorithm: Compression): string {
  return EXTENSIONS[algorithm];
}

/**
 * The compression a file name's extension stands for, looking through a trailing `.enc`
 * (`full-daily-20260212-020000.dump.zst.enc` is zstd). undefined when the name carries none.
 */
export function compressionFromExtension(name: string): Compression | undefined {
  const withoutEncryption = name.endsWith('.enc') ? name.slice(0, -'.enc'.length) : name;
  for (const [algorithm, extension] of Object.entries(EXTENSIONS) as [Compression, string][]) {
    if (extension && withoutEncryption.endsWith(extension)) return algorithm;
  }
  return undefined;
}

export interface ToolInvocation {
  readonly command: string;
  readonly args: string[];
}

export type CompressionDirection = 'compress' | 'decompress';

export interface CompressionOptions {
  /** Threads for the tools that use several (PARALLEL_JOBS). */
  readonly threads: number;
  /** Compression level; the defaults above when absent. Ignored for decompression. */
  readonly level?: number;
}

function checkedThreads(threads: number): number {
  if (!Number.isInteger(threads) || threads < 1) {
    throw new ConfigError(`PARALLEL_JOBS must be a whole number of at least 1 (got ${threads})`);
  }
  return threads;
}

function checkedLevel(algorithm: Exclude<Compression, 'none'>, level: number | undefined): number {
  const range = LEVELS[algorithm];
  if (level === undefined) return range.default;
  if (!Number.isInteger(level) || level < range.min || level > range.max) {
    throw new ConfigError(
      `COMPRESSION_LEVEL=${level} is out of range for ${algorithm}; use ${range.min}-${range.max} or leave it unset (default ${range.default})`,
    );
  }
  return level;
}

/**
 * The command line that compresses or decompresses stdin to stdout, or 'builtin' when no program is
 * needed ('none') or none is installed for gzip (node:zlib then does the work, single-threaded).
 * When no program for bzip2, xz, zstd or lz4 is installed, the preferred one is named anyway, so
 * starting it reports a MissingToolError with its install hint.
 * `available` is the PATH lookup, replaceable in tests.
 */
export function compressionInvocation(
  algorithm: Compression,
  direction: CompressionDirection,
  options: CompressionOptions,
  available: (name: string) => boolean = isOnPath,
): ToolInvocation | 'builtin' {
  if (algorithm === 'none') return 'builtin';
  const threads = checkedThreads(options.threads);
  const level = checkedLevel(algorithm, options.level);
  const compressing = direction === 'compress';
  // -q only where it silences progress output and keeps error messages: pigz -q, gzip -q, bzip2 -q
  // and xz -q hide the very line that says why a file is rejected.
  switch (algorithm) {
    case 'zstd':
      return compressing
        ? {
            command: 'zstd',
            // One thread: --single-thread, not -T1, which still runs the multi-threaded engine with
            // one worker and its large job buffers (a 16 MB WAL segment: 5,800 page faults and 205 ms
            // of CPU against 1,100 and 133 ms). The output is the same standard frame.
            args: [
              '-q',
              '-c',
              `-${level}`,
              ...(level > 19 ? ['--ultra'] : []),
              threads === 1 ? '--single-thread' : `-T${threads}`,
            ],
          }
        : { command: 'zstd', args: ['-d', '-q', '-c'] };
    case 'gzip':
      if (available('pigz')) {
        return {
          command: 'pigz',
          args: compressing ? ['-c', `-${level}`, `-p${threads}`] : ['-d', '-c', `-p${threads}`],
        };
      }
      if (available('gzip'))
        return { command: 'gzip', args: compressing ? ['-c', `-${level}`] : ['-d', '-c'] };
      return 'builtin';
    case 'bzip2':
      if (available('lbzip2')) {
        return {
          command: 'lbzip2',
          args: compressing ? ['-c', `-${level}`, `-n${threads}`] : ['-d', '-c', `-n${threads}`],
        };
      }
      if (available('pbzip2')) {
        return {
          command: 'pbzip2',
          args: compressing ? ['-c', `-${level}`, `-p${threads}`] : ['-d', '-c', `-p${threads}`],
        };
      }
      return { command: 'bzip2', args: compressing ? ['-c', `-${level}`] : ['-d', '-c'] };
    case 'xz':
      // Multi-threaded xz writes several blocks, still a standard .xz; xz >= 5.4 also decompresses
      // those in parallel, older versions accept -T and decompress with one thread.
      return {
        command: 'xz',
        args: compressing ? ['-c', `-${level}`, `-T${threads}`] : ['-d', '-c', `-T${threads}`],
      };
    case 'lz4':
      return { command: 'lz4', args: compressing ? ['-q', '-c', `-${level}`] : ['-d', '-q', '-c'] };
  }
}

/**
 * Which program `compressStage` / `decompressStage` will run (for `pgvault restore init` and the
 * manifest's tool versions). Without threads the invocation shown uses one.
 */
export function compressionTool(
  algorithm: Compression,
  direction: CompressionDirection = 'compress',
  threads = 1,
): ToolInvocation | 'builtin' {
  return compressionInvocation(algorithm, direction, { threads });
}

function toolEnvironment(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of TOOL_OPTION_VARIABLES) delete env[name];
  return env;
}

function stageFor(
  algorithm: Compression,
  direction: CompressionDirection,
  options: CompressionOptions,
): Duplex {
  const invocation = compressionInvocation(algorithm, direction, options);
  if (invocation === 'builtin') {
    if (algorithm === 'none') return new PassThrough();
    return direction === 'compress'
      ? createGzip({ level: checkedLevel('gzip', options.level) })
      : createGunzip();
  }
  return toolStage(invocation.command, invocation.args, {
    env: toolEnvironment(),
    label: invocation.command,
    installHint: algorithm === 'none' ? undefined : INSTALL_HINTS[algorithm],
  });
}

/** A stage that compresses its input; the output is a standard file of the algorithm's format. */
export function compressStage(algorithm: Compression, options: CompressionOptions): Duplex {
  return stageFor(algorithm, 'compress', options);
}

/** A stage that decompresses a standard file of the algorithm's format (also one made by the tool itself). */
export function decompressStage(algorithm: Compression, options: { readonly threads: number }): Duplex {
  return stageFor(algorithm, 'decompress', { threads: options.threads });
}

/**
 * A decompressor program that writes into an open file, or into another program's stdin pipe (tar
 * extracting a base backup), as its stdout instead of back to Node: the decoded bytes then never
 * pass through Node. The stage's readable side is empty. undefined when no program does the work
 * ('none', or gzip with neither pigz nor gzip installed): use decompressStage and write from Node.
 */
export function decompressToFileStage(
  algorithm: Compression,
  options: { readonly threads: number },
  fd: number | Writable,
): Duplex | undefined {
  const invocation = compressionInvocation(algorithm, 'decompress', { threads: options.threads });
  if (invocation === 'builtin') return undefined;
  return toolStage(invocation.command, invocation.args, {
    env: toolEnvironment(),
    label: invocation.command,
    installHint: INSTALL_HINTS[algorithm as Exclude<Compression, 'none'>],
    stdout: fd,
  });
}

/**
 * A compressor program reading a file itself (as its stdin), its output on `stdout`: the raw bytes
 * never pass through Node. For a 16 MB WAL segment this saves Node reading the file and writing it
 * into the compressor's pipe, two thirds of what it spent per segment. `'pipe'` gives it a stdin
 * pipe for another program to write into (ToolProcess.child.stdin, passed as that program's
 * stdout). undefined when no program does the work ('none', or gzip with neither pigz nor gzip
 * installed): read the file from Node.
 */
export function compressFile(
  algorithm: Compression,
  options: CompressionOptions,
  fd: number | 'pipe',
): ToolProcess | undefined {
  const invocation = compressionInvocation(algorithm, 'compress', options);
  if (invocation === 'builtin') return undefined;
  return startTool(invocation.command, invocation.args, {
    env: toolEnvironment(),
    label: invocation.command,
    installHint: INSTALL_HINTS[algorithm as Exclude<Compression, 'none'>],
    stdin: fd,
  });
}

/** One compressor run over several files (compressFiles). */
export interface FileCompressor extends ToolProcess {
  /**
   * Resolves once frame `index` on stdout, `frameBytes` long, is known to hold file `index`: zstd
   * reported that file done with that many bytes, in turn (ZstdFileReports), or exited 0. Rejects
   * when zstd failed before reporting it, or reported another size.
   */
  fileDone(index: number, frameBytes: number): Promise<void>;
}

/**
 * One compressor run over several files, their frames back to back on stdout in the order given
 * (ZstdFrameSplitter takes them apart). Only zstd: its frames can be found without decompressing,
 * and it records each file's size in its frame. Undefined for every other algorithm: compress
 * those one file at a time (compressFile).
 */
export async function compressFiles(
  algorithm: Compression,
  options: CompressionOptions,
  paths: readonly string[],
): Promise<FileCompressor | undefined> {
  if (algorithm !== 'zstd') return undefined;
  const invocation = compressionInvocation(algorithm, 'compress', options);
  if (invocation === 'builtin') return undefined;
  const version = await toolVersion('zstd');
  // zstd 1.5.3 and later read and write through helper threads; a single-threaded run through whole
  // files gains nothing from them (16 WAL segments: 0.15 CPU s of system time less without).
  const asyncIo = versionAtLeast(version, [1, 5, 3]) ? ['--no-asyncio'] : [];
  // Display level 4 (-q then -vvv): a report with exact sizes after each file (zstd 1.5 and later).
  const reporting = versionAtLeast(version, [1, 5, 0]) ? ['-vvv', '--no-progress'] : [];
  const tool = startTool(invocation.command, [...invocation.args, ...asyncIo, ...reporting, '--', ...paths], {
    env: toolEnvironment(),
    label: invocation.command,
    installHint: INSTALL_HINTS.zstd,
    stdin: 'ignore',
  });
  const reports = new ZstdFileReports(paths);
  // A path in UTF-8 may be cut between two reads.
  const decoder = new StringDecoder('utf8');
  tool.child.stderr?.on('data', (chunk: Buffer) => reports.push(decoder.write(chunk)));
  // Among the reports, the reason for a failure is zstd's own last `zstd: ...` line.
  const exited = tool.exited.catch((err: unknown) => {
    if (!(err instanceof ToolExitError) || reporting.length === 0) throw err;
    const own = err.stderr.split(/[\r\n]/).filter((line) => line.startsWith('zstd:'));
    throw new ToolExitError(
      err.label,
      err.toolExitCode,
      err.signal,
      own.length > 0 ? own.join('\n') : err.stderr,
    );
  });
  exited.catch(() => {});
  const fileDone = async (index: number, frameBytes: number) => {
    // Whichever comes first: the file's report, or zstd's exit (0 proves every frame).
    const reported = await Promise.race([reports.report(index), exited.then(() => frameBytes)]);
    if (reported === undefined) return exited; // no report will count for it: the exit decides
    if (reported !== frameBytes) {
      throw new IntegrityError(
        `zstd reported ${reported} compressed bytes for ${paths[index]}, but its frame holds ${frameBytes}; nothing of it was kept`,
      );
    }
  };
  return { ...tool, exited, fileDone };
}

/**
 * The version number a program reports (`zstd` → '1.5.4'), or undefined when it is missing or says
 * nothing recognisable.
 */
export async function toolVersion(command: string): Promise<string | undefined> {
  return parseVersion((await toolVersionOutput(command)).text);
}

/** Whether a dotted version (as parseVersion gives it) is at least `wanted`; false when unknown. */
export function versionAtLeast(version: string | undefined, wanted: readonly number[]): boolean {
  if (version === undefined) return false;
  const parts = version.split('.').map(Number);
  for (const [i, want] of wanted.entries()) {
    const have = parts[i] ?? 0;
    if (have !== want) return have > want;
  }
  return true;
}

/** The first dotted version number in a `--version` output. */
export function parseVersion(output: string): string | undefined {
  return /\bv?(\d+\.\d+(?:\.\d+)*)/.exec(output)?.[1];
}
