import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
// Types only: the SDK (and google-auth-library under it) is loaded on first use, so that `backup wal`
// and every command of a non-GCS setup start as fast as before.
// The ESM build is what import() loads at run time, so the types are taken from it too.
import type { Bucket, File, Storage } from '@google-cloud/storage' with { 'resolution-mode': 'import' };
import type { GcsStorageClass, PerLifecycleKind } from '../config';
import { ObjectExistsError, ObjectLockedError, ObjectNotFoundError, StorageError } from '../errors';
import { assertValidKey, assertValidPrefix, KeyPrefix } from './file';
import { placementFor } from './s3';
import { readWhole, sourceChunks } from './source';
import type { ObjectInfo, ObjectLockOptions, PutOptions, StorageTarget } from './target';

type GcsSdk = typeof import('@google-cloud/storage', { with: { 'resolution-mode': 'import' }});

let gcsSdkPromise: Promise<GcsSdk> | undefined;
function loadGcsSdk(): Promise<GcsSdk> {
  gcsSdkPromise ??= import('@google-cloud/storage');
  return gcsSdkPromise;
}

const MiB = 1024 * 1024;
/**
 * Bytes per request of a resumable upload. The client keeps one chunk in memory to resend it after a
 * failed request (so a reset or a 503 in the middle of a large object resumes where the server's
 * offset says, instead of failing), so memory per upload is about this much. A multiple of 256 KiB,
 * as GCS requires of every chunk but the last.
 */
const DEFAULT_CHUNK_SIZE = 16 * MiB;
const CHUNK_GRANULE = 256 * 1024;
const DEFAULT_PAGE_SIZE = 1000;
const DEFAULT_MAX_ATTEMPTS = 3;
const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
/** Longest wait between two attempts (archive_command must fail fast when the store is down). */
const MAX_RETRY_DELAY_S = 4;
/** User metadata naming the write that made an object (see outcomeOfFailedPut). */
const WRITE_ID_METADATA = 'pgvault-write';

export interface GcsTargetOptions {
  readonly bucket: string;
  /** Object name prefix inside the bucket, without leading or trailing '/'. @default '' */
  readonly prefix?: string;
  /**
   * A JSON-API endpoint instead of storage.googleapis.com (STORAGE_EMULATOR_HOST); requests to it
   * are not authenticated, as the client does for an emulator.
   */
  readonly endpoint?: string;
  /** GOOGLE_APPLICATION_CREDENTIALS from a config file (the environment's is read by the client). */
  readonly keyFile?: string;
  readonly projectId?: string;
  /** Bytes per upload request, a multiple of 256 KiB. @default 16 MiB */
  readonly chunkSize?: number;
  /** Objects per listing page. @default 1000 */
  readonly pageSize?: number;
  /** Attempts per request, retries included. @default 3 */
  readonly maxAttempts?: number;
  /**
   * Milliseconds a request may go without an answer: a single request to its answer, an upload
   * without a byte moving or an answer coming. @default 60000 (S3_REQUEST_TIMEOUT)
   */
  readonly requestTimeoutMs?: number;
  /**
   * The storage class of each new object by its lifecycle kind (s3.ts placementFor), sent with the
   * upload itself, so no object is ever in another class. @default none (the bucket's default class)
   */
  readonly storageClass?: PerLifecycleKind<GcsStorageClass>;
  /**
   * The per-object lock (OBJECT_LOCK_MODE, core/storage/index.ts objectLockOptions) as GCS object
   * retention: `retention: { mode, retainUntilTime }` in the upload's metadata when `retainUntil` gives
   * a date for the key (its planned GFS expiry); GOVERNANCE is GCS's `Unlocked` mode (may be shortened
   * by those allowed), COMPLIANCE its `Locked` mode (never). Needs a bucket with object retention
   * enabled. @default none
   */
  readonly objectLock?: ObjectLockOptions;
}

/**
 * How far an upload's source may run ahead of the client: `room(produced)` waits while the bytes
 * handed to the client and not yet sent (`produced - sent`) are over one chunk. The client needs a
 * whole chunk queued and one byte more (or the end of the source) to start a request (it must know
 * whether the chunk is the last), and the one in flight counts as sent: the gate always lets it
 * have that much (a resend starts at or below `sent`), so it never waits for bytes held back here. `release` lets every waiter go (the upload
 * ended or failed; the pipeline's own error ends the reading).
 */
