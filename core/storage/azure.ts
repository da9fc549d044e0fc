import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
// Types only: the SDK (and @azure/identity) are loaded on first use, so that `backup wal` and every
// command of a non-Azure setup start as fast as before.
// The ESM build is what import() loads at run time, so the types are taken from it too.
import type {
  BlobServiceClient,
  BlockBlobClient,
  ContainerClient,
  ContainerListBlobFlatSegmentResponse,
  StoragePipelineOptions,
} from '@azure/storage-blob' with { 'resolution-mode': 'import' };
import type { AzureAccessTier, PerLifecycleKind } from '../config';
import { ObjectExistsError, ObjectLockedError, ObjectNotFoundError, StorageError } from '../errors';
import { assertValidKey, assertValidPrefix, KeyPrefix } from './file';
import { ArchivedObjectError, placementFor } from './s3';
import { readWhole, sourceBlocks, sourceChunks } from './source';
import type { ObjectInfo, ObjectLockOptions, PutOptions, StorageTarget } from './target';

type BlobSdk = typeof import('@azure/storage-blob', { with: { 'resolution-mode': 'import' }});

let blobSdkPromise: Promise<BlobSdk> | undefined;
function loadBlobSdk(): Promise<BlobSdk> {
  blobSdkPromise ??= import('@azure/storage-blob');
  return blobSdkPromise;
}

const MiB = 1024 * 1024;
/** Azure refuses a block blob of more than 50,000 committed blocks. */
const MAX_BLOCKS = 50_000;
/** Azure's largest block (API 2019-12-12 and later). */
const MAX_BLOCK_SIZE = 4000 * MiB;
const MIN_BLOCK_SIZE = 8 * MiB;
/** Blocks staged at once per upload: memory of an upload is about this many blocks. */
const UPLOAD_CONCURRENCY = 4;
/** Every this many blocks, the block size doubles (see blockSizeAt). */
const BLOCKS_PER_STEP = 10_000;
const DEFAULT_PAGE_SIZE = 1000;
const DEFAULT_MAX_ATTEMPTS = 3;
const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
/** User metadata naming the write that made a blob (see outcomeOfFailedPut). */
const WRITE_ID_METADATA = 'pgvaultwrite';

/**
 * The first block size for a stream of about `sizeHint` bytes: 25% headroom over what keeps it under
 * 50,000 blocks, at least 8 MiB, a whole number of MiB, at most Azure's 4000 MiB. Without a hint,
 * 8 MiB; blockSizeAt then grows it so that any stream fits.
 */
export function chooseBlockSize(sizeHint?: number): number {
  if (sizeHint === undefined || !Number.isFinite(sizeHint) || sizeHint < 0) return MIN_BLOCK_SIZE;
  const needed = Math.ceil((sizeHint * 1.25) / MAX_BLOCKS);
  const wholeMiB = Math.ceil(Math.max(MIN_BLOCK_SIZE, needed) / MiB) * MiB;
  return Math.min(wholeMiB, MAX_BLOCK_SIZE);
}

/**
 * Size of block number `index` (from 0) of an upload whose first block is `base`: doubled every
 * 10,000 blocks (blocks of one blob may differ in size), so a stream whose size was not known, or was
 * underestimated, still fits 50,000 blocks: from 8 MiB, 8+16+32+64+128 MiB x 10,000 = 2.4 TiB.
 */
export function blockSizeAt(index: number, base: number): number {
  return Math.min(base * 2 ** Math.floor(index / BLOCKS_PER_STEP), MAX_BLOCK_SIZE);
}

