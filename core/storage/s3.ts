import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
// Types only: the SDK itself is loaded on first use (see loadS3Sdk), it costs ~250 ms to import.
import type { S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import type { PerLifecycleKind, S3StorageClass } from '../config';
import { ObjectExistsError, ObjectNotFoundError, StorageError } from '../errors';
import { assertValidKey, assertValidPrefix, KeyPrefix } from './file';
import { sourceChunks } from './source';
import type { ObjectInfo, PutOptions, StorageTarget } from './target';

type S3Sdk = typeof import('@aws-sdk/client-s3');

let s3SdkPromise: Promise<S3Sdk> | undefined;
function loadS3Sdk(): Promise<S3Sdk> {
  s3SdkPromise ??= import('@aws-sdk/client-s3');
  return s3SdkPromise;
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** S3 refuses a multipart upload of more than 10,000 parts. */
const MAX_PARTS = 10_000;
const MIN_PART_SIZE = 8 * MiB;
const MAX_PART_SIZE = 5 * GiB;
const DEFAULT_PART_SIZE = 16 * MiB;
/** S3's own minimum for every part but the last. */
const S3_MIN_PART_SIZE = 5 * MiB;
const DEFAULT_PAGE_SIZE = 1000;
/**
 * archive_command must fail fast when the target is down (PostgreSQL retries it), so an unreachable
 * endpoint gives up after a few seconds instead of the SDK's defaults (no connect timeout).
 */
const DEFAULT_MAX_ATTEMPTS = 3;
const DEFAULT_CONNECTION_TIMEOUT_MS = 3000;
/**
 * S3_REQUEST_TIMEOUT. For the single requests this class sends: the limit from sending a request to
 * its response headers (a download's body streams after it, so a slow reader such as pg_restore is
 * never cut off). For uploads (Upload's PutObject, UploadPart, Complete...): the longest silence on
 * the connection, so a large part on a slow link goes on as long as bytes move, but a part sent in
 * full and never answered is cut. Guards against an endpoint that accepts and never answers.
 */
const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
/** User metadata naming the write that made an object (see cleanUpFailedPut). */
const WRITE_ID_METADATA = 'pgvault-write';

/** Network failures worth naming as "cannot be reached". */
const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'EPIPE',
  'ECONNABORTED',
]);
const ACCESS_ERROR_NAMES = new Set([
  'AccessDenied',
  'Forbidden',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidToken',
  'AllAccessDisabled',
]);

/**
 * A read refused because the object sits in an archive storage class (GLACIER, DEEP_ARCHIVE, an
 * Intelligent-Tiering archive tier) and has not been restored: S3 answers GetObject with
 * InvalidObjectState until `restore-object` has made a temporary copy readable.
 */
