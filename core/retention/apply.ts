import { Catalog, type CatalogEntry } from '../catalog/catalog';
import { BACKUP_TYPES, MANIFEST_SUFFIX } from '../catalog/naming';
import { errorMessage, ObjectLockedError, PgVaultError, StorageError, UsageError } from '../errors';
import { repositoryOf } from '../storage';
import type { ObjectInfo, StorageTarget } from '../storage/target';
import type { Vault } from '../vault';
import { readWalArchive } from '../wal/archive';
import { walNameFromKey } from '../wal/naming';
import { inventory, type TargetListing } from './inventory';
import {
  type BackupDecision,
  backupDeletionOrder,
  planRetention,
  type RetentionInput,
  type RetentionPlan,
  type RetentionPolicy,
  retentionPolicy,
  walSegmentDeletable,
} from './plan';

/**
 * The retention executor: lists the targets, asks the planner, and carries out the plan through the
 * one storage interface. Deleting is idempotent (a missing key is a success) and ordered so that a
 * run stopped at any point leaves nothing that looks complete and is not:
 *
 * - a backup's manifest goes first, in every target, and only then its objects. Stopped in between,
 *   the objects are left without a manifest: list, restore and retention see no backup, and the next
 *   run removes them as incomplete leftovers (their write time is long past a day). The other order
 *   would leave a manifest pointing at missing objects, listed as a good backup until a restore failed.
 * - an object still under a lock (S3 Object Lock, an Azure immutability policy: lockedDetail) is reported
 *   as locked, not as a failure; when a manifest is
 *   locked its objects are not touched, so the backup stays whole and is retried by a later run.
 * - WAL is deleted folder by folder ({cluster}/wal/{timeline}/{log}/), each listed once by prefix;
 *   every key is checked against the plan again before it is deleted. History files are never deleted.
 */

export { retentionPolicy } from './plan';

export interface LockedObject {
  readonly key: string;
  readonly target: string;
  readonly detail: string;
}

export interface FailedDelete {
  readonly key: string;
  readonly target: string;
  readonly error: string;
}

export interface RetentionResult {
  readonly dryRun: boolean;
  readonly plan: RetentionPlan;
  readonly deleted: { backups: string[]; leftoverObjects: number; walObjects: number };
  readonly locked: LockedObject[];
  readonly failed: FailedDelete[];
  /** Several repositories (REPO<n>_*): each one's own plan and deletions, in repository order. */
  readonly repositories?: (RetentionResult & { readonly repository: number; readonly location: string })[];
}

/** Lists every target and builds the planner's input; a target that cannot be listed stops retention. */
export async function gatherRetentionInput(
  vault: Vault,
  now: Date,
  policy: RetentionPolicy,
): Promise<RetentionInput> {
  const cluster = vault.config.clusterName;
  const listings: TargetListing[] = [];
  for (const target of vault.targets) {
    const objects: ObjectInfo[] = [];
    try {
      for (const type of BACKUP_TYPES)
        for await (const o of target.list(`${cluster}/${type}/`)) objects.push(o);
    } catch (err) {
      throw new StorageError(
        `cannot list ${target.location} (${errorMessage(err)}); retention needs every target, nothing was deleted`,
        { cause: err },
      );
    }
    listings.push({ location: target.location, objects });
  }
  const entries = await vault.catalog.list();
  const { backups, leftovers } = inventory(
    listings,
    entries.map((e) => ({ manifest: e.manifest, manifestKey: e.manifestKey })),
  );
  const wal = await readWalArchive(vault);
  return { backups, leftovers, wal, policy, now };
}

