import { Catalog, type CatalogEntry } from '../catalog/catalog';
import { chainClosure, chainProblems } from '../catalog/chain';
import { keyId, keyRing } from '../catalog/keys';
import {
  type Manifest,
  parseManifest,
  type StoredObject,
  verifiedPassphrase,
  verifyManifest,
} from '../catalog/manifest';
import { BACKUP_TYPES, type BackupType } from '../catalog/naming';
import { digestStored } from '../catalog/objects';
import { repositoryHolds } from '../config';
import { errorMessage, IntegrityError, PgVaultError } from '../errors';
import { repositoryOf, targetName } from '../storage';
import type { StorageTarget } from '../storage/target';
import type { Vault } from '../vault';
import { verifyWalArchive, type WalVerifyReport } from '../wal/archive';
import { verifyBackupFile } from './file';
import { type WalServerHealth, walServerHealth } from './wal-health';

/**
 * `verify all` (the guide's `verify-backups.sh all`): every complete backup's objects, in every
 * target holding it, exist with the manifest's size and sha256, and encrypted manifests keep their
 * HMAC; the newest backup of each type is read through (decrypted, decompressed, the pg_dump archive
 * parsed and its rows recounted, a base backup checked by pg_verifybackup); and the WAL archive is
 * continuous as `verify wal` sees it, and the server feeding it archives (`verify wal`'s server
 * check, core/verify/wal-health.ts, when a server answers). Every fault is collected and named, nothing stops at the first.
 *
 * Cost: every stored byte is read once. The newest copy of each type is digested by its read-through
 * (readObject checks the sha256 on the way), every other copy by a plain streamed sha256 (no
 * decryption, no decompression, constant memory). `quick` reads no object at all: manifests, HMACs,
 * sizes by stat and WAL continuity, small enough for a Lambda.
 */

/** 'archiving': the server feeding the WAL archive is not healthy; every other kind is something stored. */
export type FaultKind =
  | 'catalog'
  | 'manifest'
  | 'missing'
  | 'size'
  | 'sha256'
  | 'read-through'
  | 'wal'
  | 'archiving'
  /** An incremental base backup whose chain is broken: a parent missing, or a member with a fault. */
  | 'chain';

export interface VerifyFault {
  readonly kind: FaultKind;
  readonly backup?: string;
  readonly object?: string;
  readonly target?: string;
  /** What is wrong, in one line. */
  readonly problem: string;
  /** What to do about it. */
  readonly action: string;
}

export interface BackupCopyCheck {
  readonly backup: string;
  readonly type: BackupType;
  readonly target: string;
  readonly objects: number;
  /** 'sha256': every object digested; 'size': stat only (quick); 'read-through': decoded and parsed. */
  readonly checked: 'sha256' | 'size' | 'read-through';
  readonly ok: boolean;
  /** The id of the key the backup needs (encrypted backups; from the manifest or the ring key that opened it). */
  readonly keyId?: string;
  /** Whether that key is in the ring (ENCRYPTION_KEY or ENCRYPTION_KEYS_RETIRED_FILE). */
  readonly keyInRing?: boolean;
}

export interface ReadThroughCheck {
  readonly type: BackupType;
  readonly backup: string;
  readonly target: string;
  readonly ok: boolean;
  readonly durationMs?: number;
  readonly tablesMatched?: number;
  readonly dataDirectoryVerified?: boolean;
  /** Why it was not read (a fault already found in this copy), when skipped. */
  readonly skipped?: string;
}

export interface VerifyAllReport {
  readonly ok: boolean;
  readonly cluster: string;
  readonly mode: 'full' | 'quick';
  readonly checkedAt: string;
  readonly durationMs: number;
  readonly backups: number;
  readonly copies: readonly BackupCopyCheck[];
  readonly readThrough: readonly ReadThroughCheck[];
  /** Stored bytes read to check digests (read-throughs included). */
  readonly bytesRead: number;
  readonly wal?: Pick<
    WalVerifyReport,
    'ok' | 'gaps' | 'windows' | 'rpoSeconds' | 'newestModified' | 'keys'
  > & {
    readonly segments: number;
  };
  /** The server's archiving, as `verify wal` checks it; `checked: false` with why when no server answered. */
  readonly server: WalServerHealth;
  readonly faults: readonly VerifyFault[];
}

