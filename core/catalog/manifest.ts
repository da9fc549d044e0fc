import { randomBytes } from 'node:crypto';
import type { z as Zod } from 'zod';
import { COMPRESSIONS } from '../config';
import { IntegrityError, UsageError } from '../errors';
import { deriveManifestKey, hmacHex, keyCheckHex, keyId, timingSafeEqualHex } from '../stream/encrypt';
import { BACKUP_TYPES, SCHEDULES } from './naming';

/**
 * The manifest: the record that makes a backup complete. Written last, after every object is
 * stored; listing, restore and retention only ever see backups that have one. When encryption is
 * on it carries an HMAC keyed from the passphrase, so a changed manifest (a swapped sha256, a
 * edited row count) is refused, and a key check that tells "wrong key" apart from "tampered".
 */

export const MANIFEST_FORMAT = 'pgvault-manifest/1';

/**
 * The schemas, built on first use: zod takes about 80 ms to load, which every `backup` and
 * archive_command run would pay before its first byte, though only reading a manifest needs it.
 */
function buildSchemas() {
  const { z } = require('zod') as { z: typeof Zod };
  const tableCount = z.object({
    schema: z.string(),
    table: z.string(),
    rows: z.number().int().nonnegative(),
  });

  const storedObject = z.object({
    key: z.string().min(1),
    /**
     * What the object holds: one database's pg_dump archive, the globals, a config tarball, index SQL;
     * config backups of a Patroni cluster add its dynamic configuration (`patroni-config`, GET /config)
     * and its members with their roles (`patroni-members`); base backups add the server's own
     * backup_manifest (`server-manifest`), which an incremental of them reads instead of their tar.
     */
    kind: z.enum([
      'database',
      'globals',
      'config',
      'indexes',
      'base',
      'patroni-config',
      'patroni-members',
      'server-manifest',
    ]),
    /** pg_dump custom archive, plain SQL, tar, or JSON. */
    format: z.enum(['dump', 'sql', 'tar', 'json']),
    database: z.string().optional(),
    /** Bytes before compression and encryption. */
    rawSize: z.number().int().nonnegative(),
    /** Bytes as stored. */
    storedSize: z.number().int().nonnegative(),
    /** sha256 of the stored bytes. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    /**
     * sha256 of the raw bytes, when recorded. Hashing every dumped byte costs more CPU than the
     * compressor on these machines, so dumps rely on the stored sha256 (the stored bytes are exactly
     * those written) and the compressor's own frame checksum; the raw size is always checked.
     */
    rawSha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .optional(),
    databaseInfo: z
      .object({
        encoding: z.string(),
        collate: z.string(),
        ctype: z.string(),
        sizeBytes: z.number().int().nonnegative(),
      })
      .optional(),
    /** Exact row counts as of the dump's snapshot, counted in the COPY data as it streamed. */
    tables: z.array(tableCount).optional(),
    /**
     * The data offsets pg_dump could not write into its TOC when writing to a pipe, found while the
     * dump streamed: [position of the TOC field in the raw archive, the field's bytes in hex]. A
     * restore writes them into its staged copy, so pg_restore --jobs seeks to each table's data
     * instead of scanning the archive, and the copy need not be read back to find them.
     */
    tocPatches: z
      .array(z.tuple([z.number().int().nonnegative(), z.string().regex(/^([0-9a-f]{2})+$/)]))
      .optional(),
  });

  /** What a physical base backup needs to be recovered and rolled forward. */
  const physical = z.object({
    /** Timeline the backup started on. */
    timeline: z.number().int().positive(),
    startLsn: z.string(),
    stopLsn: z.string(),
    /** First and last WAL segment the backup needs to reach consistency. */
    startWal: z.string(),
    stopWal: z.string(),
    checkpointLsn: z.string().optional(),
    /** Whether the WAL from start to stop is inside the tar (pg_basebackup -X fetch). */
    walIncluded: z.boolean(),
    segmentBytes: z.number().int().positive(),
    /** sha256 of the server's own backup_manifest inside the tar. */
    serverManifestSha256: z.string().optional(),
    /**
     * When the server had finished the backup (ISO time): seen in the stream, where WAL and the
     * server manifest follow the backup's stop. A recovery target time must not be earlier.
     */
    stopTime: z.string().optional(),
  });

  const manifestBody = z.object({
    format: z.literal(MANIFEST_FORMAT),
    id: z.string().min(1),
    type: z.enum(BACKUP_TYPES),
    schedule: z.enum(SCHEDULES).optional(),
    cluster: z.string(),
    // name, role, scope and timeline: the Patroni member a backup read from (core/topology).
    node: z.object({
      host: z.string(),
      port: z.number().int(),
      name: z.string().optional(),
      role: z.string().optional(),
      scope: z.string().optional(),
      timeline: z.number().int().optional(),
    }),
    server: z.object({
      version: z.string(),
      versionNum: z.number().int(),
      systemIdentifier: z.string(),
    }),
    tools: z.record(z.string(), z.string()),
    startedAt: z.string(),
    finishedAt: z.string(),
    durationMs: z.number().nonnegative(),
    compression: z.object({ algorithm: z.enum(COMPRESSIONS), level: z.number().int().optional() }),
    encryption: z
      .object({
        cipher: z.literal('aes-256-cbc'),
        kdf: z.literal('pbkdf2-sha256'),
        iterations: z.number().int().positive(),
        /** Salt of the manifest HMAC key (hex). */
        hmacSalt: z.string().regex(/^[0-9a-f]+$/),
        /** Proves which passphrase made the backup without revealing it. */
        keyCheck: z.string().regex(/^[0-9a-f]+$/),
        /** The id of the key that made it (keyId), so a key ring picks it; absent before key rings. */
        keyId: z
          .string()
          .regex(/^[0-9a-f]{16}$/)
          .optional(),
      })
      .nullable(),
    objects: z.array(storedObject).min(1),
    rawSize: z.number().int().nonnegative(),
    storedSize: z.number().int().nonnegative(),
    physical: physical.optional(),
    /**
     * An incremental base backup (pg_basebackup --incremental, PostgreSQL 17+): the id of the base
     * backup it is incremental to; restores combine the whole chain (core/catalog/chain.ts).
     */
    incrementalOf: z.string().min(1).optional(),
  });

  const manifestSchema = manifestBody.extend({
    hmac: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .optional(),
  });
  return { tableCount, storedObject, physical, manifestBody, manifestSchema };
}

