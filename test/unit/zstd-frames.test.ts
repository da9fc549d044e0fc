import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IntegrityError } from '../../core/errors';
import { ZstdFileReports, ZstdFrameSplitter } from '../../core/stream';

let dir: string;
/** Files chosen to give every block type: text (compressed blocks), zeros (RLE), random (raw), empty. */
let files: { path: string; data: Buffer }[];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'pgvault-frames-'));
  const text = Buffer.from(
    Array.from({ length: 40_000 }, (_, i) => `row ${i} of the review table, rated ${i % 5}\n`).join(''),
  );
  const contents = [
    text,
    Buffer.alloc(600_000),
    randomBytes(300_000),
    Buffer.alloc(0),
    text.subarray(0, 1000),
  ];
  files = contents.map((data, i) => {
    const path = join(dir, `file-${i}`);
    writeFileSync(path, data);
    return { path, data };
  });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function zstd(args: string[], input?: Buffer): Buffer {
  const r = spawnSync('zstd', args, { input, maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`zstd ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Feeds `stream` to a splitter in pieces of `piece` bytes; returns each frame and its declared size. */
async function split(stream: Buffer, piece: number, expected?: number) {
  const frames: { bytes: Buffer[]; size: number | undefined }[] = [];
  const splitter = new ZstdFrameSplitter((index, size) => {
    const sink = new PassThrough();
    const frame = { bytes: [] as Buffer[], size };
    frames[index] = frame;
    sink.on('data', (b: Buffer) => frame.bytes.push(b));
    sink.on('error', () => {});
    return sink;
  }, expected);
  const pieces: Buffer[] = [];
  for (let at = 0; at < stream.length; at += piece) pieces.push(stream.subarray(at, at + piece));
  await pipeline(Readable.from(pieces), splitter);
  return frames.map((f) => ({ data: Buffer.concat(f.bytes), size: f.size }));
}

describe('splitting one zstd run over several files into its frames', () => {
  it.each([
    ['whole reads', 1 << 20, [0, 1, 2, 3, 4]],
    ['odd pieces that cut headers in two', 7, [0, 1, 2, 3, 4]],
    ['single bytes', 1, [4, 3, 1]],
  ])('gives each file its own frame, which decompresses to that file (%s)', async (_name, piece, which) => {
    // Prepare: one zstd run, the way the WAL uploader runs it.
    const chosen = which.map((i) => files[i]!);
    const stream = zstd(['-q', '-c', '-3', '--single-thread', '--', ...chosen.map((f) => f.path)]);

    // Act
    const frames = await split(stream, piece, chosen.length);

    // Assess
    expect(frames).toHaveLength(chosen.length);
    frames.forEach((frame, i) => {
      expect(frame.size).toBe(chosen[i]!.data.length);
      expect(zstd(['-d', '-q', '-c'], frame.data).equals(chosen[i]!.data)).toBe(true);
    });
  });

  it('handles frames without a checksum or a content size', async () => {
    const one = zstd(['-q', '-c', '--no-check', '--no-content-size'], files[0]!.data);
    const two = zstd(['-q', '-c', '--no-check'], files[4]!.data);

    const frames = await split(Buffer.concat([one, two]), 4096, 2);

    expect(frames[0]!.size).toBeUndefined();
    expect(zstd(['-d', '-q', '-c'], frames[0]!.data).equals(files[0]!.data)).toBe(true);
    expect(zstd(['-d', '-q', '-c'], frames[1]!.data).equals(files[4]!.data)).toBe(true);
  });

  it('fails on output that stops inside a frame', async () => {
    const stream = zstd(['-q', '-c', '--', files[0]!.path, files[1]!.path]);

    await expect(split(stream.subarray(0, stream.length - 10), 65536)).rejects.toThrow(
      /ended inside frame 1: the compressor stopped early/,
    );
  });

  it('fails when the frame count differs from the file count, either way', async () => {
    const stream = zstd(['-q', '-c', '--', files[0]!.path, files[4]!.path]);

    await expect(split(stream, 65536, 3)).rejects.toThrow(/wrote 2 frame\(s\) for 3 file\(s\)/);
    await expect(split(stream, 65536, 1)).rejects.toBeInstanceOf(IntegrityError);
  });

  it('fails on bytes that are not a zstd frame', async () => {
    await expect(split(Buffer.from('not zstd at all'), 65536)).rejects.toThrow(/magic number/);
  });
});

describe("zstd's report of each file it finished (-vvv), which proves a frame's file before zstd exits", () => {
  /** The promise's value if it has settled by the next turn of the event loop, else 'pending'. */
  function settledNow<T>(promise: Promise<T>): Promise<T | 'pending'> {
    return Promise.race([promise, new Promise<'pending'>((r) => setImmediate(() => r('pending')))]);
  }

  function reportsOf(paths: string[]) {
    const run = spawnSync('zstd', ['-q', '-c', '-3', '-vvv', '--no-progress', '--', ...paths], {
      maxBuffer: 1 << 26,
    });
    const reports = new ZstdFileReports(paths);
    const text = run.stderr.toString('latin1');
    // In small pieces: a report may arrive split over reads.
    for (let at = 0; at < text.length; at += 7) reports.push(text.slice(at, at + 7));
    return { reports, stdout: run.stdout, status: run.status };
  }

  it('names every file in turn, with the size of its frame', async () => {
    const paths = [files[0]!.path, files[2]!.path, files[4]!.path];

    const { reports, stdout } = reportsOf(paths);
    const frames = await split(stdout, 65536, 3);

    expect(await Promise.all(paths.map((_, i) => reports.report(i)))).toEqual(
      frames.map((f) => f.data.length),
    );
  });

  it('credits nothing after a file zstd skipped, so no frame can pass for its neighbour', async () => {
    const paths = [files[0]!.path, join(dir, 'missing'), files[4]!.path];

    const { reports, status } = reportsOf(paths);

    expect(status).not.toBe(0);
    expect(await reports.report(0)).toBeGreaterThan(0);
    // Settled, with no size: no report will count for them.
    expect([await settledNow(reports.report(1)), await settledNow(reports.report(2))]).toEqual([
      undefined,
      undefined,
    ]);
  });

  it('leaves a file unproven by a report with rounded sizes (lower verbosity or another version)', async () => {
    const reports = new ZstdFileReports(['/w/a']);

    reports.push('/w/a : 33.79%   (  16.0 MiB =>   5.40 MiB, /*stdout*\\) \n');

    // No size, and still waiting for a report that may come (the exit status decides meanwhile).
    expect(await settledNow(reports.report(0))).toBe('pending');
  });
});
