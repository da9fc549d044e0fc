import { Writable } from 'node:stream';
import { IntegrityError } from '../errors';

/**
 * Splits the output of one `zstd -c a b c` run into its frames, one per input file, without
 * decompressing anything: the zstd format (RFC 8878) gives every frame header's length and every
 * block's size up front, so the boundaries are found by reading a few header bytes per 128 KiB block.
 *
 * Why: the WAL uploader compresses a batch of segments with one zstd process instead of one each.
 * Every process Node starts costs it far more than the fork itself: the fork marks Node's whole heap
 * copy-on-write, and each page Node writes afterwards faults once (measured: 64 MB touched after
 * spawning `true` cost 16,000 page faults and 0.3 CPU s). zstd's own start-up and fresh tables also
 * cost about a third of a segment's compression time.
 *
 * Each frame's bytes go, unchanged, to the Writable `openFrame` returns for it, with backpressure;
 * that Writable is ended when the frame's last block (and checksum) has passed. The frame header's
 * content size, when zstd wrote one (it does for files), is handed over so the caller can check it
 * against the file it expects. A stream that ends inside a frame, a skippable or unknown frame, a
 * reserved block type, or more frames than expected fails the splitter.
 */

const ZSTD_MAGIC = 0xfd2fb528;
const BLOCK_HEADER_BYTES = 3;
const CHECKSUM_BYTES = 4;

/**
 * Where frame `index` goes. `ended` resolves with the frame's size in bytes once its last byte has
 * passed, and rejects if the splitter stops inside it.
 */
export type FrameSink = (index: number, contentSize: number | undefined, ended: Promise<number>) => Writable;

type State =
  | { readonly kind: 'magic' }
  | { readonly kind: 'header'; readonly bytes: number }
  | { readonly kind: 'block-header' }
  | { readonly kind: 'payload'; remaining: number; readonly last: boolean }
  | { readonly kind: 'checksum' };

export class ZstdFrameSplitter extends Writable {
  private state: State = { kind: 'magic' };
  /** Header bytes gathered across chunks (a header may straddle two reads). */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private sink: Writable | undefined;
  private frames = 0;
  private checksummed = false;
  /** Bytes of the current frame passed on so far. */
  private frameBytes = 0;
  /** Settles the current frame's `ended`. */
  private frameEnded: { resolve(bytes: number): void; reject(err: Error): void } | undefined;

  constructor(
    private readonly openFrame: FrameSink,
    private readonly expectedFrames?: number,
  ) {
    super({ highWaterMark: 1 << 20 });
  }