export function uploadGate(chunkSize: number): {
  room(produced: number): Promise<void>;
  sent(bytes: number): void;
  release(): void;
  /** The most bytes ever handed over and not yet sent (tests). */
  readonly maxAhead: number;
} {
  let sentBytes = 0;
  let released = false;
  let maxAhead = 0;
  let wake: (() => void) | undefined;
  return {
    async room(produced) {
      while (!released && produced - sentBytes > chunkSize) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
      maxAhead = Math.max(maxAhead, produced - sentBytes);
    },
    sent(bytes) {
      // A resend after a failed request counts from the server's offset again (lower): the bytes
      // between are the client's own cache, already counted when they were read.
      sentBytes = Math.max(sentBytes, bytes);
      wake?.();
      wake = undefined;
    },
    release() {
      released = true;
      wake?.();
      wake = undefined;
    },
    get maxAhead() {
      return maxAhead;
    },
  };
}

/**
 * A Google Cloud Storage bucket under a name prefix. Streams are uploaded with resumable uploads in
 * chunks (constant memory); the object appears only when the last chunk is accepted, so readers never
 * see part of one, and a failed upload's session is cancelled (an unfinished session is never an
 * object; GCS drops it within a week anyway). Every storage class, ARCHIVE included, is read at once.
 */
export class GcsTarget implements StorageTarget {
  readonly kind = 'gcs' as const;
  readonly location: string;
  readonly bucket: string;
  readonly prefix: string;
  private readonly keys: KeyPrefix;
  private readonly options: GcsTargetOptions;
  private bucketPromise: Promise<Bucket> | undefined;

  constructor(options: GcsTargetOptions) {
    const chunk = options.chunkSize;
    if (chunk !== undefined && (chunk < CHUNK_GRANULE || chunk % CHUNK_GRANULE !== 0)) {
      throw new StorageError(`GCS chunk size ${chunk} is not allowed; use a multiple of 256 KiB`);
    }
    this.options = options;
    this.bucket = options.bucket;
    this.keys = new KeyPrefix(options.prefix);
    this.prefix = this.keys.value;
    this.location = this.keys.location(`gs://${this.bucket}`);
  }

  /** The upload metadata of a new object under `key`: storage class, retention, this write's id. */
  objectMetadata(key: string, writeId: string, now = new Date()): Record<string, unknown> {
    const storageClass = placementFor(key, this.options.storageClass);
    const lock = this.options.objectLock;
    const until = lock?.retainUntil(key, now);
    return {
      contentType: 'application/octet-stream',
      metadata: { [WRITE_ID_METADATA]: writeId },
      ...(storageClass ? { storageClass } : {}),
      ...(until && lock
        ? {
            retention: {
              mode: lock.mode === 'COMPLIANCE' ? 'Locked' : 'Unlocked',
              retainUntilTime: until.toISOString(),
            },
          }
        : {}),
    };
  }

