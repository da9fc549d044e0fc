import type { Readable } from 'node:stream';

/**
 * An upload's source read chunk by chunk (S3's Upload body, Azure's blocks), telling a failure of the
 * source itself (kept in `failure`, rethrown to the caller unchanged) from the upload stopping early,
 * and whether the source was read to its end (`done`: every byte reached the store's request path).
 */
export interface SourceChunks {
  /** The next chunk; undefined at the end of the source. */
  next(): Promise<Buffer | undefined>;
  /** Ends the reading early (the source is told to stop). Never throws. */
  close(): Promise<void>;
  done(): boolean;
  failure(): { readonly error: unknown } | undefined;
}

export function sourceChunks(source: Readable): SourceChunks {
  const iterator = source[Symbol.asyncIterator]();
  let done = false;
  let failure: { readonly error: unknown } | undefined;
  return {
    async next() {
      if (done) return undefined;
      let step: IteratorResult<unknown>;
      try {
        step = await iterator.next();
      } catch (error) {
        failure ??= { error };
        throw error;
      }
      if (step.done) {
        done = true;
        return undefined;
      }
      return Buffer.isBuffer(step.value) ? step.value : Buffer.from(step.value as string);
    },
    async close() {
      await Promise.resolve(iterator.return?.()).catch(() => {});
    },
    done: () => done,
    failure: () => failure,
  };
}

/** The source in blocks of exactly the size asked for (the last one shorter, or empty at the end). */
export function sourceBlocks(chunks: SourceChunks): {
  next(want: number): Promise<Buffer>;
  /** The source is read to its end and every byte of it handed out. */
  atEnd(): boolean;
} {
  let held: Buffer[] = [];
  let have = 0;
  return {
    async next(want) {
      while (have < want) {
        const chunk = await chunks.next();
        if (chunk === undefined) break;
        held.push(chunk);
        have += chunk.length;
      }
      const all = held.length === 1 ? held[0]! : Buffer.concat(held, have);
      const block = all.subarray(0, Math.min(want, have));
      const rest = all.subarray(block.length);
      held = rest.length > 0 ? [rest] : [];
      have = rest.length;
      return block;
    },
    atEnd: () => chunks.done() && have === 0,
  };
}

/**
 * A download read whole into memory (getBytes of the SDK targets: manifests, keys, small records),
 * a failure mid-stream turned into the target's own error by `onError`.
 */
export async function readWhole(stream: Readable, onError: (err: unknown) => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk as Buffer);
  } catch (err) {
    throw onError(err);
  }
  return Buffer.concat(chunks);
}