export class ArchivedObjectError extends StorageError {
  constructor(
    message: string,
    /** The object's key (relative to the target, as the caller named it). */
    readonly key: string,
    /** GLACIER, DEEP_ARCHIVE, INTELLIGENT_TIERING, ... when S3 said. */
    readonly storageClass: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Part size for a stream of about `sizeHint` bytes: 25% headroom over what keeps it under 10,000
 * parts (the hint may be an estimate), at least 8 MiB, a whole number of MiB, at most S3's 5 GiB.
 * Without a hint, 16 MiB (up to ~156 GiB).
 */
export function choosePartSize(sizeHint?: number): number {
  if (sizeHint === undefined || !Number.isFinite(sizeHint) || sizeHint < 0) return DEFAULT_PART_SIZE;
  const needed = Math.ceil((sizeHint * 1.25) / MAX_PARTS);
  const wholeMiB = Math.ceil(Math.max(MIN_PART_SIZE, needed) / MiB) * MiB;
  return Math.min(wholeMiB, MAX_PART_SIZE);
}

export interface S3TargetOptions {
  readonly bucket: string;
  /** Key prefix inside the bucket, without leading or trailing '/'. @default '' (the bucket root) */
  readonly prefix?: string;
  readonly region: string;
  /** A custom endpoint (MinIO, Ceph, s3rver); implies path-style addressing. */
  readonly endpoint?: string;
  /** @default true with an endpoint, else false */
  readonly forcePathStyle?: boolean;
  /** @default the SDK's default credential chain (env, profile, container or instance role) */
  readonly credentials?: S3ClientConfig['credentials'];
  /** A named profile of ~/.aws (AWS_PROFILE from the config file); used when credentials are absent. */
  readonly profile?: string;
  /** A ready client (tests, or callers with their own settings); the options above then only name things. */
  readonly client?: S3Client;
  /** Fixed multipart part size, overriding choosePartSize (tests use S3's 5 MiB minimum). */
  readonly partSize?: number;
  /** Objects per ListObjectsV2 page. @default 1000 */
  readonly pageSize?: number;
  /** Attempts per request, retries included. @default 3 */
  readonly maxAttempts?: number;
  /** Milliseconds to wait for a TCP connection. @default 3000 */
  readonly connectionTimeoutMs?: number;
  /**
   * Milliseconds a single request waits for its response headers, and an upload's requests may go
   * without a byte moving on their connection. @default 60000 (core/config.ts: S3_REQUEST_TIMEOUT)
   */
  readonly requestTimeoutMs?: number;
  /**
   * Tag each object with its lifecycle class (LIFECYCLE_TAG, from its key; see lifecycleTagFor), for
   * bucket lifecycle rules that select by tag instead of one prefix per cluster. The tag is sent with
   * the write (x-amz-tagging), which S3 authorizes as s3:PutObjectTagging besides s3:PutObject; a
   * store that ignores the header stores the object untagged.
   * @default false (core/config.ts: S3_LIFECYCLE_TAGS, which the AWS deployment sets)
   */
  readonly lifecycleTags?: boolean;
  /**
   * S3 Object Lock on each new object (S3_OBJECT_LOCK_MODE, S3_OBJECT_LOCK_RETAIN=gfs): PutObject and
   * CreateMultipartUpload carry `x-amz-object-lock-mode` and `x-amz-object-lock-retain-until-date`
   * when `retainUntil` gives a date for the key (core/retention/lock.ts: the object's planned GFS
   * expiry); otherwise no lock header, and the bucket's default retention applies. Needs a bucket
   * with Object Lock enabled and s3:PutObjectRetention. @default none
   */
  readonly objectLock?: {
    readonly mode: 'GOVERNANCE' | 'COMPLIANCE';
    /** Retain-until of the object under `key` (relative to the prefix) written at `now`. */
    readonly retainUntil: (key: string, now: Date) => Date | undefined;
  };
  /**
   * The storage class of each new object by its lifecycle kind (placementFor): `x-amz-storage-class`
   * on PutObject and CreateMultipartUpload. @default none sent (STANDARD)
   * (core/config.ts: S3_STORAGE_CLASS, S3_STORAGE_CLASS_ARCHIVE, _EXPIRE, _REPORT)
   */
  readonly storageClass?: PerLifecycleKind<S3StorageClass>;
}

/** The object tag bucket lifecycle rules select on (infra/constructs/vault-bucket.ts has the rules). */
export const LIFECYCLE_TAG = 'pgvault-lifecycle';

/** Lifecycle class of each folder below a cluster's folder; anything else (manual/, ...) is not tagged. */
export const LIFECYCLE_FOLDERS: ReadonlyArray<readonly [string, 'archive' | 'expire' | 'report']> = [
  ['full/daily/', 'expire'],
  ['full/weekly/', 'archive'],
  ['full/monthly/', 'archive'],
  ['base/daily/', 'expire'],
  ['base/weekly/', 'archive'],
  ['base/monthly/', 'archive'],
  ['config/', 'expire'],
  ['indexes/', 'expire'],
  ['wal/', 'expire'],
  ['reports/', 'report'],
  ['drills/', 'report'],
];

/**
 * The lifecycle class of a repository key (relative to the prefix, `<cluster>/<folder>/...`):
 * `archive` (weekly and monthly backups: archived, then expired as a safety net), `expire` (the other
 * folders retention manages), `report` (reports and drill records); undefined for keys no lifecycle
 * rule may touch (manual backups, files outside a cluster's managed folders).
 */
export function lifecycleTagFor(key: string): 'archive' | 'expire' | 'report' | undefined {
  const slash = key.indexOf('/');
  if (slash <= 0) return undefined;
  const rest = key.slice(slash + 1);
  // The WAL archive's identity (how its objects are encrypted) is written once and read forever.
  if (rest === 'wal/archive.json') return undefined;
  for (const [folder, tag] of LIFECYCLE_FOLDERS) {
    if (rest.startsWith(folder) && rest.length > folder.length) return tag;
  }
  return undefined;
}

/**
 * The setting for a new object under `key` (relative to the prefix) from a per-kind setting (storage
 * class, access tier): its lifecycle kind's (lifecycleTagFor), else the default. Manifests always take
 * the default: every listing reads them, and config refuses a default that cannot be read at once; so
 * do base backups' server manifests, which an incremental base backup reads.
 */
export function placementFor<T>(key: string, perKind: PerLifecycleKind<T> | undefined): T | undefined {
  if (perKind === undefined) return undefined;
  // core/catalog/naming.ts MANIFEST_SUFFIX (not imported: it would load the stream modules here).
  if (key.endsWith('.manifest.json')) return perKind.default;
  // A base backup's server manifest (core/backup/base.ts SERVER_MANIFEST_PART): the next incremental
  // reads it, however cold the class of the backup's tar (a weekly full in GLACIER, say).
  if (/\.server-manifest\.json(\.[a-z0-9]+)*$/.test(key)) return perKind.default;
  const kind = lifecycleTagFor(key);
  return (kind === undefined ? undefined : perKind[kind]) ?? perKind.default;
}

/**
 * An S3 (or S3-compatible) bucket under a key prefix. Streams are uploaded with multipart uploads in
 * constant memory (queue of 4 parts); a failed upload is aborted and the caller sees the error that
 * caused it, never the abort's own outcome.
 */
export class S3Target implements StorageTarget {
  readonly kind = 's3' as const;
  readonly location: string;
  readonly bucket: string;
  readonly prefix: string;
  private readonly keys: KeyPrefix;
  /** Whether objects are tagged with their lifecycle class (S3TargetOptions.lifecycleTags). */
  readonly lifecycleTags: boolean;
  private readonly options: S3TargetOptions;
  private clientPromise: Promise<{ client: S3Client; uploadClient: S3Client; sdk: S3Sdk }> | undefined;
  private readonly requestOptions: { readonly requestTimeout: number };

  constructor(options: S3TargetOptions) {
    if (
      options.partSize !== undefined &&
      (options.partSize < S3_MIN_PART_SIZE || options.partSize > MAX_PART_SIZE)
    ) {
      throw new StorageError(`S3 part size ${options.partSize} is not allowed; use 5 MiB to 5 GiB`);
    }
    this.options = options;
    this.requestOptions = { requestTimeout: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS };
    this.bucket = options.bucket;
    this.keys = new KeyPrefix(options.prefix);
    this.prefix = this.keys.value;
    this.location = this.keys.location(`s3://${this.bucket}`);
    this.lifecycleTags = options.lifecycleTags ?? false;
  }

  /** Object Lock parameters of a new object (S3TargetOptions.objectLock); none when off or undated. */
  lockParamsFor(
    key: string,
    now = new Date(),
  ): { ObjectLockMode?: 'GOVERNANCE' | 'COMPLIANCE'; ObjectLockRetainUntilDate?: Date } {
    const lock = this.options.objectLock;
    const until = lock?.retainUntil(key, now);
    if (lock === undefined || until === undefined) return {};
    return { ObjectLockMode: lock.mode, ObjectLockRetainUntilDate: until };
  }

  /**
   * The tags a new object is created with (the x-amz-tagging header of PutObject and
   * CreateMultipartUpload, `key=value` URL-encoded): its lifecycle class, when tagging is on and the
   * key has one. Sent with the write itself, so no object is ever stored untagged, not even briefly.
   */
  private taggingFor(key: string): { Tagging?: string } {
    if (!this.lifecycleTags) return {};
    const tag = lifecycleTagFor(key);
    return tag ? { Tagging: `${encodeURIComponent(LIFECYCLE_TAG)}=${encodeURIComponent(tag)}` } : {};
  }

  /** The storage class of a new object (S3TargetOptions.storageClass); none when not configured. */
  private storageClassFor(key: string): { StorageClass?: S3StorageClass } {
    const storageClass = placementFor(key, this.options.storageClass);
    return storageClass ? { StorageClass: storageClass } : {};
  }

  async put(key: string, source: Readable, options: PutOptions = {}): Promise<{ size: number }> {
    const objectKey = this.objectKey(key);
    const reading = countingReader(source);
    // Names this write on the object, so a failed write can tell its own object from another's.
    const writeId = randomBytes(12).toString('hex');
    let upload: import('@aws-sdk/lib-storage').Upload | undefined;
    try {
      const { uploadClient } = await this.connect();
      const { Upload } = await import('@aws-sdk/lib-storage');
      upload = new Upload({
        client: uploadClient,
        params: {
          Bucket: this.bucket,
          Key: objectKey,
          Body: reading.body,
          Metadata: { [WRITE_ID_METADATA]: writeId },
          // On PutObject or CreateMultipartUpload: the object exists only with its lifecycle tag.
          ...this.taggingFor(key),
          ...this.storageClassFor(key),
          ...this.lockParamsFor(key),
          // Sent on PutObject and CompleteMultipartUpload: S3 then refuses (412) to replace an object.
          ...(options.ifAbsent ? { IfNoneMatch: '*' } : {}),
        },
        queueSize: 4,
        partSize: this.options.partSize ?? choosePartSize(options.sizeHint),
        // Upload's own abort would replace the real error when the abort fails (s3rver answers 405):
        // abort here instead and keep the error that caused the failure.
        leavePartsOnError: true,
      });
      await upload.done();
      return { size: reading.size() };
    } catch (err) {
      // Decided before the clean-up below, whose teardown of the streams must not count as the cause.
      const sourceFailure = reading.failure();
      source.destroy();
      const outcome = await this.cleanUpFailedPut(objectKey, writeId, upload?.uploadId, reading.done()).catch(
        () => 'unknown' as const,
      );
      if (sourceFailure !== undefined) throw sourceFailure.error;
      // The final request reached the store and this write's object is there: only its answer was lost.
      if (outcome === 'stored') return { size: reading.size() };
      if (outcome === 'other' && isPreconditionFailed(err)) {
        throw new ObjectExistsError(key, this.location, { cause: err });
      }
      throw this.storageError(err, `upload ${key}`);
    }
  }

  async putBytes(key: string, data: Buffer | string): Promise<void> {
    const objectKey = this.objectKey(key);
    const { client, sdk } = await this.connect();
    try {
      await client.send(
        new sdk.PutObjectCommand({
          Bucket: this.bucket,
          Key: objectKey,
          Body: data,
          ...this.taggingFor(key),
          ...this.storageClassFor(key),
          ...this.lockParamsFor(key),
        }),
        this.requestOptions,
      );
    } catch (err) {
      throw this.storageError(err, `upload ${key}`);
    }
  }

  async get(key: string): Promise<Readable> {
    const objectKey = this.objectKey(key);
    const { client, sdk } = await this.connect();
    try {
      const output = await client.send(
        new sdk.GetObjectCommand({ Bucket: this.bucket, Key: objectKey }),
        this.requestOptions,
      );
      const body = output.Body;
      if (body instanceof Readable) return body;
      if (body === undefined) return Readable.from([]);
      // Only a non-Node runtime hands back a web stream or a Blob.
      return Readable.fromWeb(body.transformToWebStream() as import('node:stream/web').ReadableStream);
    } catch (err) {
      if (isNotFound(err)) throw new ObjectNotFoundError(key, this.location);
      if (isArchived(err)) throw await this.archivedObjectError(key, objectKey, err);
      throw this.storageError(err, `download ${key}`);
    }
  }

  async getBytes(key: string): Promise<Buffer> {
    const objectKey = this.objectKey(key);
    const { client, sdk } = await this.connect();
    try {
      const output = await client.send(
        new sdk.GetObjectCommand({ Bucket: this.bucket, Key: objectKey }),
        this.requestOptions,
      );
      if (output.Body === undefined) return Buffer.alloc(0);
      return Buffer.from(await output.Body.transformToByteArray());
    } catch (err) {
      if (isNotFound(err)) throw new ObjectNotFoundError(key, this.location);
      if (isArchived(err)) throw await this.archivedObjectError(key, objectKey, err);
      throw this.storageError(err, `download ${key}`);
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const objectKey = this.objectKey(key);
    const { client, sdk } = await this.connect();
    try {
      const output = await client.send(
        new sdk.HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }),
        this.requestOptions,
      );
      return { key, size: output.ContentLength ?? 0, modified: output.LastModified ?? new Date(0) };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw this.storageError(err, `look up ${key}`);
    }
  }

  async *list(prefix: string): AsyncGenerator<ObjectInfo> {
    assertValidPrefix(prefix);
    const { client, sdk } = await this.connect();
    let continuationToken: string | undefined;
    do {
      let page: import('@aws-sdk/client-s3').ListObjectsV2CommandOutput;
      try {
        page = await client.send(
          new sdk.ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.keys.full(prefix),
            MaxKeys: this.options.pageSize ?? DEFAULT_PAGE_SIZE,
            ContinuationToken: continuationToken,
          }),
          this.requestOptions,
        );
      } catch (err) {
        throw this.storageError(err, `list ${prefix || '/'}`);
      }
      for (const object of page.Contents ?? []) {
        // 'folder/' placeholders made by consoles are not objects.
        if (object.Key === undefined || object.Key.endsWith('/')) continue;
        yield {
          key: this.keys.relative(object.Key),
          size: object.Size ?? 0,
          modified: object.LastModified ?? new Date(0),
        };
      }
      continuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (continuationToken !== undefined);
  }

