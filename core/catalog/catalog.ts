import { existsSync } from 'node:fs';
import { basename, dirname, isAbsolute, relative, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { errorMessage, UsageError } from '../errors';
import { targetName } from '../storage';
import { FileTarget } from '../storage/file';
import type { ObjectInfo, StorageTarget } from '../storage/target';
import { type Manifest, parseManifest } from './manifest';
import { BACKUP_TYPES, type BackupType, MANIFEST_SUFFIX, parseBackupId } from './naming';

/** A complete backup as the catalog sees it: its manifest and every target that holds it. */
export interface CatalogEntry {
  readonly manifest: Manifest;
  readonly manifestKey: string;
  /** Targets holding this backup, local first (restores read the nearest copy). */
  readonly targets: readonly StorageTarget[];
  /**
   * The key of the object the reference named, when it named one object rather than the whole
   * backup (a path or key such as .../full-daily-20260212-020000.app.dump.zst): restores take that
   * object as their source.
   */
  readonly namedObject?: string;
}

export type CatalogWarning = (line: string) => void;

/**
 * The catalog is derived from listing manifests: nothing is kept elsewhere, nothing is updated in
 * place. A backup without a manifest does not exist here.
 */
export class Catalog {
  constructor(
    readonly targets: readonly StorageTarget[],
    readonly cluster: string,
    private readonly backupDir: string,
    private readonly warn: CatalogWarning = () => {},
  ) {}

  /** The targets the last list() could not list (unreachable, refused): their backups are unknown, not absent. */
  readonly unreachable = new Map<StorageTarget, string>();

  /** Complete backups, newest first; optionally only one type. */
  async list(type?: BackupType): Promise<CatalogEntry[]> {
    this.unreachable.clear();
    // Keyed by manifest key: the same backup in the local folder and in the bucket is one entry.
    const byKey = new Map<string, { manifest: Manifest; manifestKey: string; targets: StorageTarget[] }>();
    const failures: unknown[] = [];
    for (const target of this.targets) {
      try {
        // One prefix per backup type: never walk {cluster}/wal/, which may hold millions of segments.
        for await (const info of manifestsIn(
          target,
          (type ? [type] : BACKUP_TYPES).map((t) => `${this.cluster}/${t}/`),
        )) {
          const existing = byKey.get(info.key);
          if (existing) {
            existing.targets.push(target);
            continue;
          }
          try {
            const manifest = parseManifest((await target.getBytes(info.key)).toString('utf8'), info.key);
            byKey.set(info.key, { manifest, manifestKey: info.key, targets: [target] });
          } catch (err) {
            this.warn(`skipping ${info.key} in ${target.location}: ${errorMessage(err)}`);
          }
        }
      } catch (err) {
        failures.push(err);
        this.unreachable.set(target, errorMessage(err));
        this.warn(`cannot list ${targetName(target)}: ${errorMessage(err)}`);
      }
    }
    if (failures.length === this.targets.length && failures.length > 0) throw failures[0];
    return [...byKey.values()].sort((a, b) =>
      a.manifest.startedAt < b.manifest.startedAt ? 1 : a.manifest.startedAt > b.manifest.startedAt ? -1 : 0,
    );
  }

  /**
   * Finds one backup by `latest`, its id, an object or manifest key, or a file path (the guide
   * passes paths such as /var/backups/postgresql/full/full-daily-20260212-020000.dump.zst.enc).
   * A path outside BACKUP_DIR is read in place, with the manifest beside it. A path or key of one
   * object (…/full-daily-20260212-020000.app.dump.zst) comes back with that object as namedObject.
   */
  async resolve(ref: string, type: BackupType = 'full'): Promise<CatalogEntry> {
    const trimmed = ref.trim();
    if (trimmed === '')
      throw new UsageError('no backup given; pass an id from `pgvault restore list`, a path, or latest');
    if (trimmed === 'latest') {
      // Newest first, but only a backup whose objects are all there: a manifest that outlived its
      // data (an undo cut short, an object removed by hand) must not shadow the good one before it.
      for (const entry of await this.list(type)) {
        const whole = await this.whole(entry);
        if (whole) return whole;
      }
      throw new UsageError(
        `no complete ${type} backup of cluster ${this.cluster} in ${this.targets.map((t) => t.location).join(', ')}; take one with \`pgvault backup ${type}\``,
      );
    }
    const id = idFromReference(trimmed);
    if (id === undefined) {
      throw new UsageError(
        `${ref} is not a backup id, key or path; use an id from \`pgvault restore list\` (like full-daily-20260212-020000) or latest`,
      );
    }
    const path = isAbsolute(trimmed) || trimmed.startsWith('.') ? resolve(trimmed) : undefined;
    if (path !== undefined && relative(this.backupDir, path).startsWith('..')) {
      return withNamedObject(await this.resolveDetached(path, id), trimmed);
    }
    const found = (await this.list()).find((e) => e.manifest.id === id);
    if (!found) {
      throw new UsageError(
        `backup ${id} not found in ${this.targets.map((t) => t.location).join(', ')} (or it has no manifest, so it is incomplete); see \`pgvault restore list\``,
      );
    }
    return withNamedObject(found, trimmed);
  }

  /**
   * The entry narrowed to the targets that hold every one of its objects at the manifest's size
   * (one stat per object, no read), or undefined, with a warning naming what is missing, when no
   * target does. `verify all --quick` reports the same as a fault.
   */
  async whole(entry: CatalogEntry): Promise<CatalogEntry | undefined> {
    const { holding, problems } = await this.holdingTargets(entry);
    if (holding.length === 0) {
      this.warn(
        `skipping ${entry.manifest.id} as latest: ${problems.join('; ')}; see \`pgvault verify all --quick\``,
      );
      return undefined;
    }
    if (holding.length === entry.targets.length) return entry;
    this.warn(
      `${entry.manifest.id}: ${problems.join('; ')}; reading it from ${holding.map((t) => t.location).join(', ')}`,
    );
    return { ...entry, targets: holding };
  }

  /**
   * The newest whole backup of `entries` (taken newest first, as given) and the ones before it whose
   * data is gone (with what is missing). Stats only until the first whole one (one stat per object),
   * never every backup; quiet (the callers report the broken ones themselves).
   */
  async newestWhole(
    entries: readonly CatalogEntry[],
  ): Promise<{ whole?: CatalogEntry; broken: { entry: CatalogEntry; problem: string }[] }> {
    const broken: { entry: CatalogEntry; problem: string }[] = [];
    for (const entry of entries) {
      const problem = await this.missingObjects(entry);
      if (problem === undefined) return { whole: entry, broken };
      broken.push({ entry, problem });
    }
    return { broken };
  }

  /**
   * What is missing of a backup when no target holds all its objects (one line naming the first
   * missing object per target), or undefined when one target does. Quiet; one stat per object.
   */
  async missingObjects(entry: CatalogEntry): Promise<string | undefined> {
    const { holding, problems } = await this.holdingTargets(entry);
    return holding.length > 0 ? undefined : problems.join('; ');
  }

  /**
   * missingObjects for each of `entries` (same order), `concurrency` backups at a time (each one's
   * objects stat'ed in turn): `restore list` marks every listed backup this way.
   */
  async missingObjectsOf(entries: readonly CatalogEntry[], concurrency = 8): Promise<(string | undefined)[]> {
    const results: (string | undefined)[] = new Array(entries.length);
    let next = 0;
    const worker = async () => {
      while (next < entries.length) {
        const i = next++;
        results[i] = await this.missingObjects(entries[i]!);
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, entries.length) }, worker));
    return results;
  }

  private async holdingTargets(
    entry: CatalogEntry,
  ): Promise<{ holding: StorageTarget[]; problems: string[] }> {
    const holding: StorageTarget[] = [];
    const problems: string[] = [];
    for (const target of entry.targets) {
      let problem: string | undefined;
      for (const object of entry.manifest.objects) {
        try {
          const info = await target.stat(object.key);
          if (info === undefined) problem = `${object.key} is missing`;
          else if (info.size !== object.storedSize)
            problem = `${object.key} has ${info.size} bytes, not ${object.storedSize}`;
        } catch (err) {
          problem = `${object.key} cannot be looked up (${errorMessage(err)})`;
        }
        if (problem) break;
      }
      if (problem) problems.push(`${problem} in ${target.location}`);
      else holding.push(target);
    }
    return { holding, problems };
  }

  /** A backup copied somewhere by hand: its objects and manifest sit side by side in one folder. */
  private async resolveDetached(path: string, id: string): Promise<CatalogEntry> {
    const folder =
      existsSync(path) && !path.endsWith(MANIFEST_SUFFIX) && !basename(path).includes('.')
        ? path
        : dirname(path);
    const target = new FlatFolderTarget(folder);
    const manifestKey = `${id}${MANIFEST_SUFFIX}`;
    const bytes = await target.getBytes(manifestKey).catch(() => {
      throw new UsageError(
        `no manifest ${manifestKey} beside ${path}; copy the backup's .manifest.json into ${folder} as well`,
      );
    });
    return {
      manifest: parseManifest(bytes.toString('utf8'), `${folder}/${manifestKey}`),
      manifestKey,
      targets: [target],
    };
  }
}

