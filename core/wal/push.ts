import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { checkArchiveKey } from '../catalog/keys';
import { writeObject } from '../catalog/objects';
import type { Compression, Config } from '../config';
import { errorMessage, IntegrityError, ObjectExistsError, PgVaultError, UsageError } from '../errors';
import { refuseCopyWal } from '../restore/copy';
import type { StorageTarget } from '../storage/target';
import { compressFiles, decompressStage, decryptStage, ZstdFrameSplitter } from '../stream';
import {
  archiveIdentityKey,
  cachedArchiveIdentity,
  configuredWalExtension,
  decodingOf,
  digestWalObject,
  findWalObject,
  loadArchiveIdentity,
  newArchiveIdentity,
  readArchiveIdentity,
  rememberArchiveIdentity,
  type WalArchiveIdentity,
  type WalCodec,
  walCodec,
} from './fetch';
import {
  parseWalSegmentHeader,
  requireWalFileName,
  segmentHeaderMismatch,
  WAL_LONG_HEADER_BYTES,
  type WalFileName,
  type WalSegmentHeader,
  walKey,
} from './naming';

/**
 * Archiving one WAL file (`backup wal`, the uploader and `wal receive` all come here): checks it
 * belongs to the archive's server, then stores it through the one data path (compress, encrypt,
 * every target in one pass). Idempotent: a file already archived with the same bytes succeeds
 * without a write, different bytes under the same name fail loudly, so PostgreSQL keeps the file.
 */

export interface WalPushContext {
  readonly config: Config;
  readonly targets: readonly StorageTarget[];
  /** Where the archive identity is cached (the spool), so a segment is checked without a round trip. */
  readonly stateDir?: string;
  /** Compressor threads for this file. @default 1 (the uploader runs several files at once) */
  readonly threads?: number;
  /** Where warnings go (a damaged object replaced): stderr for `backup wal`, the uploader's log. */
  readonly warn?: (line: string) => void;
  /**
   * The node this copy comes from, for the conflict line (two nodes archiving one segment with
   * different content). @default walNodeOf(path): host[:PGPORT] and the data directory
   */
  readonly node?: string;
}

/**
 * Different bytes under an archived name: the segment, node and timeline are in the message. With
 * archive_mode=always every node archives every segment, so this is the one loud case (a split
 * brain, or two servers in one CLUSTER_NAME); the same bytes from another node succeed quietly.
 */
export class WalConflictError extends IntegrityError {
  constructor(
    message: string,
    readonly segment: string,
    readonly node: string,
    readonly timeline: number,
  ) {
    super(message);
  }
}

/**
 * Which node a WAL file comes from, for messages: the host (PGHOST when it names one, else this
 * machine's name), PGPORT when set, and the data directory when the file is in its pg_wal
 * (archive_command runs there), so two nodes on one host are told apart; with PATRONI_NAME
 * (`member`), the Patroni member first: `node2 (db2:5432, data directory /var/lib/...)`.
 */
export function walNodeOf(path: string, env: NodeJS.ProcessEnv = process.env, member?: string): string {
  const pgHost = env.PGHOST;
  const host = pgHost !== undefined && pgHost !== '' && !pgHost.startsWith('/') ? pgHost : hostname();
  const port = env.PGPORT !== undefined && env.PGPORT !== '' ? `:${env.PGPORT}` : '';
  const walDir = dirname(resolve(path));
  const dataDir = basename(walDir) === 'pg_wal' ? `data directory ${dirname(walDir)}` : undefined;
  // PATRONI_NAME: the Patroni member first, then where it runs.
  if (member !== undefined) return `${member} (${host}${port}${dataDir ? `, ${dataDir}` : ''})`;
  return `${host}${port}${dataDir ? ` (${dataDir})` : ''}`;
}

export interface WalPushResult {
  readonly name: string;
  readonly key: string;
  readonly rawSize: number;
  /** Targets written now. */
  readonly storedIn: readonly string[];
  /** Targets that already held the same bytes. */
  readonly alreadyIn: readonly string[];
  /** Targets whose damaged object under this name was replaced (also in storedIn). */
  readonly replacedIn?: readonly string[];
}