export interface AzureTargetOptions {
  readonly container: string;
  /** Blob name prefix inside the container, without leading or trailing '/'. @default '' */
  readonly prefix?: string;
  /** AZURE_STORAGE_ACCOUNT: names the service URL https://ACCOUNT.blob.core.windows.net. */
  readonly account?: string;
  /** A blob service URL instead (Azurite: http://127.0.0.1:10000/devstoreaccount1). */
  readonly endpoint?: string;
  /** AZURE_STORAGE_CONNECTION_STRING: account, key or SAS and endpoint in one. */
  readonly connectionString?: string;
  /** AZURE_STORAGE_KEY, with the account. */
  readonly accountKey?: string;
  /** AZURE_STORAGE_SAS_TOKEN, with the account (or endpoint). */
  readonly sasToken?: string;
  /** Fixed block size, overriding chooseBlockSize (tests). */
  readonly blockSize?: number;
  /** Blobs per listing page. @default 1000 */
  readonly pageSize?: number;
  /** Attempts per request, retries included. @default 3 */
  readonly maxAttempts?: number;
  /** Milliseconds one attempt of a request may take before it is cut and retried. @default 60000 */
  readonly requestTimeoutMs?: number;
  /**
   * The access tier of each new blob by its lifecycle kind (s3.ts placementFor), set by the upload
   * itself (Put Blob or Put Block List `x-ms-access-tier`), so no blob is ever in another tier.
   * @default none sent (the account's default tier) (core/config.ts: AZURE_ACCESS_TIER, _ARCHIVE, ...)
   */
  readonly accessTier?: PerLifecycleKind<AzureAccessTier>;
  /**
   * A version-level immutability policy on each new blob (OBJECT_LOCK_MODE, OBJECT_LOCK_RETAIN=gfs):
   * Put Blob and Put Block List carry `x-ms-immutability-policy-until-date` (the blob's planned GFS
   * expiry, core/retention/lock.ts) and `x-ms-immutability-policy-mode` (GOVERNANCE: Unlocked, which a
   * principal allowed to may shorten or remove; COMPLIANCE: Locked, which can only be extended), so the
   * blob is never without its policy, not even briefly. No date for the key: no header (the
   * container's default policy applies). Needs a container (or account) with version-level
   * immutability support, which needs blob versioning. @default none
   */
  readonly objectLock?: ObjectLockOptions;
}

/**
 * An Azure Blob Storage container under a name prefix. Streams are uploaded as block blobs: blocks
 * are staged (at most 4 at once, so memory stays constant) and the blob appears only when its block
 * list is committed, so readers never see part of an object, and a failed upload leaves only
 * uncommitted blocks, which are never an object (Azure discards them within a week).
 * Credentials (connection string, key, SAS token) are kept in this object only, never in messages.
 */
export class AzureTarget implements StorageTarget {
  readonly kind = 'azure' as const;
  readonly location: string;
  readonly container: string;
  readonly prefix: string;
  private readonly keys: KeyPrefix;
  private readonly options: AzureTargetOptions;
  private containerPromise: Promise<ContainerClient> | undefined;

  constructor(options: AzureTargetOptions) {
    if (
      options.blockSize !== undefined &&
      (options.blockSize < 1 || options.blockSize > MAX_BLOCK_SIZE || !Number.isInteger(options.blockSize))
    ) {
      throw new StorageError(`Azure block size ${options.blockSize} is not allowed; use 1 byte to 4000 MiB`);
    }
    this.options = options;
    this.container = options.container;
    this.keys = new KeyPrefix(options.prefix);
    this.prefix = this.keys.value;
    const root = `azure://${this.accountName() ?? 'account'}/${this.container}`;
    this.location = this.keys.location(root);
  }

  /**
   * The immutability policy of a new blob under `key` (AzureTargetOptions.objectLock): its expiry and
   * mode, or undefined (off, or no date for this key).
   */
  immutabilityPolicyFor(
    key: string,
    now = new Date(),
  ): { expiriesOn: Date; policyMode: 'Unlocked' | 'Locked' } | undefined {
    const lock = this.options.objectLock;
    const until = lock?.retainUntil(key, now);
    if (lock === undefined || until === undefined) return undefined;
    return { expiriesOn: until, policyMode: lock.mode === 'COMPLIANCE' ? 'Locked' : 'Unlocked' };
  }

