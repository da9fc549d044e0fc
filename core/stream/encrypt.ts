import {
  type Cipher,
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  type Decipher,
  pbkdf2,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import { ConfigError, IntegrityError } from '../errors';

/**
 * Encryption in OpenSSL's `enc` format, so that a stored object opens without pgvault:
 *
 *   openssl enc -d -aes-256-cbc -pbkdf2 -iter N -md sha256 -pass env:VAR < object > plain
 *
 * Layout: 'Salted__' + 8 random salt bytes + AES-256-CBC ciphertext with PKCS#7 padding, where
 * key || iv = PBKDF2-HMAC-SHA256(passphrase, salt, N iterations, 48 bytes). A fresh salt per object
 * gives every object its own key and IV.
 *
 * The passphrase is used byte for byte (UTF-8). `-pass file:F` makes openssl read only the first
 * line of F, so a passphrase with a newline opens only with `-pass env:VAR`.
 *
 * CBC has no authentication: a wrong key is noticed only at the last block (bad padding), and about
 * one wrong key in 256 yields valid-looking padding. The manifest's key check (keyCheckHex) and each
 * object's recorded sha256 are what make wrong keys and tampering certain to be caught; check the key
 * before a restore, or a decompressor fed garbage will fail first with its own message.
 */

const pbkdf2Async = promisify(pbkdf2);

const MAGIC = Buffer.from('Salted__', 'latin1');
const SALT_LENGTH = 8;
const HEADER_LENGTH = MAGIC.length + SALT_LENGTH;
const CIPHER = 'aes-256-cbc';

/** Separates the manifest key from file keys even if a salt were ever reused between them. */
const MANIFEST_KEY_CONTEXT = Buffer.from('pgvault manifest key\0', 'utf8');
const KEY_CHECK_LABEL = 'pgvault key check';

function checkedIterations(iterations: number): number {
  if (!Number.isInteger(iterations) || iterations < 1) {
    throw new ConfigError(`encryption iterations must be a whole number of at least 1 (got ${iterations})`);
  }
  return iterations;
}

function checkedPassphrase(passphrase: string): string {
  if (!passphrase)
    throw new ConfigError('ENCRYPTION_KEY is empty; set ENCRYPTION_KEY or ENCRYPTION_KEY_FILE');
  return passphrase;
}

async function deriveFileKey(
  passphrase: string,
  salt: Buffer,
  iterations: number,
): Promise<{ key: Buffer; iv: Buffer }> {
  const material = await pbkdf2Async(passphrase, salt, iterations, 48, 'sha256');
  return { key: material.subarray(0, 32), iv: material.subarray(32, 48) };
}

function decryptionFailed(cause?: unknown): IntegrityError {
  return new IntegrityError('decryption failed: wrong ENCRYPTION_KEY or corrupted object', { cause });
}

/** Encrypts its input; the 'Salted__' header is written first, even for empty input. */
class EncryptStage extends Transform {
  private cipher: Cipher | undefined;
  /** Key derivation starts at once and runs off the event loop; the first chunk waits for it. */
  private readonly started: Promise<Cipher>;

  constructor(passphrase: string, iterations: number) {
    super();
    const salt = randomBytes(SALT_LENGTH);
    this.started = deriveFileKey(checkedPassphrase(passphrase), salt, checkedIterations(iterations)).then(
      ({ key, iv }) => {
        this.cipher = createCipheriv(CIPHER, key, iv);
        this.push(Buffer.concat([MAGIC, salt]));
        return this.cipher;
      },
    );
    this.started.catch(() => {});
  }

  private encrypt(cipher: Cipher, chunk: Buffer, callback: TransformCallback): void {
    const encrypted = cipher.update(chunk);
    callback(null, encrypted.length > 0 ? encrypted : undefined);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.cipher) {
      this.encrypt(this.cipher, chunk, callback);
      return;
    }
    this.started.then((cipher) => this.encrypt(cipher, chunk, callback), callback);
  }

  override _flush(callback: TransformCallback): void {
    this.started.then((cipher) => callback(null, cipher.final()), callback);
  }
}