/** A file checked and looked up, ready to be written where it is missing. */
interface PreparedPush {
  readonly path: string;
  readonly file: WalFileName;
  readonly size: number;
  /** The key it is written under (or, when stored everywhere already, stored under). */
  readonly key: string;
  readonly codec: WalCodec;
  readonly missing: readonly StorageTarget[];
  readonly alreadyIn: readonly string[];
  /**
   * Damaged objects (a cut upload a store kept) found under the file's name, to be replaced by the
   * intact local file: their targets are in `missing` too, and are written over, not create-only.
   */
  readonly damaged: readonly { readonly target: StorageTarget; readonly key: string }[];
}

/** Stores the WAL file at `path` in every target; resolves only once it is durably stored in all of them. */
export async function pushWalFile(ctx: WalPushContext, path: string): Promise<WalPushResult> {
  const prepared = await preparePush(ctx, path);
  if (prepared.missing.length === 0) return resultOf(prepared);
  try {
    await writeObject({
      ...objectSpec(ctx, prepared),
      // The compressor reads the segment itself; Node handles only the compressed bytes. A file
      // that changes size meanwhile fails the write before its object completes anywhere.
      source: { path, size: prepared.size },
      threads: ctx.threads ?? 1,
    });
  } catch (err) {
    return afterObjectExists(ctx, path, err);
  }
  await removeReplacedKeys(prepared);
  return resultOf(prepared);
}

export type WalPushOutcome =
  | { readonly path: string; readonly result: WalPushResult }
  | { readonly path: string; readonly error: unknown };

/**
 * The uploader's form: stores several files, each as its own object, with one compressor process
 * for all of them where the compression allows it (zstd; see ZstdFrameSplitter for why one process
 * matters). `onOutcome` hears about every file exactly once, as soon as its object is stored: the
 * archiver waits for the oldest file, and it should not wait for the rest of the batch. An object
 * is completed only once its frame is proven to hold its file: zstd skips a file it cannot read and
 * goes on, so a frame's place alone does not say whose it is. The proof is zstd's report for that
 * file, in turn and with the frame's size, or else zstd's exit 0 (FileCompressor.fileDone). When the
 * run fails, every file not yet proven fails and nothing of it is kept; the caller retries them one
 * at a time (pushWalFile).
 */
export async function pushWalFiles(
  ctx: WalPushContext,
  paths: readonly string[],
  onOutcome: (outcome: WalPushOutcome) => void | Promise<void>,
  /** Called once the compressor is done with the batch (its objects may still be completing). */
  onCompressed?: () => void,
): Promise<void> {
  const toWrite: PreparedPush[] = [];
  // All at once: each is a few small reads and lookups, and the compressor starts after the last.
  const checks = await Promise.all(
    paths.map((path) =>
      preparePush(ctx, path).then(
        (prepared) => ({ path, prepared }),
        (error: unknown) => ({ path, error }),
      ),
    ),
  );
  for (const check of checks) {
    if (!('prepared' in check)) await onOutcome(check);
    else if (check.prepared.missing.length === 0)
      await onOutcome({ path: check.path, result: resultOf(check.prepared) });
    else toWrite.push(check.prepared);
  }
  const { config } = ctx;
  const compressor =
    toWrite.length > 1
      ? await compressFiles(
          config.compression,
          { threads: 1, level: config.compressionLevel },
          toWrite.map((p) => p.path),
        )
      : undefined;
  if (compressor === undefined) {
    for (const prepared of toWrite) {
      await pushWalFile(ctx, prepared.path).then(
        (result) => onOutcome({ path: prepared.path, result }),
        (error: unknown) => onOutcome({ path: prepared.path, error }),
      );
    }
    return;
  }
  const writes: Promise<void>[] = [];
  const splitter = new ZstdFrameSplitter((index, contentSize, ended) => {
    const prepared = toWrite[index]!;
    const frame = new PassThrough({ highWaterMark: 1 << 20 });
    if (contentSize !== undefined && contentSize !== prepared.size) {
      frame.destroy(
        new IntegrityError(
          `WAL file ${prepared.path} is ${prepared.size} bytes but its compressed frame holds ${contentSize}; it changed while it was read: nothing was kept, retry`,
        ),
      );
    }
    writes[index] = writeObject({
      ...objectSpec(ctx, prepared),
      source: { encoded: frame, rawSize: prepared.size },
      threads: 1,
      upstream: [ended.then((bytes) => compressor.fileDone(index, bytes))],
    })
      .then(
        async () => {
          await removeReplacedKeys(prepared);
          return resultOf(prepared);
        },
        (error: unknown) => afterObjectExists(ctx, prepared.path, error),
      )
      .then(
        (result) => onOutcome({ path: prepared.path, result }),
        (error: unknown) => onOutcome({ path: prepared.path, error }),
      );
    return frame;
  }, toWrite.length);
  let failure: unknown;
  try {
    await Promise.all([pipeline(compressor.stdout, splitter), compressor.exited]);
  } catch (err) {
    failure = err;
    splitter.destroy(err as Error);
    compressor.child.kill();
  }
  onCompressed?.();
  await Promise.all(writes);
  // Files whose frame never started (the run failed before them).
  for (const [index, prepared] of toWrite.entries()) {
    if (writes[index] === undefined) await onOutcome({ path: prepared.path, error: failure });
  }
}