  async put(key: string, source: Readable, options: PutOptions = {}): Promise<{ size: number }> {
    const file = await this.file(key);
    const writeId = randomBytes(12).toString('hex');
    const reading = sourceChunks(source);
    const chunkSize = this.options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    let size = 0;
    let session: string | undefined;
    const upload = file.createWriteStream({
      resumable: true,
      chunkSize,
      metadata: this.objectMetadata(key, writeId),
      validation: 'crc32c',
      // GCS refuses (412) to finish the upload when an object is already under the name.
      ...(options.ifAbsent ? { preconditionOpts: { ifGenerationMatch: 0 } } : {}),
    });
    upload.on('uri', (uri: string) => {
      session = uri;
    });
    // The client has no limit on an upload's requests: cut one that moves nothing for that long.
    let timer: NodeJS.Timeout | undefined;
    const idle = () => {
      clearTimeout(timer);
      timer = setTimeout(() => upload.destroy(new GcsTimeoutError(this.timeoutMs)), this.watchdogMs);
    };
    upload.on('progress', idle);
    upload.on('response', idle);
    // Back-pressure of our own: the client's write callback is released once per buffer it reads,
    // and in chunked mode it reads every buffer twice (once to measure the chunk for Content-Range,
    // once to send it), so its queue grows by a chunk per request and a fast source is read whole
    // into memory (peak memory grew with the object: 442 MiB at 1.5 GB). The source is read only
    // while it is at most one chunk (plus the buffer in hand) ahead of what the client has put on
    // the wire: the client holds the chunk being sent (kept for a resend) and the next one, no more.
    const gate = uploadGate(chunkSize);
    upload.on('progress', (event: { bytesWritten?: number }) => gate.sent(event.bytesWritten ?? 0));
    upload.on('close', gate.release);
    upload.on('error', gate.release);
    async function* chunks(): AsyncGenerator<Buffer> {
      try {
        for (let chunk = await reading.next(); chunk !== undefined; chunk = await reading.next()) {
          await gate.room(size);
          size += chunk.length;
          yield chunk;
        }
      } finally {
        await reading.close();
      }
    }
    try {
      idle();
      await pipeline(Readable.from(chunks(), { objectMode: false }), upload);
      return { size };
    } catch (err) {
      const failure = reading.failure();
      source.destroy();
      upload.destroy();
      await reading.close();
      clearTimeout(timer);
      if (session !== undefined) await this.cancelSession(session);
      if (failure !== undefined) throw failure.error;
      const outcome = reading.done()
        ? await this.outcomeOfFailedPut(file, writeId).catch(() => 'unknown' as const)
        : 'unknown';
      if (outcome === 'stored') return { size };
      if (options.ifAbsent && (outcome === 'other' || statusOf(err) === 412)) {
        throw new ObjectExistsError(key, this.location, { cause: err });
      }
      throw this.storageError(err, `upload ${key}`);
    } finally {
      clearTimeout(timer);
    }
  }

  async putBytes(key: string, data: Buffer | string): Promise<void> {
    const body = typeof data === 'string' ? Buffer.from(data) : data;
    await this.put(key, Readable.from([body]), { sizeHint: body.length });
  }

  async get(key: string): Promise<Readable> {
    const file = await this.file(key);
    const stream = file.createReadStream({ validation: 'crc32c' });
    // The request starts on the first read; wait for its answer (or error) before handing it out.
    try {
      await this.timed(
        new Promise<void>((resolve, reject) => {
          stream.once('error', reject);
          stream.once('response', (res: { statusCode?: number; status?: number }) => {
            const status = res.statusCode ?? res.status ?? 200;
            // An error answer ends as an 'error' event once its body is read.
            if (status < 300) {
              stream.off('error', reject);
              resolve();
            }
          });
          stream.read(0);
        }),
        () => stream.destroy(),
      );
      return stream;
    } catch (err) {
      stream.destroy();
      if (statusOf(err) === 404) throw new ObjectNotFoundError(key, this.location);
      throw this.storageError(err, `download ${key}`);
    }
  }

  async getBytes(key: string): Promise<Buffer> {
    return readWhole(await this.get(key), (err) => this.storageError(err, `download ${key}`));
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const file = await this.file(key);
    try {
      const [metadata] = await file.getMetadata();
      return {
        key,
        size: Number(metadata.size ?? 0),
        modified: new Date(metadata.updated ?? metadata.timeCreated ?? 0),
      };
    } catch (err) {
      if (statusOf(err) === 404 && !isBucketMissing(err)) return undefined;
      throw this.storageError(err, `look up ${key}`);
    }
  }

  async *list(prefix: string): AsyncGenerator<ObjectInfo> {
    assertValidPrefix(prefix);
    const bucket = await this.bucketClient();
    let pageToken: string | undefined;
    do {
      let files: File[];
      let next: { pageToken?: string } | null | undefined;
      try {
        [files, next] = (await bucket.getFiles({
          prefix: this.keys.full(prefix),
          maxResults: this.options.pageSize ?? DEFAULT_PAGE_SIZE,
          autoPaginate: false,
          ...(pageToken ? { pageToken } : {}),
        })) as unknown as [File[], { pageToken?: string } | null];
      } catch (err) {
        throw this.storageError(err, `list ${prefix || '/'}`);
      }
      for (const f of files) {
        // 'folder/' placeholders made by consoles are not objects.
        if (f.name.endsWith('/')) continue;
        yield {
          key: this.keys.relative(f.name),
          size: Number(f.metadata.size ?? 0),
          modified: new Date(f.metadata.updated ?? f.metadata.timeCreated ?? 0),
        };
      }
      pageToken = next?.pageToken;
    } while (pageToken !== undefined);
  }

