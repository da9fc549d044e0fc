import { createCipheriv, createHash, pbkdf2Sync, randomBytes } from 'node:crypto';
import { Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { IntegrityError } from '../../core/errors';
import {
  decryptStage,
  deriveManifestKey,
  encryptStage,
  hmacHex,
  keyCheckHex,
  timingSafeEqualHex,
} from '../../core/stream/encrypt';

const PASSPHRASE = 'correct horse battery staple';
/** Low so the suite stays fast; the format does not depend on the count. */
const ITERATIONS = 1_000;

/** Runs `input` (as chunks of at most `chunkSize`) through a transform and collects the output. */
async function runThrough(stage: Transform, input: Buffer, chunkSize = 64 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < input.length; offset += chunkSize) {
    chunks.push(input.subarray(offset, offset + chunkSize));
  }
  const output: Buffer[] = [];
  await pipeline(Readable.from(chunks), stage, async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) output.push(chunk);
  });
  return Buffer.concat(output);
}

/**
 * What `openssl enc -aes-256-cbc -pbkdf2 -iter N -md sha256 -S SALT` writes, built from the format's
 * definition rather than from encryptStage, with a fixed salt so failures are reproducible.
 */
function referenceCiphertext(plain: Buffer, passphrase: string, salt: Buffer, iterations: number): Buffer {
  const material = pbkdf2Sync(passphrase, salt, iterations, 48, 'sha256');
  const cipher = createCipheriv('aes-256-cbc', material.subarray(0, 32), material.subarray(32));
  return Buffer.concat([Buffer.from('Salted__'), salt, cipher.update(plain), cipher.final()]);
}

const FIXED_SALT = Buffer.from('0011223344556677', 'hex');

describe('encryptStage / decryptStage', () => {
  it.each([0, 1, 15, 16, 17, 1024 * 1024 + 3])('round-trips %i bytes', async (size) => {
    // Prepare
    const plain = randomBytes(size);

    // Act
    const encrypted = await runThrough(encryptStage(PASSPHRASE, ITERATIONS), plain);
    const decrypted = await runThrough(decryptStage(PASSPHRASE, ITERATIONS), encrypted);

    // Assess
    expect(decrypted.equals(plain)).toBe(true);
    expect(encrypted.subarray(0, 8).toString('latin1')).toBe('Salted__');
    // PKCS#7 always adds 1..16 bytes: the ciphertext is the next multiple of 16 above the input.
    expect(encrypted.length).toBe(16 + (Math.floor(size / 16) + 1) * 16);
  });

  it('writes the header and one padding block for empty input', async () => {
    // Prepare
    const empty = Buffer.alloc(0);

    // Act
    const encrypted = await runThrough(encryptStage(PASSPHRASE, ITERATIONS), empty);

    // Assess
    expect(encrypted.length).toBe(32);
    expect(encrypted.subarray(0, 8).toString('latin1')).toBe('Salted__');
  });

  it('uses a fresh salt for every object', async () => {
    // Prepare
    const plain = Buffer.from('same input twice');

    // Act
    const first = await runThrough(encryptStage(PASSPHRASE, ITERATIONS), plain);
    const second = await runThrough(encryptStage(PASSPHRASE, ITERATIONS), plain);

    // Assess
    expect(first.subarray(8, 16).equals(second.subarray(8, 16))).toBe(false);
    expect(first.subarray(16).equals(second.subarray(16))).toBe(false);
  });

  it('produces the OpenSSL layout: key and IV from PBKDF2-SHA256 over the stored salt', async () => {
    // Prepare
    const plain = randomBytes(100_003);

    // Act
    const encrypted = await runThrough(encryptStage(PASSPHRASE, ITERATIONS), plain);

    // Assess: re-encrypting with the salt found in the header gives the same bytes
    const salt = encrypted.subarray(8, 16);
    expect(encrypted.equals(referenceCiphertext(plain, PASSPHRASE, salt, ITERATIONS))).toBe(true);
  });

  it('decrypts the reference format fed one byte at a time', async () => {
    // Prepare
    const plain = randomBytes(777);
    const encrypted = referenceCiphertext(plain, PASSPHRASE, FIXED_SALT, ITERATIONS);

    // Act
    const decrypted = await runThrough(decryptStage(PASSPHRASE, ITERATIONS), encrypted, 1);

    // Assess
    expect(decrypted.equals(plain)).toBe(true);
  });

  it('reports a wrong passphrase as an IntegrityError', async () => {
    // Prepare
    const encrypted = referenceCiphertext(Buffer.from('x'.repeat(1000)), PASSPHRASE, FIXED_SALT, ITERATIONS);

    // Act
    const decrypting = runThrough(decryptStage('wrong passphrase', ITERATIONS), encrypted);

    // Assess
    await expect(decrypting).rejects.toBeInstanceOf(IntegrityError);
    await expect(decrypting).rejects.toThrow('decryption failed: wrong ENCRYPTION_KEY or corrupted object');
  });

  it('reports a wrong iteration count like a wrong passphrase', async () => {
    // Prepare
    const encrypted = referenceCiphertext(Buffer.from('y'.repeat(1000)), PASSPHRASE, FIXED_SALT, ITERATIONS);

    // Act
    const decrypting = runThrough(decryptStage(PASSPHRASE, ITERATIONS + 1), encrypted);

    // Assess
    await expect(decrypting).rejects.toBeInstanceOf(IntegrityError);
  });

  it.each([
    ['cut mid-block', 5],
    ['missing its last block', 16],
  ])('reports a truncated object (%s) as an IntegrityError', async (_case, cut) => {
    // Prepare
    const encrypted = referenceCiphertext(Buffer.from('z'.repeat(1000)), PASSPHRASE, FIXED_SALT, ITERATIONS);
    const truncated = encrypted.subarray(0, encrypted.length - cut);

    // Act
    const decrypting = runThrough(decryptStage(PASSPHRASE, ITERATIONS), truncated);

    // Assess
    await expect(decrypting).rejects.toThrow('decryption failed: wrong ENCRYPTION_KEY or corrupted object');
  });

  it('reports a header with no ciphertext after it as corrupted', async () => {
    // Prepare
    const headerOnly = referenceCiphertext(Buffer.alloc(0), PASSPHRASE, FIXED_SALT, ITERATIONS).subarray(
      0,
      16,
    );

    // Act
    const decrypting = runThrough(decryptStage(PASSPHRASE, ITERATIONS), headerOnly);

    // Assess
    await expect(decrypting).rejects.toBeInstanceOf(IntegrityError);
  });

  it.each([
    ['plain data', Buffer.from('PGDMP custom-format dump, not encrypted at all')],
    ['an empty object', Buffer.alloc(0)],
    ['a few bytes', Buffer.from('Salt')],
  ])('refuses %s without a Salted__ header', async (_case, input) => {
    // Prepare
    const stage = decryptStage(PASSPHRASE, ITERATIONS);

    // Act
    const decrypting = runThrough(stage, input);

    // Assess
    await expect(decrypting).rejects.toBeInstanceOf(IntegrityError);
    await expect(decrypting).rejects.toThrow(
      'object is not encrypted with pgvault/openssl (no Salted__ header)',
    );
  });

  it('never holds more than a chunk or two while decrypting a large object', async () => {
    // Prepare
    const plain = randomBytes(8 * 1024 * 1024);
    const encrypted = referenceCiphertext(plain, PASSPHRASE, FIXED_SALT, ITERATIONS);
    const stage = decryptStage(PASSPHRASE, ITERATIONS);
    let largestOutputChunk = 0;
    const hash = createHash('sha256');

    // Act
    await pipeline(
      Readable.from(
        (function* () {
          for (let offset = 0; offset < encrypted.length; offset += 65_536) {
            yield encrypted.subarray(offset, offset + 65_536);
          }
        })(),
      ),
      stage,
      async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) {
          largestOutputChunk = Math.max(largestOutputChunk, chunk.length);
          hash.update(chunk);
        }
      },
    );

    // Assess
    expect(hash.digest('hex')).toBe(createHash('sha256').update(plain).digest('hex'));
    expect(largestOutputChunk).toBeLessThanOrEqual(65_536 + 16);
  });

  it('refuses an empty passphrase and a bad iteration count at once', () => {
    // Act / Assess
    expect(() => encryptStage('', ITERATIONS)).toThrow('ENCRYPTION_KEY is empty');
    expect(() => decryptStage(PASSPHRASE, 0)).toThrow('iterations');
  });
});