/**
 * Refuses, by hand, a segment of a server's pg_wal that PostgreSQL has not finished: no
 * `archive_status/<name>.ready` (it asks for archiving only after writing that) and no `.done`
 * (already archived, so complete). That is the segment being written, or one preallocated for
 * later: stored now, its incomplete copy would later block the real one ("already archived with
 * different content"). Costs two stats, and only off PostgreSQL's own path (the caller has found
 * no .ready); a file outside a pg_wal (no archive_status beside it) is taken as given.
 */
export async function refuseUnfinishedSegment(path: string, file: WalFileName): Promise<void> {
  if (file.kind !== 'segment') return;
  const status = join(dirname(resolve(path)), 'archive_status');
  const exists = (p: string) =>
    stat(p).then(
      () => true,
      () => false,
    );
  if (!(await exists(status)) || (await exists(join(status, `${file.name}.done`)))) return;
  throw new UsageError(
    `WAL file ${path} is not finished: PostgreSQL is still writing it (or keeps it for later), there is no ${join(status, `${file.name}.ready`)}; an incomplete copy in the archive would block the real one. PostgreSQL archives it itself once it is complete (SELECT pg_switch_wal() completes it now)`,
  );
}

/**
 * A create-only write refused because another archiver of this file got there first (two `backup
 * wal` of one segment, or the uploader and a retry): the other object is judged as any found one
 * is, by content, and never touched; the same bytes everywhere are a success. Other errors pass on.
 */
async function afterObjectExists(ctx: WalPushContext, path: string, err: unknown): Promise<WalPushResult> {
  if (!(err instanceof ObjectExistsError)) throw err;
  const again = await preparePush(ctx, path);
  if (again.missing.length === 0) return resultOf(again);
  throw err;
}

/**
 * A damaged object found under another key (stored with other compression or encryption) is
 * removed once the good one is stored under the configured key.
 */
async function removeReplacedKeys(prepared: PreparedPush): Promise<void> {
  for (const { target, key } of prepared.damaged) {
    if (key === prepared.key) continue;
    await target.delete(key).catch(() => {});
  }
}