export async function runRetention(
  vault: Vault,
  options: { dryRun?: boolean; now?: Date; policy?: RetentionPolicy } = {},
): Promise<RetentionResult> {
  if (vault.config.repositories !== undefined && options.policy === undefined) {
    return runRetentionPerRepository(vault, options);
  }
  const now = options.now ?? new Date();
  const policy = options.policy ?? retentionPolicy(vault.config);
  const plan = planRetention(await gatherRetentionInput(vault, now, policy));
  const result: RetentionResult = {
    dryRun: options.dryRun === true,
    plan,
    deleted: { backups: [], leftoverObjects: 0, walObjects: 0 },
    locked: [],
    failed: [],
  };
  if (options.dryRun) return result;
  const deleter = new Deleter(vault, result);

  for (const b of plan.backups.filter((d) => d.action === 'delete')) {
    if (await deleter.backup(b, vault.targets)) result.deleted.backups.push(b.id);
  }
  for (const l of plan.leftovers.filter((d) => d.action === 'delete')) {
    const targets = vault.targets.filter((t) => l.targets.includes(t.location));
    for (const target of targets) {
      // A backup that completed since the listing (a long one, whose objects are old) now has its
      // manifest: what another run completed is never deleted as a leftover.
      if (await manifestAppeared(target, l.id, l.keys)) {
        vault.reporter.info(
          `${l.id} in ${target.location} completed since the listing; its objects are kept`,
        );
        continue;
      }
      result.deleted.leftoverObjects += await deleter.many(target, l.keys);
    }
  }
  const cluster = vault.config.clusterName;
  for (const folder of plan.wal.folders) {
    const prefix = `${cluster}/wal/${folder.folder.slice(0, 8)}/${folder.folder}/`;
    for (const target of vault.targets) {
      const keys: string[] = [];
      try {
        for await (const o of target.list(prefix)) {
          const file = walNameFromKey(o.key);
          if (file?.segment !== undefined && walSegmentDeletable(plan.wal, file.segment)) keys.push(o.key);
        }
      } catch (err) {
        result.failed.push({ key: prefix, target: target.location, error: errorMessage(err) });
        continue;
      }
      result.deleted.walObjects += await deleter.many(target, keys);
    }
  }
  return result;
}

/**
 * Several repositories: each one's retention runs over that repository alone, with its own policy
 * (REPO<n>_RETENTION_*), its own backups and its own WAL. A copy in another repository never counts:
 * a repository keeps what its own policy keeps, so retention never removes the last copy a
 * repository should hold because another has one.
 */
async function runRetentionPerRepository(
  vault: Vault,
  options: { dryRun?: boolean; now?: Date },
): Promise<RetentionResult> {
  const now = options.now ?? new Date();
  const results: (RetentionResult & { repository: number; location: string })[] = [];
  for (const target of vault.targets) {
    const repo = repositoryOf(target);
    if (repo === undefined) continue;
    const config = repo.config;
    const one: Vault = {
      config,
      targets: [target],
      catalog: new Catalog([target], config.clusterName, config.backupDir, (line) =>
        vault.reporter.warn(line),
      ),
      reporter: vault.reporter,
    };
    const result = await runRetention(one, { dryRun: options.dryRun, now, policy: retentionPolicy(config) });
    results.push({ ...result, repository: repo.n, location: target.location });
  }
  const first = results[0]!;
  return {
    dryRun: first.dryRun,
    plan: first.plan,
    deleted: {
      backups: [...new Set(results.flatMap((r) => r.deleted.backups))],
      leftoverObjects: results.reduce((n, r) => n + r.deleted.leftoverObjects, 0),
      walObjects: results.reduce((n, r) => n + r.deleted.walObjects, 0),
    },
    locked: results.flatMap((r) => r.locked),
    failed: results.flatMap((r) => r.failed),
    repositories: results,
  };
}

/** Whether a manifest for `id` is now in a folder of `keys` (a stat failure counts as yes: keep). */
async function manifestAppeared(
  target: StorageTarget,
  id: string,
  keys: readonly string[],
): Promise<boolean> {
  const folders = new Set(keys.map((k) => k.slice(0, k.lastIndexOf('/') + 1)));
  for (const folder of folders) {
    try {
      if ((await target.stat(`${folder}${id}${MANIFEST_SUFFIX}`)) !== undefined) return true;
    } catch {
      return true;
    }
  }
  return false;
}

/**
 * `backup delete <backup> --yes`: removes one backup by hand (the only way a manual backup goes).
 * Without `yes` nothing is deleted and the line says what to add.
 */
export async function deleteBackupByHand(
  vault: Vault,
  ref: string,
  options: { yes?: boolean },
): Promise<{
  id: string;
  objects: number;
  storedSize: number;
  locked: LockedObject[];
  failed: FailedDelete[];
}> {
  if (ref.trim() === 'latest') {
    throw new UsageError(
      'backup delete takes a backup id, key or path, not latest; see `pgvault restore list`',
    );
  }
  const entry: CatalogEntry = await vault.catalog.resolve(ref);
  const m = entry.manifest;
  if (!entry.targets.some((t) => vault.targets.includes(t))) {
    throw new UsageError(
      `${ref} is a copy outside the configured targets (BACKUP_DIR, the bucket); delete its files by hand`,
    );
  }
  if (!options.yes) {
    throw new UsageError(
      `backup delete would remove ${m.id} (${m.objects.length} object(s) and its manifest from ${entry.targets.map((t) => t.location).join(', ')}); add --yes to delete it`,
    );
  }
  const outcome = { locked: [] as LockedObject[], failed: [] as FailedDelete[] };
  const decision: BackupDecision = {
    id: m.id,
    type: m.type,
    schedule: m.schedule,
    startedAt: m.startedAt,
    complete: true,
    action: 'delete',
    rules: ['deleted by hand'],
    storedSize: m.storedSize,
    manifestKey: entry.manifestKey,
    objectKeys: m.objects.map((o) => o.key),
  };
  await new Deleter(vault, outcome).backup(decision, vault.targets);
  return { id: m.id, objects: m.objects.length, storedSize: m.storedSize, ...outcome };
}