  async delete(key: string): Promise<void> {
    const file = await this.file(key);
    try {
      await file.delete();
    } catch (err) {
      if (statusOf(err) === 404 && !isBucketMissing(err)) return;
      // Object retention (or a hold) refuses the delete: locked, not failed (retention reports it).
      if (statusOf(err) === 403 && /retention|hold/i.test(messageOf(err))) {
        const until = /until (\d{4}-\d\d-\d\dT[0-9:.]+Z)/.exec(messageOf(err))?.[1];
        const detail = until ? `locked until ${until}` : 'still locked (GCS object retention or hold)';
        throw new ObjectLockedError(key, this.location, detail, { cause: err });
      }
      throw this.storageError(err, `delete ${key}`);
    }
  }

  /**
   * The bucket's lifecycle rules (the JSON API's bucket `lifecycle.rule`; none: []), for `backup init`
   * (core/storage/lifecycle-rules.ts mergeGcsRules). Failures are StorageErrors naming the cause.
   */
  async lifecycleRules(): Promise<Array<Record<string, unknown>>> {
    const bucket = await this.bucketClient();
    try {
      const [metadata] = await bucket.getMetadata();
      return ((metadata.lifecycle as { rule?: Array<Record<string, unknown>> } | undefined)?.rule ?? []).map(
        (r) => ({ ...r }),
      );
    } catch (err) {
      throw this.storageError(err, "read the bucket's lifecycle rules");
    }
  }

  /** Replaces the bucket's lifecycle rules (a bucket PATCH of `lifecycle`: all of them, merge first). */
  async putLifecycleRules(rules: ReadonlyArray<object>): Promise<void> {
    const bucket = await this.bucketClient();
    try {
      await bucket.setMetadata({ lifecycle: { rule: rules as never[] } });
    } catch (err) {
      throw this.storageError(err, "set the bucket's lifecycle rules");
    }
  }

  async probe(prefix: string): Promise<void> {
    const probeKey = `${prefix}/.pgvault-probe-${randomBytes(6).toString('hex')}`;
    await this.putBytes(probeKey, 'pgvault probe\n');
    await this.delete(probeKey);
  }