/** File-name parts that say how a file is stored, not what it holds. */
const STORAGE_PARTS = new Set([
  'dump',
  'sql',
  'tar',
  'gz',
  'bz2',
  'xz',
  'zst',
  'lz4',
  'enc',
  'manifest',
  'json',
]);

/**
 * The entry with the object a reference names: its file name is one object's (id.part.ext). The bare
 * id, the manifest, the backup's folder or the guide's id.dump.zst.enc (no part) name the whole backup.
 * A name with a part that is none of the backup's objects (a mistyped database) is refused rather
 * than read as the whole backup.
 */
function withNamedObject(entry: CatalogEntry, ref: string): CatalogEntry {
  const name = basename(ref);
  const id = entry.manifest.id;
  if (!name.startsWith(`${id}.`)) return entry;
  const hit = entry.manifest.objects.find((o) => basename(o.key) === name);
  if (!hit) {
    if (
      name
        .slice(id.length + 1)
        .split('.')
        .every((p) => STORAGE_PARTS.has(p))
    )
      return entry;
    throw new UsageError(
      `backup ${id} has no object ${name}; it holds ${entry.manifest.objects.map((o) => basename(o.key)).join(', ')}`,
    );
  }
  return { ...entry, namedObject: hit.key };
}

async function* manifestsIn(target: StorageTarget, prefixes: readonly string[]): AsyncIterable<ObjectInfo> {
  for (const prefix of prefixes) {
    for await (const info of target.list(prefix)) if (info.key.endsWith(MANIFEST_SUFFIX)) yield info;
  }
}

