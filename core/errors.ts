/**
 * Typed errors. Each carries the next step for the operator in its message, so the CLI can print
 * one clear line and exit non-zero without a stack trace.
 */
export class PgVaultError extends Error {
  /** Process exit code the CLI uses for this kind of failure. */
  readonly exitCode: number = 1;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A configuration value is missing or wrong. */
export class ConfigError extends PgVaultError {
  override readonly exitCode = 2;
}

/** Bad command-line input: an unknown backup, a bad argument. */
export class UsageError extends PgVaultError {
  override readonly exitCode = 2;
}

/** A storage target failed (unreachable, denied, missing object). */
export class StorageError extends PgVaultError {}

/** An object or manifest does not match what was recorded: tampered, truncated, wrong key. */
export class IntegrityError extends PgVaultError {
  override readonly exitCode = 3;
}

/** A PostgreSQL tool or server failed. */
export class PostgresError extends PgVaultError {}

/** A restore or validation found the data different from what the backup recorded. */
export class ValidationError extends PgVaultError {
  override readonly exitCode = 4;
}

/** A required program is missing from this machine. */
export class MissingToolError extends PgVaultError {}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** An object the catalog expected is not in the target. */
export class ObjectNotFoundError extends StorageError {
  constructor(
    readonly key: string,
    location: string,
  ) {
    super(`object ${key} not found in ${location}`);
  }
}

/**
 * A create-only put (PutOptions.ifAbsent) found the key taken by another writer's object: nothing of
 * this put was kept, and the other object was left as it is.
 */
export class ObjectExistsError extends StorageError {
  constructor(
    readonly key: string,
    location: string,
    options?: { cause?: unknown },
  ) {
    super(`object ${key} already exists in ${location} (written by another writer)`, options);
  }
}

/**
 * A delete the store refused because the object is still under a retention lock (Azure: an immutability
 * policy or legal hold, BlobImmutableDueToPolicy; GCS: object retention or a hold). Any target's
 * delete() may throw it; retention (core/retention/apply.ts) reports the object as locked, not as a
 * failure, and a later run deletes it. `detail` is the report's words: `locked until <ISO date>` when
 * the store said, else `still locked (<what>)`.
 */
export class ObjectLockedError extends StorageError {
  constructor(
    readonly key: string,
    location: string,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(
      `object ${key} in ${location} is ${detail.replace(/^still /, '')}; it cannot be deleted yet`,
      options,
    );
  }
}
