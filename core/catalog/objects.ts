import { open, stat } from 'node:fs/promises';
import { PassThrough, type Readable, Transform, type TransformCallback, Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import type { Compression } from '../config';
import { diskFullError, isDiskFull } from '../disk';
import {
  ConfigError,
  errorMessage,
  IntegrityError,
  MissingToolError,
  ObjectNotFoundError,
  StorageError,
  UsageError,
} from '../errors';
import type { StorageTarget } from '../storage/target';
import {
  Coalesce,
  compressFile,
  compressStage,
  DigestMeter,
  decompressStage,
  decompressToFileStage,
  decryptStage,
  descriptorWriteStream,
  encryptStage,
  gateOn,
  ToolExitError,
  teeTo,
} from '../stream';
import { type Manifest, type StoredObject, verifiedPassphrase } from './manifest';

/**
 * The one data path, both ways. Writing: raw bytes → sha256 → compress → encrypt → sha256 and
 * byte meter → every target in one pass. Reading: stored bytes → sha256 → decrypt → decompress →
 * sha256, refused at the end when either digest or size differs from the manifest.
 */

/**
 * Bytes already compressed with the spec's compression, e.g. one frame of a zstd run over several
 * WAL files; `rawSize` is what they decompress to (the frame header says so).
 */
export interface EncodedSource {
  readonly encoded: Readable;
  /** A function when the size is known only once `encoded` has ended (and the upstream settled). */
  readonly rawSize: number | (() => number);
}

export interface ObjectWriteSpec {
  readonly key: string;
  /**
   * Raw bytes, e.g. pg_dump's stdout; or a file, which the compressor program then reads itself
   * (the raw size is the file's size when it was opened: only for files nobody changes meanwhile,
   * such as WAL segments PostgreSQL has handed over). With `size`, the file must have that size
   * when opened and still have it once read through, else the write fails before the object is
   * completed anywhere (IntegrityError): a file that changed meanwhile never leaves an object, so
   * nobody has to delete one afterwards (a delete could hit another writer's completed object).
   */
  readonly source: Readable | { readonly path: string; readonly size?: number } | EncodedSource;
  /**
   * Work that must succeed before the object may be completed (child processes exiting 0). The
   * last stage holds the end of the stream until these settle, so a pg_dump that dies mid-stream
   * can never leave a complete-looking object.
   */
  readonly upstream?: readonly Promise<unknown>[];
  readonly compression: Compression;
  readonly compressionLevel?: number;
  readonly threads: number;
  readonly encryption?: { readonly passphrase: string; readonly iterations: number };
  readonly targets: readonly StorageTarget[];
  readonly sizeHint?: number;
  /** Called with raw bytes read so far (throttled by the meter). */
  readonly onProgress?: (rawBytes: number) => void;
  /**
   * false: the stored bytes' sha256 is not computed, for objects with no manifest to record it in
   * (WAL files: the zstd frame checksum and the WAL's own CRCs check them when they are read).
   */
  readonly digest?: false;
  /**
   * Create-only writes (PutOptions.ifAbsent), for objects whose name says their content (WAL files):
   * a target already holding the key fails with ObjectExistsError and keeps its object, and on a
   * failure the objects completed in other targets are kept (each is whole and right; another
   * writer of the same name may already have reported it stored), not deleted.
   */
  readonly ifAbsent?: boolean;
  /**
   * On a failure, keep the objects completed in other targets even when not create-only: a WAL file
   * written over a damaged copy is whole and right once completed, and another archiver of the
   * same name may already have found it and reported it archived; deleting it would remove an
   * object that writer relies on (the clean-up may only remove what never completed).
   */
  readonly keepCompleted?: boolean;
  /**
   * Several repositories: a target whose write fails is left out of the pass (told here, its branch
   * dropped) instead of failing it, so the others still get a whole object; the write fails only when
   * every target failed, or the source did. The result then holds the targets that stored it.
   */
  readonly onTargetFailure?: (target: StorageTarget, err: unknown) => void;
}

export interface WrittenObject {
  readonly key: string;
  readonly rawSize: number;
  readonly storedSize: number;
  readonly sha256: string;
}

/** Stored bytes are gathered into chunks this large before encryption, hashing and the targets. */
const COALESCE_BYTES = 256 * 1024;

/**
 * Streams one object into every target. On any failure nothing of this write is left under the key
 * anywhere (with `ifAbsent`: nothing incomplete; see there).
 */
export function writeObject(
  spec: ObjectWriteSpec & { readonly digest: false },
): Promise<Omit<WrittenObject, 'sha256'>>;
export function writeObject(spec: ObjectWriteSpec): Promise<WrittenObject>;
export async function writeObject(
  spec: ObjectWriteSpec,
): Promise<Omit<WrittenObject, 'sha256'> & { sha256?: string }> {
  const compression = { threads: spec.threads, level: spec.compressionLevel };
  const upstreamWork = [...(spec.upstream ?? [])];
  let source: Readable;
  let stages: NodeJS.ReadWriteStream[];
  let rawSize: () => number;
  if ('path' in spec.source) {
    const { path, size: expected } = spec.source;
    const handle = await open(path, 'r');
    let streamOwnsHandle = false;
    try {
      const size = (await handle.stat()).size;
      const changed = (now: number) =>
        new IntegrityError(
          `${path} changed size while it was being stored (${expected} → ${now} bytes); nothing was kept, retry`,
        );
      if (expected !== undefined && size !== expected) throw changed(size);
      // Checked once the file is read through, before the gate lets the object complete.
      const unchanged = async () => {
        if (expected === undefined) return;
        const now = (await stat(path)).size;
        if (now !== expected) throw changed(now);
      };
      const compressor = compressFile(spec.compression, compression, handle.fd);
      if (compressor) {
        source = compressor.stdout;
        upstreamWork.push(compressor.exited.then(unchanged));
        stages = [];
      } else {
        source = handle.createReadStream({ highWaterMark: 1 << 20 });
        streamOwnsHandle = true;
        upstreamWork.push(finished(source).then(unchanged));
        stages = [compressStage(spec.compression, compression)];
      }
      spec.onProgress?.(size);
      rawSize = () => size;
    } finally {
      // The compressor holds its own copy of the descriptor once started.
      if (!streamOwnsHandle) await handle.close();
    }
  } else if ('encoded' in spec.source) {
    source = spec.source.encoded;
    stages = [];
    const size = spec.source.rawSize;
    rawSize = typeof size === 'function' ? size : () => size;
  } else {
    // The raw side is only counted: see rawSha256 in the manifest schema for why it is not hashed.
    const raw = new DigestMeter({ onProgress: spec.onProgress, hash: false });
    source = spec.source;
    stages = [raw, compressStage(spec.compression, compression)];
    rawSize = () => raw.bytes;
  }
  const upstream = upstreamWork.map((p) => p.then(() => undefined));
  // Rejections are observed by the gate; keep Node from reporting them as unhandled meanwhile.
  for (const p of upstream) p.catch(() => {});
  const stored = new DigestMeter({ hash: spec.digest !== false });
  stages.push(new Coalesce(COALESCE_BYTES));
  if (spec.encryption) stages.push(encryptStage(spec.encryption.passphrase, spec.encryption.iterations));
  stages.push(
    stored,
    gateOn(() => Promise.all(upstream).then(() => undefined)),
  );

  const branches = spec.targets.map(() => new PassThrough({ highWaterMark: 1 << 20 }));
  const tolerant = spec.onTargetFailure !== undefined;
  const guards = tolerant ? branches.map((b) => new DropOnFailure(b)) : undefined;
  const puts = spec.targets.map((target, i) =>
    target
      .put(spec.key, branches[i]!, { sizeHint: spec.sizeHint, ifAbsent: spec.ifAbsent })
      .catch((err: unknown) => {
        // A target that gives up must stop the whole pass, or the pipeline would wait on it forever
        // (several repositories: its branch is dropped and the others go on).
        guards?.[i]?.drop();
        branches[i]!.destroy(err as Error);
        throw err;
      }),
  );
  const flow = pipeline([source, ...stages, teeTo(guards ?? branches)] as unknown as [
    Readable,
    ...NodeJS.ReadWriteStream[],
  ]);
  // The first failure is the cause; the others follow from it (a target giving up makes pg_dump
  // fail on a closed pipe; pg_dump failing makes every upload abort). Report the cause.
  let cause: { reason: unknown } | undefined;
  const firstFailure = <T>(p: Promise<T>) =>
    p.catch((reason: unknown) => {
      cause ??= { reason };
      throw reason;
    });
  const [, , ...putResults] = await Promise.allSettled([
    firstFailure(flow),
    firstFailure(Promise.all(upstream)),
    ...puts.map((p) => (tolerant ? p : firstFailure(p))),
  ]);
  if (tolerant && cause === undefined) {
    const stored = putResults.filter((r) => r.status === 'fulfilled').length;
    if (stored === 0) cause = { reason: (putResults[0] as PromiseRejectedResult).reason };
    else
      putResults.forEach((r, i) => {
        if (r.status === 'rejected') spec.onTargetFailure!(spec.targets[i]!, r.reason);
      });
  }
  const failure = cause;
  if (failure) {
    source.destroy();
    if (spec.ifAbsent !== true && spec.keepCompleted !== true) {
      await Promise.allSettled(
        spec.targets.map((t, i) =>
          putResults[i]?.status === 'fulfilled' ? t.delete(spec.key) : Promise.resolve(),
        ),
      );
    }
    // A target's write error reaches the pipeline raw (its branch is destroyed with it) before the
    // target's own account of it, which names the target and the key ("BACKUP_DIR … is full
    // (ENOSPC) while writing …"): report that one.
    const told = putResults.find(
      (r) => r.status === 'rejected' && r.reason instanceof Error && r.reason.cause === failure.reason,
    );
    throw told?.status === 'rejected' ? told.reason : failure.reason;
  }
  return {
    key: spec.key,
    rawSize: rawSize(),
    storedSize: stored.bytes,
    ...(spec.digest !== false ? { sha256: stored.sha256() } : {}),
  };
}

/**
 * One target's branch of a tolerant tee (ObjectWriteSpec.onTargetFailure): passes bytes on with
 * backpressure until the target drops out, then swallows them, so one failed target never stops
 * the others. Destroyed with an error (the source failed), it fails its branch too.
 */
class DropOnFailure extends Writable {
  private dropped = false;
  constructor(private readonly branch: PassThrough) {
    super({ highWaterMark: 1 << 20 });
  }
  drop(): void {
    this.dropped = true;
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.dropped || this.branch.destroyed || this.branch.write(chunk)) {
      cb();
      return;
    }
    const done = () => {
      this.branch.off('drain', done);
      this.branch.off('close', done);
      cb();
    };
    this.branch.once('drain', done);
    this.branch.once('close', done);
  }
  override _final(cb: (err?: Error | null) => void): void {
    if (!this.dropped && !this.branch.destroyed) this.branch.end();
    cb();
  }
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (err && !this.dropped && !this.branch.destroyed) this.branch.destroy(err);
    cb(err);
  }
}