const USE_ANOTHER =
  'do not restore from it; take a new backup of this type, and find out who or what changed the repository';

export async function verifyAll(
  vault: Vault,
  options: { quick?: boolean; now?: Date } = {},
): Promise<VerifyAllReport> {
  const started = Date.now();
  const now = options.now ?? new Date();
  const faults: VerifyFault[] = [];
  const { config } = vault;
  // Our own catalog: a manifest the shared one would skip with a warning is a fault here.
  const catalog = new Catalog(vault.targets, config.clusterName, config.backupDir, (line) =>
    faults.push({
      kind: 'catalog',
      problem: line,
      action: 'the backup it belongs to is not usable; remove it or restore its manifest from another target',
    }),
  );
  const entries = await catalog.list();
  if (entries.length === 0) {
    faults.push({
      kind: 'catalog',
      problem: `no complete backup of cluster ${config.clusterName} in ${vault.targets.map((t) => t.location).join(', ')}`,
      action: 'take one with `pgvault backup full` (and `pgvault backup base` for point-in-time recovery)',
    });
  }
  const copies: BackupCopyCheck[] = [];
  const readThrough: ReadThroughCheck[] = [];
  let bytesRead = 0;

  const ringIds = await Promise.all(keyRing(config).map(keyId));
  // Pass 1: manifests and sizes for every copy (cheap: one stat per object).
  const sound = new Map<string, boolean>();
  const copyKey = (e: CatalogEntry, t: StorageTarget) => `${e.manifestKey}\u0000${t.location}`;
  for (const entry of entries) {
    for (const target of entry.targets) {
      const found = [
        ...(await checkManifestCopy(vault, entry, target)),
        ...(await checkSizes(entry.manifest, target)),
      ];
      faults.push(...found);
      sound.set(copyKey(entry, target), found.length === 0);
    }
  }
  // A repository that could not be listed is a catalog fault above (naming it), not a placement gap.
  faults.push(
    ...placementGaps(
      vault.targets.filter((t) => !catalog.unreachable.has(t)),
      entries,
    ),
  );

  // Pass 2: the newest backup of each type, read through from its nearest copy.
  const readThroughCopies = new Set<string>();
  if (!options.quick) {
    for (const type of BACKUP_TYPES) {
      const newest = entries.find((e) => e.manifest.type === type);
      if (!newest) continue;
      const target = newest.targets[0]!;
      const id = newest.manifest.id;
      if (!sound.get(copyKey(newest, target))) {
        readThrough.push({
          type,
          backup: id,
          target: target.location,
          ok: false,
          skipped: 'its manifest or an object size is already wrong',
        });
        continue;
      }
      readThroughCopies.add(copyKey(newest, target));
      vault.reporter.info(`reading ${id} through (newest ${type} backup)`);
      try {
        const r = await verifyBackupFile(vault, id);
        bytesRead += newest.manifest.storedSize;
        const tables = r.objects.reduce<number | undefined>(
          (n, o) => (o.tablesMatched === undefined ? n : (n ?? 0) + o.tablesMatched),
          undefined,
        );
        readThrough.push({
          type,
          backup: id,
          target: r.target,
          ok: true,
          durationMs: r.durationMs,
          ...(tables !== undefined ? { tablesMatched: tables } : {}),
          ...(r.objects.some((o) => o.dataDirectoryVerified) ? { dataDirectoryVerified: true } : {}),
        });
      } catch (err) {
        const message = errorMessage(err);
        faults.push({
          kind: 'read-through',
          backup: id,
          object: newest.manifest.objects.find((o) => message.includes(o.key))?.key,
          target: target.location,
          problem: message,
          action: `the newest ${type} backup cannot be restored from this copy; ${USE_ANOTHER}`,
        });
        readThrough.push({ type, backup: id, target: target.location, ok: false });
        sound.set(copyKey(newest, target), false);
        // Still name every other object of this copy that differs (the read stopped at the first).
        const named = new Set(
          newest.manifest.objects.filter((o) => message.includes(o.key)).map((o) => o.key),
        );
        const rest = await checkDigests(
          newest.manifest,
          target,
          newest.manifest.objects.filter((o) => !named.has(o.key)),
        );
        bytesRead += rest.bytes;
        faults.push(...rest.faults);
        readThroughCopies.add(copyKey(newest, target));
      }
    }
  }

  // Pass 3: every other copy, digested as stored (one streamed read per object).
  for (const entry of entries) {
    for (const target of entry.targets) {
      const key = copyKey(entry, target);
      let checked: BackupCopyCheck['checked'] = options.quick ? 'size' : 'sha256';
      if (readThroughCopies.has(key)) checked = 'read-through';
      else if (!options.quick && sound.get(key)) {
        const r = await checkDigests(entry.manifest, target, entry.manifest.objects, (line) =>
          vault.reporter.progress(`sha256 ${entry.manifest.id}`, line, entry.manifest.storedSize),
        );
        bytesRead += r.bytes;
        faults.push(...r.faults);
        if (r.faults.length > 0) sound.set(key, false);
      }
      copies.push({
        backup: entry.manifest.id,
        type: entry.manifest.type,
        target: target.location,
        objects: entry.manifest.objects.length,
        checked,
        ok: sound.get(key) === true,
        ...(await neededKey(entry.manifest, ringIds)),
      });
    }
  }

  faults.push(...chainFaults(entries, faults));

  const { wal, archive } = await checkWal(vault, now, faults, !options.quick);
  const server = await walServerHealth(vault, archive);
  for (const problem of server.problems) {
    faults.push({
      kind: 'archiving',
      problem: `WAL archiving on ${server.server}: ${problem}`,
      action:
        "run `pgvault check` on the server: it says whether archiving is broken, slow or off and what to fix (archive_command's own error is in the server log); until then new WAL is not archived and point-in-time recovery stops at the last archived segment",
    });
  }
  return {
    ok: faults.length === 0,
    cluster: config.clusterName,
    mode: options.quick ? 'quick' : 'full',
    checkedAt: now.toISOString(),
    durationMs: Date.now() - started,
    backups: entries.length,
    copies,
    readThrough,
    bytesRead,
    ...(wal ? { wal } : {}),
    server,
    faults,
  };
}

