import { closeSync, existsSync, readSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { errorMessage, PgVaultError } from '../errors';
import { startTool } from '../stream/process';
import { type ArchiveScanResult, CustomArchiveParser, scanFindings } from './archive';

/**
 * pg_dump's archive on its way to the compressor, scanned for exact row counts and TOC data offsets
 * by a small Node process of its own (this file, run as a script) that sits in the pipe:
 *
 *   pg_dump → archive scanner → compressor → Node (encrypt, hash, store)
 *
 * The scanner reads with blocking reads into one reused 1 MiB buffer and writes the same bytes on;
 * no event loop, no stream machinery, no buffer per chunk. Passing the raw dump through the main
 * process instead (a socket read, four stream stages, a socket write per 64 KiB chunk) cost it about
 * 1.2 CPU s per 500 MB, on a machine whose two cores the compressor already keeps busy. A worker
 * thread would do the same work, but a thread blocked in read() keeps its process from exiting
 * (measured: process.exit() waits for it), and pg_dump may sit idle for minutes behind a lock.
 */

const BUFFER_BYTES = 1 << 20;
const PROGRESS_EVERY_BYTES = 32 * 1024 * 1024;
const RESULT_PREFIX = 'result ';
const PROGRESS_PREFIX = 'progress ';

/** The scanner script: beside this module in the build, or in dist/ when running from TypeScript (tests). */
export function archiveScannerScript(): string | undefined {
  const candidates = [
    join(__dirname, 'archive-pump.js'),
    resolve(__dirname, '..', '..', 'dist', 'core', 'pg', 'archive-pump.js'),
  ];
  return candidates.find((path) => existsSync(path));
}

export interface ArchiveScanner {
  /** The scanner's stdin: pass it as pg_dump's stdout, then destroy it here. */
  readonly input: Writable;
  /** Resolves when the scanner exited 0 (every byte read was written on). */
  readonly exited: Promise<void>;
  /** The scanner's findings; rejects when it ended without reporting them. */
  readonly result: Promise<ArchiveScanResult>;
}

/**
 * Starts the scanner writing into `output` (the compressor's stdin pipe, ToolProcess.child.stdin);
 * `onProgress` hears the raw bytes passed so far, every 32 MiB.
 */
export function startArchiveScanner(
  script: string,
  output: Writable,
  onProgress?: (bytes: number) => void,
): ArchiveScanner {
  const tool = startTool(process.execPath, [script], {
    // It needs nothing from the environment (and NODE_OPTIONS must not reach it).
    env: {},
    label: 'archive scanner',
    installHint: 'reinstall pgvault',
    stdout: output,
    channel: true,
  });
  const result = new Promise<ArchiveScanResult>((resolvePromise, reject) => {
    let text = '';
    let found: ArchiveScanResult | undefined;
    const channel = tool.channel!;
    channel.setEncoding('utf8');
    channel.on('data', (chunk: string) => {
      text += chunk;
      for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n')) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 1);
        if (line.startsWith(PROGRESS_PREFIX)) onProgress?.(Number(line.slice(PROGRESS_PREFIX.length)));
        else if (line.startsWith(RESULT_PREFIX))
          found = JSON.parse(line.slice(RESULT_PREFIX.length)) as ArchiveScanResult;
      }
    });
    channel.on('error', () => {});
    channel.on('close', () => {
      if (found) resolvePromise(found);
      else
        reject(
          new PgVaultError(
            `the archive scanner ended without a result${tool.stderrTail() ? `: ${tool.stderrTail().trim()}` : ''}`,
          ),
        );
    });
  });
  result.catch(() => {});
  return { input: tool.child.stdin!, exited: tool.exited, result };
}

// ---- the script ------------------------------------------------------------------------------

/** Sleeps without spinning: only for a descriptor that turned out non-blocking. */
function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function readSome(fd: number, buffer: Buffer): number {
  for (;;) {
    try {
      return readSync(fd, buffer, 0, buffer.length, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') pause(1);
      else if (code !== 'EINTR') throw err;
    }
  }
}

function writeAll(fd: number, buffer: Buffer, length: number): void {
  let written = 0;
  while (written < length) {
    try {
      written += writeSync(fd, buffer, written, length - written);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') pause(1);
      else if (code === 'EPIPE') throw new Error('the compressor stopped reading (EPIPE)');
      else if (code !== 'EINTR') throw err;
    }
  }
}

/** Copies stdin to stdout unchanged, parsing it; progress and the result go to fd 3 as lines. */
export function runArchiveScanner(): void {
  const parser = new CustomArchiveParser();
  // The parser keeps no view of what it is given (TOC fields are decoded at once), so one buffer
  // serves every read.
  const buffer = Buffer.allocUnsafe(BUFFER_BYTES);
  let bytes = 0;
  let reported = 0;
  for (let n = readSome(0, buffer); n > 0; n = readSome(0, buffer)) {
    parser.write(buffer.subarray(0, n));
    writeAll(1, buffer, n);
    bytes += n;
    if (bytes - reported >= PROGRESS_EVERY_BYTES) {
      writeSync(3, `${PROGRESS_PREFIX}${bytes}\n`);
      reported = bytes;
    }
  }
  // The compressor sees the end now, while the result is put together.
  closeSync(1);
  parser.end();
  writeSync(3, `${RESULT_PREFIX}${JSON.stringify(scanFindings(parser, bytes))}\n`);
}

if (require.main === module) {
  try {
    runArchiveScanner();
  } catch (err) {
    process.stderr.write(`archive scanner: ${errorMessage(err)}\n`);
    process.exitCode = 1;
  }
}