/** The backup id inside any reference: ids hold no dots, so it is the name up to the first one. */
export function idFromReference(ref: string): string | undefined {
  const name = basename(ref);
  const id = name.split('.')[0] ?? '';
  return parseBackupId(id) ? id : undefined;
}

/**
 * Reads a hand-copied backup: every key resolves to the file of the same name in one folder, so a
 * backup fetched with `aws s3 cp` into /tmp restores like one in the repository.
 */
class FlatFolderTarget implements StorageTarget {
  readonly kind = 'file' as const;
  readonly location: string;
  private readonly inner: FileTarget;
  constructor(folder: string) {
    this.inner = new FileTarget(folder);
    this.location = `file://${folder}`;
  }
  private flat(key: string): string {
    return basename(key);
  }
  put(): Promise<{ size: number }> {
    return Promise.reject(new UsageError('a hand-copied backup folder is read-only'));
  }
  putBytes(): Promise<void> {
    return Promise.reject(new UsageError('a hand-copied backup folder is read-only'));
  }
  get(key: string): Promise<Readable> {
    return this.inner.get(this.flat(key));
  }
  getBytes(key: string): Promise<Buffer> {
    return this.inner.getBytes(this.flat(key));
  }
  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(this.flat(key));
  }
  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(this.flat(prefix));
  }
  delete(): Promise<void> {
    return Promise.reject(new UsageError('a hand-copied backup folder is read-only'));
  }
  probe(_prefix: string): Promise<void> {
    return Promise.resolve();
  }
}