/**
 * The failure a verify all run ends with (CLI and the verify Lambda): exit 3 when anything stored is
 * wrong, exit 1 when the only faults are the server's archiving (as `verify wal`: nothing stored is
 * wrong, the archive stopped growing). undefined when there is no fault.
 */
export function verifyAllFailure(report: Pick<VerifyAllReport, 'faults'>): PgVaultError | undefined {
  const first = report.faults[0];
  if (first === undefined) return undefined;
  const stored = report.faults.find((f) => f.kind !== 'archiving');
  const message = `verify all found ${report.faults.length} fault(s); first: ${(stored ?? first).problem}`;
  return stored !== undefined ? new IntegrityError(message) : new PgVaultError(message);
}

/**
 * The HMAC (wrong key and tampering told apart by verifyManifest) of the manifest as this target
 * holds it: the catalog parsed only the first copy, and a second copy may have been changed alone.
 */
async function checkManifestCopy(
  vault: Vault,
  entry: CatalogEntry,
  target: StorageTarget,
): Promise<VerifyFault[]> {
  const id = entry.manifest.id;
  const where = `${entry.manifestKey} in ${target.location}`;
  let manifest: Manifest = entry.manifest;
  try {
    if (target !== entry.targets[0]) {
      manifest = parseManifest((await target.getBytes(entry.manifestKey)).toString('utf8'), where);
    }
    await verifyManifest(manifest, keyRing(vault.config), where);
  } catch (err) {
    return [
      {
        kind: 'manifest',
        backup: id,
        target: target.location,
        problem: errorMessage(err),
        action: /wrong encryption key|ENCRYPTION_KEY/.test(errorMessage(err))
          ? `set ENCRYPTION_KEY or ENCRYPTION_KEY_FILE to the key this backup was made with${manifest.encryption?.keyId ? ` (key id ${manifest.encryption.keyId}), or list it in ENCRYPTION_KEYS_RETIRED_FILE` : ''}`
          : USE_ANOTHER,
      },
    ];
  }
  if (
    manifest !== entry.manifest &&
    manifest.objects.some((o, i) => o.sha256 !== entry.manifest.objects[i]?.sha256)
  ) {
    return [
      {
        kind: 'manifest',
        backup: id,
        target: target.location,
        problem: `manifest ${where} lists other objects than the copy in ${entry.targets[0]!.location}`,
        action: USE_ANOTHER,
      },
    ];
  }
  return [];
}

