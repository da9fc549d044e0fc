import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Duplex, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Compression } from '../../core/config';
import { IntegrityError, MissingToolError, PgVaultError } from '../../core/errors';
import {
  compressionTool,
  compressStage,
  DigestMeter,
  decompressStage,
  decryptStage,
  encryptStage,
  startTool,
  ToolExitError,
  toolStage,
  toolVersion,
} from '../../core/stream';

const PASSPHRASE = 'integration passphrase with spaces & symbols $HOME';
const ITERATIONS = 10_000;

/** Dump-like data: text rows that compress well, and random bytes that do not. */
function mixedData(size: number): Buffer {
  const rows: string[] = [];
  let length = 0;
  for (let id = 0; length < size / 2; id++) {
    const row = `${id}\tcustomer-${id % 977}@example.com\t2026-02-${(id % 28) + 1}\t${(id * 7.31).toFixed(2)}\tshipped\n`;
    rows.push(row);
    length += row.length;
  }
  return Buffer.concat([Buffer.from(rows.join('')), randomBytes(size / 2)]).subarray(0, size);
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function runThrough(stages: Duplex[], input: Buffer): Promise<Buffer> {
  const output: Buffer[] = [];
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < input.length; offset += 65_536)
    chunks.push(input.subarray(offset, offset + 65_536));
  await pipeline([
    Readable.from(chunks),
    ...stages,
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        output.push(chunk);
        callback();
      },
    }),
  ]);
  return Buffer.concat(output);
}

