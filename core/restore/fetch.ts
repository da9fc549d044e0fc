import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CatalogEntry } from '../catalog/catalog';
import { keyRing } from '../catalog/keys';
import { type Manifest, type StoredObject, verifyManifest } from '../catalog/manifest';
import { decryptionFor, readObject, readObjectToFile } from '../catalog/objects';
import { removeOnExit } from '../cleanup';
import type { Config } from '../config';
import { ensureFreeSpace, isDiskFull } from '../disk';
import { errorMessage, IntegrityError, StorageError, UsageError } from '../errors';
import { archiveOffsetPatches } from '../pg/archive';
import type { Reporter, Vault } from '../vault';

/** A verified local copy of one object's raw bytes; remove() deletes it and its folder. */
export interface LocalCopy {
  readonly path: string;
  readonly object: StoredObject;
  remove(): Promise<void>;
}

/**
 * Checks a backup before anything is read from it: the manifest's HMAC and key check when it is
 * encrypted, so a wrong key fails here, before any database is touched.
 */
export async function openBackup(entry: CatalogEntry, config: Config): Promise<Manifest> {
  await verifyManifest(entry.manifest, keyRing(config), entry.manifestKey);
  return entry.manifest;
}

/**
 * Resolves a backup reference, checks its manifest, and picks the database to restore from it
 * (see chooseSourceDatabase). `target` is the database to restore into, when one was named.
 */
export async function openDatabaseBackup(
  vault: Vault,
  ref: string,
  choice: { from?: string; target?: string },
): Promise<{ entry: CatalogEntry; manifest: Manifest; object: StoredObject }> {
  const entry = await vault.catalog.resolve(ref);
  const manifest = await openBackup(entry, vault.config);
  return { entry, manifest, object: pickDatabaseObject(manifest, { ...choice, named: entry.namedObject }) };
}

/** Streams one object of a backup as its raw bytes from the nearest copy (digests checked at the end). */
export function readBackupObject(
  vault: Vault,
  entry: CatalogEntry,
  object: StoredObject,
): ReturnType<typeof readObject> {
  return readObject({
    target: entry.targets[0]!,
    object,
    compression: entry.manifest.compression.algorithm,
    threads: vault.config.parallelJobs,
    encryption: decryptionFor(entry.manifest, vault.config.encryption.passphrase),
  });
}

/** How a restore's source database was asked for; see chooseSourceDatabase. */
export interface SourceChoice {
  /** Key of the object a path or key named (CatalogEntry.namedObject). */
  readonly named?: string;
  /** --from NAME. */
  readonly from?: string;
  /** The database restored into, when named. */
  readonly target?: string;
}

/**
 * The one rule for which database of a backup a restore reads: the one --from names; else the one
 * with the target's name; else, when the backup holds one user database (besides `postgres`, which
 * full backups hold too), that one; else a usage error listing them. PGDATABASE is where pgvault
 * connects, never the source. `what` names the backup or cluster in messages; `byPath` says a
 * path to one database's object can name it too (logical backups).
 */
export function chooseSourceDatabase(
  names: readonly string[],
  choice: { from?: string; target?: string },
  what: string,
  byPath = true,
): string {
  const list = names.join(', ');
  if (choice.from !== undefined) {
    if (!names.includes(choice.from))
      throw new UsageError(`${what} has no database "${choice.from}"; it holds ${list}`);
    return choice.from;
  }
  if (choice.target !== undefined && names.includes(choice.target)) return choice.target;
  const user = names.filter((n) => n !== 'postgres');
  if (user.length === 1) return user[0]!;
  if (names.length === 1) return names[0]!;
  throw new UsageError(
    `${what} holds several databases (${list})${choice.target !== undefined ? `, none named "${choice.target}"` : ''}; name the one to restore with --from NAME${byPath ? ' (or pass the path of its object)' : ''}`,
  );
}

/**
 * The database object to restore from a backup: the object a path or key named, else
 * chooseSourceDatabase's rule over the backup's database objects.
 */