describe('manifest protection helpers', () => {
  const salt = Buffer.from('manifest-salt-16', 'utf8');

  it('derives a 32-byte key that differs from the file key for the same salt', async () => {
    // Act
    const manifestKey = await deriveManifestKey(PASSPHRASE, salt, ITERATIONS);

    // Assess
    expect(manifestKey.length).toBe(32);
    const fileKey = pbkdf2Sync(PASSPHRASE, salt, ITERATIONS, 48, 'sha256').subarray(0, 32);
    expect(manifestKey.equals(fileKey)).toBe(false);
    expect((await deriveManifestKey(PASSPHRASE, salt, ITERATIONS)).equals(manifestKey)).toBe(true);
  });

  it('changes the HMAC when one byte of the manifest changes', async () => {
    // Prepare
    const key = await deriveManifestKey(PASSPHRASE, salt, ITERATIONS);
    const manifest = JSON.stringify({ id: 'full-daily-20260212-020000', size: 1234 });

    // Act
    const original = hmacHex(key, manifest);
    const tampered = hmacHex(key, manifest.replace('1234', '1235'));

    // Assess
    expect(original).toMatch(/^[0-9a-f]{64}$/);
    expect(tampered).not.toBe(original);
    expect(hmacHex(key, Buffer.from(manifest))).toBe(original);
  });

  it('gives different key checks for different passphrases and the same for the same one', async () => {
    // Prepare
    const right = await deriveManifestKey(PASSPHRASE, salt, ITERATIONS);
    const again = await deriveManifestKey(PASSPHRASE, salt, ITERATIONS);
    const wrong = await deriveManifestKey('another passphrase', salt, ITERATIONS);

    // Act
    const check = keyCheckHex(right);

    // Assess
    expect(check).toMatch(/^[0-9a-f]{32}$/);
    expect(keyCheckHex(again)).toBe(check);
    expect(keyCheckHex(wrong)).not.toBe(check);
  });

  it('compares hex strings without regard to case or length tricks', () => {
    // Act / Assess
    expect(timingSafeEqualHex('abcdef01', 'ABCDEF01')).toBe(true);
    expect(timingSafeEqualHex('abcdef01', 'abcdef02')).toBe(false);
    expect(timingSafeEqualHex('abcdef01', 'abcdef0')).toBe(false);
    expect(timingSafeEqualHex('', '')).toBe(true);
  });
});
