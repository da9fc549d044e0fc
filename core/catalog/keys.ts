import { createHash } from 'node:crypto';
import { chown, mkdir, readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import type { Config } from '../config';
import {
  ConfigError,
  errorMessage,
  IntegrityError,
  ObjectExistsError,
  ObjectNotFoundError,
  StorageError,
} from '../errors';
import type { StorageTarget } from '../storage/target';
import { deriveManifestKey, keyCheckHex, keyId, timingSafeEqualHex, walKeyCheck } from '../stream/encrypt';
import { writeFileAtomically } from '../wal/fetch';
import { Catalog } from './catalog';

export { keyId, walKeyCheck };

/**
 * One key per archive. `{cluster}/keys.json` is the archive's key check: whether its objects are
 * encrypted and the ids of the keys that wrote them (the key ring's history, oldest first). Every
 * writer checks its key against it before storing anything (checkArchiveKey), so a mistyped
 * ENCRYPTION_KEY or a switched-off ENCRYPTION cannot poison an archive; verify and restore tell
 * which key each backup needs by its id.
 *
 * A key id is a non-secret fingerprint: the first 8 bytes (hex) of
 * HMAC-SHA256(PBKDF2-SHA256(key, 'pgvault-key-id', 100000, 32 bytes), 'pgvault key id'). The slow
 * KDF keeps a weak passphrase from being guessed from its id. The WAL writer, which runs once per
 * segment, does not pay for it: it checks the `walChecks` of the key's entry, an HMAC of the WAL
 * passphrase it derives anyway, and caches the answer in its spool.
 *
 * The key ring is ENCRYPTION_KEY (or ENCRYPTION_KEY_FILE), the current key that writes, plus the
 * retired keys of ENCRYPTION_KEYS_RETIRED_FILE, which only read. A current key the archive does not
 * know is accepted when a retired key of the ring is one of the archive's (a rotation): it is added
 * to keys.json. Any other unknown key is refused.
 */

export const KEYS_FORMAT = 'pgvault-keys/1';
/** Local copy of the accepted keys, beside the identity cache in the spool. */
const KEYS_CACHE_FILE = 'archive-keys.json';

export interface ArchiveKeyEntry {
  /** keyId() of the key. */
  readonly id: string;
  /** When a writer first used it. */
  readonly added: string;
  /** walKeyCheck() of the key's derived WAL passphrase (one per WAL key salt). */
  readonly walChecks?: readonly string[];
}

export interface ArchiveKeys {
  readonly format: typeof KEYS_FORMAT;
  readonly cluster: string;
  readonly encrypted: boolean;
  /** Oldest first; the last one is the current key of the newest rotation. */
  readonly keys: readonly ArchiveKeyEntry[];
}

export function archiveKeysKey(cluster: string): string {
  return `${cluster}/keys.json`;
}

/** The key ring: the current key first, then the retired ones (duplicates dropped). */
export function keyRing(config: Pick<Config, 'encryption'>): string[] {
  const ring: string[] = [];
  for (const key of [config.encryption.passphrase, ...(config.encryption.retired ?? [])]) {
    if (key !== undefined && key !== '' && !ring.includes(key)) ring.push(key);
  }
  return ring;
}

/** The ids of the ring's keys, in ring order. */
export function keyRingIds(ring: readonly string[]): Promise<string[]> {
  return Promise.all(ring.map(keyId));
}

/** The ring's key whose id is `id`, or undefined. */
export async function ringKeyById(ring: readonly string[], id: string): Promise<string | undefined> {
  const ids = await keyRingIds(ring);
  const i = ids.indexOf(id);
  return i < 0 ? undefined : ring[i];
}

export function parseArchiveKeys(text: string, where: string): ArchiveKeys {
  let value: Partial<ArchiveKeys> | null;
  try {
    value = JSON.parse(text) as Partial<ArchiveKeys>;
  } catch (err) {
    throw new IntegrityError(`${where} is not JSON (${errorMessage(err)}); restore it from another target`);
  }
  const ok =
    value !== null &&
    typeof value === 'object' &&
    value.format === KEYS_FORMAT &&
    typeof value.encrypted === 'boolean' &&
    Array.isArray(value.keys) &&
    value.keys.every(
      (k) =>
        k !== null &&
        typeof k === 'object' &&
        typeof k.id === 'string' &&
        /^[0-9a-f]{16}$/.test(k.id) &&
        (k.walChecks === undefined ||
          (Array.isArray(k.walChecks) && k.walChecks.every((c: unknown) => typeof c === 'string'))),
    );
  if (!ok)
    throw new IntegrityError(
      `${where} is not a pgvault key check (${KEYS_FORMAT}); restore it from another target`,
    );
  return value as ArchiveKeys;
}

/** keys.json as the targets hold it (the first that has one), and the targets lacking it. */
export async function readArchiveKeys(
  targets: readonly StorageTarget[],
  cluster: string,
): Promise<{ keys?: ArchiveKeys; where?: string; missingIn: StorageTarget[] }> {
  const key = archiveKeysKey(cluster);
  const found = await Promise.all(
    targets.map(async (target) => {
      try {
        return parseArchiveKeys(
          (await target.getBytes(key)).toString('utf8'),
          `${key} in ${target.location}`,
        );
      } catch (err) {
        if (err instanceof ObjectNotFoundError) return undefined;
        throw err;
      }
    }),
  );
  const i = found.findIndex((k) => k !== undefined);
  return {
    keys: found[i],
    where: i < 0 ? undefined : targets[i]!.location,
    missingIn: targets.filter((_, j) => found[j] === undefined),
  };
}

/**
 * A local keys.json written by root (a backup run from root's crontab) is handed to the owner of
 * the cluster's folder: archive_command runs as the server's user and must read it.
 */
async function shareWithArchiveOwner(target: StorageTarget, key: string): Promise<void> {
  const root = (target as { root?: unknown }).root;
  if (target.kind !== 'file' || typeof root !== 'string' || process.getuid?.() !== 0) return;
  const path = join(root, key);
  try {
    const owner = await stat(dirname(path));
    if (owner.uid !== 0) await chown(path, owner.uid, owner.gid);
  } catch {
    // Best effort: the owner can still be given the file by hand.
  }
}

export interface KeyCheckContext {
  readonly config: Config;
  readonly targets: readonly StorageTarget[];
  /** The spool: where an accepted key is remembered (WAL writers). */
  readonly stateDir?: string;
  readonly warn?: (line: string) => void;
}

interface KeysCache {
  readonly scope: string;
  readonly encrypted: boolean;
  readonly walChecks: readonly string[];
}

function cacheScope(ctx: KeyCheckContext): string {
  return `${ctx.config.clusterName} ${ctx.targets.map((t) => t.location).join(' ')}`;
}

async function cachedAcceptance(ctx: KeyCheckContext): Promise<KeysCache | undefined> {
  if (ctx.stateDir === undefined) return undefined;
  try {
    const cached = JSON.parse(await readFile(join(ctx.stateDir, KEYS_CACHE_FILE), 'utf8')) as KeysCache;
    return cached.scope === cacheScope(ctx) && Array.isArray(cached.walChecks) ? cached : undefined;
  } catch {
    return undefined;
  }
}

async function rememberAcceptance(ctx: KeyCheckContext, walCheck: string | undefined): Promise<void> {
  if (ctx.stateDir === undefined) return;
  const known = await cachedAcceptance(ctx);
  const encrypted = ctx.config.encryption.enabled;
  const walChecks =
    known !== undefined && known.encrypted === encrypted ? [...known.walChecks] : ([] as string[]);
  if (walCheck !== undefined && !walChecks.includes(walCheck)) walChecks.push(walCheck);
  try {
    await mkdir(ctx.stateDir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    await writeFileAtomically(
      join(ctx.stateDir, KEYS_CACHE_FILE),
      JSON.stringify({ scope: cacheScope(ctx), encrypted, walChecks }),
    );
  } catch {
    // Best effort: without the cache the next process asks the targets.
  }
}

const checking = new Map<string, Promise<void>>();

/**
 * Refuses a writer whose key is not the archive's (ConfigError, exit 2, nothing stored): checks the
 * current key of the ring against keys.json, creating it for a new archive, adding the current key
 * after a rotation. `walPassphrase` is the WAL writer's derived passphrase: with it, a key already
 * accepted is recognised without a key derivation (and, with a spool, without a round trip).
 * Concurrent checks of one process share one answer.
 */
export function checkArchiveKey(ctx: KeyCheckContext, walPassphrase?: string): Promise<void> {
  const walCheck = walPassphrase === undefined ? undefined : walKeyCheck(walPassphrase);
  const id = `${cacheScope(ctx)}\0${ctx.stateDir ?? ''}\0${ctx.config.encryption.enabled}\0${
    ctx.config.encryption.passphrase === undefined
      ? ''
      : createHash('sha256').update(ctx.config.encryption.passphrase).digest('hex')
  }\0${walCheck ?? ''}`;
  let running = checking.get(id);
  if (running === undefined) {
    running = checkOnce(ctx, walCheck);
    checking.set(id, running);
    // A refusal is asked again next time (the operator may have fixed keys.json meanwhile).
    running.catch(() => checking.delete(id));
  }
  return running;
}

/** Rounds of read, decide, write and read back before giving up on a keys.json that keeps changing. */
const KEYS_WRITE_ATTEMPTS = 8;
/**
 * After replacing keys.json (or creating it where a create-only write is not enforced), it is read
 * once more this long after: a writer that read the old one just before our write landed and wrote
 * its own over it shows up then, and the lost entry is added again.
 */
const KEYS_SETTLE_MS = 300;

async function checkOnce(ctx: KeyCheckContext, walCheck: string | undefined): Promise<void> {
  const encrypted = ctx.config.encryption.enabled;
  const cached = await cachedAcceptance(ctx);
  if (cached !== undefined && cached.encrypted === encrypted) {
    if (!encrypted || (walCheck !== undefined && cached.walChecks.includes(walCheck))) return;
  }
  const key = archiveKeysKey(ctx.config.clusterName);
  for (let attempt = 1; ; attempt++) {
    if (await checkAndRecord(ctx, walCheck)) break;
    if (attempt >= KEYS_WRITE_ATTEMPTS) {
      throw new StorageError(
        `${key} in ${ctx.targets.map((t) => t.location).join(', ')} kept changing under other writers (${attempt} attempts to record this writer's key); nothing was stored; run again`,
      );
    }
    await new Promise((r) => setTimeout(r, 20 * attempt + Math.floor(Math.random() * 50 * attempt)));
  }
  await rememberAcceptance(ctx, encrypted ? walCheck : undefined);
}

/** keys.json of each target as stored (text and parsed), or undefined where it has none. */
async function readEachTarget(
  targets: readonly StorageTarget[],
  key: string,
): Promise<Array<{ text: string; keys: ArchiveKeys } | undefined>> {
  return Promise.all(targets.map((t) => readOne(t, key)));
}

async function readOne(
  target: StorageTarget,
  key: string,
): Promise<{ text: string; keys: ArchiveKeys } | undefined> {
  try {
    const text = (await target.getBytes(key)).toString('utf8');
    return { text, keys: parseArchiveKeys(text, `${key} in ${target.location}`) };
  } catch (err) {
    if (err instanceof ObjectNotFoundError) return undefined;
    throw err;
  }
}

/**
 * One round of the key check: reads keys.json, decides (refusing another key), and records what is
 * missing, each write settled by reading it back. False when another writer changed keys.json
 * meanwhile (the caller reads it again and decides anew: that is the merge).
 *
 * - A new keys.json is written create-only (file: link; S3: If-None-Match), in target order, and only
 *   once a look just before shows none: of two writers only one creates it; the other finds the
 *   winner's and is refused if its key differs. Stores that ignore If-None-Match are caught by the
 *   read-back (and a second read a moment later): a keys.json that is not ours means another won.
 * - An addition (a rotated key, a WAL check) replaces keys.json: the read-back (and the second read)
 *   must still hold our entry, else the round is repeated on the other writer's keys.json.
 * - A write whose answer is lost counts when the read-back shows it stored.
 */
async function checkAndRecord(ctx: KeyCheckContext, walCheck: string | undefined): Promise<boolean> {
  const { config, targets } = ctx;
  const encrypted = config.encryption.enabled;
  const cluster = config.clusterName;
  const where = targets.map((t) => t.location).join(', ');
  const key = archiveKeysKey(cluster);
  const found = await readEachTarget(targets, key);
  const first = found.find((f) => f !== undefined);
  const recorded = first?.keys;
  const keys = recorded ?? (await keysFromEvidence(ctx)).keys;
  if (keys.encrypted !== encrypted) throw encryptionMismatch(cluster, where, keys.encrypted);
  /** Whether a stored keys.json accepts this writer. */
  let accepts: (k: ArchiveKeys) => boolean = (k) => k.encrypted === encrypted;
  let desired = keys;
  let changed = recorded === undefined;
  const known = walCheck === undefined ? undefined : keys.keys.find((k) => k.walChecks?.includes(walCheck));
  if (encrypted && known !== undefined) {
    accepts = (k) => k.encrypted && k.keys.some((e) => e.walChecks?.includes(walCheck!));
  } else if (encrypted) {
    const ring = keyRing(config);
    const [currentId] = await keyRingIds(ring.slice(0, 1));
    accepts = (k) =>
      k.encrypted &&
      k.keys.some(
        (e) => e.id === currentId && (walCheck === undefined || (e.walChecks ?? []).includes(walCheck)),
      );
    const entry = keys.keys.find((k) => k.id === currentId);
    if (entry !== undefined) {
      if (walCheck !== undefined && !(entry.walChecks ?? []).includes(walCheck)) {
        changed = true;
        desired = {
          ...keys,
          keys: keys.keys.map((k) =>
            k === entry ? { ...k, walChecks: [...(k.walChecks ?? []), walCheck] } : k,
          ),
        };
      }
    } else if (keys.keys.length === 0) {
      changed = true;
      desired = { ...keys, keys: [newEntry(currentId!, walCheck)] };
    } else {
      const retiredIds = await keyRingIds(ring.slice(1));
      const archiveIds = keys.keys.map((k) => k.id);
      if (!retiredIds.some((r) => archiveIds.includes(r))) {
        throw new ConfigError(
          `ENCRYPTION_KEY (key id ${currentId}) is not a key of the archive of cluster ${cluster} in ${where} (it holds objects of key id ${archiveIds.join(', ')}); set ENCRYPTION_KEY_FILE to the archive's key, or to rotate keys list the old key in ENCRYPTION_KEYS_RETIRED_FILE; nothing was stored`,
        );
      }
      ctx.warn?.(
        `key rotation: new objects of cluster ${cluster} are encrypted with key id ${currentId}; keep the retired keys (${retiredIds.join(', ')}) in ENCRYPTION_KEYS_RETIRED_FILE while backups need them`,
      );
      changed = true;
      desired = { ...keys, keys: [...keys.keys, newEntry(currentId!, walCheck)] };
    }
  }
  const text = `${JSON.stringify(desired, null, 2)}\n`;
  let settle = false;
  // In target order: the first target decides between two creators; the loser touches no other.
  for (const [i, target] of targets.entries()) {
    const stored = found[i];
    if (stored !== undefined && !changed && accepts(stored.keys)) continue;
    if (stored === undefined) {
      const outcome = await createIn(target, key, text);
      if (outcome !== 'created') return false;
      if (target.kind !== 'file') settle = true;
    } else {
      // Replaced only when what is there is still what this round decided on.
      if (!(await replaceIn(target, key, text, stored.text, accepts))) return false;
      settle = true;
    }
    await shareWithArchiveOwner(target, key);
  }
  if (!settle) return true;
  await new Promise((r) => setTimeout(r, KEYS_SETTLE_MS));
  const after = await readEachTarget(targets, key);
  return after.every((f) => f !== undefined && accepts(f.keys));
}

/** Creates keys.json create-only; 'taken' when another writer's is (or turns out to be) there. */
async function createIn(target: StorageTarget, key: string, text: string): Promise<'created' | 'taken'> {
  if ((await readOne(target, key)) !== undefined) return 'taken';
  try {
    await target.put(key, Readable.from([Buffer.from(text, 'utf8')]), { ifAbsent: true });
  } catch (err) {
    if (err instanceof ObjectExistsError) return 'taken';
    // The answer may be what was lost: ours stored is ours.
    if ((await readOne(target, key).catch(() => undefined))?.text === text) return 'created';
    throw err;
  }
  // A store that ignores If-None-Match let a later writer replace it: then that writer won.
  return (await readOne(target, key))?.text === text ? 'created' : 'taken';
}

/** Replaces keys.json if it is still `expected`; true once the stored one accepts this writer. */
async function replaceIn(
  target: StorageTarget,
  key: string,
  text: string,
  expected: string,
  accepts: (k: ArchiveKeys) => boolean,
): Promise<boolean> {
  if ((await readOne(target, key))?.text !== expected) return false;
  try {
    await target.putBytes(key, text);
  } catch (err) {
    const now = await readOne(target, key).catch(() => undefined);
    if (now !== undefined && accepts(now.keys)) return true;
    throw err;
  }
  const now = await readOne(target, key);
  return now !== undefined && accepts(now.keys);
}

function newEntry(id: string, walCheck: string | undefined): ArchiveKeyEntry {
  return {
    id,
    added: new Date().toISOString(),
    ...(walCheck !== undefined ? { walChecks: [walCheck] } : {}),
  };
}

function encryptionMismatch(cluster: string, where: string, archiveEncrypted: boolean): ConfigError {
  return archiveEncrypted
    ? new ConfigError(
        `the archive of cluster ${cluster} in ${where} is encrypted but ENCRYPTION is off; set ENCRYPTION=true and ENCRYPTION_KEY_FILE to the archive's key (or use another CLUSTER_NAME for unencrypted backups); nothing was stored`,
      )
    : new ConfigError(
        `the archive of cluster ${cluster} in ${where} is not encrypted but ENCRYPTION=true; set ENCRYPTION=false, or keep encrypted backups under another CLUSTER_NAME (or CLOUD_PREFIX/BACKUP_DIR); nothing was stored`,
      );
}

/**
 * The key check of an archive that has none yet (new, or written before keys.json existed): what
 * its newest backup says (encrypted or not, and the ring key that passes its manifest's key check).
 * A new archive gets the writer's own settings. The caller refuses a mismatch.
 */
async function keysFromEvidence(ctx: KeyCheckContext): Promise<{ keys: ArchiveKeys; found: boolean }> {
  const keys = await evidenceOf(ctx);
  return keys === undefined
    ? {
        keys: {
          format: KEYS_FORMAT,
          cluster: ctx.config.clusterName,
          encrypted: ctx.config.encryption.enabled,
          keys: [],
        },
        found: false,
      }
    : { keys, found: true };
}

/** What the newest backup says, or undefined for an archive without backups. */
async function evidenceOf(ctx: KeyCheckContext): Promise<ArchiveKeys | undefined> {
  const { config, targets } = ctx;
  const base = { format: KEYS_FORMAT, cluster: config.clusterName } as const;
  const catalog = new Catalog(targets, config.clusterName, config.backupDir, () => {});
  let newest: Awaited<ReturnType<typeof catalog.list>>[number] | undefined;
  try {
    newest = (await catalog.list())[0];
  } catch (err) {
    // archive_command's user may not read backups made by root: the writer's settings start the check.
    ctx.warn?.(
      `cannot list the backups of cluster ${config.clusterName} to find the archive's key: ${errorMessage(err)}`,
    );
  }
  if (newest === undefined) return undefined;
  const enc = newest.manifest.encryption;
  if (!enc) return { ...base, encrypted: false, keys: [] };
  const recordedId = (enc as { keyId?: string }).keyId;
  if (recordedId !== undefined) return { ...base, encrypted: true, keys: [newEntry(recordedId, undefined)] };
  for (const key of keyRing(config)) {
    const derived = await deriveManifestKey(key, Buffer.from(enc.hmacSalt, 'hex'), enc.iterations);
    if (timingSafeEqualHex(keyCheckHex(derived), enc.keyCheck))
      return { ...base, encrypted: true, keys: [newEntry(await keyId(key), undefined)] };
  }
  throw new ConfigError(
    `ENCRYPTION_KEY is not the key of backup ${newest.manifest.id}, the newest of cluster ${config.clusterName} in ${targets.map((t) => t.location).join(', ')}; set ENCRYPTION_KEY_FILE to the archive's key (or list it in ENCRYPTION_KEYS_RETIRED_FILE to rotate); nothing was stored`,
  );
}

/**
 * Read-only form for `restore init`: a one-line answer, or an error naming the missing key. Every
 * key the archive's backups name must be in the ring (keys.json's ids, and manifests' key ids).
 */
export async function describeArchiveKeys(
  config: Config,
  targets: readonly StorageTarget[],
  manifestKeyIds: readonly string[],
): Promise<string> {
  const { keys } = await readArchiveKeys(targets, config.clusterName);
  const ring = keyRing(config);
  const ringIds = await keyRingIds(ring);
  const needed = new Set(manifestKeyIds);
  if (keys?.encrypted) {
    if (ring.length === 0)
      throw new ConfigError(
        `the archive of cluster ${config.clusterName} is encrypted; set ENCRYPTION_KEY_FILE to its key`,
      );
    if (!keys.keys.some((k) => ringIds.includes(k.id)))
      throw new ConfigError(
        `none of the keys set (key id ${ringIds.join(', ')}) is a key of the archive of cluster ${config.clusterName} (key id ${keys.keys.map((k) => k.id).join(', ')}); set ENCRYPTION_KEY_FILE to the archive's key`,
      );
  }
  const missing = [...needed].filter((id) => !ringIds.includes(id));
  if (missing.length > 0)
    throw new ConfigError(
      `backups need key id ${missing.join(', ')}, which is neither ENCRYPTION_KEY nor in ENCRYPTION_KEYS_RETIRED_FILE (ring: ${ringIds.join(', ') || 'no key'}); add the key they were made with`,
    );
  if (keys === undefined && ring.length === 0) return 'no encrypted backups';
  return ringIds.length === 0
    ? 'archive not encrypted'
    : `key id ${ringIds[0]} current${ringIds.length > 1 ? `, retired ${ringIds.slice(1).join(', ')}` : ''}${keys ? `; the archive's keys: ${keys.keys.map((k) => k.id).join(', ') || 'none yet'}` : ''}`;
}