/** Compares a stream's digest and size with the manifest once the stream has been read through. */
class ExpectDigest extends Transform {
  constructor(
    private readonly checks: () => string | undefined,
    private readonly fail: (reason: string) => Error,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    const problem = this.checks();
    cb(problem ? this.fail(problem) : null);
  }
}

/** How to decrypt a backup's objects with the configured passphrase (undefined when not encrypted). */
export function decryptionFor(
  manifest: Pick<Manifest, 'encryption'>,
  passphrase: string | undefined,
): { passphrase: string; iterations: number } | undefined {
  // After a key rotation the key is the ring's key verifyManifest found for this backup.
  return manifest.encryption
    ? {
        passphrase: verifiedPassphrase(manifest) ?? passphrase ?? '',
        iterations: manifest.encryption.iterations,
      }
    : undefined;
}

export interface ObjectReadSpec {
  readonly target: StorageTarget;
  readonly object: StoredObject;
  readonly compression: Compression;
  readonly threads: number;
  /** Passphrase and iterations when the backup is encrypted. */
  readonly encryption?: { readonly passphrase: string; readonly iterations: number };
  readonly onProgress?: (storedBytes: number) => void;
}

/**
 * Opens a stored object as its raw bytes. The returned stream errors with an IntegrityError at the
 * end if the stored bytes or the decoded bytes differ from the manifest, so a consumer that writes
 * to a temporary file first learns of any corruption before anything reaches a database.
 */