/** Checks the 'Salted__' header, derives the key from its salt, and decrypts the rest. */
class DecryptStage extends Transform {
  private decipher: Decipher | undefined;
  /** The first bytes until the 16-byte header is complete; never more than one chunk. */
  private head: Buffer = Buffer.alloc(0);
  private readonly passphrase: string;
  private readonly iterations: number;

  constructor(passphrase: string, iterations: number) {
    super();
    this.passphrase = checkedPassphrase(passphrase);
    this.iterations = checkedIterations(iterations);
  }

  private decrypt(decipher: Decipher, chunk: Buffer, callback: TransformCallback): void {
    let plain: Buffer;
    try {
      plain = decipher.update(chunk);
    } catch (err) {
      callback(decryptionFailed(err));
      return;
    }
    callback(null, plain.length > 0 ? plain : undefined);
  }

  private hasForeignMagic(): boolean {
    const compared = Math.min(this.head.length, MAGIC.length);
    return !this.head.subarray(0, compared).equals(MAGIC.subarray(0, compared));
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.decipher) {
      this.decrypt(this.decipher, chunk, callback);
      return;
    }
    this.head = this.head.length === 0 ? chunk : Buffer.concat([this.head, chunk]);
    if (this.hasForeignMagic()) {
      callback(notEncrypted());
      return;
    }
    if (this.head.length < HEADER_LENGTH) {
      callback();
      return;
    }

    const salt = this.head.subarray(MAGIC.length, HEADER_LENGTH);
    const rest = this.head.subarray(HEADER_LENGTH);
    this.head = Buffer.alloc(0);
    deriveFileKey(this.passphrase, salt, this.iterations).then(({ key, iv }) => {
      this.decipher = createDecipheriv(CIPHER, key, iv);
      this.decrypt(this.decipher, rest, callback);
    }, callback);
  }

  override _flush(callback: TransformCallback): void {
    if (!this.decipher) {
      // Fewer than 16 bytes in all: an empty or foreign object, or a header cut short.
      if (this.head.length < MAGIC.length || this.hasForeignMagic()) {
        callback(notEncrypted());
        return;
      }
      callback(decryptionFailed());
      return;
    }
    try {
      callback(null, this.decipher.final());
    } catch (err) {
      callback(decryptionFailed(err));
    }
  }
}

function notEncrypted(): IntegrityError {
  return new IntegrityError('object is not encrypted with pgvault/openssl (no Salted__ header)');
}

/** AES-256-CBC + PBKDF2-SHA256 encryption in OpenSSL's Salted__ format (see the file comment). */
export function encryptStage(passphrase: string, iterations: number): Transform {
  return new EncryptStage(passphrase, iterations);
}

/**
 * Decrypts what encryptStage or `openssl enc -aes-256-cbc -pbkdf2 -iter N -md sha256 -salt` wrote.
 * Errors are IntegrityErrors: no header (not encrypted) or a bad final block (wrong key, corruption).
 */
export function decryptStage(passphrase: string, iterations: number): Transform {
  return new DecryptStage(passphrase, iterations);
}

/**
 * The key that signs manifests: PBKDF2-SHA256(passphrase, 'pgvault manifest key\0' || salt,
 * iterations, 32 bytes). The context prefix keeps it apart from every file key.
 */
export async function deriveManifestKey(
  passphrase: string,
  salt: Buffer,
  iterations: number,
): Promise<Buffer> {
  return pbkdf2Async(
    checkedPassphrase(passphrase),
    Buffer.concat([MANIFEST_KEY_CONTEXT, salt]),
    checkedIterations(iterations),
    32,
    'sha256',
  );
}