type Schemas = ReturnType<typeof buildSchemas>;
let schemas: Schemas | undefined;

export type Manifest = Zod.infer<Schemas['manifestSchema']>;
export type ManifestBody = Zod.infer<Schemas['manifestBody']>;
export type StoredObject = Zod.infer<Schemas['storedObject']>;
export type TableCount = Zod.infer<Schemas['tableCount']>;
export type PhysicalInfo = Zod.infer<Schemas['physical']>;

/** JSON with keys sorted at every level, so the HMAC does not depend on key order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export interface EncryptionParams {
  readonly passphrase: string;
  readonly iterations: number;
}

/** Fresh encryption block for a new manifest: a salt for its HMAC key and the key check. */
export async function newEncryptionBlock(
  enc: EncryptionParams,
): Promise<NonNullable<ManifestBody['encryption']>> {
  const salt = randomBytes(16);
  const [key, id] = await Promise.all([
    manifestKey(enc.passphrase, salt.toString('hex'), enc.iterations),
    keyId(enc.passphrase),
  ]);
  return {
    cipher: 'aes-256-cbc',
    kdf: 'pbkdf2-sha256',
    iterations: enc.iterations,
    hmacSalt: salt.toString('hex'),
    keyCheck: keyCheckHex(key),
    keyId: id,
  };
}

