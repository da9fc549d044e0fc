import { Readable, Transform, type TransformCallback, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { type RepositoryConfig, type RepositoryKind, repositoryHolds } from '../config';
import { errorMessage, IntegrityError, ObjectExistsError, UsageError } from '../errors';
import { repositoryOf, targetName } from '../storage';
import type { ObjectInfo, StorageTarget } from '../storage/target';
import { DigestMeter } from '../stream';
import type { Vault } from '../vault';
import { checkStoredWalObject, readArchiveIdentity, type WalArchiveIdentity } from '../wal/fetch';
import { walNameFromKey } from '../wal/naming';
import { Catalog } from './catalog';
import { archiveKeysKey } from './keys';
import type { StoredObject } from './manifest';
import { DRILLS_FOLDER, type DrillRecord, drillRecordKey } from './records';

/**
 * `pgvault repo sync`: copies what one repository has and another should hold (REPO<n>_HOLDS) but
 * lacks, so a repository that was down during a backup catches up. A backup is copied object by
 * object, each object's stored bytes checked against the manifest's size and sha256 on the way (a
 * copy that differs fails its put, so nothing half or wrong is left), and its manifest last: the
 * backup exists in the destination only once all of it is there. WAL files, drill records and the
 * archive's keys.json are copied when missing, checked by content first (copyChecked): a corrupt
 * source object is named and not copied. An object the destination already has is not read (that is
 * `verify`'s work; readers fall back past a corrupt copy). Running it again copies nothing.
 */

export interface SyncedItem {
  readonly from: number;
  readonly to: number;
  /** backup: one backup (objects and manifest); wal, report, keys: one object. */
  readonly kind: 'backup' | 'wal' | 'report' | 'keys';
  /** The backup id, or the object's key. */
  readonly name: string;
  readonly objects: number;
  readonly bytes: number;
}

export interface SyncFailure {
  readonly from: number;
  readonly to: number;
  readonly name: string;
  readonly error: string;
  /** The source's object is corrupt (an IntegrityError): `repo sync` then exits 3. */
  readonly integrity: boolean;
}

function failure(err: unknown): { error: string; integrity: boolean } {
  return { error: errorMessage(err), integrity: err instanceof IntegrityError };
}

/**
 * One WAL file, drill record or keys.json from a source repository into `dst`, checked by content
 * first (these have no manifest with a digest): a WAL object is decoded and checked as `restore wal`
 * would (core/wal/fetch.ts checkStoredWalObject) and the copy pinned to the sha256 of the stored
 * bytes checked; a drill record must be a drill record whose key matches its kind and start time;
 * keys.json must parse. A corrupt source object is never copied: an IntegrityError names it.
 */
async function copyChecked(
  src: { target: StorageTarget; repo: RepositoryConfig },
  dst: StorageTarget,
  o: ObjectInfo,
  kind: SyncedItem['kind'],
  cluster: string,
  identity: WalArchiveIdentity | undefined,
): Promise<boolean> {
  const file = kind === 'wal' ? walNameFromKey(o.key) : undefined;
  if (file !== undefined) {
    const good = await checkStoredWalObject(src.target, o.key, file, src.repo.config, identity);
    return copyObject(src.target, dst, { key: o.key, storedSize: good.size, sha256: good.sha256 });
  }
  if (kind === 'wal') {
    // archive.json and anything else under wal/ that is not a WAL file: small, JSON.
    return copyJson(src.target, dst, o.key, () => undefined);
  }
  return copyJson(src.target, dst, o.key, (value) => {
    if (kind !== 'report') return undefined;
    const record = value as Partial<DrillRecord>;
    if (record?.format !== 'pgvault-drill/1' || typeof record.startedAt !== 'string' || !record.kind)
      return 'it is not a drill record';
    // `…/<stamp>-<kind>-<suffix>.json` (older records have no suffix).
    const stem = drillRecordKey(cluster, record as DrillRecord, 'X').slice(0, -'-X.json'.length);
    return o.key.startsWith(`${stem}-`) || o.key === `${stem}.json`
      ? undefined
      : `its content (${record.kind}, ${record.startedAt}) does not match its key`;
  });
}

async function copyJson(
  src: StorageTarget,
  dst: StorageTarget,
  key: string,
  problemOf: (value: unknown) => string | undefined,
): Promise<boolean> {
  const bytes = await src.getBytes(key);
  let problem: string | undefined;
  try {
    problem = problemOf(JSON.parse(bytes.toString('utf8')));
  } catch (err) {
    problem = `not JSON: ${errorMessage(err)}`;
  }
  if (problem !== undefined) {
    throw new IntegrityError(
      `object ${key} in ${src.location} is corrupt (${problem}); not copied to ${dst.location}`,
    );
  }
  return putIfAbsent(dst, key, bytes);
}

/**
 * Create-only, as every writer of these objects is (WAL push, key records): a sync racing another
 * writer of the destination (archive_command, a key rotation, a second sync) never overwrites what
 * that writer stored; false when the destination got the object meanwhile.
 */
async function putIfAbsent(dst: StorageTarget, key: string, bytes: Buffer): Promise<boolean> {
  try {
    await dst.put(key, Readable.from([bytes]), { sizeHint: bytes.length, ifAbsent: true });
    return true;
  } catch (err) {
    if (err instanceof ObjectExistsError) return false;
    throw err;
  }
}

export interface SyncResult {
  readonly dryRun: boolean;
  readonly copied: SyncedItem[];
  readonly failed: SyncFailure[];
}

export async function syncRepositories(
  vault: Vault,
  options: { from?: number; to?: number; dryRun?: boolean } = {},
): Promise<SyncResult> {
  const repos = vault.targets
    .map((target) => ({ target, repo: repositoryOf(target) }))
    .filter((r): r is { target: StorageTarget; repo: NonNullable<typeof r.repo> } => r.repo !== undefined);
  if (repos.length < 2) {
    throw new UsageError(
      'repo sync needs two repositories or more; describe them with REPO1_TYPE, REPO2_TYPE ... (see README, "Repositories")',
    );
  }
  for (const [flag, n] of [
    ['--from', options.from],
    ['--to', options.to],
  ] as const) {
    if (n !== undefined && !repos.some((r) => r.repo.n === n)) {
      throw new UsageError(
        `${flag} ${n}: there is no repository ${n}; the repositories are ${repos.map((r) => r.repo.n).join(', ')}`,
      );
    }
  }
  const cluster = vault.config.clusterName;
  // The WAL archive's identity (system identifier, segment size, WAL key derivation) to check segments with.
  const identity = await readArchiveIdentity(vault.targets, cluster).then(
    (r) => r.identity,
    () => undefined,
  );
  const result: SyncResult = { dryRun: options.dryRun === true, copied: [], failed: [] };
  for (const dst of repos) {
    if (options.to !== undefined && dst.repo.n !== options.to) continue;
    const sources = repos.filter(
      (s) => s !== dst && (options.from === undefined || s.repo.n === options.from),
    );
    const holds = (kind: RepositoryKind, schedule?: string) =>
      repositoryHolds(dst.repo.holds, kind, schedule);
    const done = new Set<string>();
    for (const src of sources) {
      const tell = { from: src.repo.n, to: dst.repo.n };
      // Backups: the manifests of the source, each copied when the destination should hold it and has none.
      let entries: Awaited<ReturnType<Catalog['list']>>;
      try {
        entries = await new Catalog([src.target], cluster, vault.config.backupDir, (line) =>
          vault.reporter.warn(line),
        ).list();
      } catch (err) {
        result.failed.push({
          ...tell,
          name: src.target.location,
          error: `cannot list: ${errorMessage(err)}`,
          integrity: false,
        });
        continue;
      }
      for (const entry of entries.reverse()) {
        const m = entry.manifest;
        if (done.has(entry.manifestKey) || !holds(m.type, m.schedule)) continue;
        try {
          if ((await dst.target.stat(entry.manifestKey)) !== undefined) continue;
          const bytes = m.objects.reduce((n, o) => n + o.storedSize, 0);
          if (!result.dryRun) {
            for (const object of m.objects) {
              // Already there (a killed run's leftover, another writer): the manifest is written only
              // over an object that is the one it describes.
              if (!(await copyObject(src.target, dst.target, object))) await checkPresent(dst.target, object);
            }
            // The manifest last: the backup appears in the destination whole or not at all.
            await putIfAbsent(dst.target, entry.manifestKey, await src.target.getBytes(entry.manifestKey));
            vault.reporter.info(`${m.id}: copied ${targetName(src.target)} → ${targetName(dst.target)}`);
          }
          done.add(entry.manifestKey);
          result.copied.push({ ...tell, kind: 'backup', name: m.id, objects: m.objects.length, bytes });
        } catch (err) {
          result.failed.push({ ...tell, ...failure(err), name: m.id });
        }
      }
      // WAL, drill records and keys.json: by key, when missing.
      const prefixes: { prefix: string; kind: SyncedItem['kind'] }[] = [];
      if (holds('wal')) prefixes.push({ prefix: `${cluster}/wal/`, kind: 'wal' });
      if (holds('reports')) prefixes.push({ prefix: `${cluster}/${DRILLS_FOLDER}/`, kind: 'report' });
      prefixes.push({ prefix: archiveKeysKey(cluster), kind: 'keys' });
      for (const { prefix, kind } of prefixes) {
        try {
          const present = new Map<string, number>();
          for await (const o of dst.target.list(prefix)) present.set(o.key, o.size);
          for await (const o of src.target.list(prefix)) {
            if (present.has(o.key) || done.has(o.key)) continue;
            if (kind === 'keys' && o.key !== prefix) continue;
            // Each object on its own: a corrupt one is named and skipped, the others still copied.
            try {
              const stored =
                result.dryRun || (await copyChecked(src, dst.target, o, kind, cluster, identity));
              done.add(o.key);
              if (stored) result.copied.push({ ...tell, kind, name: o.key, objects: 1, bytes: o.size });
            } catch (err) {
              result.failed.push({ ...tell, ...failure(err), name: o.key });
            }
          }
        } catch (err) {
          result.failed.push({ ...tell, ...failure(err), name: prefix });
        }
      }
    }
  }
  return result;
}

/**
 * An object the destination already held when sync came to copy it: its stored size and sha256 must
 * be the manifest's, else an IntegrityError naming it (the backup's manifest is then not copied, so the
 * destination never lists a backup over bytes that are not its own).
 */
async function checkPresent(
  dst: StorageTarget,
  object: Pick<StoredObject, 'key' | 'storedSize'> & { sha256?: string },
): Promise<void> {
  const meter = new DigestMeter({ hash: object.sha256 !== undefined });
  await pipeline(
    await dst.get(object.key),
    meter,
    new Writable({ write: (_chunk, _encoding, done) => done() }),
  );
  const problem =
    meter.bytes !== object.storedSize
      ? `size ${meter.bytes} bytes, expected ${object.storedSize}`
      : object.sha256 !== undefined && meter.sha256() !== object.sha256
        ? 'sha256 differs from the manifest'
        : undefined;
  if (problem !== undefined) {
    throw new IntegrityError(
      `object ${object.key} in ${dst.location} is already there and is not the backup's (${problem}); the backup was not copied: delete that object and run repo sync again`,
    );
  }
}

/**
 * One object from `src` into `dst`, its stored bytes checked on the way: a size (and, with a
 * manifest's sha256, a digest) that differs fails the put before it completes, so nothing is left.
 */
async function copyObject(
  src: StorageTarget,
  dst: StorageTarget,
  object: Pick<StoredObject, 'key' | 'storedSize'> & { sha256?: string },
): Promise<boolean> {
  const meter = new DigestMeter({ hash: object.sha256 !== undefined });
  const check = new (class extends Transform {
    override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback) {
      cb(null, chunk);
    }
    override _flush(cb: TransformCallback) {
      const problem =
        meter.bytes !== object.storedSize
          ? `size ${meter.bytes} bytes, expected ${object.storedSize}`
          : object.sha256 !== undefined && meter.sha256() !== object.sha256
            ? 'sha256 differs from the manifest'
            : undefined;
      cb(
        problem
          ? new IntegrityError(
              `object ${object.key} in ${src.location} is corrupt (${problem}); not copied to ${dst.location}`,
            )
          : null,
      );
    }
  })();
  const source = await src.get(object.key);
  source.on('error', (err) => meter.destroy(err));
  meter.on('error', (err) => check.destroy(err));
  try {
    await dst.put(object.key, source.pipe(meter).pipe(check), {
      sizeHint: object.storedSize,
      ifAbsent: true,
    });
    return true;
  } catch (err) {
    source.destroy();
    if (err instanceof ObjectExistsError) return false;
    throw err;
  }
}