/**
 * Several repositories: a backup missing from a repository whose REPO<n>_HOLDS takes it (one that was
 * down during the backup), when that repository has an older one of the same type and schedule, or
 * it is the newest of its kind (an older one absent there is its own retention's doing, not a gap).
 */
export function placementGaps(
  targets: readonly StorageTarget[],
  entries: readonly CatalogEntry[],
): VerifyFault[] {
  const faults: VerifyFault[] = [];
  const kindOf = (e: CatalogEntry) => `${e.manifest.type}:${e.manifest.schedule ?? ''}`;
  for (const target of targets) {
    const repo = repositoryOf(target);
    if (repo === undefined) continue;
    for (const entry of entries) {
      const m = entry.manifest;
      if (entry.targets.includes(target) || !repositoryHolds(repo.holds, m.type, m.schedule)) continue;
      const same = entries.filter((e) => kindOf(e) === kindOf(entry));
      const newest = same[0] === entry;
      const olderHere = same.some((e) => e.manifest.startedAt < m.startedAt && e.targets.includes(target));
      if (!newest && !olderHere) continue;
      faults.push({
        kind: 'missing',
        backup: m.id,
        target: target.location,
        problem: `backup ${m.id} is not in ${targetName(target)}, which holds ${m.type}${m.schedule ? `:${m.schedule}` : ''} backups (REPO${repo.n}_HOLDS)`,
        action: `copy it there with \`pgvault repo sync --to ${repo.n}\``,
      });
    }
  }
  return faults;
}

const UNREADABLE = 'check that the target is reachable and readable, then run verify all again';

function objectFault(
  manifest: Manifest,
  object: StoredObject,
  target: StorageTarget,
  kind: FaultKind,
  problem: string,
  action = USE_ANOTHER,
): VerifyFault {
  return { kind, backup: manifest.id, object: object.key, target: target.location, problem, action };
}

async function checkSizes(manifest: Manifest, target: StorageTarget): Promise<VerifyFault[]> {
  const faults: VerifyFault[] = [];
  for (const object of manifest.objects) {
    const fault = (kind: FaultKind, problem: string, action?: string) =>
      faults.push(objectFault(manifest, object, target, kind, problem, action));
    let size: number | undefined;
    try {
      size = (await target.stat(object.key))?.size;
    } catch (err) {
      fault('missing', `cannot stat ${object.key} in ${target.location}: ${errorMessage(err)}`, UNREADABLE);
      continue;
    }
    if (size === undefined) {
      fault(
        'missing',
        `object ${object.key} of backup ${manifest.id} is missing from ${target.location}`,
        `backup ${manifest.id} cannot be restored from this copy; restore the object from another target if one holds it, else ${USE_ANOTHER}`,
      );
    } else if (size !== object.storedSize) {
      fault(
        'size',
        `object ${object.key} of backup ${manifest.id} in ${target.location} is ${size} bytes, the manifest says ${object.storedSize} (truncated or replaced)`,
      );
    }
  }
  return faults;
}

/** sha256 and size of each object's stored bytes, streamed; nothing is decrypted or held. */
async function checkDigests(
  manifest: Manifest,
  target: StorageTarget,
  objects: readonly StoredObject[],
  onProgress?: (bytes: number) => void,
): Promise<{ faults: VerifyFault[]; bytes: number }> {
  const faults: VerifyFault[] = [];
  let bytes = 0;
  for (const object of objects) {
    const fault = (kind: FaultKind, problem: string, action?: string) =>
      faults.push(objectFault(manifest, object, target, kind, problem, action));
    let meter: { bytes: number; sha256: string };
    try {
      meter = await digestStored(target, object.key, onProgress && ((n) => onProgress(bytes + n)));
    } catch (err) {
      fault('missing', `cannot read ${object.key} in ${target.location}: ${errorMessage(err)}`, UNREADABLE);
      continue;
    }
    bytes += meter.bytes;
    if (meter.bytes !== object.storedSize) {
      fault(
        'size',
        `object ${object.key} of backup ${manifest.id} in ${target.location} read ${meter.bytes} bytes, the manifest says ${object.storedSize}`,
      );
    } else if (meter.sha256 !== object.sha256) {
      fault(
        'sha256',
        `object ${object.key} of backup ${manifest.id} in ${target.location} is corrupt: its sha256 differs from the manifest`,
      );
    }
  }
  return { faults, bytes };
}

