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