  private get timeoutMs(): number {
    return this.options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /** An upload's silence limit: one request's, plus the client's waits between its attempts. */
  private get watchdogMs(): number {
    return this.timeoutMs + MAX_RETRY_DELAY_S * 1000 + 1000;
  }

  /** Waits for `work` at most the request time limit (attempts included); `cancel` on expiry. */
  private async timed<T>(work: Promise<T>, cancel: () => void): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => {
          cancel();
          reject(new GcsTimeoutError(this.timeoutMs));
        },
        this.watchdogMs * (this.options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS),
      );
    });
    try {
      return await Promise.race([work, limit]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Cancels an unfinished resumable session (DELETE of its URI; GCS answers 499). Never throws. */
  private async cancelSession(uri: string): Promise<void> {
    try {
      const bucket = await this.bucketClient();
      const storage = bucket.storage as Storage & {
        authClient: { request(opts: object): Promise<unknown> };
        customEndpoint?: boolean;
      };
      const options = { method: 'DELETE', timeout: this.timeoutMs, validateStatus: () => true, retry: false };
      // An emulator endpoint takes no credentials (as the client's own requests to it).
      if (storage.customEndpoint) {
        await fetch(uri, { method: 'DELETE', signal: AbortSignal.timeout(this.timeoutMs) });
      } else {
        await storage.authClient.request({ url: uri, ...options });
      }
    } catch {
      // GCS drops an unfinished session within a week; it is never an object.
    }
  }

  /**
   * After a failed put whose whole source was read (the last chunk may have been stored, its answer
   * lost): 'stored' when the object under the key carries this write's id, 'other' when another
   * writer's object is there (never touched), 'absent' when none is.
   */
  private async outcomeOfFailedPut(file: File, writeId: string): Promise<'stored' | 'absent' | 'other'> {
    try {
      const [metadata] = await file.getMetadata();
      return metadata.metadata?.[WRITE_ID_METADATA] === writeId ? 'stored' : 'other';
    } catch (err) {
      if (statusOf(err) === 404) return 'absent';
      throw err;
    }
  }

  /** Makes the client on first use, loading the SDK. */
  private bucketClient(): Promise<Bucket> {
    this.bucketPromise ??= (async () => {
      const sdk = await loadGcsSdk();
      const maxAttempts = this.options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
      const storage = new sdk.Storage({
        ...(this.options.endpoint ? { apiEndpoint: withScheme(this.options.endpoint) } : {}),
        ...(this.options.keyFile ? { keyFilename: this.options.keyFile } : {}),
        ...(this.options.projectId ? { projectId: this.options.projectId } : {}),
        // Single requests (metadata, lists, deletes; a download to its answer) wait at most this.
        timeout: this.timeoutMs,
        retryOptions: {
          autoRetry: maxAttempts > 1,
          maxRetries: Math.max(1, maxAttempts - 1),
          retryDelayMultiplier: 2,
          maxRetryDelay: MAX_RETRY_DELAY_S,
          // An upload's chunks are resent within their session, which is safe whatever the object:
          // without it the client retries no upload that has no precondition.
          idempotencyStrategy: sdk.IdempotencyStrategy.RetryAlways,
        },
      });
      return storage.bucket(this.bucket);
    })();
    return this.bucketPromise;
  }

  private async file(key: string): Promise<File> {
    assertValidKey(key);
    const bucket = await this.bucketClient();
    return bucket.file(this.keys.full(key));
  }

  private describeEndpoint(): string {
    return this.options.endpoint
      ? withScheme(this.options.endpoint)
      : process.env.STORAGE_EMULATOR_HOST
        ? withScheme(process.env.STORAGE_EMULATOR_HOST)
        : 'https://storage.googleapis.com';
  }

  /** One line naming what failed and what to check; the SDK error stays as the cause. */
  private storageError(err: unknown, action: string): StorageError {
    if (err instanceof StorageError) return err;
    const where = `Google Cloud Storage at ${this.describeEndpoint()}`;
    const check = this.options.endpoint ? 'check STORAGE_EMULATOR_HOST and the network' : 'check the network';
    if (err instanceof GcsTimeoutError || isTimeout(err)) {
      return new StorageError(
        `${where} did not answer in time: ${action} in ${this.location} timed out after ${this.timeoutMs / 1000} s (TimeoutError); ${check}, or raise S3_REQUEST_TIMEOUT`,
        { cause: err },
      );
    }
    const network = connectionErrorCode(err);
    if (network === 'ECONNRESET' || network === 'EPIPE') {
      return new StorageError(
        `${where} dropped the connection (${network}) trying to ${action} in ${this.location}; ${check}`,
        { cause: err },
      );
    }
    if (network !== undefined) {
      return new StorageError(`${where} cannot be reached (${network}) trying to ${action}; ${check}`, {
        cause: err,
      });
    }
    const status = statusOf(err);
    const detail = messageOf(err);
    if (isBucketMissing(err)) {
      return new StorageError(
        `bucket ${this.bucket} does not exist (404 notFound); create it (gcloud storage buckets create gs://${this.bucket}) or check CLOUD_BUCKET`,
        { cause: err },
      );
    }
    if (status === 401 || status === 403) {
      if (/retention|hold/i.test(detail)) {
        return new StorageError(
          `GCS refused to ${action} in ${this.location}: object retention (${status}: ${detail})`,
          { cause: err },
        );
      }
      return new StorageError(
        `access to ${this.location} was denied (${status}) trying to ${action}; check GOOGLE_APPLICATION_CREDENTIALS (or the workload identity) and its roles on the bucket (${detail})`,
        { cause: err },
      );
    }
    if (/Could not load the default credentials|Unable to detect a Project Id/i.test(detail)) {
      return new StorageError(
        'no Google Cloud credentials found; set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run with a workload identity',
        { cause: err },
      );
    }
    return new StorageError(
      `GCS could not ${action} in ${this.location} (${status ?? errorName(err)}: ${detail})`,
      { cause: err },
    );
  }
}

/** An upload or request cut by this target's time limit (the client has none for an upload). */
class GcsTimeoutError extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms / 1000} s`);
    this.name = 'TimeoutError';
  }
}

function withScheme(endpoint: string): string {
  return (/^https?:\/\//.test(endpoint) ? endpoint : `http://${endpoint}`).replace(/\/+$/, '');
}