  async delete(key: string): Promise<void> {
    const objectKey = this.objectKey(key);
    const { client, sdk } = await this.connect();
    try {
      await client.send(
        new sdk.DeleteObjectCommand({ Bucket: this.bucket, Key: objectKey }),
        this.requestOptions,
      );
    } catch (err) {
      if (isNotFound(err)) return;
      throw this.storageError(err, `delete ${key}`);
    }
  }

  async probe(prefix: string): Promise<void> {
    const probeKey = `${prefix}/.pgvault-probe-${randomBytes(6).toString('hex')}`;
    await this.putBytes(probeKey, 'pgvault probe\n');
    await this.delete(probeKey);
  }

  /**
   * The bucket's lifecycle rules (GetBucketLifecycleConfiguration; none: []), for `backup init`
   * (core/storage/lifecycle-rules.ts mergeS3Rules). Failures are StorageErrors naming the cause.
   */
  async lifecycleRules(): Promise<Array<import('@aws-sdk/client-s3').LifecycleRule>> {
    const { client, sdk } = await this.connect();
    try {
      const output = await client.send(
        new sdk.GetBucketLifecycleConfigurationCommand({ Bucket: this.bucket }),
        this.requestOptions,
      );
      return output.Rules ?? [];
    } catch (err) {
      if (errorName(err) === 'NoSuchLifecycleConfiguration') return [];
      throw this.storageError(err, "read the bucket's lifecycle rules");
    }
  }

