import { createHash, randomBytes } from 'node:crypto';
import { close, fstat, fsync, open as openCallback, read } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { PassThrough, type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { removeOnExit } from '../cleanup';
import type { Compression, Config } from '../config';
import { diskFullError, isDiskFull } from '../disk';
import {
  ConfigError,
  errorMessage,
  IntegrityError,
  MissingToolError,
  ObjectNotFoundError,
  PgVaultError,
  StorageError,
  UsageError,
} from '../errors';
import { targetsHolding } from '../storage';
import type { ObjectInfo, StorageTarget } from '../storage/target';
import {
  compressionExtension,
  compressionFromExtension,
  DigestMeter,
  decompressStage,
  decompressToFileStage,
  decryptStage,
  deriveWalPassphrase,
  descriptorWriteStream,
} from '../stream';
import {
  DEFAULT_SEGMENT_BYTES,
  nextSegment,
  parseWalFileName,
  parseWalSegmentHeader,
  requireWalFileName,
  segmentHeaderMismatch,
  WAL_LONG_HEADER_BYTES,
  type WalFileName,
  walFolder,
  walKey,
  walKeyExtension,
  walObjectExtension,
} from './naming';

/**
 * Reading the WAL archive: finding a WAL file's object, decoding it (decrypt, decompress), the
 * archive's identity file, and `restore wal` (PostgreSQL's restore_command) with its prefetcher.
 *
 * WAL objects have no manifest (one per segment would double the objects), so a decoded file is
 * trusted only after the checks its formats carry: the decompressor's own checksum (zstd, gzip,
 * xz, bzip2 and lz4 frames all have one), the cipher's padding, the exact segment size, and the
 * segment's first page header (page address of the name, the archive's system identifier).
 */

const openFd = promisify(openCallback);
const fsyncFd = promisify(fsync);
const closeFd = promisify(close);
const statFd = promisify(fstat);
const readFd = promisify(read);

/** One file per cluster, written on the first push: which server the archive belongs to. */
export const ARCHIVE_IDENTITY_FILE = 'archive.json';
const IDENTITY_FORMAT = 'pgvault-wal-archive/1';
/** Local copy of the identity, so archive_command checks a segment without a round trip. */
const IDENTITY_CACHE_FILE = 'archive-identity.json';

export interface WalArchiveIdentity {
  readonly format: typeof IDENTITY_FORMAT;
  readonly cluster: string;
  /** pg_controldata's "Database system identifier", decimal. */
  readonly systemIdentifier: string;
  readonly segmentBytes: number;
  /**
   * PBKDF2 iterations of every encrypted WAL object in this archive, fixed when the archive is
   * created: WAL objects have no manifest to record their own, and a later ENCRYPTION_ITERATIONS
   * change must not make older WAL unreadable.
   */
  readonly encryptionIterations: number;
  /**
   * Archives created since pgvault 0.2: segments and .partial files are encrypted with a passphrase
   * derived once per process from ENCRYPTION_KEY (deriveWalPassphrase with this salt and iteration
   * count), at `objectIterations` per object. The slow KDF then runs once per uploader or prefetcher
   * instead of once per 16 MB segment; .history and .backup files (which can come before the
   * identity exists) keep ENCRYPTION_KEY at `encryptionIterations`. Absent: every object uses
   * ENCRYPTION_KEY at `encryptionIterations`.
   */
  readonly walKey?: WalKeyDerivation;
  readonly created: string;
}

export interface WalKeyDerivation {
  readonly kdf: 'pbkdf2-sha256';
  readonly salt: string;
  readonly iterations: number;
  readonly objectIterations: number;
}

/** PBKDF2 iterations of each segment object under a derived WAL passphrase (a random 256-bit secret). */
const WAL_OBJECT_ITERATIONS = 1000;

export function archiveIdentityKey(cluster: string): string {
  return `${cluster}/wal/${ARCHIVE_IDENTITY_FILE}`;
}

/** A WAL file PostgreSQL asked for that no target holds: normal at the end of the archive. */
export class WalFileNotArchivedError extends StorageError {
  constructor(
    readonly walFile: string,
    locations: readonly string[],
  ) {
    super(`WAL file ${walFile} is not in the archive (${locations.join(', ')})`);
  }
}

export function parseArchiveIdentity(text: string, where: string): WalArchiveIdentity {
  let value: Partial<Record<keyof WalArchiveIdentity, unknown>>;
  try {
    value = JSON.parse(text) as typeof value;
  } catch (err) {
    throw new IntegrityError(`${where} is not JSON (${errorMessage(err)}); restore it from another target`);
  }
  const ok =
    value !== null &&
    typeof value === 'object' &&
    value.format === IDENTITY_FORMAT &&
    typeof value.cluster === 'string' &&
    typeof value.systemIdentifier === 'string' &&
    /^\d+$/.test(value.systemIdentifier) &&
    Number.isInteger(value.segmentBytes) &&
    Number.isInteger(value.encryptionIterations) &&
    (value.walKey === undefined || isWalKeyDerivation(value.walKey)) &&
    typeof value.created === 'string';
  if (!ok) {
    throw new IntegrityError(
      `${where} is not a pgvault WAL archive identity (${IDENTITY_FORMAT}); restore it from another target`,
    );
  }
  return value as WalArchiveIdentity;
}

function isWalKeyDerivation(value: unknown): value is WalKeyDerivation {
  const v = value as Partial<Record<keyof WalKeyDerivation, unknown>> | null;
  return (
    v !== null &&
    typeof v === 'object' &&
    v.kdf === 'pbkdf2-sha256' &&
    typeof v.salt === 'string' &&
    v.salt.length > 0 &&
    Number.isInteger(v.iterations) &&
    (v.iterations as number) > 0 &&
    Number.isInteger(v.objectIterations) &&
    (v.objectIterations as number) > 0
  );
}

export function newArchiveIdentity(
  cluster: string,
  systemIdentifier: string,
  segmentBytes: number,
  encryptionIterations: number,
  now = new Date(),
): WalArchiveIdentity {
  return {
    format: IDENTITY_FORMAT,
    cluster,
    systemIdentifier,
    segmentBytes,
    encryptionIterations,
    // The salt is a function of the archive, not random: every process that creates the identity
    // at the same moment (a race on the first push) writes the same one, so no WAL is encrypted
    // with a key that loses the race.
    walKey: {
      kdf: 'pbkdf2-sha256',
      salt: `pgvault-wal-key/${cluster}/${systemIdentifier}`,
      iterations: encryptionIterations,
      objectIterations: WAL_OBJECT_ITERATIONS,
    },
    created: now.toISOString(),
  };
}

/**
 * The identity as each target holds it. Throws IntegrityError when two targets disagree (one of
 * them was filled by another server).
 */
export async function readArchiveIdentity(
  targets: readonly StorageTarget[],
  cluster: string,
): Promise<{ identity?: WalArchiveIdentity; missingIn: StorageTarget[] }> {
  const key = archiveIdentityKey(cluster);
  const found = await Promise.all(
    targets.map(async (target) => {
      try {
        const bytes = await target.getBytes(key);
        return parseArchiveIdentity(bytes.toString('utf8'), `${key} in ${target.location}`);
      } catch (err) {
        if (err instanceof ObjectNotFoundError) return undefined;
        throw err;
      }
    }),
  );
  let identity: WalArchiveIdentity | undefined;
  const missingIn: StorageTarget[] = [];
  found.forEach((candidate, i) => {
    if (candidate === undefined) {
      missingIn.push(targets[i]!);
      return;
    }
    if (identity !== undefined && identity.systemIdentifier !== candidate.systemIdentifier) {
      throw new IntegrityError(
        `the WAL archives of cluster ${cluster} in ${targets.map((t) => t.location).join(' and ')} belong to different servers (system identifiers ${identity.systemIdentifier} and ${candidate.systemIdentifier}); point one of them at another CLUSTER_NAME or bucket`,
      );
    }
    identity ??= candidate;
  });
  return { identity, missingIn };
}

function identityCacheScope(targets: readonly StorageTarget[], cluster: string): string {
  return `${cluster} ${targets.map((t) => t.location).join(' ')}`;
}

/** The identity cached in `dir` for these targets and cluster, or undefined (no cache, other targets). */
export async function cachedArchiveIdentity(
  dir: string | undefined,
  targets: readonly StorageTarget[],
  cluster: string,
): Promise<WalArchiveIdentity | undefined> {
  if (dir === undefined) return undefined;
  try {
    const cached = JSON.parse(await readFile(join(dir, IDENTITY_CACHE_FILE), 'utf8')) as {
      scope?: string;
      identity?: unknown;
    };
    if (cached.scope !== identityCacheScope(targets, cluster)) return undefined;
    return parseArchiveIdentity(JSON.stringify(cached.identity), 'the identity cache');
  } catch {
    // No cache yet, or one this user cannot read: the targets answer instead.
    return undefined;
  }
}

/** Remembers the identity in `dir`; best effort (a cache that cannot be written costs a round trip later). */
export async function rememberArchiveIdentity(
  dir: string | undefined,
  targets: readonly StorageTarget[],
  cluster: string,
  identity: WalArchiveIdentity,
): Promise<void> {
  if (dir === undefined) return;
  try {
    // Never its parents: a folder removed under a background process (a PITR sandbox) must stay gone.
    await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    await writeFileAtomically(
      join(dir, IDENTITY_CACHE_FILE),
      JSON.stringify({ scope: identityCacheScope(targets, cluster), identity }),
    );
  } catch {
    // See above.
  }
}

/** The identity from the cache, else from the targets (then cached); undefined for a new archive. */
export async function loadArchiveIdentity(
  cacheDir: string | undefined,
  targets: readonly StorageTarget[],
  cluster: string,
): Promise<WalArchiveIdentity | undefined> {
  const cached = await cachedArchiveIdentity(cacheDir, targets, cluster);
  if (cached !== undefined) return cached;
  const { identity } = await readArchiveIdentity(targets, cluster);
  if (identity !== undefined) await rememberArchiveIdentity(cacheDir, targets, cluster, identity);
  return identity;
}

/** What decoding needs: the passphrase (when objects are encrypted) and the archive's iteration count. */
export interface WalCodec {
  readonly passphrase?: string;
  readonly iterations: number;
}

/**
 * How a WAL file of this archive is encrypted: segments and .partial files under the derived WAL
 * passphrase when the identity records one, anything else under ENCRYPTION_KEY itself.
 */
export async function walCodec(
  config: Config,
  identity: WalArchiveIdentity | undefined,
  file: WalFileName,
  /** A key of the ring other than the current one. */
  passphrase: string | undefined = config.encryption.passphrase,
): Promise<WalCodec> {
  const derivation = identity?.walKey;
  if (
    derivation === undefined ||
    passphrase === undefined ||
    (file.kind !== 'segment' && file.kind !== 'partial')
  ) {
    return { passphrase, iterations: identity?.encryptionIterations ?? config.encryption.iterations };
  }
  return {
    passphrase: await derivedWalPassphrase(passphrase, derivation),
    iterations: derivation.objectIterations,
  };
}

/** Derived once per process and passphrase (the uploader and the prefetcher push and fetch many). */
const derivedPassphrases = new Map<string, Promise<string>>();

function derivedWalPassphrase(passphrase: string, derivation: WalKeyDerivation): Promise<string> {
  const id = `${derivation.salt}\0${derivation.iterations}\0${createHash('sha256').update(passphrase).digest('hex')}`;
  let derived = derivedPassphrases.get(id);
  if (derived === undefined) {
    derived = deriveWalPassphrase(passphrase, derivation.salt, derivation.iterations);
    derivedPassphrases.set(id, derived);
    derived.catch(() => derivedPassphrases.delete(id));
  }
  return derived;
}

/** The extension new WAL objects get under this config (`.zst.enc`). */
export function configuredWalExtension(config: Config): string {
  return walObjectExtension(compressionExtension(config.compression), config.encryption.enabled);
}

/**
 * The object holding a WAL file in a target, whatever compression or encryption it was stored
 * with (the config may have changed since): one prefix listing of its folder.
 */
export async function findWalObject(
  target: StorageTarget,
  cluster: string,
  file: WalFileName,
): Promise<ObjectInfo | undefined> {
  for await (const info of target.list(`${walFolder(cluster, file)}/${file.name}`)) {
    if (walKeyExtension(info.key, file) !== undefined) return info;
  }
  return undefined;
}

/** Compression and encryption of an object, from its key's extension; throws for one it cannot read. */
export function decodingOf(key: string, file: WalFileName): { compression: Compression; encrypted: boolean } {
  const extension = walKeyExtension(key, file);
  const encrypted = extension?.endsWith('.enc') ?? false;
  const compressionPart = encrypted ? extension!.slice(0, -'.enc'.length) : (extension ?? '');
  const compression = compressionPart === '' ? 'none' : compressionFromExtension(compressionPart);
  if (
    extension === undefined ||
    compression === undefined ||
    compressionExtension(compression) !== compressionPart
  ) {
    throw new IntegrityError(
      `WAL object ${key} has an extension pgvault does not write; decode it by hand or remove it`,
    );
  }
  return { compression, encrypted };
}

function undecodable(key: string, location: string, reason: string): IntegrityError {
  return new IntegrityError(
    `WAL object ${key} in ${location} is corrupt (${reason}); do not use it: fetch the file from another target or take a new base backup`,
  );
}

/**
 * A stored WAL object as its raw bytes. Errors on the stream are IntegrityErrors naming the key
 * (wrong key or corrupt object), StorageErrors (the target failed while reading) or MissingToolError.
 * `source` is the object's stream when the caller already opened it.
 */
export async function openWalObject(
  target: StorageTarget,
  key: string,
  file: WalFileName,
  codec: WalCodec,
  source?: Readable,
): Promise<Readable> {
  const { compression, encrypted } = decodingOf(key, file);
  if (encrypted && codec.passphrase === undefined) {
    source?.destroy();
    throw new ConfigError(
      `WAL object ${key} is encrypted; set ENCRYPTION_KEY_FILE (or ENCRYPTION_KEY) to the archive's key`,
    );
  }
  const input = source ?? (await target.get(key));
  const stages = decryptionStages(encrypted, codec);
  stages.push(decompressStage(compression, { threads: 1 }));
  // `out` stays outside the pipeline, which would destroy it with the stage's raw error: the
  // consumer must see the error naming the key.
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  const last = stages[stages.length - 1]!;
  last.pipe(out);
  pipeline([input, ...stages] as unknown as [Readable, ...NodeJS.ReadWriteStream[]]).catch((err: unknown) => {
    out.destroy(decodingFailure(err, key, target.location));
  });
  return out;
}

function decryptionStages(encrypted: boolean, codec: WalCodec): NodeJS.ReadWriteStream[] {
  return encrypted ? [decryptStage(codec.passphrase!, codec.iterations)] : [];
}

/** A failed decode: storage, tool and configuration errors pass on; anything else means a damaged object. */
function decodingFailure(err: unknown, key: string, location: string): Error {
  const passOn =
    err instanceof StorageError ||
    err instanceof MissingToolError ||
    err instanceof ConfigError ||
    isDiskFull(err);
  return passOn ? (err as Error) : undecodable(key, location, errorMessage(err));
}

/** sha256 and size of a stored WAL object's decoded bytes (to compare with a file being archived again). */
export async function digestWalObject(
  target: StorageTarget,
  key: string,
  file: WalFileName,
  codec: WalCodec,
): Promise<{ sha256: string; size: number }> {
  const meter = new DigestMeter();
  const sink = new Writable({ write: (_chunk, _encoding, callback) => callback() });
  await pipeline(await openWalObject(target, key, file, codec), meter, sink);
  return { sha256: meter.sha256(), size: meter.bytes };
}

/**
 * Reads a stored WAL object and checks it as `restore wal` would before serving it (decrypt with the
 * current key or a retired one of the ring, the decompressor's checksum, the segment's size, page
 * header and system identifier). Returns the sha256 and size of its STORED bytes when it is good, so a
 * copier can pin its copy to exactly the bytes checked; throws an IntegrityError naming the object
 * and its target when it is not. `repo sync` uses it: WAL objects have no manifest with a digest.
 */
export async function checkStoredWalObject(
  target: StorageTarget,
  key: string,
  file: WalFileName,
  config: Config,
  identity: WalArchiveIdentity | undefined,
): Promise<{ sha256: string; size: number }> {
  const keys = [
    config.encryption.passphrase,
    ...(config.encryption.retired ?? []).filter((k) => k !== config.encryption.passphrase),
  ];
  for (let attempt = 0; ; attempt++) {
    const stored = new DigestMeter();
    const source = await target.get(key);
    source.on('error', (err) => stored.destroy(err));
    const codec = await walCodec(config, identity, file, keys[attempt]);
    try {
      const decoded = await openWalObject(target, key, file, codec, source.pipe(stored));
      const head = new HeadRecorder(WAL_LONG_HEADER_BYTES);
      const count = new DigestMeter({ hash: false });
      await pipeline(decoded, head, count, new Writable({ write: (_c, _e, cb) => cb() }));
      const problem = decodedFileProblem(file, count.bytes, head.head(), identity);
      if (problem !== undefined) throw undecodable(key, target.location, problem);
      return { sha256: stored.sha256(), size: stored.bytes };
    } catch (err) {
      const another =
        err instanceof IntegrityError && attempt + 1 < keys.length && decodingOf(key, file).encrypted;
      if (!another) throw err;
    }
  }
}

/**
 * Why a decoded WAL file must not be served, or undefined when it may: a segment (or .partial) must
 * be exactly one segment long and start with its own page header, from the archive's server.
 */
export function decodedFileProblem(
  file: WalFileName,
  size: number,
  firstBytes: Buffer,
  identity: WalArchiveIdentity | undefined,
): string | undefined {
  if (file.kind !== 'segment' && file.kind !== 'partial') return undefined;
  const header = parseWalSegmentHeader(firstBytes);
  if (header === undefined) return 'it does not start with a WAL page header';
  const segmentBytes = identity?.segmentBytes ?? header.segmentBytes;
  if (header.segmentBytes !== segmentBytes)
    return `its segment size is ${header.segmentBytes}, the archive's is ${segmentBytes}`;
  if (size !== segmentBytes) return `decoded size ${size} bytes, a segment is ${segmentBytes}`;
  const mismatch = segmentHeaderMismatch(file, header);
  if (mismatch !== undefined) return mismatch;
  if (identity !== undefined && header.systemIdentifier !== identity.systemIdentifier)
    return `it comes from system identifier ${header.systemIdentifier}, the archive's is ${identity.systemIdentifier}`;
  return undefined;
}

/** Keeps the first `limit` bytes that pass through. */
class HeadRecorder extends PassThrough {
  private readonly chunks: Buffer[] = [];
  private length = 0;
  constructor(private readonly limit: number) {
    super();
  }
  override _transform(
    chunk: Buffer,
    encoding: BufferEncoding,
    callback: (e?: Error | null, d?: Buffer) => void,
  ) {
    if (this.length < this.limit) {
      this.chunks.push(chunk.subarray(0, this.limit - this.length));
      this.length += Math.min(chunk.length, this.limit - this.length);
    }
    super._transform(chunk, encoding, callback);
  }
  head(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

export interface WalFetchContext {
  readonly config: Config;
  readonly targets: readonly StorageTarget[];
  /** Where the archive identity is cached between calls (the prefetch folder); none: asked each time. */
  readonly stateDir?: string;
}

/**
 * Fetches a WAL file into `destination` atomically (a temp file beside it, fsynced, renamed): the
 * destination appears complete and checked, or not at all. Targets are tried in order (local
 * first); a corrupt copy is reported through `warn` and the next target is used.
 * Throws WalFileNotArchivedError when no target has it.
 */
export async function fetchWalFile(
  ctx: WalFetchContext,
  name: string,
  destination: string,
  warn: (line: string) => void = () => {},
): Promise<{ key: string; location: string; size: number }> {
  const file = requireWalFileName(name);
  const cluster = ctx.config.clusterName;
  const identity = await loadArchiveIdentity(ctx.stateDir, ctx.targets, cluster);
  const codec = await walCodec(ctx.config, identity, file);
  // After a key rotation older objects open with a retired key of the ring, tried (and derived)
  // only when the current key does not open the object.
  const retired = (ctx.config.encryption.retired ?? []).filter((k) => k !== ctx.config.encryption.passphrase);
  const failures: Error[] = [];
  /** Targets that do not hold the file: said once a later one serves it (a repository that lacks it). */
  const absentIn: string[] = [];
  /** Targets whose copy could not be read or was corrupt. */
  const failedIn: string[] = [];
  for (const target of ctx.targets) {
    try {
      for (let attempt = 0; ; attempt++) {
        const opened = await openStoredWalFile(target, cluster, file, ctx.config);
        if (opened === undefined) {
          // Only a repository that should hold WAL is worth a line (REPO<n>_HOLDS).
          if (targetsHolding([target], 'wal').length > 0) absentIn.push(target.location);
          break;
        }
        const keyCodec =
          attempt === 0 ? codec : await walCodec(ctx.config, identity, file, retired[attempt - 1]);
        try {
          const size = await decodeIntoFile(
            target,
            opened.key,
            file,
            keyCodec,
            opened.source,
            destination,
            identity,
          );
          // Said whenever an earlier target did not serve it (absent, or its copy failed as warned above).
          const why = [
            ...(absentIn.length > 0 ? [`not in ${absentIn.join(', ')}`] : []),
            ...(failures.length > 0 ? [`unusable in ${failedIn.join(', ')}`] : []),
          ];
          if (why.length > 0) warn(`${name} is ${why.join(' and ')}; read it from ${target.location}`);
          return { key: opened.key, location: target.location, size };
        } catch (err) {
          const another =
            err instanceof IntegrityError &&
            attempt < retired.length &&
            decodingOf(opened.key, file).encrypted;
          if (!another) throw err;
        }
      }
    } catch (err) {
      // Another copy would not fit either: the full disk is the answer.
      if (!(err instanceof PgVaultError) || isDiskFull(err)) throw err;
      if (ctx.targets.length > 1) warn(errorMessage(err));
      failures.push(err);
      failedIn.push(target.location);
    }
  }
  const integrity = failures.find((f) => f instanceof IntegrityError || f instanceof ConfigError);
  if (integrity) throw integrity;
  if (failures[0]) throw failures[0];
  throw new WalFileNotArchivedError(
    name,
    ctx.targets.map((t) => t.location),
  );
}

/** Opens a WAL file's object: the key today's config would give first (one request), else a listing. */
async function openStoredWalFile(
  target: StorageTarget,
  cluster: string,
  file: WalFileName,
  config: Config,
): Promise<{ key: string; source: Readable } | undefined> {
  const expected = walKey(cluster, file, configuredWalExtension(config));
  try {
    return { key: expected, source: await target.get(expected) };
  } catch (err) {
    if (!(err instanceof ObjectNotFoundError)) throw err;
  }
  const other = await findWalObject(target, cluster, file);
  if (other === undefined) return undefined;
  try {
    return { key: other.key, source: await target.get(other.key) };
  } catch (err) {
    if (err instanceof ObjectNotFoundError) return undefined;
    throw err;
  }
}

async function decodeIntoFile(
  target: StorageTarget,
  key: string,
  file: WalFileName,
  codec: WalCodec,
  source: Readable,
  destination: string,
  identity: WalArchiveIdentity | undefined,
): Promise<number> {
  const directory = dirname(destination);
  const temp = join(directory, `.${basename(destination)}.tmp-${randomBytes(6).toString('hex')}`);
  const forget = removeOnExit(temp);
  try {
    // A plain descriptor kept open after the pipeline so it can be fsynced (see FileTarget).
    const fd = await openFd(temp, 'wx+', 0o600).catch((err: NodeJS.ErrnoException) => {
      source.destroy();
      throw new UsageError(
        `cannot write ${destination} (${err.code ?? errorMessage(err)}); restore_command passes %p, a path in the data directory's pg_wal`,
      );
    });
    let size: number;
    let head: Buffer;
    try {
      const { compression, encrypted } = decodingOf(key, file);
      // The decompressor writes the file itself: the 16 MB of a segment never pass through Node,
      // which only decrypts the stored bytes (as restore staging does, core/catalog/objects.ts).
      const decompress =
        encrypted && codec.passphrase === undefined
          ? undefined
          : decompressToFileStage(compression, { threads: 1 }, fd);
      if (decompress) {
        decompress.resume();
        await pipeline([source, ...decryptionStages(encrypted, codec), decompress] as unknown as [
          Readable,
          ...NodeJS.ReadWriteStream[],
        ]).catch((err: unknown) => {
          throw decodingFailure(err, key, target.location);
        });
        size = (await statFd(fd)).size;
        head = Buffer.alloc(Math.min(WAL_LONG_HEADER_BYTES, size));
        await readFd(fd, head, 0, head.length, 0);
      } else {
        const decoded = await openWalObject(target, key, file, codec, source);
        const recorder = new HeadRecorder(WAL_LONG_HEADER_BYTES);
        const output = descriptorWriteStream(fd);
        await pipeline(decoded, recorder, output);
        size = output.bytesWritten;
        head = recorder.head();
      }
      await fsyncFd(fd);
    } catch (err) {
      throw (
        diskFullError(err, destination, "free space in the file system of the server's pg_wal and retry") ??
        err
      );
    } finally {
      await closeFd(fd).catch(() => {});
    }
    const problem = decodedFileProblem(file, size, head, identity);
    if (problem !== undefined) throw undecodable(key, target.location, problem);
    await rename(temp, destination);
    return size;
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  } finally {
    forget();
  }
}

/** Writes `data` to `path` through a temp file and a rename, so readers never see half of it. */
export async function writeFileAtomically(path: string, data: string | Buffer): Promise<void> {
  const temp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(temp, data, { mode: 0o600 });
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Prefetch: recovery asks for one segment at a time and replays it before asking for the next, so a
// round trip per segment would bound replay speed. After serving segment N, `restore wal` records N
// in the prefetch folder and makes sure a detached prefetcher runs; it keeps the next
// WAL_PREFETCH segments fetched (checked, written atomically) so the following calls are a rename.
// ---------------------------------------------------------------------------------------------

/** Folder beside pg_wal's files: PostgreSQL ignores it and pg_basebackup skips pg_wal's contents. */
export const PREFETCH_FOLDER = 'pgvault-prefetch';
const WANT_FILE = 'want';
const PREFETCHER_LOCK = 'prefetcher.pid';
/** A prefetched file in the making; the restore command waits for it rather than fetching twice. */
const inFlightName = (name: string) => `.${name}.prefetching`;
/** The prefetcher leaves after this long without a new request, removing what it fetched. */
const PREFETCH_IDLE_MS = 30_000;
/** How long restore wal waits for a segment the prefetcher is fetching before fetching it itself. */
const IN_FLIGHT_WAIT_MS = 30_000;

/** The prefetch folder for a restore_command destination (`pg_wal/RECOVERYXLOG`), or undefined when not under pg_wal. */
export function prefetchDirFor(destination: string): string | undefined {
  const directory = dirname(destination);
  return basename(directory) === 'pg_wal' ? join(directory, PREFETCH_FOLDER) : undefined;
}

export interface RestoreWalResult {
  readonly name: string;
  readonly servedFrom: 'prefetch' | 'archive';
  readonly key?: string;
  readonly location?: string;
}

/**
 * `restore wal`: serves a WAL file from the prefetch folder when it is there (a rename), else
 * fetches it. Then, for segments, asks for the next ones to be prefetched (`startPrefetcher`
 * is called when the caller should make sure a prefetcher runs).
 */
export async function restoreWalFile(
  ctx: WalFetchContext,
  name: string,
  destination: string,
  options: {
    readonly prefetchDir?: string;
    readonly startPrefetcher?: (prefetchDir: string) => Promise<void>;
    readonly warn?: (line: string) => void;
  } = {},
): Promise<RestoreWalResult> {
  const file = requireWalFileName(name);
  const prefetchDir = file.kind === 'segment' && ctx.config.walPrefetch > 0 ? options.prefetchDir : undefined;
  let result: RestoreWalResult | undefined;
  if (prefetchDir !== undefined && (await takePrefetched(prefetchDir, name, destination))) {
    result = { name, servedFrom: 'prefetch' };
  }
  const fetchCtx = { ...ctx, stateDir: ctx.stateDir ?? prefetchDir };
  if (result === undefined) {
    const fetched = await fetchWalFile(fetchCtx, name, destination, options.warn);
    result = { name, servedFrom: 'archive', key: fetched.key, location: fetched.location };
  }
  if (prefetchDir !== undefined) {
    try {
      await mkdir(prefetchDir, { recursive: true, mode: 0o700 });
      await writeFileAtomically(join(prefetchDir, WANT_FILE), `${name}\n`);
      await options.startPrefetcher?.(prefetchDir);
    } catch (err) {
      // Prefetching only speeds recovery up; the file itself was served.
      options.warn?.(`cannot prefetch after ${name}: ${errorMessage(err)}`);
    }
  }
  return result;
}

/** Moves a prefetched file into place; waits for one the prefetcher is writing right now. */
async function takePrefetched(prefetchDir: string, name: string, destination: string): Promise<boolean> {
  const deadline = Date.now() + IN_FLIGHT_WAIT_MS;
  while (true) {
    try {
      await rename(join(prefetchDir, name), destination);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return false;
    }
    const inFlight = await stat(join(prefetchDir, inFlightName(name))).catch(() => undefined);
    if (inFlight === undefined || Date.now() > deadline) return false;
    // A marker left by a prefetcher that was killed must not hold recovery up.
    if (!(await prefetcherRunning(prefetchDir))) return false;
    await sleep(20);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether a process with this pid is alive and runs `marker` on its command line (Linux /proc; elsewhere: alive). */
export async function processRuns(pid: number, marker: string): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const commandLine = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return commandLine.includes(marker);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

/**
 * Takes a pid-file lock for a background process: true when this process now holds it. A lock
 * whose process is gone (or is not `marker`) is taken over. Two processes racing for a stale lock
 * can both believe they won; holders re-check with `holdsLock` and the loser leaves.
 */
export async function takeLock(path: string, marker: string): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    if (await processRuns(holder, marker)) return false;
    await unlink(path).catch(() => {});
  }
  return false;
}

export async function holdsLock(path: string): Promise<boolean> {
  const holder = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
  return holder === process.pid;
}

/** Whether a live process holds the lock at `path`. */
export async function lockHeld(path: string, marker: string): Promise<boolean> {
  const holder = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
  return processRuns(holder, marker);
}

export async function releaseLock(path: string): Promise<void> {
  if (await holdsLock(path)) await unlink(path).catch(() => {});
}

export const PREFETCHER_MARKER = 'prefetch';
/** The pid of a prefetcher just started, until it holds its lock (bin/pgvault waits for it). */
export const PREFETCHER_STARTING = 'prefetcher.starting';

/** Whether a prefetcher already runs for this folder. */
export function prefetcherRunning(prefetchDir: string): Promise<boolean> {
  return lockHeld(join(prefetchDir, PREFETCHER_LOCK), PREFETCHER_MARKER);
}

/**
 * The prefetcher's loop (a detached process): keeps the `count` segments after the one named in
 * the `want` file fetched into `prefetchDir`, `config.parallelJobs` at a time, stopping at the first
 * one the archive does not have (the end of the archive, for now). Leaves after PREFETCH_IDLE_MS
 * without a new request, removing its files, since recovery has then ended or moved on.
 */
export async function runPrefetcher(
  ctx: WalFetchContext,
  prefetchDir: string,
  options: { readonly idleMs?: number; readonly log?: (line: string) => void } = {},
): Promise<void> {
  const lock = join(prefetchDir, PREFETCHER_LOCK);
  const taken = await takeLock(lock, PREFETCHER_MARKER);
  await unlink(join(prefetchDir, PREFETCHER_STARTING)).catch(() => {});
  if (!taken) return;
  const log = options.log ?? (() => {});
  const idleMs = options.idleMs ?? PREFETCH_IDLE_MS;
  const fetchCtx: WalFetchContext = { ...ctx, stateDir: prefetchDir };
  const inFlight = new Map<string, Promise<void>>();
  /** Segments the archive did not have, and when that was seen. */
  const missing = new Map<string, number>();
  /** Segments fetched a second time at the end of the archive (once each). */
  const refetched = new Set<string>();
  let want = '';
  let lastChange = Date.now();
  let idle = false;
  let historyCheckedAt = 0;
  let historyCheck: Promise<void> | undefined;
  const identity = await loadArchiveIdentity(prefetchDir, ctx.targets, ctx.config.clusterName).catch(
    () => undefined,
  );
  const segmentBytes = identity?.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  try {
    // The lock lives in the folder: when the folder is removed (recovery over, a sandbox cleaned up), this stops.
    while (await holdsLock(lock)) {
      const requested = (await readFile(join(prefetchDir, WANT_FILE), 'utf8').catch(() => '')).trim();
      // Not a file name (empty, or cut short): bin/pgvault is rewriting it in place right now;
      // the window stays as it is.
      if (requested !== want && parseWalFileName(requested) !== undefined) {
        want = requested;
        lastChange = Date.now();
      }
      const wanted = parseWalFileName(want);
      const window: string[] = [];
      if (wanted?.kind === 'segment') {
        let next = want;
        for (let i = 0; i < ctx.config.walPrefetch; i++) {
          next = nextSegment(next, segmentBytes);
          window.push(next);
        }
      }
      // The history files recovery probes for (the next timelines, at start and at promotion):
      // present ones copied here, absent ones marked, so the launcher answers both without Node.
      if (
        wanted?.kind === 'segment' &&
        historyCheck === undefined &&
        Date.now() - historyCheckedAt > HISTORY_RECHECK_MS
      ) {
        historyCheckedAt = Date.now();
        historyCheck = refreshHistory(fetchCtx, prefetchDir, Number.parseInt(wanted.timeline!, 16))
          .catch((err: unknown) => log(`history look-ahead failed: ${errorMessage(err)}`))
          .finally(() => {
            historyCheck = undefined;
          });
      }
      // The segment served last is kept too: see the end-of-archive case below.
      await removeOutsideWindow(prefetchDir, new Set([want, ...window]), inFlight);
      const present = new Set(await readdir(prefetchDir).catch(() => [] as string[]));
      // At the end of the archive (the next segment missing), recovery reads the segment it was
      // given last once more when it ends and promotes: fetch it again, so that is a rename too.
      if (
        window.length > 0 &&
        missing.has(window[0]!) &&
        !present.has(want) &&
        !inFlight.has(want) &&
        !refetched.has(want)
      ) {
        // `want` moves on with the next request; the job must clean up after its own name.
        const again = want;
        refetched.add(again);
        const job = prefetchOne(fetchCtx, prefetchDir, again)
          .catch((err: unknown) => log(`prefetch of ${again} again failed: ${errorMessage(err)}`))
          .finally(() => inFlight.delete(again));
        inFlight.set(again, job);
      }
      for (const name of window) {
        const seenMissing = missing.get(name);
        if (seenMissing !== undefined && Date.now() - seenMissing < 1000) break;
        if (present.has(name) || inFlight.has(name)) continue;
        if (inFlight.size >= ctx.config.parallelJobs) break;
        const job = prefetchOne(fetchCtx, prefetchDir, name)
          .then(() => {
            missing.delete(name);
          })
          .catch((err: unknown) => {
            missing.set(name, Date.now());
            if (!(err instanceof WalFileNotArchivedError))
              log(`prefetch of ${name} failed: ${errorMessage(err)}`);
          })
          .finally(() => inFlight.delete(name));
        inFlight.set(name, job);
      }
      if (inFlight.size === 0 && Date.now() - lastChange > idleMs) {
        idle = true;
        break;
      }
      await Promise.race([sleep(50), ...inFlight.values()]);
    }
  } finally {
    await Promise.allSettled(inFlight.values());
    // Idle: recovery has ended or moved on; nothing of the prefetcher stays in pg_wal.
    if (idle && (await holdsLock(lock))) {
      await rm(prefetchDir, { recursive: true, force: true }).catch(() => {});
    } else {
      await removeOutsideWindow(prefetchDir, new Set(), new Map());
      await releaseLock(lock);
    }
  }
}

/** How often the prefetcher looks again for the next timelines' history files. */
const HISTORY_RECHECK_MS = 5_000;
/** Beside an absent history file's name: the archive did not have it at the last look. */
const ABSENT_SUFFIX = '.absent';

async function refreshHistory(ctx: WalFetchContext, prefetchDir: string, timeline: number): Promise<void> {
  // The current timeline's too: recovery asks for it again when it promotes.
  for (const next of [timeline, timeline + 1, timeline + 2]) {
    const name = `${next.toString(16).toUpperCase().padStart(8, '0')}.history`;
    const absent = join(prefetchDir, `${name}${ABSENT_SUFFIX}`);
    if (
      await stat(join(prefetchDir, name)).then(
        () => true,
        () => false,
      )
    )
      continue;
    try {
      await fetchWalFile(ctx, name, join(prefetchDir, name));
      await unlink(absent).catch(() => {});
    } catch (err) {
      if (!(err instanceof WalFileNotArchivedError)) throw err;
      await writeFileAtomically(absent, '');
    }
  }
}

/**
 * Fetches a segment into the prefetch folder. One the archive does not have gets `<name>.absent`
 * (until a later look finds it), so bin/pgvault answers recovery's request past the end of the
 * archive without Node; the prefetcher looks again every second.
 */
async function prefetchOne(ctx: WalFetchContext, prefetchDir: string, name: string): Promise<void> {
  const marker = join(prefetchDir, inFlightName(name));
  const absent = join(prefetchDir, `${name}${ABSENT_SUFFIX}`);
  await writeFile(marker, '', { mode: 0o600 });
  try {
    await fetchWalFile(ctx, name, join(prefetchDir, name));
    await unlink(absent).catch(() => {});
  } catch (err) {
    if (err instanceof WalFileNotArchivedError) await writeFileAtomically(absent, '');
    throw err;
  } finally {
    await unlink(marker).catch(() => {});
  }
}

/** Removes prefetched segments recovery no longer needs (served, skipped, or from another timeline). */
async function removeOutsideWindow(
  prefetchDir: string,
  window: ReadonlySet<string>,
  inFlight: ReadonlyMap<string, unknown>,
): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(prefetchDir);
  } catch {
    return;
  }
  for (const entry of entries) {
    const name = entry.endsWith(ABSENT_SUFFIX) ? entry.slice(0, -ABSENT_SUFFIX.length) : entry;
    const file = parseWalFileName(name);
    if (file?.kind !== 'segment' || window.has(name) || inFlight.has(name)) continue;
    await unlink(join(prefetchDir, entry)).catch(() => {});
  }
}
