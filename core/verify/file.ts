import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Manifest, StoredObject } from '../catalog/manifest';
import { corruptionBehindProgramFailure, decryptionFor, readObject } from '../catalog/objects';
import { removeOnExit } from '../cleanup';
import type { Config } from '../config';
import { diskFullError, ensureFreeSpace, isDiskFull } from '../disk';
import { errorMessage, IntegrityError, PgVaultError, UsageError } from '../errors';
import { CustomArchiveScanner } from '../pg/archive';
import { findPgBinary } from '../pg/tools';
import { openBackup } from '../restore/fetch';
import type { StorageTarget } from '../storage/target';
import { startTool, ToolExitError } from '../stream/process';
import type { Vault } from '../vault';

export interface ObjectVerification {
  readonly key: string;
  readonly storedSize: number;
  readonly rawSize: number;
  /** Tables whose rows were counted again in the archive and matched the manifest. */
  readonly tablesMatched?: number;
  /** Base backups: extracted and checked by pg_verifybackup (every file, and the WAL inside). */
  readonly dataDirectoryVerified?: boolean;
}

export interface FileVerification {
  readonly backupId: string;
  readonly target: string;
  readonly objects: readonly ObjectVerification[];
  readonly durationMs: number;
}

/**
 * `verify file <backup>`: the manifest's HMAC; every object's size and sha256 as stored; then
 * decrypted and decompressed, the raw sha256; and for pg_dump archives the whole archive parsed
 * and its rows counted again against the manifest. Reads every byte once, writes nothing.
 */
export async function verifyBackupFile(vault: Vault, ref: string): Promise<FileVerification> {
  const started = Date.now();
  const entry = await vault.catalog.resolve(ref);
  const manifest = await openBackup(entry, vault.config);
  const target = entry.targets[0]!;
  const objects: ObjectVerification[] = [];
  for (const object of manifest.objects) {
    try {
      objects.push(await verifyObject(vault, manifest, object, target));
    } catch (err) {
      const corrupt = asCorruption(err, object, target);
      if (corrupt === undefined) throw err;
      throw await withOtherCopies(vault, manifest, object, entry.targets, target, corrupt);
    }
  }
  return { backupId: manifest.id, target: target.location, objects, durationMs: Date.now() - started };
}

/** Reads one object through in one target: digests, decryption, decompression, its own format. */
async function verifyObject(
  vault: Vault,
  manifest: Manifest,
  object: StoredObject,
  target: StorageTarget,
  options: { readonly quiet?: boolean } = {},
): Promise<ObjectVerification> {
  const raw = await readObject({
    target,
    object,
    compression: manifest.compression.algorithm,
    threads: vault.config.parallelJobs,
    encryption: decryptionFor(manifest, vault.config.encryption.passphrase),
    onProgress: options.quiet
      ? undefined
      : (bytes) =>
          vault.reporter.progress(`verify ${object.database ?? object.kind}`, bytes, object.storedSize),
  });
  if (object.kind === 'base') {
    await verifyBaseBackupObject(raw, target, object, manifest, vault.config);
    return {
      key: object.key,
      storedSize: object.storedSize,
      rawSize: object.rawSize,
      dataDirectoryVerified: true,
    };
  }
  const scanner = object.format === 'dump' ? new CustomArchiveScanner() : undefined;
  const sink = new Writable({ write: (_chunk, _enc, cb) => cb() });
  await pipeline(scanner ? [raw, scanner, sink] : [raw, sink]);
  return {
    key: object.key,
    storedSize: object.storedSize,
    rawSize: object.rawSize,
    tablesMatched: scanner ? checkRowCounts(object, scanner) : undefined,
  };
}

/**
 * A failure that says the object is damaged, as an IntegrityError naming it; undefined for one
 * that says nothing about the object (a target unreachable, a tool missing, a full disk, a wrong
 * setting). Whoever noticed first (zstd's "Data corruption detected", the archive parser seeing
 * garbage before the digests are complete) the verdict is the same: this copy is corrupt.
 */
function asCorruption(err: unknown, object: StoredObject, target: StorageTarget): IntegrityError | undefined {
  if (err instanceof IntegrityError) return err;
  if (
    (err instanceof PgVaultError && !(err instanceof ToolExitError)) ||
    isDiskFull(err) ||
    !(err instanceof Error)
  )
    return undefined;
  return new IntegrityError(
    `object ${object.key} in ${target.location} is corrupt (cannot be read: ${errorMessage(err).split('\n')[0]}); do not trust it, use another backup or target`,
    { cause: err },
  );
}

/** The corruption, and which other targets hold an intact copy of the object (each read through). */
async function withOtherCopies(
  vault: Vault,
  manifest: Manifest,
  object: StoredObject,
  targets: readonly StorageTarget[],
  damaged: StorageTarget,
  corrupt: IntegrityError,
): Promise<IntegrityError> {
  const others = targets.filter((t) => t !== damaged);
  if (others.length === 0) return corrupt;
  const intact: string[] = [];
  for (const other of others) {
    const ok = await verifyObject(vault, manifest, object, other, { quiet: true }).then(
      () => true,
      () => false,
    );
    if (ok) intact.push(other.location);
  }
  const said = corrupt.message.replace(/; do not trust it, use another backup or target$/, '');
  return new IntegrityError(
    intact.length > 0
      ? `${said}; an intact copy is in ${intact.join(', ')} (restores read it from there): copy it over the damaged one, or take a new backup`
      : `${said}; no other target holds an intact copy (${others.map((t) => t.location).join(', ')} checked): use another backup`,
    { cause: corrupt },
  );
}

