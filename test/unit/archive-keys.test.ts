import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { archiveKeysKey, checkArchiveKey, keyId, keyRing } from '../../core/catalog/keys';
import {
  type ManifestBody,
  newEncryptionBlock,
  parseManifest,
  sealManifest,
  verifiedPassphrase,
  verifyManifest,
} from '../../core/catalog/manifest';
import { parseConfig } from '../../core/config';
import { ConfigError, IntegrityError } from '../../core/errors';
import { createTargets } from '../../core/storage';
import { decryptFirstBlock, deriveWalPassphrase, encryptStage } from '../../core/stream/encrypt';
import { tempDir } from '../helpers/vault';

let work: { path: string; remove(): Promise<void> };
let n = 0;

beforeAll(async () => {
  work = await tempDir('pgvault-keys-unit-');
});
afterAll(async () => {
  await work?.remove();
});

/** A config for a fresh vault folder (or `dir`), with the current key and retired keys given. */
async function setup(current: string | undefined, retired: string[] = [], dir?: string, extra = {}) {
  const backupDir = dir ?? join(work.path, `vault-${++n}`);
  await mkdir(backupDir, { recursive: true });
  let retiredFile: string | undefined;
  if (retired.length > 0) {
    retiredFile = join(work.path, `retired-${++n}`);
    await writeFile(retiredFile, `${retired.join('\n')}\n`);
  }
  const config = parseConfig({
    BACKUP_DIR: backupDir,
    CLUSTER_NAME: 'main',
    ENCRYPTION: current === undefined ? 'false' : 'true',
    ...(current !== undefined ? { ENCRYPTION_KEY: current } : {}),
    ...(retiredFile ? { ENCRYPTION_KEYS_RETIRED_FILE: retiredFile } : {}),
    ENCRYPTION_ITERATIONS: '1000',
    ...extra,
  });
  return { backupDir, config, targets: createTargets(config) };
}

async function keysJson(backupDir: string) {
  return JSON.parse(await readFile(join(backupDir, archiveKeysKey('main')), 'utf8')) as {
    encrypted: boolean;
    keys: { id: string; walChecks?: string[] }[];
  };
}

describe('key ids', () => {
  it('are 16 hex digits, the same for the same key, different for another, and never the key', async () => {
    const a = await keyId('key A');
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(await keyId('key A')).toBe(a);
    expect(await keyId('key B')).not.toBe(a);
    expect(a).not.toContain(Buffer.from('key A').toString('hex'));
  });

  it('the ring is the current key first, then the retired ones, without duplicates', async () => {
    const { config } = await setup('B', ['A', 'B', 'C']);
    expect(keyRing(config)).toEqual(['B', 'A', 'C']);
  });
});