/** Runs a program the way an operator would, data on stdin and out of stdout. */
function runCli(command: string, args: string[], input: Buffer, env?: NodeJS.ProcessEnv): Buffer {
  const result = spawnSync(command, args, { input, env: env ?? process.env, maxBuffer: 256 * 1024 * 1024 });
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr.toString()}`);
  }
  return result.stdout;
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The tools' own command lines, deliberately the reference single-threaded programs. */
const referenceTools: Record<Exclude<Compression, 'none'>, { compress: string[]; decompress: string[] }> = {
  gzip: { compress: ['gzip', '-c'], decompress: ['gunzip', '-c'] },
  bzip2: { compress: ['bzip2', '-c'], decompress: ['bunzip2', '-c'] },
  xz: { compress: ['xz', '-c'], decompress: ['unxz', '-c'] },
  zstd: { compress: ['zstd', '-q', '-c'], decompress: ['zstd', '-d', '-q', '-c'] },
  lz4: { compress: ['lz4', '-q', '-c'], decompress: ['lz4', '-d', '-q', '-c'] },
};

describe('the whole data path', () => {
  // First in the file: rss is measured before other tests leave freed-but-kept memory around.
  it('streams 160 MiB through compress, encrypt, meter, decrypt and decompress in flat memory', async () => {
    // Prepare
    const total = 160 * 1024 * 1024;
    const chunkSize = 256 * 1024;
    const text = Buffer.from(mixedData(chunkSize).subarray(0, chunkSize / 2));
    const sourceHash = createHash('sha256');
    const sinkHash = createHash('sha256');
    let produced = 0;
    let received = 0;
    const source = new Readable({
      highWaterMark: chunkSize,
      read() {
        if (produced >= total) {
          this.push(null);
          return;
        }
        // Half compressible text, half random: compressors do real work and output is not tiny.
        const chunk = Buffer.concat([text, randomBytes(chunkSize / 2)]);
        produced += chunk.length;
        sourceHash.update(chunk);
        this.push(chunk);
      },
    });
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        received += chunk.length;
        sinkHash.update(chunk);
        callback();
      },
    });
    const meter = new DigestMeter();
    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    // Live Buffers, as a second view: rss keeps memory the allocator has not returned to the system.
    const buffersBefore = process.memoryUsage().arrayBuffers;
    let buffersPeak = buffersBefore;
    const sampler = setInterval(() => {
      const usage = process.memoryUsage();
      rssPeak = Math.max(rssPeak, usage.rss);
      buffersPeak = Math.max(buffersPeak, usage.arrayBuffers);
    }, 20);

    // Act
    const started = Date.now();
    await pipeline([
      source,
      compressStage('zstd', { threads: 2 }),
      encryptStage(PASSPHRASE, ITERATIONS),
      meter,
      decryptStage(PASSPHRASE, ITERATIONS),
      decompressStage('zstd', { threads: 2 }),
      sink,
    ]);
    const seconds = (Date.now() - started) / 1000;
    clearInterval(sampler);
    rssPeak = Math.max(rssPeak, process.memoryUsage().rss);

    // Assess
    expect(received).toBe(total);
    expect(sinkHash.digest('hex')).toBe(sourceHash.digest('hex'));
    expect(meter.bytes).toBeGreaterThan(total / 3);
    expect(meter.bytes).toBeLessThan(total);
    const growthMb = (rssPeak - rssBefore) / 1024 / 1024;
    const buffersGrowthMb = (buffersPeak - buffersBefore) / 1024 / 1024;
    console.info(
      `data path: ${(total / 1e6 / seconds).toFixed(0)} MB/s, growth: rss ${growthMb.toFixed(1)} MB, buffers ${buffersGrowthMb.toFixed(1)} MB`,
    );
    // Buffering the stream would grow rss by the compressed size (about 80 MiB here) or more. The
    // flat case measures 30-40 MB: garbage V8 has not collected yet, the same for 96 or 160 MiB.
    // Live Buffers are only logged, since they count that garbage too.
    expect(growthMb).toBeLessThan(64);
  });
});

describe('compression with the standard tools', () => {
  const data = mixedData(3 * 1024 * 1024);

  it.each(Object.keys(referenceTools) as Exclude<Compression, 'none'>[])(
    '%s: pgvault compresses, the tool itself decompresses',
    async (algorithm) => {
      // Prepare
      const [command, ...args] = referenceTools[algorithm].decompress as [string, ...string[]];

      // Act
      const compressed = await runThrough([compressStage(algorithm, { threads: 2 })], data);
      const restored = runCli(command, args, compressed);

      // Assess
      expect(compressed.length).toBeLessThan(data.length);
      expect(sha256(restored)).toBe(sha256(data));
    },
  );

  it.each(Object.keys(referenceTools) as Exclude<Compression, 'none'>[])(
    '%s: the tool itself compresses, pgvault decompresses',
    async (algorithm) => {
      // Prepare
      const [command, ...args] = referenceTools[algorithm].compress as [string, ...string[]];
      const compressed = runCli(command, args, data);

      // Act
      const restored = await runThrough([decompressStage(algorithm, { threads: 2 })], compressed);

      // Assess
      expect(sha256(restored)).toBe(sha256(data));
    },
  );

  it('passes data through unchanged for none', async () => {
    // Act
    const output = await runThrough(
      [compressStage('none', { threads: 2 }), decompressStage('none', { threads: 2 })],
      data,
    );

    // Assess
    expect(output.equals(data)).toBe(true);
  });

  it('compresses empty input into a valid empty file', async () => {
    // Act
    const compressed = await runThrough([compressStage('zstd', { threads: 2 })], Buffer.alloc(0));

    // Assess
    expect(runCli('zstd', ['-d', '-q', '-c'], compressed).length).toBe(0);
  });

  it.each(Object.keys(referenceTools) as Exclude<Compression, 'none'>[])(
    '%s: garbage input fails with the tool name and its own message, not EPIPE',
    async (algorithm) => {
      // Prepare: several MB, so the tool dies while pgvault is still writing to it
      const garbage = randomBytes(8 * 1024 * 1024);
      const tool = compressionTool(algorithm, 'decompress');
      const command = tool === 'builtin' ? 'zlib' : tool.command;

      // Act
      const decompressing = runThrough([decompressStage(algorithm, { threads: 2 })], garbage);

      // Assess
      const error = await decompressing.then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(ToolExitError);
      const message = (error as Error).message;
      expect(message).toMatch(new RegExp(`^${command} failed with exit code \\d+: .+`));
      expect(message).not.toContain('EPIPE');
      expect(message).not.toContain('wrote nothing to stderr');
    },
  );

  it('reports the versions of the tools it uses', async () => {
    // Act
    const zstdVersion = await toolVersion('zstd');
    const bzip2Version = await toolVersion('bzip2');
    const missing = await toolVersion('pgvault-no-such-tool');

    // Assess
    expect(zstdVersion).toMatch(/^\d+\.\d+\.\d+$/);
    expect(bzip2Version).toMatch(/^\d+\.\d+/);
    expect(missing).toBeUndefined();
  });
});

describe('encryption compatible with openssl enc', () => {
  const opensslEnv = { ...process.env, PGVAULT_TEST_KEY: PASSPHRASE };
  const opensslArgs = ['-aes-256-cbc', '-pbkdf2', '-iter', String(ITERATIONS), '-md', 'sha256'];
  let keyDirectory = '';
  let keyFile = '';

  beforeAll(() => {
    keyDirectory = mkdtempSync(join(tmpdir(), 'pgvault-key-'));
    keyFile = join(keyDirectory, 'encryption-key');
    writeFileSync(keyFile, `${PASSPHRASE}\n`, { mode: 0o600 });
  });

  afterAll(() => {
    rmSync(keyDirectory, { recursive: true, force: true });
  });

  it.each([0, 15, 16, 17, 1024 * 1024 + 3])(
    'openssl decrypts what pgvault encrypts (%i bytes)',
    async (size) => {
      // Prepare
      const plain = randomBytes(size);

      // Act
      const encrypted = await runThrough([encryptStage(PASSPHRASE, ITERATIONS)], plain);
      const viaEnv = runCli(
        'openssl',
        ['enc', '-d', ...opensslArgs, '-pass', 'env:PGVAULT_TEST_KEY'],
        encrypted,
        opensslEnv,
      );
      const viaFile = runCli('openssl', ['enc', '-d', ...opensslArgs, '-pass', `file:${keyFile}`], encrypted);

      // Assess
      expect(viaEnv.equals(plain)).toBe(true);
      expect(viaFile.equals(plain)).toBe(true);
    },
  );

  it.each([0, 15, 16, 17, 1024 * 1024 + 3])(
    'pgvault decrypts what openssl encrypts (%i bytes)',
    async (size) => {
      // Prepare
      const plain = randomBytes(size);
      const encrypted = runCli(
        'openssl',
        ['enc', ...opensslArgs, '-salt', '-pass', 'env:PGVAULT_TEST_KEY'],
        plain,
        opensslEnv,
      );

      // Act
      const decrypted = await runThrough([decryptStage(PASSPHRASE, ITERATIONS)], encrypted);

      // Assess
      expect(decrypted.equals(plain)).toBe(true);
    },
  );

  it('refuses an object openssl encrypted with another passphrase', async () => {
    // Prepare: a fixed salt makes the (otherwise 1 in 256) lucky padding impossible to hit by chance
    const encrypted = runCli(
      'openssl',
      ['enc', ...opensslArgs, '-S', '0102030405060708', '-pass', 'pass:another passphrase'],
      Buffer.from('secret rows'.repeat(100)),
    );

    // Act
    const decrypting = runThrough([decryptStage(PASSPHRASE, ITERATIONS)], encrypted);

    // Assess
    await expect(decrypting).rejects.toBeInstanceOf(IntegrityError);
  });
});

describe('programs as stream stages', () => {
  it('gates the end of the output on the exit status', async () => {
    // Prepare: the program closes stdout first and fails 300 ms later
    const stage = toolStage('sh', ['-c', 'cat; exec >&-; sleep 0.3; exit 3'], { label: 'late failer' });
    let ended = false;
    stage.on('end', () => {
      ended = true;
    });

    // Act
    const running = runThrough([stage], Buffer.from('all the output arrived'));

    // Assess
    await expect(running).rejects.toThrow('late failer failed with exit code 3');
    expect(ended).toBe(false);
  });

  it('ends only after a successful exit, however late it comes', async () => {
    // Prepare
    const stage = toolStage('sh', ['-c', 'cat; exec >&-; sleep 0.3; exit 0']);
    const started = Date.now();

    // Act
    const output = await runThrough([stage], Buffer.from('payload'));

    // Assess
    expect(output.toString()).toBe('payload');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it('as the last stage of a pipeline, finishes only after a successful exit', async () => {
    // Prepare: a reader like pg_restore, whose output is not a stream stage
    const failing = toolStage(
      'sh',
      ['-c', 'cat > /dev/null; sleep 0.2; echo "pg_restore: error: could not execute query" >&2; exit 1'],
      {
        stdout: 'ignore',
        label: 'pg_restore',
      },
    );
    const succeeding = toolStage('sh', ['-c', 'cat > /dev/null; sleep 0.2'], { stdout: 'ignore' });
    const started = Date.now();

    // Act
    const failingRun = pipeline(Readable.from([Buffer.from('dump bytes')]), failing);
    const succeedingRun = pipeline(Readable.from([Buffer.from('dump bytes')]), succeeding);

    // Assess
    await expect(failingRun).rejects.toThrow(
      'pg_restore failed with exit code 1: pg_restore: error: could not execute query',
    );
    await expect(succeedingRun).resolves.toBeUndefined();
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
  });

  it('carries the last stderr line in its error', async () => {
    // Prepare
    const stage = toolStage(
      'sh',
      ['-c', 'echo "first line" >&2; echo "pg_dump: error: connection refused" >&2; echo >&2; exit 1'],
      {
        label: 'pg_dump',
      },
    );

    // Act
    const running = runThrough([stage], Buffer.alloc(0));

    // Assess
    await expect(running).rejects.toThrow(
      'pg_dump failed with exit code 1: pg_dump: error: connection refused',
    );
  });

  it('reports a missing program with how to install it', async () => {
    // Prepare
    const stage = toolStage('pgvault-no-such-tool', [], { installHint: 'apt-get install pgvault-tools' });

    // Act
    const running = runThrough([stage], Buffer.from('x'));

    // Assess
    await expect(running).rejects.toBeInstanceOf(MissingToolError);
    await expect(running).rejects.toThrow(
      'pgvault-no-such-tool is not installed; install it with: apt-get install pgvault-tools',
    );
  });

  it('kills the program when the stage is destroyed', async () => {
    // Prepare: cat waits on its stdin forever
    const stage = toolStage('cat', []);
    const pid = stage.child.pid;
    expect(pid).toBeGreaterThan(0);
    expect(isRunning(pid!)).toBe(true);

    // Act
    stage.destroy();
    const outcome = await stage.exited.then(
      () => 'exited 0',
      (err: Error) => err.message,
    );

    // Assess
    expect(outcome).toBe('cat was killed by SIGTERM and wrote nothing to stderr; run it by hand to see why');
    expect(isRunning(pid!)).toBe(false);
  });

  it('kills the program when a later stage of the pipeline fails', async () => {
    // Prepare
    const stage = toolStage('cat', []);
    const pid = stage.child.pid!;
    const failingSink = new Writable({
      write(_chunk, _encoding, callback) {
        callback(new Error('upload refused'));
      },
    });
    const endless = new Readable({
      read() {
        this.push(Buffer.alloc(65_536));
      },
    });

    // Act
    const running = pipeline(endless, stage, failingSink);

    // Assess
    await expect(running).rejects.toThrow('upload refused');
    await stage.exited.catch(() => {});
    expect(isRunning(pid)).toBe(false);
  });

  it('holds back the source while the reader is slow (backpressure through the program)', async () => {
    // Prepare
    let pulled = 0;
    let consumed = 0;
    let largestBacklog = 0;
    const total = 64 * 1024 * 1024;
    const chunk = Buffer.alloc(65_536, 7);
    const source = new Readable({
      read() {
        if (pulled >= total) {
          this.push(null);
          return;
        }
        pulled += chunk.length;
        this.push(chunk);
      },
    });
    const slowReader = new Writable({
      highWaterMark: 65_536,
      write(data: Buffer, _encoding, callback) {
        consumed += data.length;
        largestBacklog = Math.max(largestBacklog, pulled - consumed);
        // 64 MB at this pace takes seconds: enough time for an unbounded buffer to fill up
        if (consumed % (1024 * 1024) === 0) setTimeout(callback, 5);
        else callback();
      },
    });

    // Act
    await pipeline(source, toolStage('cat', []), slowReader);

    // Assess
    expect(consumed).toBe(total);
    // Kernel pipe buffers and the stage's 256 KiB buffers on each side, far below 64 MB.
    expect(largestBacklog).toBeLessThan(4 * 1024 * 1024);
  });

  it('fails when the program exits 0 without reading all of its input', async () => {
    // Prepare
    const input = randomBytes(8 * 1024 * 1024);

    // Act
    const running = runThrough([toolStage('head', ['-c', '10'])], input);

    // Assess
    await expect(running).rejects.toThrow('head exited before reading all of its input');
  });

  it('accepts unread input when asked to, judging by the exit status', async () => {
    // Prepare
    const input = randomBytes(8 * 1024 * 1024);

    // Act
    const output = await runThrough([toolStage('head', ['-c', '10'], { discardUnreadInput: true })], input);

    // Assess
    expect(output.equals(input.subarray(0, 10))).toBe(true);
  });

  it('keeps only the tail of a chatty stderr', async () => {
    // Prepare
    const tool = startTool(
      'sh',
      ['-c', 'i=0; while [ $i -lt 3000 ]; do echo "warning line $i" >&2; i=$((i+1)); done; exit 2'],
      {
        stdin: 'ignore',
        label: 'chatty',
      },
    );
    tool.stdout.resume();

    // Act
    const outcome = await tool.exited.then(
      () => undefined,
      (err: unknown) => err,
    );

    // Assess
    expect(outcome).toBeInstanceOf(ToolExitError);
    expect((outcome as ToolExitError).message).toBe('chatty failed with exit code 2: warning line 2999');
    expect(tool.stderrTail().length).toBeLessThanOrEqual(8 * 1024);
    expect(tool.stderrTail()).not.toContain('warning line 0\n');
  });

  it('with bufferOutput, runs the program under stdbuf, output unchanged and exit status kept', async () => {
    // Prepare: seq writes through stdio; 2 MB of it, then a failing exit.
    const tool = startTool('sh', ['-c', 'seq 1 300000; exit 3'], { stdin: 'ignore', bufferOutput: true });
    const expected = spawnSync('seq', ['1', '300000'], { maxBuffer: 1 << 24 }).stdout;

    // Act
    const output = Buffer.concat(await tool.stdout.toArray());
    const outcome = await tool.exited.then(
      () => undefined,
      (err: unknown) => err,
    );

    // Assess: the speed-up itself is measured by the benchmark, not here.
    expect(tool.child.spawnargs.slice(0, 3)).toEqual(['stdbuf', '-o1M', 'sh']);
    expect(output.equals(expected)).toBe(true);
    expect(outcome).toBeInstanceOf(ToolExitError);
    expect((outcome as ToolExitError).message).toMatch(/^sh failed with exit code 3/);
  });

  it('keeps the whole output of a program that exited before anything read it', async () => {
    // Prepare: a compressor given a tiny file (a timeline history) exits within milliseconds; the
    // reader attaches only after an await. Node drops an unread stdout at exit unless it is held.
    const tool = startTool('sh', ['-c', 'printf "1\\t0/802EF8\\tno recovery target specified\\n"'], {
      stdin: 'ignore',
    });
    await tool.exited;
    await new Promise((resolve) => setTimeout(resolve, 50));

    // Act
    const output = Buffer.concat(await tool.stdout.toArray());

    // Assess
    expect(output.toString()).toBe('1\t0/802EF8\tno recovery target specified\n');
  });

  it('passes secrets through the environment, not the command line', async () => {
    // Prepare
    const tool = startTool('sh', ['-c', 'printf %s "$PGPASSWORD"'], {
      env: { PATH: process.env.PATH, PGPASSWORD: 's3cret' },
      stdin: 'ignore',
    });

    // Act
    const output = Buffer.concat(await tool.stdout.toArray());
    await tool.exited;

    // Assess
    expect(output.toString()).toBe('s3cret');
    expect(tool.child.spawnargs.join(' ')).not.toContain('s3cret');
  });

  it('wraps a failure to start in a PgVaultError naming the program', async () => {
    // Act
    const tool = startTool('sh', ['-c', 'true'], { cwd: '/nonexistent/directory', label: 'psql' });

    // Assess
    await expect(tool.exited).rejects.toBeInstanceOf(PgVaultError);
    await expect(tool.exited).rejects.toThrow('could not start psql');
  });
});