function checkRowCounts(object: StoredObject, scanner: CustomArchiveScanner): number | undefined {
  if (!scanner.complete) {
    throw new IntegrityError(`archive ${object.key} ends early: its table of contents or data is incomplete`);
  }
  if (object.tables === undefined || scanner.unsupportedReason) return undefined;
  const counted = new Map(scanner.tableRowCounts().map((t) => [`${t.schema}.${t.table}`, t.rows]));
  for (const t of object.tables) {
    const rows = counted.get(`${t.schema}.${t.table}`);
    if (rows !== t.rows) {
      throw new IntegrityError(
        `archive ${object.key}: table ${t.schema}.${t.table} holds ${rows ?? 'no'} rows, manifest says ${t.rows}`,
      );
    }
  }
  return object.tables.length;
}

/**
 * A base backup is extracted into a private temporary folder and checked by pg_verifybackup against
 * the server's own backup_manifest: every file's size and checksum, and (the WAL is inside with
 * -X fetch) that the WAL from start to stop parses. The folder is removed whatever the outcome.
 */
async function verifyBaseBackupObject(
  raw: Readable,
  target: StorageTarget,
  object: StoredObject,
  manifest: Manifest,
  config: Config,
): Promise<void> {
  const verifyBackup = findPgBinary('pg_verifybackup', config.pgBinDir);
  await ensureFreeSpace(
    tmpdir(),
    object.rawSize,
    'verifying this base backup',
    'set TMPDIR to a larger disk',
  );
  const dir = await mkdtemp(join(tmpdir(), 'pgvault-verify-'));
  const forget = removeOnExit(dir);
  try {
    // Never as the archive's owner: the copy stays private to whoever runs verify. -i reads on past
    // the end-of-archive blocks to the end of the stream: GNU tar 1.35 (Debian 13) exits at those
    // blocks, closing its stdin while the padding after them is still being written ("Premature
    // close"), and the whole object must pass through for its digest to be checked.
    const tar = startTool('tar', ['-x', '-i', '-f', '-', '-C', dir, '--no-same-owner'], {
      label: 'tar -x',
      stdout: 'ignore',
    });
    const [piped, extracted] = await Promise.allSettled([pipeline(raw, tar.stdin), tar.exited]);
    if (piped.status === 'rejected' || extracted.status === 'rejected') {
      raw.destroy();
      tar.child.kill('SIGTERM');
      // tar extracted all it was given: the stream's own verdict (digest, decryption) stands.
      if (extracted.status === 'fulfilled') throw asStreamFailure(piped, object);
      // tar failed: the stored bytes decide, as when a restore extracts it (core/restore/sandbox.ts).
      const corrupt = await corruptionBehindProgramFailure(target, object, extracted.reason, piped);
      if (corrupt !== undefined) throw corrupt;
      throw (
        diskFullError(extracted.reason, dir, 'set TMPDIR to a larger disk') ??
        new PgVaultError(
          `cannot extract base backup ${object.key} into ${dir} to verify it: ${errorMessage(extracted.reason)}; the object is intact (its sha256 matches the manifest): check that TMPDIR has room and can be written`,
          { cause: extracted.reason },
        )
      );
    }
    const recorded = manifest.physical?.serverManifestSha256;
    if (recorded !== undefined) {
      const actual = await fileSha256(join(dir, 'backup_manifest')).catch(() => undefined);
      if (actual !== recorded) {
        throw new IntegrityError(
          `base backup ${object.key}: ${actual === undefined ? 'backup_manifest is missing from the tar' : "the server's backup_manifest differs from the one recorded at backup time"}; do not trust this backup, use another one`,
        );
      }
    }
    const check = startTool(verifyBackup, [dir], {
      label: 'pg_verifybackup',
      stdin: 'ignore',
      stdout: 'ignore',
    });
    try {
      await check.exited;
    } catch (err) {
      const detail = err instanceof ToolExitError ? firstErrorLine(err.stderr) : errorMessage(err);
      if (err instanceof PgVaultError && !(err instanceof ToolExitError)) throw err;
      throw new IntegrityError(
        `base backup ${object.key} fails pg_verifybackup: ${detail}; do not trust this backup, use another one`,
        { cause: err },
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
    forget();
  }
}

/** pg_verifybackup lists every problem; the first says what is wrong. */
function firstErrorLine(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  const line = lines.find((l) => /error:/.test(l)) ?? lines[0] ?? 'no message';
  return line.replace(/^pg_verifybackup: (error: )?/, '');
}

/** A read of a base backup that failed while tar did not: decryption, digests or the target. */
function asStreamFailure(piped: PromiseSettledResult<unknown>, object: StoredObject): Error {
  const own = piped.status === 'rejected' ? piped.reason : undefined;
  if (own instanceof IntegrityError || own instanceof UsageError) return own;
  return new IntegrityError(`base backup ${object.key} cannot be extracted: ${errorMessage(own)}`, {
    cause: own,
  });
}

async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}