  /** Replaces the bucket's lifecycle rules (PutBucketLifecycleConfiguration: all of them, merge first). */
  async putLifecycleRules(rules: ReadonlyArray<object>): Promise<void> {
    const { client, sdk } = await this.connect();
    try {
      await client.send(
        new sdk.PutBucketLifecycleConfigurationCommand({
          Bucket: this.bucket,
          LifecycleConfiguration: { Rules: rules as Array<import('@aws-sdk/client-s3').LifecycleRule> },
        }),
        this.requestOptions,
      );
    } catch (err) {
      throw this.storageError(err, "set the bucket's lifecycle rules");
    }
  }

  /** Creates the client on first use, so constructing a target (and the CLI's start-up) loads no SDK. */
  private connect(): Promise<{ client: S3Client; uploadClient: S3Client; sdk: S3Sdk }> {
    this.clientPromise ??= loadS3Sdk().then((sdk) => {
      const given = this.options.client;
      if (given !== undefined) return { client: given, uploadClient: given, sdk };
      // Two clients: a socket idle limit would cut a download whose reader (pg_restore) pauses, so
      // only the uploads' client has one; single requests carry their own requestTimeout instead.
      const client = new sdk.S3Client(this.clientConfig('single'));
      const uploadClient = new sdk.S3Client(this.clientConfig('upload'));
      return { client, uploadClient, sdk };
    });
    return this.clientPromise;
  }