/** Checks the file, the archive identity, and which targets already hold it (the same bytes, or not). */
async function preparePush(ctx: WalPushContext, path: string): Promise<PreparedPush> {
  const { config, targets } = ctx;
  const cluster = config.clusterName;
  const file = requireWalFileName(basename(path));
  await refuseCopyWal(cluster, path);
  const { size, header } = await inspectWalFile(path, file);
  const identity =
    header !== undefined
      ? await checkedArchiveIdentity(ctx, file, header)
      : await loadArchiveIdentity(ctx.stateDir, targets, cluster);
  const codec = await walCodec(config, identity, file);
  // One key per archive, checked before anything is stored; a segment's derived WAL passphrase
  // identifies an accepted key without another key derivation (cached in the spool).
  const derived =
    config.encryption.enabled && codec.passphrase !== config.encryption.passphrase
      ? codec.passphrase
      : undefined;
  await checkArchiveKey({ config, targets, stateDir: ctx.stateDir }, derived);

  const existing = await Promise.all(targets.map((target) => findWalObject(target, cluster, file)));
  const alreadyIn: string[] = [];
  const damaged: { target: StorageTarget; key: string }[] = [];
  if (existing.some((info) => info !== undefined)) {
    const fileSha256 = await sha256OfFile(path);
    for (const [i, info] of existing.entries()) {
      if (info === undefined) continue;
      const target = targets[i]!;
      let stored: { sha256: string; size: number };
      try {
        stored = await digestWalObject(target, info.key, file, codec);
      } catch (err) {
        if (!(err instanceof IntegrityError)) throw err;
        // The local file passed its checks (header, name, size) above: it is the good copy.
        const proof = await damagedCopyProof(target, info.key, file, codec, path);
        if (proof === undefined) {
          throw new IntegrityError(
            `WAL file ${file.name} is already archived in ${target.location} as ${info.key}, but that object cannot be decoded (${errorMessage(err)}) and nothing proves it a damaged copy of this file (a different encryption key?); it is left as it is: inspect it, and remove it by hand if it is damaged`,
          );
        }
        ctx.warn?.(
          `WAL file ${file.name}: the object ${info.key} in ${target.location} cannot be decoded (${proof}); replacing it with the intact local file`,
        );
        damaged.push({ target, key: info.key });
        continue;
      }
      if (stored.sha256 !== fileSha256) {
        const node = ctx.node ?? walNodeOf(path, process.env, ctx.config.patroniName);
        const timeline = Number.parseInt(file.timeline, 16);
        throw new WalConflictError(
          `WAL file ${file.name} is already archived with different content in ${target.location} (${info.key}); refusing to overwrite it: this copy comes from node ${node}, timeline ${timeline} (${stored.size} bytes stored, ${size} here). Two servers archiving into cluster ${cluster}? A split brain? Give each server its own CLUSTER_NAME, or find which node's WAL is the real history`,
          file.name,
          node,
          timeline,
        );
      }
      alreadyIn.push(target.location);
    }
  }
  const missing = targets.filter(
    (target, i) => existing[i] === undefined || damaged.some((d) => d.target === target),
  );
  const key = missing.length === 0 ? existing[0]!.key : walKey(cluster, file, configuredWalExtension(config));
  return { path, file, size, key, codec, missing, alreadyIn, damaged };
}

/** The first bytes every stream of a compression starts with (none for 'none'). */
const COMPRESSION_MAGIC: Partial<Record<Compression, Buffer>> = {
  zstd: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]),
  gzip: Buffer.from([0x1f, 0x8b]),
  lz4: Buffer.from([0x04, 0x22, 0x4d, 0x18]),
  bzip2: Buffer.from('BZh'),
  xz: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
};

/**
 * Why an undecodable object is provably damaged (a reason for the log), or undefined when nothing
 * proves it. A wrong key also fails to decode, and must never get the archive's objects replaced:
 * so, encrypted, the decrypted bytes must start as the compression's streams do (a wrong key gives
 * random bytes there), or decode to a start of the local file. Whatever does decode must be a start
 * of the local file (else it is another file's object: refused as a conflict). Each stage runs on
 * its own, so one stage failing cannot cut off the output of the one before it.
 */
