import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { descriptorWriteStream } from '../../core/stream/descriptor';
import { Coalesce, DigestMeter, gateOn, teeTo } from '../../core/stream/digest';

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A source of `total` bytes in `chunkSize` pieces that records how much has been pulled from it. */
function countingSource(
  total: number,
  chunkSize: number,
): { stream: Readable; data: Buffer; pulled: () => number } {
  const data = randomBytes(total);
  let offset = 0;
  const stream = new Readable({
    highWaterMark: chunkSize,
    read() {
      if (offset >= total) {
        this.push(null);
        return;
      }
      const chunk = data.subarray(offset, offset + chunkSize);
      offset += chunk.length;
      this.push(chunk);
    },
  });
  return { stream, data, pulled: () => offset };
}

/** A destination that keeps what it receives, optionally taking `delayMs` per chunk. */
function collectingDestination(delayMs = 0): {
  stream: Writable;
  received: () => Buffer;
  count: () => number;
} {
  const chunks: Buffer[] = [];
  let count = 0;
  const stream = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk);
      count += chunk.length;
      if (delayMs > 0) setTimeout(callback, delayMs);
      else callback();
    },
  });
  return { stream, received: () => Buffer.concat(chunks), count: () => count };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('DigestMeter', () => {
  it('passes bytes through unchanged and reports their sha256 and count', async () => {
    // Prepare
    const { stream: source, data } = countingSource(3 * 1024 * 1024 + 7, 65_536);
    const meter = new DigestMeter();
    const sink = collectingDestination();

    // Act
    await pipeline(source, meter, sink.stream);

    // Assess
    expect(meter.sha256()).toBe(sha256(data));
    expect(meter.bytes).toBe(data.length);
    expect(sink.received().equals(data)).toBe(true);
  });

  it('gives the sha256 of nothing for empty input', async () => {
    // Prepare
    const meter = new DigestMeter();

    // Act
    await pipeline(Readable.from([]), meter, collectingDestination().stream);

    // Assess
    expect(meter.sha256()).toBe(sha256(Buffer.alloc(0)));
    expect(meter.bytes).toBe(0);
  });

  it('only counts when made with hash: false, and says so when asked for a digest', async () => {
    const data = randomBytes(100_000);
    const meter = new DigestMeter({ hash: false });
    const out: Buffer[] = [];
    const sink = new Writable({
      write: (c, _e, cb) => {
        out.push(c);
        cb();
      },
    });
    await pipeline(Readable.from([data]), meter, sink);
    expect(meter.bytes).toBe(100_000);
    expect(Buffer.concat(out).equals(data)).toBe(true);
    expect(() => meter.sha256()).toThrow(/only counts bytes/);
  });

  it('refuses to give a digest before the stream has ended', () => {
    // Prepare
    const meter = new DigestMeter();
    meter.write(Buffer.from('partial'));

    // Act / Assess
    expect(() => meter.sha256()).toThrow('before the stream ended');
  });

  it('reports progress at most every 250 ms, and once at the end', async () => {
    // Prepare
    vi.useFakeTimers({ toFake: ['Date'] });
    const reports: number[] = [];
    const meter = new DigestMeter({ onProgress: (bytes) => reports.push(bytes) });
    meter.resume();
    const write = (size: number) =>
      new Promise<void>((resolve) => meter.write(Buffer.alloc(size), () => resolve()));

    // Act
    await write(10);
    vi.advanceTimersByTime(100);
    await write(20);
    await write(30);
    vi.advanceTimersByTime(200);
    await write(40);
    await new Promise<void>((resolve) => meter.end(resolve));

    // Assess
    expect(reports).toEqual([10, 100, 100]);
  });
});