  async put(key: string, source: Readable, options: PutOptions = {}): Promise<{ size: number }> {
    const blob = await this.blockBlob(key);
    // Names this write on the blob, so a failed write can tell its own blob from another's.
    const writeId = randomBytes(12).toString('hex');
    const metadata = { [WRITE_ID_METADATA]: writeId };
    const tier = placementFor(key, this.options.accessTier);
    const immutabilityPolicy = this.immutabilityPolicyFor(key);
    const conditions = options.ifAbsent ? { ifNoneMatch: '*' } : undefined;
    const base = this.options.blockSize ?? chooseBlockSize(options.sizeHint);
    let size = 0;
    const blockIds: string[] = [];
    const staging = new Set<Promise<void>>();
    let stageFailure: { readonly error: unknown } | undefined;
    const reading = sourceChunks(source);
    const blocks = sourceBlocks(reading);
    try {
      const first = await blocks.next(blockSizeAt(0, base));
      if (blocks.atEnd()) {
        // The whole stream fits one block: one Put Blob, as atomic as a commit.
        size = first.length;
        await this.timed(
          (abortSignal) =>
            blob.upload(first, first.length, {
              metadata,
              conditions,
              tier,
              immutabilityPolicy,
              abortSignal,
            }),
          first.length,
        );
        return { size };
      }
      let block: Buffer = first;
      for (let index = 0; ; index++) {
        if (block.length > 0) {
          if (index >= MAX_BLOCKS) {
            throw new StorageError(`upload of ${key} to ${this.location} needs more than 50,000 blocks`);
          }
          size += block.length;
          // Block ids: equal length within a blob, and this write's own (writers of one name never mix blocks).
          const id = Buffer.from(`${writeId}-${String(index).padStart(6, '0')}`).toString('base64');
          blockIds.push(id);
          const body = block;
          const staged: Promise<void> = this.timed(
            (abortSignal) => blob.stageBlock(id, body, body.length, { abortSignal }),
            body.length,
          ).then(
            () => {
              staging.delete(staged);
            },
            (error: unknown) => {
              staging.delete(staged);
              stageFailure ??= { error };
            },
          );
          staging.add(staged);
          if (staging.size >= UPLOAD_CONCURRENCY) await Promise.race(staging);
          if (stageFailure !== undefined) throw stageFailure.error;
        }
        if (blocks.atEnd()) break;
        block = await blocks.next(blockSizeAt(index + 1, base));
      }
      await Promise.all(staging);
      if (stageFailure !== undefined) throw stageFailure.error;
      await this.timed((abortSignal) =>
        blob.commitBlockList(blockIds, { metadata, conditions, tier, immutabilityPolicy, abortSignal }),
      );
      return { size };
    } catch (err) {
      const failure = reading.failure();
      source.destroy();
      await reading.close();
      await Promise.allSettled([...staging]);
      if (failure !== undefined) throw failure.error;
      const outcome = reading.done()
        ? await this.outcomeOfFailedPut(blob, writeId).catch(() => 'unknown' as const)
        : 'unknown';
      // The final request reached the store and this write's blob is there: only its answer was lost.
      if (outcome === 'stored') return { size };
      if (options.ifAbsent && (outcome === 'other' || isConditionFailed(err))) {
        throw new ObjectExistsError(key, this.location, { cause: err });
      }
      throw this.storageError(err, `upload ${key}`);
    }
  }

  async putBytes(key: string, data: Buffer | string): Promise<void> {
    const blob = await this.blockBlob(key);
    const body = typeof data === 'string' ? Buffer.from(data) : data;
    try {
      const tier = placementFor(key, this.options.accessTier);
      const immutabilityPolicy = this.immutabilityPolicyFor(key);
      await this.timed(
        (abortSignal) => blob.upload(body, body.length, { tier, immutabilityPolicy, abortSignal }),
        body.length,
      );
    } catch (err) {
      throw this.storageError(err, `upload ${key}`);
    }
  }

  async get(key: string): Promise<Readable> {
    const blob = await this.blockBlob(key);
    try {
      const response = await this.timed((abortSignal) => blob.download(0, undefined, { abortSignal }));
      const body = response.readableStreamBody;
      if (body === undefined) throw new StorageError(`Azure gave no body for ${key} in ${this.location}`);
      return body as Readable;
    } catch (err) {
      if (isBlobNotFound(err)) throw new ObjectNotFoundError(key, this.location);
      if (restError(err).code === 'BlobArchived') throw this.archivedError(key, err);
      throw this.storageError(err, `download ${key}`);
    }
  }

  async getBytes(key: string): Promise<Buffer> {
    return readWhole(await this.get(key), (err) => this.storageError(err, `download ${key}`));
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const blob = await this.blockBlob(key);
    try {
      const properties = await this.timed((abortSignal) => blob.getProperties({ abortSignal }));
      return { key, size: properties.contentLength ?? 0, modified: properties.lastModified ?? new Date(0) };
    } catch (err) {
      if (isBlobNotFound(err)) return undefined;
      throw this.storageError(err, `look up ${key}`);
    }
  }