async function damagedCopyProof(
  target: StorageTarget,
  key: string,
  file: WalFileName,
  codec: WalCodec,
  localPath: string,
): Promise<string | undefined> {
  const { compression, encrypted } = decodingOf(key, file);
  const stored = await target.getBytes(key);
  let problems: string[] = [];
  let plain = stored;
  let keyProven = !encrypted;
  if (encrypted) {
    if (codec.passphrase === undefined) return undefined;
    const decrypted = await drain(readableOf(stored), decryptStage(codec.passphrase, codec.iterations));
    plain = decrypted.bytes;
    if (decrypted.error !== undefined) problems.push(errorMessage(decrypted.error));
    const magic = COMPRESSION_MAGIC[compression];
    keyProven =
      magic !== undefined && plain.length >= magic.length && plain.subarray(0, magic.length).equals(magic);
  }
  const decoded = await drain(readableOf(plain), decompressStage(compression, { threads: 1 }));
  if (decoded.error !== undefined) problems.push(errorMessage(decoded.error));
  const local = await readFile(localPath);
  const matches =
    decoded.bytes.length <= local.length && local.subarray(0, decoded.bytes.length).equals(decoded.bytes);
  if (!matches) return undefined;
  if (!keyProven && decoded.bytes.length === 0) return undefined;
  if (decoded.bytes.length === local.length && problems.length === 0) return undefined;
  problems = problems.map((p) => p.split('\n')[0]!);
  return `${stored.length} bytes stored, ${decoded.bytes.length} of the file's ${local.length} decode from it before it breaks off: ${problems[0] ?? 'it ends early'}`;
}

function readableOf(bytes: Buffer): Readable {
  const stream = new PassThrough();
  stream.end(bytes);
  return stream;
}

/** Everything a stage puts out for `input`, and its error (kept, not thrown), once it stops. */
function drain(input: Readable, stage: NodeJS.ReadWriteStream): Promise<{ bytes: Buffer; error?: unknown }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (error?: unknown) => {
      if (settled) return;
      settled = true;
      resolve({ bytes: Buffer.concat(chunks), ...(error !== undefined ? { error } : {}) });
    };
    const readable = stage as unknown as Readable;
    readable.on('data', (chunk: Buffer) => chunks.push(chunk));
    readable.on('end', () => finish());
    readable.on('error', (error) => finish(error));
    input.on('error', (error) => finish(error));
    input.pipe(stage as unknown as NodeJS.WritableStream);
  });
}

/** What writeObject needs for a prepared file, but its source and threads. */
function objectSpec(ctx: WalPushContext, prepared: PreparedPush) {
  const { config } = ctx;
  const passphrase = prepared.codec.passphrase;
  return {
    key: prepared.key,
    compression: config.compression,
    compressionLevel: config.compressionLevel,
    encryption:
      config.encryption.enabled && passphrase !== undefined
        ? { passphrase, iterations: prepared.codec.iterations }
        : undefined,
    targets: prepared.missing,
    sizeHint: prepared.size,
    // A WAL object has no manifest to record a digest in.
    digest: false as const,
    // Create-only, so two archivers of one file never undo each other; a damaged object is written over.
    ifAbsent: prepared.damaged.length === 0,
    // A completed WAL object is whole and right, and may already be another archiver's success:
    // never deleted because another target failed (damaged copies are written over, not create-only).
    keepCompleted: true as const,
  };
}

function resultOf(prepared: PreparedPush): WalPushResult {
  return {
    name: prepared.file.name,
    key: prepared.key,
    rawSize: prepared.size,
    storedIn: prepared.missing.map((t) => t.location),
    alreadyIn: prepared.alreadyIn,
    ...(prepared.damaged.length > 0 ? { replacedIn: prepared.damaged.map((d) => d.target.location) } : {}),
  };
}

/** Size and, for segments and .partial files, the first page header (checked against the name). */
async function inspectWalFile(
  path: string,
  file: WalFileName,
): Promise<{ size: number; header?: WalSegmentHeader }> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? errorMessage(err);
    throw new UsageError(
      `WAL file ${path} cannot be read (${code}); archive_command passes %p, the path PostgreSQL gives`,
    );
  }
  try {
    const { size } = await handle.stat();
    if (file.kind !== 'segment' && file.kind !== 'partial') return { size };
    const first = Buffer.alloc(WAL_LONG_HEADER_BYTES);
    const { bytesRead } = await handle.read(first, 0, first.length, 0);
    const header = parseWalSegmentHeader(first.subarray(0, bytesRead));
    if (header === undefined) {
      throw new IntegrityError(
        `${path} does not start with a WAL page header; it is not a WAL segment of any server (damaged or misnamed): not archived`,
      );
    }
    const mismatch = segmentHeaderMismatch(file, header);
    if (mismatch !== undefined)
      throw new IntegrityError(`${path} is not the segment its name says: ${mismatch}; not archived`);
    if (size !== header.segmentBytes) {
      throw new IntegrityError(
        `${path} is ${size} bytes but its server writes ${header.segmentBytes}-byte segments; a truncated copy? not archived`,
      );
    }
    return { size, header };
  } finally {
    await handle.close();
  }
}