function errorName(err: unknown): string {
  return err instanceof Error ? err.name : typeof err;
}

/** The HTTP status of a client error: ApiError.code, an upload's `code`, or a gaxios response's. */
function statusOf(err: unknown, depth = 0): number | undefined {
  if (err === null || typeof err !== 'object' || depth > 3) return undefined;
  const e = err as { code?: unknown; status?: unknown; response?: { status?: unknown }; cause?: unknown };
  for (const candidate of [e.code, e.status, e.response?.status]) {
    if (typeof candidate === 'number' && candidate >= 100) return candidate;
  }
  const retried = retryAnswer(err);
  if (retried !== undefined) return retried.status;
  return statusOf(e.cause, depth + 1);
}

/** The server's own message (the JSON API's error.message), else the error's first line. */
function messageOf(err: unknown): string {
  const e = err as
    | { message?: unknown; errors?: unknown; response?: { data?: { error?: { message?: unknown } } } }
    | undefined;
  const retried = retryAnswer(err);
  if (retried !== undefined) return `${retried.message}; gave up after its retries`;
  const answered = e?.response?.data?.error?.message;
  if (typeof answered === 'string' && answered !== '') return answered.split('\n')[0]!;
  if (Array.isArray(e?.errors)) {
    for (const item of e.errors as Array<{ message?: unknown; error?: { message?: unknown } }>) {
      const message = item?.error?.message ?? item?.message;
      if (typeof message === 'string' && message !== '') return message.split('\n')[0]!;
    }
  }
  return typeof e?.message === 'string' ? e.message.split('\n')[0]! : String(err);
}

/**
 * The last answer in a resumable upload's "Retry limit exceeded - status: 500 - {json}" (the client
 * gives up with a plain Error whose text is all that is left of the answer).
 */
function retryAnswer(err: unknown): { status: number; message: string } | undefined {
  const text = err instanceof Error ? err.message : '';
  const found = /^Retry (?:total time )?limit exceeded - status: (\d+)(?: - (.*))?$/s.exec(text);
  if (!found) return undefined;
  let message = `HTTP ${found[1]}`;
  try {
    const parsed = JSON.parse(found[2] ?? '') as { error?: { message?: unknown } };
    if (typeof parsed.error?.message === 'string') message = parsed.error.message.split('\n')[0]!;
  } catch {
    // Not JSON: the status alone.
  }
  return { status: Number(found[1]), message };
}

function isBucketMissing(err: unknown): boolean {
  return statusOf(err) === 404 && /bucket does not exist/i.test(messageOf(err));
}

function isTimeout(err: unknown): boolean {
  const e = err as { name?: unknown; type?: unknown; code?: unknown; message?: unknown } | undefined;
  return (
    e?.name === 'TimeoutError' ||
    e?.type === 'request-timeout' ||
    (typeof e?.message === 'string' && /network timeout|timeout of \d+ms exceeded/i.test(e.message))
  );
}

const CONNECTION_ERROR_CODES = [
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'EPIPE',
  'ECONNABORTED',
];

/** A network failure's code, on the error, its cause or data (an upload's retry error), or its text. */
function connectionErrorCode(err: unknown, depth = 0): string | undefined {
  if (err === null || typeof err !== 'object' || depth > 4) return undefined;
  const { code, cause, errors, message, data } = err as {
    code?: unknown;
    cause?: unknown;
    errors?: unknown;
    message?: unknown;
    data?: unknown;
  };
  if (typeof code === 'string' && CONNECTION_ERROR_CODES.includes(code)) return code;
  if (typeof message === 'string') {
    const found = CONNECTION_ERROR_CODES.find((c) => message.includes(c));
    if (found !== undefined) return found;
    if (/socket hang up/i.test(message)) return 'ECONNRESET';
  }
  for (const next of [cause, data, ...(Array.isArray(errors) ? errors : [])]) {
    const found = connectionErrorCode(next, depth + 1);
    if (found !== undefined) return found;
  }
  return undefined;
}