export async function readObject(spec: ObjectReadSpec): Promise<Readable> {
  const { object } = spec;
  const read = await openStored(spec);
  const raw = new DigestMeter({ hash: object.rawSha256 !== undefined });
  const rawCheck = new ExpectDigest(() => {
    if (raw.bytes !== object.rawSize)
      return `decoded size ${raw.bytes} bytes, manifest says ${object.rawSize}`;
    if (object.rawSha256 !== undefined && raw.sha256() !== object.rawSha256) {
      return 'decoded sha256 differs from the manifest';
    }
    return undefined;
  }, read.integrity);
  // pipeline() destroys every stream of the chain with the first error, `out` too, before its
  // promise settles: the error is explained here, so a consumer never sees a bare decompressor
  // failure ("zstd failed ... Data corruption detected") instead of the object named as corrupt.
  const out = new PassThrough({
    highWaterMark: 1 << 20,
    destroy: (err, callback) => callback(err === null ? null : read.explain(err)),
  });
  pipeline([
    read.source,
    ...read.stages,
    decompressStage(spec.compression, { threads: spec.threads }),
    raw,
    rawCheck,
    out,
  ] as unknown as [Readable, ...NodeJS.ReadWriteStream[]]).catch((err: unknown) =>
    out.destroy(read.explain(err)),
  );
  return out;
}