/**
 * The passphrase WAL objects are encrypted with in archives that record a `walKey`: the lowercase
 * hex of PBKDF2-SHA256(passphrase, salt, iterations, 32 bytes). Deriving it costs one slow PBKDF2
 * per process instead of one per segment (a random 256-bit passphrase needs no slow KDF per
 * object), and every process derives the same one, so no stored secret can be lost in a race.
 * By hand: `openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt pass:... -kdfopt salt:...
 * -kdfopt iter:N PBKDF2`, lowercased, without the colons.
 */
export async function deriveWalPassphrase(
  passphrase: string,
  salt: string,
  iterations: number,
): Promise<string> {
  const key = await pbkdf2Async(
    checkedPassphrase(passphrase),
    Buffer.from(salt, 'utf8'),
    checkedIterations(iterations),
    32,
    'sha256',
  );
  return key.toString('hex');
}

/** HMAC-SHA256, hex. */
export function hmacHex(key: Buffer, data: string | Buffer): string {
  return createHmac('sha256', key).update(data).digest('hex');
}

/**
 * A short fingerprint of the manifest key, stored beside the HMAC: when the HMAC does not match, an
 * equal key check means the manifest was altered, a different one means the key is wrong.
 */
export function keyCheckHex(key: Buffer): string {
  return createHmac('sha256', key).update(KEY_CHECK_LABEL).digest().subarray(0, 16).toString('hex');
}

const KEY_ID_SALT = 'pgvault-key-id';
const KEY_ID_ITERATIONS = 100_000;
const keyIds = new Map<string, Promise<string>>();

/**
 * A key's id, a non-secret fingerprint that manifests and the archive's key check (keys.json) name
 * keys by: the first 8 bytes (hex) of HMAC-SHA256(PBKDF2-SHA256(key, 'pgvault-key-id', 100000,
 * 32 bytes), 'pgvault key id'). The slow KDF keeps a weak passphrase from being guessed from its
 * id. Derived once per process and key.
 */
export function keyId(passphrase: string): Promise<string> {
  const memo = createHash('sha256').update(passphrase).digest('hex');
  let id = keyIds.get(memo);
  if (id === undefined) {
    id = pbkdf2Async(checkedPassphrase(passphrase), KEY_ID_SALT, KEY_ID_ITERATIONS, 32, 'sha256').then(
      (derived) =>
        createHmac('sha256', derived).update('pgvault key id').digest().subarray(0, 8).toString('hex'),
    );
    keyIds.set(memo, id);
    id.catch(() => keyIds.delete(memo));
  }
  return id;
}

/** A short fingerprint of a derived WAL passphrase (cheap: that is a 256-bit secret already). */
export function walKeyCheck(walPassphrase: string): string {
  return createHmac('sha256', walPassphrase)
    .update('pgvault wal key check')
    .digest()
    .subarray(0, 8)
    .toString('hex');
}

/**
 * The first 16 plaintext bytes of an encrypted object from its first 32 stored bytes (header and
 * first cipher block), to tell which key of a ring opens it without reading it all; undefined when
 * the bytes are not an openssl Salted__ object. A wrong key gives random bytes.
 */
export async function decryptFirstBlock(
  passphrase: string,
  iterations: number,
  head: Buffer,
): Promise<Buffer | undefined> {
  if (head.length < HEADER_LENGTH + 16 || !head.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
  const { key, iv } = await deriveFileKey(
    checkedPassphrase(passphrase),
    head.subarray(MAGIC.length, HEADER_LENGTH),
    checkedIterations(iterations),
  );
  const decipher = createDecipheriv(CIPHER, key, iv);
  decipher.setAutoPadding(false);
  return decipher.update(head.subarray(HEADER_LENGTH, HEADER_LENGTH + 16));
}

/** Compares two hex strings in constant time (for HMACs); different lengths are simply unequal. */
export function timingSafeEqualHex(a: string, b: string): boolean {
  const left = Buffer.from(a.toLowerCase(), 'utf8');
  const right = Buffer.from(b.toLowerCase(), 'utf8');
  return left.length === right.length && timingSafeEqual(left, right);
}