/** Serialises a manifest, adding the HMAC when the backup is encrypted. */
export async function sealManifest(body: ManifestBody, passphrase: string | undefined): Promise<string> {
  let manifest: Manifest = body;
  if (body.encryption) {
    if (passphrase === undefined)
      throw new UsageError('an encrypted manifest needs the passphrase to be sealed');
    const key = await manifestKey(passphrase, body.encryption.hmacSalt, body.encryption.iterations);
    manifest = { ...body, hmac: hmacHex(key, canonicalJson(body)) };
  }
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/**
 * The manifest key for a salt, derived once per process: a backup derives it for the key check
 * when it starts and again to seal the manifest, 100,000 PBKDF2 rounds each time otherwise.
 */
function manifestKey(passphrase: string, saltHex: string, iterations: number): Promise<Buffer> {
  const id = `${saltHex}:${iterations}`;
  const known = derivedManifestKeys.get(id);
  if (known !== undefined && known.passphrase === passphrase) return known.key;
  const key = deriveManifestKey(passphrase, Buffer.from(saltHex, 'hex'), iterations);
  derivedManifestKeys.set(id, { passphrase, key });
  key.catch(() => derivedManifestKeys.delete(id));
  return key;
}

const derivedManifestKeys = new Map<string, { passphrase: string; key: Promise<Buffer> }>();

/** Parses and schema-checks a manifest. Does not check the HMAC (see verifyManifest). */
export function parseManifest(text: string, where: string): Manifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new IntegrityError(
      `manifest ${where} is not valid JSON; the backup cannot be trusted, use another one`,
    );
  }
  schemas ??= buildSchemas();
  const result = schemas.manifestSchema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0];
    const path = issue?.path.join('.') || '(root)';
    throw new IntegrityError(
      `manifest ${where} is malformed at ${path}: ${issue?.message}; the backup cannot be trusted, use another one`,
    );
  }
  // The HMAC covers the manifest as written: fields a newer pgvault added, which the schema strips,
  // must not make a good manifest look tampered with.
  asWritten.set(result.data, json);
  return result.data;
}

/** The JSON each parsed manifest came from, for the HMAC check. */
const asWritten = new WeakMap<Manifest, unknown>();

/** The ring key verifyManifest found for each manifest (its objects open with it). */
const verifiedKeys = new WeakMap<Manifest, string>();

/** The key a verified manifest was made with, when verifyManifest found it in a ring. */
export function verifiedPassphrase(manifest: Pick<Manifest, 'encryption'>): string | undefined {
  return verifiedKeys.get(manifest as Manifest);
}

/**
 * Checks the HMAC of an encrypted manifest. Wrong key and tampering are told apart by the key
 * check, so the operator knows whether to look for another key or another backup. `passphrase` is
 * one key or a key ring (current first, then retired keys): the key the manifest names by id is
 * used, or for a manifest without a key id the first that passes its key check.
 */
export async function verifyManifest(
  manifest: Manifest,
  passphrase: string | readonly string[] | undefined,
  where: string,
): Promise<void> {
  const enc = manifest.encryption;
  if (!enc) return;
  const ring = (typeof passphrase === 'string' ? [passphrase] : (passphrase ?? [])).filter((k) => k !== '');
  if (ring.length === 0) {
    throw new IntegrityError(
      `backup ${manifest.id} is encrypted; set ENCRYPTION_KEY or ENCRYPTION_KEY_FILE to the key it was made with${enc.keyId ? ` (key id ${enc.keyId})` : ''}`,
    );
  }
  let candidates: readonly string[] = ring;
  if (enc.keyId !== undefined) {
    const ids = await Promise.all(ring.map(keyId));
    const i = ids.indexOf(enc.keyId);
    if (i < 0) {
      throw new IntegrityError(
        `wrong encryption key for backup ${manifest.id}: ENCRYPTION_KEY is not the key it was made with (it needs key id ${enc.keyId}; the keys set are key id ${ids.join(', ')}: add it as ENCRYPTION_KEY or to ENCRYPTION_KEYS_RETIRED_FILE); nothing was restored`,
      );
    }
    candidates = [ring[i]!];
  }
  let key: Buffer | undefined;
  let matched: string | undefined;
  for (const candidate of candidates) {
    const derived = await deriveManifestKey(candidate, Buffer.from(enc.hmacSalt, 'hex'), enc.iterations);
    if (timingSafeEqualHex(keyCheckHex(derived), enc.keyCheck)) {
      key = derived;
      matched = candidate;
      break;
    }
  }
  if (key === undefined || matched === undefined) {
    throw new IntegrityError(
      `wrong encryption key for backup ${manifest.id}: ENCRYPTION_KEY is not the key it was made with; nothing was restored`,
    );
  }
  const { hmac, ...body } = (asWritten.get(manifest) ?? manifest) as Manifest;
  if (hmac === undefined || !timingSafeEqualHex(hmacHex(key, canonicalJson(body)), hmac)) {
    throw new IntegrityError(
      `manifest ${where} has been modified since the backup was made (HMAC mismatch); do not trust this backup, use another one`,
    );
  }
  verifiedKeys.set(manifest, matched);
}