/**
 * Writes a stored object's raw bytes into a new file (mode 0600, refused if it exists), checked as
 * readObject checks them, the decoded size by the file's size. The decompressor program writes the
 * file itself, so the decoded bytes never pass through Node (at 500 MB this halves the time a restore
 * spends staging its dump). Rejects with an IntegrityError on any difference; the caller removes the
 * file.
 */
export async function readObjectToFile(spec: ObjectReadSpec, path: string): Promise<void> {
  const { object } = spec;
  const handle = await open(path, 'wx', 0o600);
  try {
    const checkSize = async (read: StoredRead) => {
      const size = (await handle.stat()).size;
      if (size !== object.rawSize)
        throw read.integrity(`decoded size ${size} bytes, manifest says ${object.rawSize}`);
    };
    if (!(await decodeInto(spec, handle.fd, checkSize))) {
      // No program to write the file, or a decoded digest to check: Node reads the raw bytes itself.
      await pipeline(await readObject(spec), descriptorWriteStream(handle.fd));
    }
  } catch (err) {
    throw diskFullError(err, path, 'free space there (or set TMPDIR to a larger disk) and retry') ?? err;
  } finally {
    await handle.close();
  }
}

/**
 * Reads an object into another program's stdin (tar extracting a base backup): the decompressor
 * writes into that pipe itself, so the decoded bytes never pass through Node, which only checks and
 * decrypts the stored ones. The program's own checks (tar's headers) and the format's checksum
 * (zstd's, gzip's CRC) guard the decoded side. Ends Node's end of the pipe either way.
 */
export async function readObjectIntoProgram(spec: ObjectReadSpec, stdin: Writable): Promise<void> {
  // (A ReaderGoneError means the program stopped reading first: its own failure is the cause.)
  try {
    if (!(await decodeInto(spec, stdin))) await pipeline(await readObject(spec), stdin);
  } finally {
    stdin.destroy();
  }
}

/**
 * Checks, decrypts and hands the stored bytes to a decompressor program that writes the decoded ones
 * into `output` (a file descriptor, or a program's stdin). false, having done nothing, when no
 * program does the work or the manifest has a decoded-side digest that only Node can check.
 */
async function decodeInto(
  spec: ObjectReadSpec,
  output: number | Writable,
  afterwards?: (read: StoredRead) => Promise<void>,
): Promise<boolean> {
  if (spec.object.rawSha256 !== undefined) return false;
  const decompress = decompressToFileStage(spec.compression, { threads: spec.threads }, output);
  if (decompress === undefined) return false;
  // The decompressor holds its own copy of a pipe; Node's end closes, so the reader sees the end
  // once the decompressor exits.
  if (typeof output !== 'number') output.destroy();
  let read: StoredRead | undefined;
  try {
    read = await openStored(spec).catch((err: unknown) => {
      decompress.destroy();
      throw err;
    });
    // The stage's readable side is empty; reading it lets 'end' (after a successful exit) come.
    decompress.resume();
    await pipeline([read.source, ...read.stages, decompress] as unknown as [
      Readable,
      ...NodeJS.ReadWriteStream[],
    ]);
    await afterwards?.(read);
    return true;
  } catch (err) {
    if (typeof output !== 'number' && err instanceof ToolExitError && err.signal === 'SIGPIPE') {
      throw new ReaderGoneError(`${err.label} stopped: the program reading the decoded bytes exited first`);
    }
    throw read ? read.explain(err) : err;
  }
}

/** The program a decoded object was written into stopped reading (its own error says why). */
export class ReaderGoneError extends StorageError {}