/**
 * Why a refused delete is a lock, not a failure, for any target: an ObjectLockedError (Azure, GCS: the
 * target itself knows the store's error code), or S3's answers for Object Lock (objectLockDetail).
 */
export function lockedDetail(target: StorageTarget, err: unknown): string | undefined {
  if (err instanceof ObjectLockedError) return err.detail;
  return target.kind === 's3' ? objectLockDetail(err) : undefined;
}

/** S3 refuses to delete an object version under Object Lock retention or legal hold. */
export function objectLockDetail(err: unknown): string | undefined {
  const chain: unknown[] = [];
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 4; depth++) {
    chain.push(e);
    e = (e as { cause?: unknown }).cause;
  }
  // Only the SDK's own errors: pgvault's wrapping message names the key, which may contain anything.
  for (const e of chain.filter((x) => !(x instanceof PgVaultError))) {
    const { name, Code, message } = e as { name?: unknown; Code?: unknown; message?: unknown };
    const code = typeof Code === 'string' ? Code : typeof name === 'string' ? name : '';
    const text = typeof message === 'string' ? message : '';
    if (code === 'ObjectLocked' || /object ?lock|retention|legal hold|locked/i.test(text)) {
      const until = /until ([0-9T:.\-Z+ ]+)/i.exec(text)?.[1]?.trim();
      return until ? `locked until ${until}` : 'still locked (S3 Object Lock)';
    }
    if (code === 'AccessDenied') {
      return 'still locked (S3 Object Lock) or deletes denied by the bucket policy (AccessDenied)';
    }
  }
  return undefined;
}

class Deleter {
  private readonly parallel: number;
  constructor(
    private readonly vault: Vault,
    private readonly result: { locked: LockedObject[]; failed: FailedDelete[] },
  ) {
    this.parallel = Math.max(4, vault.config.parallelJobs * 2);
  }

  /** Manifest first in every target, then the objects in the targets whose manifest went. */
  async backup(b: BackupDecision, targets: readonly StorageTarget[]): Promise<boolean> {
    let whole = true;
    const [first, ...rest] = backupDeletionOrder(b);
    for (const target of targets) {
      // Nothing else of a backup goes in a target until its first key (the manifest) has.
      if (!(await this.one(target, first!))) {
        whole = false;
        continue;
      }
      if ((await this.many(target, rest)) < rest.length) whole = false;
    }
    if (whole) this.vault.reporter.info(`deleted ${b.id}`);
    return whole;
  }

  /** Deletes keys a few at a time; returns how many went. */
  async many(target: StorageTarget, keys: readonly string[]): Promise<number> {
    let next = 0;
    let done = 0;
    const worker = async () => {
      while (next < keys.length) {
        const key = keys[next++]!;
        if (await this.one(target, key)) done++;
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.parallel, keys.length) }, worker));
    return done;
  }

  async one(target: StorageTarget, key: string): Promise<boolean> {
    try {
      await target.delete(key);
      return true;
    } catch (err) {
      // A delete whose answer was lost may have happened: settled by looking, so a manifest that is
      // gone lets its objects go too (else they would wait a day as leftovers, out of reach of
      // `backup delete`, which finds a backup by its manifest).
      if ((await target.stat(key).catch(() => null)) === undefined) return true;
      const lock = lockedDetail(target, err);
      if (lock !== undefined) {
        this.result.locked.push({ key, target: target.location, detail: lock });
        this.vault.reporter.info(`${key} in ${target.location}: ${lock}; a later run deletes it`);
      } else {
        this.result.failed.push({ key, target: target.location, error: errorMessage(err) });
        this.vault.reporter.warn(`cannot delete ${key} in ${target.location}: ${errorMessage(err)}`);
      }
      return false;
    }
  }
}