  /** The settings of the clients this target makes (the uploads' one adds an idle limit). */
  clientConfig(kind: 'single' | 'upload'): S3ClientConfig & {
    requestHandler: { connectionTimeout: number; throwOnRequestTimeout: boolean; socketTimeout?: number };
  } {
    const { endpoint } = this.options;
    return {
      region: this.options.region,
      endpoint,
      forcePathStyle: this.options.forcePathStyle ?? endpoint !== undefined,
      credentials: this.options.credentials,
      profile: this.options.profile,
      maxAttempts: this.options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
      // A CRC32 of each PutObject and UploadPart body (the SDK's default, stated here so an upgrade
      // cannot drop it): S3 refuses a body cut short or damaged on the way instead of storing it.
      requestChecksumCalculation: 'WHEN_SUPPORTED',
      responseChecksumValidation: 'WHEN_SUPPORTED',
      requestHandler: {
        connectionTimeout: this.options.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
        // Without it an expired requestTimeout only logs a warning.
        throwOnRequestTimeout: true,
        ...(kind === 'upload' ? { socketTimeout: this.requestOptions.requestTimeout } : {}),
      },
    };
  }

  private objectKey(key: string): string {
    assertValidKey(key);
    return this.keys.full(key);
  }

  /**
   * After a failed put: aborts the multipart upload, and when the whole source was read (so the
   * final request may have completed on the server, its answer lost) looks at what is under the key.
   * This write's own object (it carries this write's id) means the put did succeed: 'stored' (its
   * tags came with it). Another writer's object is never touched ('other'): a blind delete here once
   * removed an object that a second archiver of the same WAL segment had completed and PostgreSQL had been told was archived.
   * Failures here are swallowed by the caller: it needs the error that made the put fail.
   */
  private async cleanUpFailedPut(
    objectKey: string,
    writeId: string,
    uploadId: string | undefined,
    sourceDone: boolean,
  ): Promise<'stored' | 'absent' | 'other' | 'unknown'> {
    const { client, sdk } = await this.connect();
    if (uploadId !== undefined) {
      await client
        .send(
          new sdk.AbortMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey, UploadId: uploadId }),
          this.requestOptions,
        )
        .catch(() => {});
    }
    if (!sourceDone) return 'unknown';
    let head: import('@aws-sdk/client-s3').HeadObjectCommandOutput;
    try {
      head = await client.send(
        new sdk.HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }),
        this.requestOptions,
      );
    } catch (err) {
      if (isNotFound(err)) return 'absent';
      throw err;
    }
    // This write's object, created with its tags (they travel with the upload's first request).
    return head.Metadata?.[WRITE_ID_METADATA] === writeId ? 'stored' : 'other';
  }

  /**
   * InvalidObjectState on a read, as one line: the key, the storage class (from the error, else a
   * HEAD, which archived objects answer), whether a restore is under way, and the next step. S3
   * answers it with 403, which must not read as "access denied".
   */
  private async archivedObjectError(key: string, objectKey: string, err: unknown): Promise<StorageError> {
    const fromError = err as { StorageClass?: unknown; AccessTier?: unknown };
    let storageClass = typeof fromError.StorageClass === 'string' ? fromError.StorageClass : undefined;
    const accessTier = typeof fromError.AccessTier === 'string' ? fromError.AccessTier : undefined;
    let restore: string | undefined;
    try {
      const { client, sdk } = await this.connect();
      const head = await client.send(
        new sdk.HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }),
        this.requestOptions,
      );
      storageClass ??= head.StorageClass;
      restore = head.Restore;
    } catch {
      // The message can do without: the GET's answer already says the object is archived.
    }
    const where = storageClass
      ? `in ${storageClass}${accessTier ? ` (${accessTier})` : ''}`
      : 'in an archive storage class';
    const refused = `object ${key} in ${this.location} is ${where} and cannot be read until it is restored (InvalidObjectState)`;
    if (restore?.includes('ongoing-request="true"')) {
      return new ArchivedObjectError(
        `${refused}; a restore of it is under way: retry once it is done (aws s3api head-object --bucket ${this.bucket} --key ${objectKey} shows ongoing-request="false")`,
        key,
        storageClass,
        { cause: err },
      );
    }
    // Intelligent-Tiering's archive tiers take no Days: the object returns to its frequent tier.
    const request = storageClass === 'INTELLIGENT_TIERING' ? "'{}'" : 'Days=7';
    const wait =
      storageClass === 'DEEP_ARCHIVE'
        ? 'up to 12 hours'
        : storageClass === 'GLACIER'
          ? '3-5 hours, minutes with the Expedited tier'
          : 'hours';
    return new ArchivedObjectError(
      `${refused}; start a restore with aws s3api restore-object --bucket ${this.bucket} --key ${objectKey} ` +
        `--restore-request ${request} (and the backup's other archived objects) and retry once it is done ` +
        `(${wait}); archiving to GLACIER_IR instead keeps such backups readable at once`,
      key,
      storageClass,
      { cause: err },
    );
  }

  /** One line naming what failed and what to check; the SDK error stays as the cause. */
  private storageError(err: unknown, action: string): StorageError {
    if (err instanceof StorageError) return err;
    const endpoint = this.options.endpoint?.replace(/\/+$/, '');
    const where = endpoint !== undefined ? `S3 endpoint ${endpoint}` : `S3 in region ${this.options.region}`;
    const check =
      endpoint !== undefined ? 'check S3_ENDPOINT and the network' : 'check the network and AWS_REGION';
    if (isRequestTimeout(err)) {
      const seconds = this.requestOptions.requestTimeout / 1000;
      return new StorageError(
        `${where} did not answer in time: ${action} in ${this.location} timed out after ${seconds} s without an answer (TimeoutError); ${check}, or raise S3_REQUEST_TIMEOUT`,
        { cause: err },
      );
    }
    const code = connectionErrorCode(err);
    if (code === 'ECONNRESET' || code === 'EPIPE') {
      // Connected, then cut off: name what was cut (a WAL upload reset mid-body, say).
      return new StorageError(
        `${where} dropped the connection (${code}) trying to ${action} in ${this.location}; ${check}`,
        { cause: err },
      );
    }
    if (code !== undefined) {
      return new StorageError(`${where} cannot be reached (${code}); ${check}`, { cause: err });
    }
    const name = errorName(err);
    if (name === 'NoSuchBucket') {
      return new StorageError(
        `bucket ${this.bucket} does not exist or is not accessible (NoSuchBucket); create it or check CLOUD_BUCKET and credentials`,
        { cause: err },
      );
    }
    if (ACCESS_ERROR_NAMES.has(name) || httpStatus(err) === 403) {
      return new StorageError(
        `access to ${this.location} was denied (${name}) trying to ${action}; check the credentials and the bucket policy`,
        { cause: err },
      );
    }
    if (name === 'PermanentRedirect' || name === 'AuthorizationHeaderMalformed' || httpStatus(err) === 301) {
      return new StorageError(
        `bucket ${this.bucket} is not in region ${this.options.region} (${name}); set AWS_REGION to the bucket's region`,
        { cause: err },
      );
    }
    if (name === 'CredentialsProviderError') {
      return new StorageError(
        `no AWS credentials found (${name}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role`,
        { cause: err },
      );
    }
    const message = err instanceof Error ? err.message : String(err);
    return new StorageError(`S3 could not ${action} in ${this.location} (${name}: ${message})`, {
      cause: err,
    });
  }
}