describe('checkArchiveKey', () => {
  it('a new archive records its key; the same key passes, another is refused (exit 2) and keys.json is unchanged', async () => {
    const first = await setup('key A');
    await checkArchiveKey(first);
    const recorded = await keysJson(first.backupDir);
    expect(recorded).toMatchObject({ encrypted: true, keys: [{ id: await keyId('key A') }] });

    await expect(checkArchiveKey(first)).resolves.toBeUndefined();
    const other = await setup('key X', [], first.backupDir);
    const refusal = await checkArchiveKey(other).catch((e: unknown) => e);
    expect(refusal).toBeInstanceOf(ConfigError);
    expect((refusal as ConfigError).exitCode).toBe(2);
    expect((refusal as Error).message).toMatch(
      new RegExp(`key id ${await keyId('key X')}\\) is not a key of the archive.*${await keyId('key A')}`),
    );
    expect(await keysJson(first.backupDir)).toEqual(recorded);
  });

  it('a check on an empty archive records keys.json before it returns (a backup establishes it before its first object)', async () => {
    const first = await setup('key A');
    await checkArchiveKey(first);
    expect(existsSync(join(first.backupDir, archiveKeysKey('main')))).toBe(true);
    await expect(checkArchiveKey(await setup('key X', [], first.backupDir))).rejects.toThrow(ConfigError);
  });

  it('refuses ENCRYPTION=false into an encrypted archive and ENCRYPTION=true into an unencrypted one', async () => {
    const encrypted = await setup('key A');
    await checkArchiveKey(encrypted);
    const off = await setup(undefined, [], encrypted.backupDir);
    await expect(checkArchiveKey(off)).rejects.toThrow(/is encrypted but ENCRYPTION is off/);

    const plain = await setup(undefined);
    await checkArchiveKey(plain);
    const on = await setup('key A', [], plain.backupDir);
    await expect(checkArchiveKey(on)).rejects.toThrow(/is not encrypted but ENCRYPTION=true/);
  });

  it('a rotation (new key current, the archive key retired) is accepted and recorded; an unrelated ring is not', async () => {
    const a = await setup('key A');
    await checkArchiveKey(a);
    const rotated = await setup('key B', ['key A'], a.backupDir);
    await checkArchiveKey(rotated);
    expect((await keysJson(a.backupDir)).keys.map((k) => k.id)).toEqual([
      await keyId('key A'),
      await keyId('key B'),
    ]);
    // B alone is now a key of the archive; C with an unrelated retired key is not.
    await expect(checkArchiveKey(await setup('key B', [], a.backupDir))).resolves.toBeUndefined();
    await expect(checkArchiveKey(await setup('key C', ['key Z'], a.backupDir))).rejects.toThrow(ConfigError);
  });

  it('an archive from before keys.json takes its key from the newest manifest', async () => {
    const a = await setup('key A');
    const body = manifestBody(await newEncryptionBlock({ passphrase: 'key A', iterations: 1000 }));
    const { encryption, ...rest } = body;
    const { keyId: _id, ...oldBlock } = encryption!;
    const old = { ...rest, encryption: oldBlock } as ManifestBody;
    const folder = join(a.backupDir, 'main', 'full', 'manual');
    await mkdir(folder, { recursive: true });
    await writeFile(join(folder, `${old.id}.manifest.json`), await sealManifest(old, 'key A'));
    await writeFile(join(a.backupDir, old.objects[0]!.key), 'x');

    await expect(checkArchiveKey(await setup('key X', [], a.backupDir))).rejects.toThrow(
      /is not the key of backup full-manual-20261124-120000/,
    );
    expect(existsSync(join(a.backupDir, archiveKeysKey('main')))).toBe(false);
    await checkArchiveKey(a);
    expect((await keysJson(a.backupDir)).keys.map((k) => k.id)).toEqual([await keyId('key A')]);
  });

  it('a WAL writer is remembered by its derived WAL passphrase, in keys.json and its spool', async () => {
    const a = await setup('key A');
    const spool = join(work.path, `spool-${++n}`);
    const walPass = await deriveWalPassphrase('key A', 'pgvault-wal-key/main/1', 1000);
    await checkArchiveKey({ ...a, stateDir: spool }, walPass);
    expect((await keysJson(a.backupDir)).keys[0]!.walChecks).toHaveLength(1);
    expect(existsSync(join(spool, 'archive-keys.json'))).toBe(true);
    const otherPass = await deriveWalPassphrase('key X', 'pgvault-wal-key/main/1', 1000);
    const x = await setup('key X', [], a.backupDir);
    await expect(checkArchiveKey({ ...x, stateDir: spool }, otherPass)).rejects.toThrow(ConfigError);
  });
});

describe('verifyManifest with a key ring', () => {
  it('opens a backup with the retired key it names, and names the key id when the ring lacks it', async () => {
    const body = manifestBody(await newEncryptionBlock({ passphrase: 'key A', iterations: 1000 }));
    expect(body.encryption!.keyId).toBe(await keyId('key A'));
    const manifest = parseManifest(await sealManifest(body, 'key A'), 'test');
    await verifyManifest(manifest, ['key B', 'key A'], 'test');
    expect(verifiedPassphrase(manifest)).toBe('key A');
    const again = parseManifest(await sealManifest(body, 'key A'), 'test');
    const err = await verifyManifest(again, ['key B'], 'test').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as Error).message).toContain(`needs key id ${await keyId('key A')}`);
  });
});

describe('decryptFirstBlock', () => {
  it('gives the first 16 plaintext bytes with the right key and other bytes with another', async () => {
    const plain = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(100, 7)]);
    const stored = await buffer(Readable.from([plain]).pipe(encryptStage('key A', 1000)));
    expect(await decryptFirstBlock('key A', 1000, stored.subarray(0, 32))).toEqual(plain.subarray(0, 16));
    expect(await decryptFirstBlock('key B', 1000, stored.subarray(0, 32))).not.toEqual(plain.subarray(0, 16));
    expect(await decryptFirstBlock('key A', 1000, Buffer.alloc(32))).toBeUndefined();
  });
});

function manifestBody(encryption: ManifestBody['encryption']): ManifestBody {
  return {
    format: 'pgvault-manifest/1',
    id: 'full-manual-20261124-120000',
    type: 'full',
    schedule: 'manual',
    cluster: 'main',
    node: { host: 'db1', port: 5432 },
    server: { version: '15.18', versionNum: 150018, systemIdentifier: '7300000000000000001' },
    tools: { pgvault: '0.1.0' },
    startedAt: '2026-11-24T12:00:00.000Z',
    finishedAt: '2026-11-24T12:00:05.000Z',
    durationMs: 5000,
    compression: { algorithm: 'zstd', level: 3 },
    encryption,
    objects: [
      {
        key: 'main/full/manual/full-manual-20261124-120000.app.dump.zst.enc',
        kind: 'database',
        format: 'dump',
        database: 'app',
        rawSize: 1,
        storedSize: 1,
        sha256: '0'.repeat(64),
      },
    ],
    rawSize: 1,
    storedSize: 1,
  };
}