  async *list(prefix: string): AsyncGenerator<ObjectInfo> {
    assertValidPrefix(prefix);
    const container = await this.containerClient();
    // One signal for the listing; each page's request is timed on its own.
    const controller = new AbortController();
    const pages = container
      .listBlobsFlat({ prefix: this.keys.full(prefix), abortSignal: controller.signal })
      .byPage({ maxPageSize: this.options.pageSize ?? DEFAULT_PAGE_SIZE });
    while (true) {
      let page: IteratorResult<ContainerListBlobFlatSegmentResponse>;
      try {
        const timer = setTimeout(() => controller.abort(), this.timeoutMs);
        try {
          page = await pages.next();
        } finally {
          clearTimeout(timer);
        }
      } catch (err) {
        throw this.storageError(err, `list ${prefix || '/'}`);
      }
      if (page.done) return;
      for (const item of page.value.segment.blobItems) {
        // 'folder/' placeholders made by tools are not objects.
        if (item.name.endsWith('/')) continue;
        yield {
          key: this.keys.relative(item.name),
          size: item.properties.contentLength ?? 0,
          modified: item.properties.lastModified ?? new Date(0),
        };
      }
    }
  }

  async delete(key: string): Promise<void> {
    const blob = await this.blockBlob(key);
    try {
      await this.timed((abortSignal) => blob.delete({ deleteSnapshots: 'include', abortSignal }));
    } catch (err) {
      if (isBlobNotFound(err)) return;
      if (isImmutable(err))
        throw new ObjectLockedError(key, this.location, await this.lockDetail(blob), { cause: err });
      throw this.storageError(err, `delete ${key}`);
    }
  }

  /**
   * What keeps a blob whose delete Azure refused as immutable: `locked until <expiry>` from its
   * properties when they say, else `still locked (Azure immutability policy)`.
   */
  private async lockDetail(blob: BlockBlobClient): Promise<string> {
    try {
      const properties = await this.timed((abortSignal) => blob.getProperties({ abortSignal }));
      const until = properties.immutabilityPolicyExpiresOn;
      if (until !== undefined && until.getTime() > 0) return `locked until ${until.toISOString()}`;
      if (properties.legalHold === true) return 'still locked (Azure legal hold)';
    } catch {
      // The refusal itself already says the blob is locked.
    }
    return 'still locked (Azure immutability policy)';
  }

  async probe(prefix: string): Promise<void> {
    const probeKey = `${prefix}/.pgvault-probe-${randomBytes(6).toString('hex')}`;
    await this.putBytes(probeKey, 'pgvault probe\n');
    await this.delete(probeKey);
  }

  /**
   * Runs one SDK operation under this target's time limit (S3_REQUEST_TIMEOUT): the SDK's own
   * tryTimeoutInMs only asks the server to give up, and an endpoint that accepts a connection and
   * never answers would hang archive_command. The limit covers the operation up to its answer (a
   * download's body streams after it, so a slow reader is never cut), retries included, plus
   * `bytes` at 1 MiB/s for a block or blob sent.
   */
  private async timed<T>(work: (abortSignal: AbortSignal) => Promise<T>, bytes = 0): Promise<T> {
    const controller = new AbortController();
    const limit = this.timeoutMs + Math.ceil((bytes / MiB) * 1000);
    const timer = setTimeout(() => controller.abort(), limit);
    try {
      return await work(controller.signal);
    } finally {
      clearTimeout(timer);
    }
  }

