import { Transform, type TransformCallback } from 'node:stream';
import { type RepositoryKind, repositoryHolds } from '../config';
import { errorMessage, IntegrityError, UsageError } from '../errors';
import { repositoryOf, targetName } from '../storage';
import type { StorageTarget } from '../storage/target';
import { DigestMeter } from '../stream';
import type { Vault } from '../vault';
import { Catalog } from './catalog';
import { archiveKeysKey } from './keys';
import type { StoredObject } from './manifest';
import { DRILLS_FOLDER } from './records';

/**
 * `pgvault repo sync`: copies what one repository has and another should hold (REPO<n>_HOLDS) but
 * lacks, so a repository that was down during a backup catches up. A backup is copied object by
 * object, each object's stored bytes checked against the manifest's size and sha256 on the way (a
 * copy that differs fails its put, so nothing half or wrong is left), and its manifest last: the
 * backup exists in the destination only once all of it is there. WAL files, drill records and the
 * archive's keys.json are copied when missing (their size checked). Running it again copies nothing.
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
            for (const object of m.objects) await copyObject(src.target, dst.target, object);
            // The manifest last: the backup appears in the destination whole or not at all.
            await dst.target.putBytes(entry.manifestKey, await src.target.getBytes(entry.manifestKey));
            vault.reporter.info(`${m.id}: copied ${targetName(src.target)} → ${targetName(dst.target)}`);
          }
          done.add(entry.manifestKey);
          result.copied.push({ ...tell, kind: 'backup', name: m.id, objects: m.objects.length, bytes });
        } catch (err) {
          result.failed.push({ ...tell, name: m.id, error: errorMessage(err) });
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
            if (!result.dryRun) await copyObject(src.target, dst.target, { key: o.key, storedSize: o.size });
            done.add(o.key);
            result.copied.push({ ...tell, kind, name: o.key, objects: 1, bytes: o.size });
          }
        } catch (err) {
          result.failed.push({ ...tell, name: prefix, error: errorMessage(err) });
        }
      }
    }
  }
  return result;
}

/**
 * One object from `src` into `dst`, its stored bytes checked on the way: a size (and, with a
 * manifest's sha256, a digest) that differs fails the put before it completes, so nothing is left.
 */
async function copyObject(
  src: StorageTarget,
  dst: StorageTarget,
  object: Pick<StoredObject, 'key' | 'storedSize'> & { sha256?: string },
): Promise<void> {
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
  await dst.put(object.key, source.pipe(meter).pipe(check), { sizeHint: object.storedSize });
}
