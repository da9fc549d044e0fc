import { createHash, type Hash } from 'node:crypto';
import { finished, Transform, type TransformCallback, Writable } from 'node:stream';
import { PgVaultError } from '../errors';

/** Progress callbacks at most this often: enough for a progress bar, negligible cost per chunk. */
const PROGRESS_INTERVAL_MS = 250;

export interface DigestMeterOptions {
  /** Called with the bytes seen so far, at most every 250 ms, and once more at the end. */
  onProgress?: (bytes: number) => void;
  /** Compute the sha256 (default); false only counts, for streams checked some other way. */
  hash?: boolean;
}

/** Passes bytes through unchanged while counting them and computing their sha256. */
export class DigestMeter extends Transform {
  private readonly hash: Hash | undefined;
  private digest: string | undefined;
  private lastProgressAt = 0;
  private readonly onProgress: ((bytes: number) => void) | undefined;
  private count = 0;

  constructor(options: DigestMeterOptions = {}) {
    super();
    this.onProgress = options.onProgress;
    this.hash = options.hash === false ? undefined : createHash('sha256');
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash?.update(chunk);
    this.count += chunk.length;
    if (this.onProgress) {
      const now = Date.now();
      if (now - this.lastProgressAt >= PROGRESS_INTERVAL_MS) {
        this.lastProgressAt = now;
        this.onProgress(this.count);
      }
    }
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.digest = this.hash?.digest('hex') ?? '';
    this.onProgress?.(this.count);
    callback();
  }

  /** Bytes passed through so far. */
  get bytes(): number {
    return this.count;
  }

  /** The sha256 of everything that passed, hex; available once the input has ended. */
  sha256(): string {
    if (this.hash === undefined)
      throw new PgVaultError('this DigestMeter only counts bytes; it was made with hash: false');
    if (this.digest === undefined) {
      throw new PgVaultError('DigestMeter.sha256() was read before the stream ended; wait for it to finish');
    }
    return this.digest;
  }
}

/**
 * Gathers small chunks into ones of at least `bytes` (the last may be smaller), so the stages after
 * it (encryption, hashing, a file write through Node's thread pool) run once per large chunk instead
 * of once per pipe read. A compressor writes its output in pieces of 20-30 KB; at 5.5 MB per WAL
 * segment that was about 250 trips through every stage and the thread pool per segment.
 */
export class Coalesce extends Transform {
  private held: Buffer[] = [];
  private heldBytes = 0;

  constructor(private readonly bytes: number) {
    super({ readableHighWaterMark: bytes, writableHighWaterMark: bytes });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.heldBytes === 0 && chunk.length >= this.bytes) {
      callback(null, chunk);
      return;
    }
    this.held.push(chunk);
    this.heldBytes += chunk.length;
    if (this.heldBytes >= this.bytes) this.release();
    callback();
  }

  override _flush(callback: TransformCallback): void {
    if (this.heldBytes > 0) this.release();
    callback();
  }

  private release(): void {
    const out = this.held.length === 1 ? this.held[0]! : Buffer.concat(this.held, this.heldBytes);
    this.held = [];
    this.heldBytes = 0;
    this.push(out);
  }
}

/**
 * One Writable feeding several: every chunk goes to all destinations (the same Buffer, not copies)
 * and the next is accepted only when every destination that asked for a pause has drained, so the
 * slowest destination sets the pace and nothing piles up. Ending it ends them all; it finishes when
 * all have finished. If any destination fails, the others are destroyed with that error (an upload
 * must not complete from a pass another target rejected) and the tee fails with it.
 */
export function teeTo(destinations: Writable[]): Writable {
  if (destinations.length === 0) throw new PgVaultError('teeTo needs at least one destination');
  let failure: Error | undefined;
  let tee: Writable;

  const failAll = (err: Error) => {
    if (failure) return;
    failure = err;
    for (const destination of destinations) {
      if (!destination.destroyed) destination.destroy(err);
    }
    tee.destroy(err);
  };

  // finished() also reports a destination closed before it finished (premature close).
  const destinationsFinished = destinations.map(
    (destination) =>
      new Promise<void>((resolve, reject) => {
        finished(destination, { readable: false }, (err) => {
          if (err) {
            failAll(err);
            reject(err);
          } else resolve();
        });
      }),
  );
  for (const done of destinationsFinished) done.catch(() => {});

  tee = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      let waiting = 0;
      const drained = () => {
        waiting--;
        if (waiting === 0 && !failure) callback();
      };
      for (const destination of destinations) {
        if (!destination.write(chunk)) {
          waiting++;
          destination.once('drain', drained);
        }
      }
      // A failure while waiting destroys the tee, which settles this write.
      if (waiting === 0) callback();
    },
    final(callback) {
      for (const destination of destinations) destination.end();
      Promise.all(destinationsFinished).then(
        () => callback(),
        (err: Error) => callback(err),
      );
    },
    destroy(err, callback) {
      // Destinations are left alone after a clean finish: a finished PassThrough may still be
      // handing its buffered bytes to an upload.
      if (!failure && !tee.writableFinished) {
        failure = err ?? new PgVaultError('the data stream stopped before its end; nothing was stored');
        for (const destination of destinations) {
          if (!destination.destroyed) destination.destroy(failure);
        }
      }
      callback(err);
    },
  });
  return tee;
}

/**
 * A pass-through that holds its end until `ready()` resolves, and fails if it rejects. Placed last
 * before storage, it keeps an upload from completing before every upstream program (pg_dump, the
 * compressor) has exited successfully: their output can look complete while the exit says otherwise.
 */
export function gateOn(ready: () => Promise<void>): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      callback(null, chunk);
    },
    flush(callback) {
      let waiting: Promise<void>;
      try {
        waiting = ready();
      } catch (err) {
        return callback(err as Error);
      }
      waiting.then(
        () => callback(),
        (err: unknown) => callback(err instanceof Error ? err : new PgVaultError(String(err))),
      );
    },
  });
}