export function pickDatabaseObject(manifest: Manifest, choice: SourceChoice): StoredObject {
  const dbs = manifest.objects.filter((o) => o.kind === 'database');
  if (choice.named !== undefined) {
    const hit = manifest.objects.find((o) => o.key === choice.named);
    if (hit?.kind !== 'database') {
      throw new UsageError(
        `${choice.named} is the ${hit?.kind ?? 'unknown'} object of backup ${manifest.id}, not a database dump; pass the path of a database's object, or the backup id with --from NAME`,
      );
    }
    if (choice.from !== undefined && choice.from !== hit.database) {
      throw new UsageError(
        `the path names database "${hit.database}" of backup ${manifest.id} but --from names "${choice.from}"; give one of them`,
      );
    }
    return hit;
  }
  if (dbs.length === 0) throw new UsageError(`backup ${manifest.id} holds no database dump`);
  const name = chooseSourceDatabase(
    dbs.map((o) => o.database ?? '?'),
    choice,
    `backup ${manifest.id}`,
  );
  return dbs.find((o) => o.database === name)!;
}

/**
 * Downloads, decrypts and decompresses one object into a private temporary folder, checking
 * every digest on the way. Nothing is restored from a copy that failed a check: the caller gets
 * an IntegrityError and the file is gone. Tries each target holding the backup, nearest first.
 */
export async function fetchToLocalFile(
  entry: CatalogEntry,
  object: StoredObject,
  config: Config,
  reporter: Reporter,
): Promise<LocalCopy> {
  await ensureFreeSpace(tmpdir(), object.rawSize, 'restore staging', 'set TMPDIR to a larger disk');
  const dir = await mkdtemp(join(tmpdir(), 'pgvault-restore-'));
  const path = join(
    dir,
    object.key
      .split('/')
      .pop()!
      .replace(/\.(gz|bz2|xz|zst|lz4)?(\.enc)?$/, '')
      .replace(/\.enc$/, ''),
  );
  const forget = removeOnExit(dir);
  const remove = async () => {
    await rm(dir, { recursive: true, force: true });
    forget();
  };
  let lastError: unknown;
  for (const target of entry.targets) {
    try {
      // A copy that failed its checks leaves a partial file behind; the next one starts afresh.
      await rm(path, { force: true });
      await readObjectToFile(
        {
          target,
          object,
          compression: entry.manifest.compression.algorithm,
          threads: config.parallelJobs,
          encryption: decryptionFor(entry.manifest, config.encryption.passphrase),
          onProgress: (bytes) =>
            reporter.progress(`fetch ${object.database ?? object.kind}`, bytes, object.storedSize),
        },
        path,
      );
      // Write the data offsets pg_dump could not write to a pipe: pg_restore --jobs and -L then
      // seek to a table's data instead of scanning the archive for it.
      // Backups from before the manifest kept them are read back to find them.
      if (object.format === 'dump') {
        await patchFile(
          path,
          object.tocPatches?.map(([position, hex]) => ({ position, bytes: Buffer.from(hex, 'hex') })) ??
            (await archiveOffsetPatches(path)),
        );
      }
      return { path, object, remove };
    } catch (err) {
      lastError = err;
      // Corruption is about this copy: another target may hold a good one.
      if ((err instanceof IntegrityError || err instanceof StorageError) && !isDiskFull(err)) {
        if (entry.targets.length > 1)
          reporter.warn(`${target.location}: ${errorMessage(err)}; trying the next copy`);
        continue;
      }
      break;
    }
  }
  await remove();
  throw lastError;
}

async function patchFile(
  path: string,
  patches: ReadonlyArray<{ position: number; bytes: Buffer }>,
): Promise<void> {
  if (patches.length === 0) return;
  const handle = await open(path, 'r+');
  try {
    for (const p of patches) await handle.write(p.bytes, 0, p.bytes.length, p.position);
  } finally {
    await handle.close();
  }
}
