import type { Readable } from 'node:stream';

/** One stored object as listed by a target. Keys are relative to the target's root, '/'-separated. */
export interface ObjectInfo {
  readonly key: string;
  readonly size: number;
  readonly modified: Date;
}

export interface PutOptions {
  /**
   * Expected size in bytes when known (an upper estimate is fine). S3 uses it to choose a part size
   * that keeps a multi-terabyte stream under the 10,000-part limit.
   */
  readonly sizeHint?: number;
  /**
   * Create-only: the put fails with ObjectExistsError when another writer's object is already under
   * the key, and leaves that object alone (the file target links instead of renaming; S3 sends
   * If-None-Match: *, which stores that ignore it treat as a plain put). For objects whose name says
   * their content (WAL files), so that two writers of one name never undo each other.
   */
  readonly ifAbsent?: boolean;
}

/**
 * A retention lock on each new object until its planned GFS expiry (core/config.ts OBJECT_LOCK_*;
 * core/storage/index.ts objectLockOptions): S3 Object Lock (GOVERNANCE, COMPLIANCE), Azure
 * version-level immutability policies (Unlocked, Locked), GCS object retention (Unlocked, Locked).
 * `retainUntil` undefined: no per-object lock (the bucket's or container's default retention applies).
 */
export interface ObjectLockOptions {
  readonly mode: 'GOVERNANCE' | 'COMPLIANCE';
  /** Retain-until of the object under `key` (relative to the prefix) written at `now`. */
  readonly retainUntil: (key: string, now: Date) => Date | undefined;
}

/**
 * The one storage interface. Every backend (file, s3, later gcs and azure) implements it and passes
 * the same contract suite (test/integration/storage-contract.test.ts).
 *
 * Rules every backend keeps:
 * - put() is atomic: readers see the whole object or nothing. If the source stream errors, or the
 *   write fails, nothing of this write is left under the key (temp file removed, multipart upload
 *   aborted) and put() rejects with the original error (not a cleanup error). Clean-up removes only
 *   what this very write created, never an object another writer completed meanwhile; a write whose
 *   answer was lost but whose object is proven stored (S3: it carries this write's id) succeeds.
 * - Objects are written once; put() over an existing key replaces it atomically, but the catalog
 *   never does that for data objects.
 * - A missing object is an ObjectNotFoundError from get()/getBytes(); stat() returns undefined.
 * - delete() of a missing key succeeds (idempotent).
 * - list() pages through the store and yields objects as it goes; it never holds a whole listing
 *   in memory. Order: ascending by key.
 */
export interface StorageTarget {
  readonly kind: 'file' | 's3' | 'gcs' | 'azure';
  /** Where the target points, for messages: file:///var/backups/postgresql, s3://bucket/prefix. */
  readonly location: string;
  put(key: string, source: Readable, options?: PutOptions): Promise<{ size: number }>;
  putBytes(key: string, data: Buffer | string): Promise<void>;
  get(key: string): Promise<Readable>;
  getBytes(key: string): Promise<Buffer>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(key: string): Promise<void>;
  /**
   * Checks the target can be reached and written: writes and removes a small probe object under
   * `prefix/` (the cluster's own folder), never at the root, where a role scoped to its cluster's
   * prefix may not write.
   */
  probe(prefix: string): Promise<void>;
}