/**
 * Wraps `source` for Upload, counting bytes and telling a failure of the source itself (its error is
 * rethrown to the caller unchanged) from Upload stopping early (not a source failure). Stopping early
 * destroys the source, so the producer (pg_dump) is told to stop.
 */
function countingReader(source: Readable) {
  const reading = sourceChunks(source);
  let size = 0;
  async function* chunks(): AsyncGenerator<Buffer> {
    try {
      for (let chunk = await reading.next(); chunk !== undefined; chunk = await reading.next()) {
        size += chunk.length;
        yield chunk;
      }
    } finally {
      await reading.close();
    }
  }
  return {
    body: Readable.from(chunks(), { objectMode: false }),
    size: () => size,
    done: reading.done,
    failure: reading.failure,
  };
}

function errorName(err: unknown): string {
  if (err instanceof Error) return err.name;
  return typeof err;
}

function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

/** GetObject on an object in an archive class that has not been restored. */
function isArchived(err: unknown): boolean {
  return errorName(err) === 'InvalidObjectState';
}

function isNotFound(err: unknown): boolean {
  const name = errorName(err);
  return name === 'NoSuchKey' || name === 'NotFound' || (name !== 'NoSuchBucket' && httpStatus(err) === 404);
}

/** ECONNREFUSED and friends, found on the error, its cause, or (Node's happy eyeballs) its AggregateError members. */
/**
 * The handler's requestTimeout expired (connected, but no response headers in time), or its
 * socketTimeout (an upload's connection silent that long).
 */
function isRequestTimeout(err: unknown): boolean {
  return (
    err instanceof Error &&
    err.name === 'TimeoutError' &&
    (err.message.includes('requestTimeout') || err.message.includes('of inactivity'))
  );
}

/** S3 refused a conditional write (If-None-Match: *): an object is already under the key. */
function isPreconditionFailed(err: unknown): boolean {
  return errorName(err) === 'PreconditionFailed' || httpStatus(err) === 412;
}

function connectionErrorCode(err: unknown, depth = 0): string | undefined {
  if (err === null || typeof err !== 'object' || depth > 3) return undefined;
  const { code, name, cause, errors } = err as {
    code?: unknown;
    name?: unknown;
    cause?: unknown;
    errors?: unknown;
  };
  if (typeof code === 'string' && CONNECTION_ERROR_CODES.has(code)) return code;
  if (name === 'TimeoutError') return typeof code === 'string' ? code : 'TimeoutError';
  if (Array.isArray(errors)) {
    for (const member of errors) {
      const found = connectionErrorCode(member, depth + 1);
      if (found !== undefined) return found;
    }
  }
  return connectionErrorCode(cause, depth + 1);
}