/** The sha256 and size of an object's stored bytes, streamed (nothing decrypted, nothing held). */
export async function digestStored(
  target: StorageTarget,
  key: string,
  onProgress?: (bytes: number) => void,
): Promise<{ bytes: number; sha256: string }> {
  const meter = new DigestMeter({ onProgress });
  await pipeline(await target.get(key), meter, new Writable({ write: (_c, _e, cb) => cb() }));
  return { bytes: meter.bytes, sha256: meter.sha256() };
}

/**
 * A program fed an object's decoded bytes (tar extracting a base backup) failed. Its input may have
 * been garbage it noticed before any digest was complete (a corrupt tar header), or it failed on its
 * own (a full disk, a directory it may not write): the stored bytes decide. `read` is how the read
 * into the program ended: one that completed checked every stored byte on the way (intact); else
 * the object is read through once more against the manifest's size and sha256. Resolves to the
 * IntegrityError naming the object when it differs, undefined when it is intact; a target that
 * cannot be read, or a wrong setting, rejects with the read's own error.
 */
export async function corruptionBehindProgramFailure(
  target: StorageTarget,
  object: StoredObject,
  programError: unknown,
  read: PromiseSettledResult<unknown>,
): Promise<IntegrityError | undefined> {
  if (read.status === 'fulfilled') return undefined;
  const readError = read.reason;
  if (
    (readError instanceof StorageError && !(readError instanceof ReaderGoneError)) ||
    readError instanceof MissingToolError ||
    readError instanceof UsageError ||
    readError instanceof ConfigError
  )
    throw readError;
  const stored = await digestStored(target, object.key);
  const reason =
    stored.bytes !== object.storedSize
      ? `size ${stored.bytes} bytes, manifest says ${object.storedSize}`
      : stored.sha256 !== object.sha256
        ? 'sha256 differs from the manifest'
        : undefined;
  if (reason === undefined) return undefined;
  return new IntegrityError(
    `object ${object.key} in ${target.location} is corrupt (${reason}; ${errorMessage(programError).split('\n')[0]}); do not trust it, use another backup or target`,
    { cause: programError },
  );
}

interface StoredRead {
  readonly source: Readable;
  /** Stored-side checks and decryption, up to the decompressor. */
  readonly stages: NodeJS.ReadWriteStream[];
  /** An IntegrityError naming the object and target. */
  integrity(reason: string): IntegrityError;
  /** The error to report for a failed read: corruption unless it is a storage or missing-tool error. */
  explain(err: unknown): Error;
}

/** Size check before a byte is downloaded, then the stored bytes' digest and decryption. */
async function openStored(spec: ObjectReadSpec): Promise<StoredRead> {
  const { object } = spec;
  const where = `${object.key} in ${spec.target.location}`;
  const ours = new WeakSet<Error>();
  const integrity = (reason: string) => {
    const err = new IntegrityError(
      `object ${where} is corrupt (${reason}); do not trust it, use another backup or target`,
    );
    ours.add(err);
    return err;
  };
  // A truncated or replaced object is named at once, before a byte is downloaded.
  const info = await spec.target.stat(object.key);
  if (info === undefined) throw new ObjectNotFoundError(object.key, spec.target.location);
  if (info.size !== object.storedSize)
    throw integrity(`size ${info.size} bytes, manifest says ${object.storedSize}`);
  const source = await spec.target.get(object.key);
  const stored = new DigestMeter({ onProgress: spec.onProgress });
  const storedCheck = new ExpectDigest(() => {
    if (stored.bytes !== object.storedSize)
      return `size ${stored.bytes} bytes, manifest says ${object.storedSize}`;
    if (stored.sha256() !== object.sha256) return 'sha256 differs from the manifest';
    return undefined;
  }, integrity);
  const stages: NodeJS.ReadWriteStream[] = [stored, storedCheck];
  if (spec.encryption) stages.push(decryptStage(spec.encryption.passphrase, spec.encryption.iterations));
  return {
    source,
    stages,
    integrity,
    // A flipped byte usually trips the decryptor or decompressor before the digests are complete.
    // The key was proven by the manifest's key check, so this is a corrupt object: name it so,
    // keeping the tool's own words.
    // A full disk on the writing side is not the object's fault (see diskFull).
    explain: (err) =>
      (err instanceof Error && ours.has(err)) ||
      err instanceof StorageError ||
      err instanceof MissingToolError ||
      isDiskFull(err)
        ? (err as Error)
        : integrity(`cannot be decoded: ${errorMessage(err)}`),
  };
}