async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/**
 * The archive's identity, checked against a segment's header: from the local cache when it is
 * there, else from the targets; an archive without one gets it now, from this segment (first push).
 * Throws IntegrityError for a segment of another server.
 */
export async function checkedArchiveIdentity(
  ctx: WalPushContext,
  file: WalFileName,
  header: WalSegmentHeader,
): Promise<WalArchiveIdentity> {
  const { config, targets } = ctx;
  const cluster = config.clusterName;
  const cached = await cachedArchiveIdentity(ctx.stateDir, targets, cluster);
  if (cached !== undefined) {
    assertSameServer(cached, file, header, targets);
    return cached;
  }
  // The uploader's first batch asks for it once per file, all at once: one of them reads (or
  // creates) it, the others wait for that one.
  const where = `${ctx.stateDir ?? ''}\0${cluster}\0${targets.map((t) => t.location).join('\0')}`;
  let establishing = identitiesEstablishing.get(where);
  if (establishing === undefined) {
    establishing = establishArchiveIdentity(ctx, header).finally(() => identitiesEstablishing.delete(where));
    identitiesEstablishing.set(where, establishing);
  }
  const identity = await establishing;
  assertSameServer(identity, file, header, targets);
  return identity;
}

const identitiesEstablishing = new Map<string, Promise<WalArchiveIdentity>>();

/**
 * The archive's identity from the targets, or a new one from this segment's header when no target
 * has one yet (first push); written where missing and cached in the spool when it matches this
 * segment (the caller checks each segment against it).
 */
async function establishArchiveIdentity(
  ctx: WalPushContext,
  header: WalSegmentHeader,
): Promise<WalArchiveIdentity> {
  const { config, targets } = ctx;
  const cluster = config.clusterName;
  const { identity: recorded, missingIn } = await readArchiveIdentity(targets, cluster);
  const identity =
    recorded ??
    newArchiveIdentity(cluster, header.systemIdentifier, header.segmentBytes, config.encryption.iterations);
  // Another server's identity is not copied on: the caller refuses the segment (assertSameServer).
  if (
    identity.systemIdentifier !== header.systemIdentifier ||
    identity.segmentBytes !== header.segmentBytes
  ) {
    return identity;
  }
  const text = `${JSON.stringify(identity, null, 2)}\n`;
  await Promise.all(missingIn.map((target) => target.putBytes(archiveIdentityKey(cluster), text)));
  await rememberArchiveIdentity(ctx.stateDir, targets, cluster, identity);
  return identity;
}

function assertSameServer(
  identity: WalArchiveIdentity,
  file: WalFileName,
  header: WalSegmentHeader,
  targets: readonly StorageTarget[],
): void {
  const where = targets.map((t) => t.location).join(', ');
  if (header.systemIdentifier !== identity.systemIdentifier) {
    throw new IntegrityError(
      `WAL file ${file.name} comes from a server with system identifier ${header.systemIdentifier}, but the WAL archive of cluster ${identity.cluster} in ${where} belongs to system identifier ${identity.systemIdentifier} (since ${identity.created}); a re-initialised cluster or a reused bucket? Archive this server under another CLUSTER_NAME, or move ${identity.cluster}/wal away if the old archive is no longer needed`,
    );
  }
  if (header.segmentBytes !== identity.segmentBytes) {
    throw new IntegrityError(
      `WAL file ${file.name} has ${header.segmentBytes}-byte segments, the WAL archive of cluster ${identity.cluster} in ${where} has ${identity.segmentBytes}-byte ones; archive this server under another CLUSTER_NAME`,
    );
  }
}

/** A one-line reason for a failed push, for markers and logs. */
export function pushFailureLine(err: unknown): string {
  return (err instanceof PgVaultError ? err.message : `unexpected error: ${errorMessage(err)}`).split(
    '\n',
  )[0]!;
}