  /** Frames completed so far. */
  get completedFrames(): number {
    return this.sink === undefined ? this.frames : this.frames - 1;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.consume(chunk, 0).then(
      () => callback(),
      (err: unknown) => callback(err as Error),
    );
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.state.kind !== 'magic' || this.pendingBytes > 0) {
      callback(
        new IntegrityError(
          `zstd output ended inside frame ${this.sink !== undefined ? this.frames - 1 : this.frames}: the compressor stopped early`,
        ),
      );
      return;
    }
    if (this.expectedFrames !== undefined && this.frames !== this.expectedFrames) {
      callback(
        new IntegrityError(
          `zstd wrote ${this.frames} frame(s) for ${this.expectedFrames} file(s); nothing kept`,
        ),
      );
      return;
    }
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.sink !== undefined && !this.sink.writableFinished) {
      const stopped = error ?? new IntegrityError('the zstd frame splitter was stopped mid-frame');
      this.frameEnded?.reject(stopped);
      this.sink.destroy(stopped);
    }
    callback(error);
  }

  private async consume(chunk: Buffer, start: number): Promise<void> {
    let offset = start;
    while (offset < chunk.length) {
      const state = this.state;
      if (state.kind === 'payload') {
        const take = Math.min(state.remaining, chunk.length - offset);
        await this.forward(chunk.subarray(offset, offset + take));
        offset += take;
        state.remaining -= take;
        if (state.remaining === 0) {
          if (!state.last) this.state = { kind: 'block-header' };
          else if (this.checksummed) this.state = { kind: 'checksum' };
          else await this.endFrame();
        }
        continue;
      }
      const need = this.bytesNeeded(state);
      const take = Math.min(need - this.pendingBytes, chunk.length - offset);
      this.pending.push(chunk.subarray(offset, offset + take));
      this.pendingBytes += take;
      offset += take;
      if (this.pendingBytes < need) continue;
      const bytes =
        this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
      this.pending = [];
      this.pendingBytes = 0;
      await this.onHeaderBytes(state, bytes);
    }
  }

  private bytesNeeded(state: Exclude<State, { kind: 'payload' }>): number {
    switch (state.kind) {
      case 'magic':
        return 5; // magic number and frame header descriptor
      case 'header':
        return state.bytes;
      case 'block-header':
        return BLOCK_HEADER_BYTES;
      case 'checksum':
        return CHECKSUM_BYTES;
    }
  }

  private async onHeaderBytes(state: Exclude<State, { kind: 'payload' }>, bytes: Buffer): Promise<void> {
    switch (state.kind) {
      case 'magic': {
        const magic = bytes.readUInt32LE(0);
        if (magic !== ZSTD_MAGIC) {
          throw new IntegrityError(
            `zstd output frame ${this.frames} does not start with the zstd magic number (0x${magic.toString(16)})`,
          );
        }
        const descriptor = bytes[4]!;
        if (descriptor & 0x08)
          throw new IntegrityError(`zstd frame ${this.frames} sets a reserved header bit`);
        this.checksummed = (descriptor & 0x04) !== 0;
        const rest = frameHeaderRest(descriptor);
        this.pending = [bytes];
        this.pendingBytes = bytes.length;
        if (rest === 0) await this.startFrame(Buffer.concat(this.takePending()), descriptor);
        else this.state = { kind: 'header', bytes: 5 + rest };
        return;
      }
      case 'header':
        // `bytes` holds the magic and descriptor kept above, then the rest of the header.
        await this.startFrame(bytes, bytes[4]!);
        return;
      case 'block-header': {
        await this.forward(bytes);
        const header = bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16);
        const last = (header & 1) === 1;
        const type = (header >> 1) & 3;
        const size = header >>> 3;
        if (type === 3) throw new IntegrityError(`zstd frame ${this.frames - 1} has a reserved block type`);
        const payload = type === 1 ? 1 : size; // RLE blocks carry one byte
        if (payload > 0) this.state = { kind: 'payload', remaining: payload, last };
        else if (!last) this.state = { kind: 'block-header' };
        else if (this.checksummed) this.state = { kind: 'checksum' };
        else await this.endFrame();
        return;
      }
      case 'checksum':
        await this.forward(bytes);
        await this.endFrame();
        return;
    }
  }

  private takePending(): Buffer[] {
    const taken = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    return taken;
  }

  private async startFrame(header: Buffer, descriptor: number): Promise<void> {
    if (this.expectedFrames !== undefined && this.frames >= this.expectedFrames) {
      throw new IntegrityError(`zstd wrote more frames than the ${this.expectedFrames} file(s) it was given`);
    }
    const index = this.frames++;
    this.frameBytes = 0;
    const ended = new Promise<number>((resolve, reject) => {
      this.frameEnded = { resolve, reject };
    });
    // A caller that ignores it must not see an unhandled rejection.
    ended.catch(() => {});
    this.sink = this.openFrame(index, contentSizeOf(header, descriptor), ended);
    await this.forward(header);
    this.state = { kind: 'block-header' };
  }

  private async endFrame(): Promise<void> {
    const sink = this.sink!;
    this.sink = undefined;
    this.state = { kind: 'magic' };
    this.frameEnded?.resolve(this.frameBytes);
    this.frameEnded = undefined;
    sink.end();
  }

  /** Writes to the current frame's sink, waiting while it is full. */
  private forward(bytes: Buffer): Promise<void> {
    const sink = this.sink!;
    this.frameBytes += bytes.length;
    if (sink.destroyed) {
      return Promise.reject(
        sink.errored ?? new IntegrityError(`the consumer of zstd frame ${this.frames - 1} closed early`),
      );
    }
    if (sink.write(bytes)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (err?: Error) => {
        sink.off('drain', onDrain);
        sink.off('error', onError);
        sink.off('close', onClose);
        if (err) reject(err);
        else resolve();
      };
      const onDrain = () => done();
      const onError = (err: Error) => done(err);
      const onClose = () =>
        done(new IntegrityError(`the consumer of zstd frame ${this.frames - 1} closed early`));
      sink.on('drain', onDrain);
      sink.on('error', onError);
      sink.on('close', onClose);
    });
  }
}