describe('teeTo', () => {
  it('delivers every byte to a fast and a slow destination, paced by the slow one', async () => {
    // Prepare
    const chunkSize = 64 * 1024;
    const { stream: source, data, pulled } = countingSource(4 * 1024 * 1024, chunkSize);
    const fast = collectingDestination();
    const slow = collectingDestination(2);
    let largestLead = 0;
    let largestBacklog = 0;
    const watcher = setInterval(() => {
      largestLead = Math.max(largestLead, fast.count() - slow.count());
      largestBacklog = Math.max(largestBacklog, pulled() - slow.count());
    }, 1);

    // Act
    await pipeline(source, teeTo([fast.stream, slow.stream]));
    clearInterval(watcher);

    // Assess
    expect(sha256(fast.received())).toBe(sha256(data));
    expect(sha256(slow.received())).toBe(sha256(data));
    // Unbounded buffering would let the fast side and the source run megabytes ahead.
    expect(largestLead).toBeLessThanOrEqual(4 * chunkSize);
    expect(largestBacklog).toBeLessThanOrEqual(8 * chunkSize);
  });

  it('ends every destination when the input ends', async () => {
    // Prepare
    const first = new PassThrough();
    const second = new PassThrough();
    const firstOutput = first.toArray();
    const secondOutput = second.toArray();

    // Act
    await pipeline(Readable.from([Buffer.from('one '), Buffer.from('pass')]), teeTo([first, second]));

    // Assess
    expect(Buffer.concat(await firstOutput).toString()).toBe('one pass');
    expect(Buffer.concat(await secondOutput).toString()).toBe('one pass');
  });

  it('fails when one destination fails, and destroys the others', async () => {
    // Prepare
    const { stream: source } = countingSource(1024 * 1024, 65_536);
    const healthy = collectingDestination(1);
    let writes = 0;
    const failing = new Writable({
      write(_chunk, _encoding, callback) {
        writes++;
        callback(writes === 3 ? new Error('disk full on target B') : null);
      },
    });

    // Act
    const copying = pipeline(source, teeTo([healthy.stream, failing]));

    // Assess
    await expect(copying).rejects.toThrow('disk full on target B');
    expect(healthy.stream.destroyed).toBe(true);
    expect(healthy.stream.writableFinished).toBe(false);
  });

  it('destroys the destinations when the source fails', async () => {
    // Prepare
    const destination = new PassThrough();
    destination.resume();
    const failingSource = new Readable({
      read() {
        this.destroy(new Error('pg_dump failed'));
      },
    });

    // Act
    const copying = pipeline(failingSource, teeTo([destination]));

    // Assess
    await expect(copying).rejects.toThrow('pg_dump failed');
    expect(destination.destroyed).toBe(true);
    expect(destination.writableFinished).toBe(false);
  });
});

describe('gateOn', () => {
  it('holds the end until ready() resolves', async () => {
    // Prepare
    let open: () => void = () => {};
    const ready = new Promise<void>((resolve) => {
      open = resolve;
    });
    const sink = collectingDestination();
    let finished = false;

    // Act
    const copying = pipeline(
      Readable.from([Buffer.from('all '), Buffer.from('data')]),
      gateOn(() => ready),
      sink.stream,
    ).then(() => {
      finished = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    const finishedBeforeReady = finished;
    const receivedBeforeReady = sink.received().toString();
    open();
    await copying;

    // Assess
    expect(finishedBeforeReady).toBe(false);
    expect(receivedBeforeReady).toBe('all data');
    expect(finished).toBe(true);
  });

  it('fails instead of ending when ready() rejects', async () => {
    // Prepare
    const sink = collectingDestination();

    // Act
    const copying = pipeline(
      Readable.from([Buffer.from('looks complete')]),
      gateOn(() => Promise.reject(new Error('pg_dump failed with exit code 1'))),
      sink.stream,
    );

    // Assess
    await expect(copying).rejects.toThrow('pg_dump failed with exit code 1');
    expect(sink.stream.writableFinished).toBe(false);
  });
});

describe('Coalesce', () => {
  it('passes every byte in order, in chunks of at least the size asked but the last', async () => {
    // Prepare: 1 MB in 20 KB pieces, as a compressor writes them, plus a large piece in the middle.
    const pieces = [
      ...Array.from({ length: 20 }, () => randomBytes(20_000)),
      randomBytes(300_000),
      ...Array.from({ length: 30 }, () => randomBytes(20_000)),
    ];
    const expected = Buffer.concat(pieces);
    const sizes: number[] = [];
    const out: Buffer[] = [];

    // Act
    await pipeline(
      Readable.from(pieces),
      new Coalesce(256 * 1024),
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          sizes.push(chunk.length);
          out.push(chunk);
          cb();
        },
      }),
    );

    // Assess
    expect(sha256(Buffer.concat(out))).toBe(sha256(expected));
    expect(sizes.slice(0, -1).every((n) => n >= 256 * 1024)).toBe(true);
    expect(sizes.length).toBeLessThan(pieces.length / 5);
  });

  it('passes an empty stream as empty', async () => {
    const out: Buffer[] = [];
    await pipeline(
      Readable.from([]),
      new Coalesce(1024),
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          out.push(chunk);
          cb();
        },
      }),
    );
    expect(out).toEqual([]);
  });
});

describe('descriptorWriteStream', () => {
  it('leaves the descriptor open for its owner when the pipeline fails (no double close)', async () => {
    // Prepare: a source that fails after 8 MiB, so writes are in flight when the stream is destroyed.
    const dir = mkdtempSync(join(tmpdir(), 'pgvault-fd-'));
    const fd = openSync(join(dir, 'out'), 'w');
    let sent = 0;
    const source = new Readable({
      read() {
        sent++;
        if (sent > 8) this.destroy(new Error('source failed'));
        else this.push(Buffer.alloc(1 << 20));
      },
    });

    // Act
    const failure = await pipeline(source, descriptorWriteStream(fd)).catch((err: Error) => err);
    await new Promise((r) => setTimeout(r, 50));
    const stillOpen = (() => {
      try {
        fstatSync(fd);
        return true;
      } catch {
        return false;
      }
    })();
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });

    // Assess
    expect(failure).toBeInstanceOf(Error);
    expect((failure as Error).message).toBe('source failed');
    expect(stillOpen).toBe(true);
  });
});