  private get timeoutMs(): number {
    return this.options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /**
   * After a failed put whose whole source was read (so the commit may have completed, its answer
   * lost): 'stored' when the blob under the key carries this write's id, 'other' when another
   * writer's blob is there (never touched), 'absent' when none is.
   */
  private async outcomeOfFailedPut(
    blob: BlockBlobClient,
    writeId: string,
  ): Promise<'stored' | 'absent' | 'other'> {
    try {
      const properties = await this.timed((abortSignal) => blob.getProperties({ abortSignal }));
      return properties.metadata?.[WRITE_ID_METADATA] === writeId ? 'stored' : 'other';
    } catch (err) {
      if (isBlobNotFound(err)) return 'absent';
      throw err;
    }
  }

  /** The storage account's name, when the settings name it (AZURE_STORAGE_ACCOUNT, the connection string). */
  get account(): string | undefined {
    return this.accountName();
  }

  private accountName(): string | undefined {
    if (this.options.account !== undefined) return this.options.account;
    const fromString = /(?:^|;)\s*AccountName=([^;]+)/i.exec(this.options.connectionString ?? '')?.[1];
    return fromString?.trim();
  }

  private serviceUrl(): string {
    if (this.options.endpoint !== undefined) return this.options.endpoint.replace(/\/+$/, '');
    const account = this.options.account;
    if (account === undefined) {
      throw new StorageError(
        'Azure needs AZURE_STORAGE_ACCOUNT (or AZURE_STORAGE_CONNECTION_STRING); set it to the storage account name',
      );
    }
    return `https://${account}.blob.core.windows.net`;
  }

  /** Makes the client on first use, loading the SDK (and @azure/identity only for Entra ID). */
  private containerClient(): Promise<ContainerClient> {
    this.containerPromise ??= (async () => {
      const sdk = await loadBlobSdk();
      const pipeline: StoragePipelineOptions = {
        retryOptions: {
          maxTries: this.options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
          // Sent as the server-side timeout; the client-side limit is timed() below.
          tryTimeoutInMs: this.timeoutMs,
          // archive_command must fail fast when the store is down (PostgreSQL retries it).
          retryDelayInMs: 500,
          maxRetryDelayInMs: 4000,
        },
      };
      const { connectionString, accountKey, sasToken } = this.options;
      let service: BlobServiceClient;
      if (connectionString !== undefined) {
        try {
          service = sdk.BlobServiceClient.fromConnectionString(connectionString, pipeline);
        } catch {
          // The SDK's message may quote the string; ours does not.
          throw new StorageError(
            'AZURE_STORAGE_CONNECTION_STRING is not a valid connection string; copy it from the storage account\'s "Access keys" page',
          );
        }
      } else if (accountKey !== undefined) {
        const account = this.options.account;
        if (account === undefined) {
          throw new StorageError('AZURE_STORAGE_KEY needs AZURE_STORAGE_ACCOUNT; set it to the account name');
        }
        const credential = new sdk.StorageSharedKeyCredential(account, accountKey);
        service = new sdk.BlobServiceClient(this.serviceUrl(), credential, pipeline);
      } else if (sasToken !== undefined) {
        const url = `${this.serviceUrl()}?${sasToken.replace(/^\?/, '')}`;
        service = new sdk.BlobServiceClient(url, new sdk.AnonymousCredential(), pipeline);
      } else {
        const url = this.serviceUrl();
        const { DefaultAzureCredential } = await import('@azure/identity');
        service = new sdk.BlobServiceClient(url, new DefaultAzureCredential(), pipeline);
      }
      return service.getContainerClient(this.container);
    })();
    return this.containerPromise;
  }

  private async blockBlob(key: string): Promise<BlockBlobClient> {
    assertValidKey(key);
    const container = await this.containerClient();
    return container.getBlockBlobClient(this.keys.full(key));
  }

  /**
   * A read refused because the blob sits in the Archive tier (409 BlobArchived), as one line: the
   * key and the exact command that rehydrates it. The same ArchivedObjectError the S3 target throws.
   */
  private archivedError(key: string, err: unknown): ArchivedObjectError {
    const account = this.accountName();
    return new ArchivedObjectError(
      `object ${key} in ${this.location} is in the Archive tier and cannot be read until it is rehydrated (BlobArchived); ` +
        `start with az storage blob set-tier${account ? ` --account-name ${account}` : ''} --container-name ${this.container} ` +
        `--name ${this.keys.full(key)} --tier Hot --rehydrate-priority Standard (and the backup's other archived objects) ` +
        'and retry once it is done (up to 15 hours; --rehydrate-priority High: about an hour)',
      key,
      'Archive',
      { cause: err },
    );
  }

  /** One line naming what failed and what to check; the SDK error stays as the cause. */
  private storageError(err: unknown, action: string): StorageError {
    if (err instanceof StorageError) return err;
    const where = `Azure Blob Storage at ${this.describeEndpoint()}`;
    const { code, status } = restError(err);
    const network = connectionErrorCode(err);
    if (network !== undefined) {
      return new StorageError(
        `${where} cannot be reached (${network}) trying to ${action} in ${this.location}; check AZURE_STORAGE_ACCOUNT (or the connection string's endpoint) and the network`,
        { cause: err },
      );
    }
    if (isAbort(err)) {
      const seconds = (this.options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS) / 1000;
      return new StorageError(
        `${where} did not answer in time: ${action} in ${this.location} timed out after ${seconds} s (TimeoutError); check the network, or raise S3_REQUEST_TIMEOUT`,
        { cause: err },
      );
    }
    if (code === 'ContainerNotFound') {
      return new StorageError(
        `container ${this.container} does not exist (ContainerNotFound); create it (az storage container create --name ${this.container}) or check CLOUD_BUCKET`,
        { cause: err },
      );
    }
    if (
      status === 403 ||
      status === 401 ||
      (code ?? '').startsWith('Authentication') ||
      code === 'AuthorizationFailure'
    ) {
      return new StorageError(
        `access to ${this.location} was denied (${code ?? status}) trying to ${action}; check the Azure credentials (key, SAS token or role assignment) and their permissions`,
        { cause: err },
      );
    }
    if (
      errorName(err) === 'CredentialUnavailableError' ||
      errorName(err) === 'AggregateAuthenticationError'
    ) {
      return new StorageError(
        `no Azure credentials found (${errorName(err)}); set AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or run with a managed identity`,
        { cause: err },
      );
    }
    const message = err instanceof Error ? err.message.split('\n')[0] : String(err);
    return new StorageError(
      `Azure could not ${action} in ${this.location} (${code ?? errorName(err)}: ${message})`,
      { cause: err },
    );
  }

  /** The service URL without any query string (a SAS token is a secret). */
  private describeEndpoint(): string {
    const fromString = /(?:^|;)\s*BlobEndpoint=([^;]+)/i.exec(this.options.connectionString ?? '')?.[1];
    const url =
      this.options.endpoint ??
      fromString ??
      `https://${this.accountName() ?? 'account'}.blob.core.windows.net`;
    return url.split('?')[0]!.replace(/\/+$/, '');
  }
}

function errorName(err: unknown): string {
  if (err instanceof Error) return err.name;
  return typeof err;
}

function restError(err: unknown): { code?: string; status?: number } {
  const { code, statusCode } = (err ?? {}) as { code?: unknown; statusCode?: unknown };
  return {
    code: typeof code === 'string' ? code : undefined,
    status: typeof statusCode === 'number' ? statusCode : undefined,
  };
}

/** 404 of the blob itself (not of its container, which is a configuration error). */
function isBlobNotFound(err: unknown): boolean {
  const { code, status } = restError(err);
  if (code === 'ContainerNotFound') return false;
  return code === 'BlobNotFound' || status === 404;
}

/**
 * A delete refused because the blob is under an immutability policy or legal hold: Azure answers
 * 409 with the error code BlobImmutableDueToPolicy (the only such code of the Blob service's list;
 * matched by prefix so that a legal-hold variant is recognized too).
 */
function isImmutable(err: unknown): boolean {
  return (restError(err).code ?? '').startsWith('BlobImmutable');
}

/** If-None-Match: * refused: a blob is already there (412 ConditionNotMet, or 409 BlobAlreadyExists). */
function isConditionFailed(err: unknown): boolean {
  const { code, status } = restError(err);
  return status === 412 || code === 'ConditionNotMet' || code === 'BlobAlreadyExists';
}

function isAbort(err: unknown): boolean {
  return errorName(err) === 'AbortError' || errorName(err) === 'TimeoutError';
}

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

function connectionErrorCode(err: unknown, depth = 0): string | undefined {
  if (err === null || typeof err !== 'object' || depth > 3) return undefined;
  const { code, cause, errors } = err as { code?: unknown; cause?: unknown; errors?: unknown };
  if (typeof code === 'string' && CONNECTION_ERROR_CODES.has(code)) return code;
  if (Array.isArray(errors)) {
    for (const member of errors) {
      const found = connectionErrorCode(member, depth + 1);
      if (found !== undefined) return found;
    }
  }
  return connectionErrorCode(cause, depth + 1);
}