/** The key a backup needs: the id its manifest names, or that of the ring key that verified it. */
async function neededKey(
  manifest: Manifest,
  ringIds: readonly string[],
): Promise<Pick<BackupCopyCheck, 'keyId' | 'keyInRing'>> {
  if (!manifest.encryption) return {};
  const verified = verifiedPassphrase(manifest);
  const id = manifest.encryption.keyId ?? (verified !== undefined ? await keyId(verified) : undefined);
  return id === undefined ? {} : { keyId: id, keyInRing: ringIds.includes(id) };
}

async function checkWal(
  vault: Vault,
  now: Date,
  faults: VerifyFault[],
  keys: boolean,
): Promise<{ wal?: VerifyAllReport['wal']; archive?: WalVerifyReport }> {
  let report: WalVerifyReport;
  try {
    report = await verifyWalArchive(vault, now, { keys });
  } catch (err) {
    faults.push({
      kind: 'wal',
      problem: `the WAL archive cannot be read: ${errorMessage(err)}`,
      action: 'check the targets, then run `pgvault verify wal`',
    });
    return {};
  }
  if (report.timelines.length === 0 && report.backups.length === 0 && !report.keys?.faults.length)
    return { archive: report };
  for (const g of report.gaps) {
    const blocked = report.backups.filter((b) => b.missing.some((m) => m.from === g.from)).map((b) => b.id);
    faults.push({
      kind: 'wal',
      problem: `WAL ${g.count > 1 ? `segments ${g.from} to ${g.to} (${g.count} files) are` : `segment ${g.from} is`} missing from the archive on timeline ${g.timeline}${blocked.length > 0 ? `: recovery from ${blocked.join(', ')} stops before it` : ''}`,
      action:
        'if the file is still in pg_wal on the server, archive it (`pgvault backup wal <path>`); otherwise take a new base backup (`pgvault backup base`) so point-in-time recovery starts after the gap',
    });
  }
  for (const f of report.keys?.faults ?? []) {
    faults.push({
      kind: 'wal',
      object: f.key,
      target: f.target,
      problem: f.problem,
      action:
        'add the key it was written with to ENCRYPTION_KEYS_RETIRED_FILE; if no key opens it, take a new base backup (`pgvault backup base`) so point-in-time recovery does not need it',
    });
  }
  const wal = {
    ok: report.ok,
    ...(report.keys !== undefined ? { keys: report.keys } : {}),
    segments: report.timelines.reduce((n, t) => n + t.segments, 0),
    gaps: report.gaps,
    windows: report.windows,
    ...(report.rpoSeconds !== undefined ? { rpoSeconds: report.rpoSeconds } : {}),
    ...(report.newestModified ? { newestModified: report.newestModified } : {}),
  };
  return { wal, archive: report };
}

/**
 * Every chain of incremental base backups: each parent link leads to a base backup in the catalog
 * (core/catalog/chain.ts), and no member of a chain has a fault of its own (missing, size, sha256,
 * manifest): one fault per incremental that could not be restored, naming the member.
 */
export function chainFaults(entries: readonly CatalogEntry[], found: readonly VerifyFault[]): VerifyFault[] {
  const faults: VerifyFault[] = chainProblems(entries).map(({ id, problem }) => ({
    kind: 'chain' as const,
    backup: id,
    problem: `the chain of incremental ${id} is broken: ${problem}`,
    action:
      'it cannot be restored: take a full base backup (pgvault backup base) and restore from an intact chain',
  }));
  const broken = new Set(faults.map((f) => f.backup));
  const faulty = new Map<string, string>();
  for (const f of found) if (f.backup !== undefined && !faulty.has(f.backup)) faulty.set(f.backup, f.problem);
  for (const entry of entries) {
    const id = entry.manifest.id;
    if (entry.manifest.incrementalOf === undefined || broken.has(id)) continue;
    const members = chainClosure([id], entries);
    for (const member of members) {
      if (member === id || !faulty.has(member)) continue;
      faults.push({
        kind: 'chain',
        backup: id,
        problem: `the chain of incremental ${id} needs ${member}, which has a fault (${faulty.get(member)})`,
        action:
          'it cannot be restored: take a full base backup (pgvault backup base) and restore from an intact chain',
      });
      break;
    }
  }
  return faults;
}