/** Bytes of the frame header after the magic number and the descriptor. */
function frameHeaderRest(descriptor: number): number {
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor & 0x20) !== 0;
  const dictionaryBytes = [0, 1, 2, 4][descriptor & 3]!;
  const contentSizeBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  return (singleSegment ? 0 : 1) + dictionaryBytes + contentSizeBytes;
}

/** The frame's declared content size, or undefined when the header has none. */
function contentSizeOf(header: Buffer, descriptor: number): number | undefined {
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor & 0x20) !== 0;
  const at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][descriptor & 3]!;
  switch (fcsFlag) {
    case 0:
      return singleSegment ? header[at]! : undefined;
    case 1:
      return header.readUInt16LE(at) + 256;
    case 2:
      return header.readUInt32LE(at);
    default:
      return Number(header.readBigUInt64LE(at));
  }
}

/**
 * What `zstd -vvv` (display level 4, zstd 1.5 and later) writes to stderr as it finishes each input
 * file: `<path> : 31.33%   (16777216 B => 5256377 B, /*stdout*\)`. Taken in order, these reports
 * tell which file each frame on stdout holds before zstd has exited. zstd skips an input it cannot
 * open and goes on with the next, so without them a frame is known to belong to its file only once
 * zstd exited 0 (ZstdFrameSplitter numbers frames, not files). A report is only accepted for the
 * file whose turn it is; one for any other file (the file before it was skipped) or a line this
 * parser does not understand ends the reports for the run: later frames wait for the exit status.
 */
export class ZstdFileReports {
  /** Compressed bytes zstd reported for each file, in the order given. */
  private readonly reported: number[] = [];
  private stopped = false;
  private partial = '';
  /** Callers waiting for a file's report, by index. */
  private readonly waiting = new Map<number, ((bytes: number | undefined) => void)[]>();

  constructor(private readonly paths: readonly string[]) {}

  /** Takes stderr output as it comes. */
  push(chunk: string): void {
    const lines = (this.partial + chunk).split(/[\r\n]/);
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.take(line);
  }

  /**
   * The compressed size zstd reported for file `index`, once its report came in turn; undefined once
   * the reports have stopped before it (no report will count for it). Pending until one or the other.
   */
  report(index: number): Promise<number | undefined> {
    if (index < this.reported.length) return Promise.resolve(this.reported[index]);
    if (this.stopped) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiting.set(index, [...(this.waiting.get(index) ?? []), resolve]));
  }

  private take(line: string): void {
    if (this.stopped || !REPORT.test(line)) return;
    const index = this.reported.length;
    const path = this.paths[index];
    const match = path !== undefined && line.startsWith(path) ? REPORT.exec(line.slice(path.length)) : null;
    if (match === null || match.index !== 0) {
      this.stopped = true;
      for (const callers of this.waiting.values()) for (const resolve of callers) resolve(undefined);
      this.waiting.clear();
      return;
    }
    this.reported.push(Number(match[2]));
    for (const resolve of this.waiting.get(index) ?? []) resolve(this.reported[index]);
    this.waiting.delete(index);
  }
}

/** The end of a file's report: ` : 31.33%   (16777216 B => 5256377 B, `. */
const REPORT = / *: *\d+(?:\.\d+)?% +\( *(\d+) B => *(\d+) B, /;
