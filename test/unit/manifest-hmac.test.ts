import { describe, expect, it } from 'vitest';
import {
  type ManifestBody,
  newEncryptionBlock,
  parseManifest,
  sealManifest,
  verifyManifest,
} from '../../core/catalog/manifest';

const PASSPHRASE = 'manifest test passphrase';

async function body(): Promise<ManifestBody> {
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
    encryption: await newEncryptionBlock({ passphrase: PASSPHRASE, iterations: 1000 }),
    objects: [
      {
        key: 'main/full/manual/full-manual-20261124-120000.app.dump.zst.enc',
        kind: 'database',
        format: 'dump',
        database: 'app',
        rawSize: 1000,
        storedSize: 400,
        sha256: 'a'.repeat(64),
        tables: [{ schema: 'public', table: 't', rows: 3 }],
        tocPatches: [[120, '010a00000000000000']],
      },
    ],
    rawSize: 1000,
    storedSize: 400,
  };
}

describe('manifest HMAC', () => {
  it('holds for a manifest with fields this version does not know (written by a newer pgvault)', async () => {
    // Prepare: a newer version adds a field at the top and inside an object, and seals it.
    const b = await body();
    const newer = {
      ...b,
      addedLater: { note: 'a field from the future' },
      objects: [{ ...b.objects[0]!, alsoNew: 7 }],
    } as unknown as ManifestBody;
    const text = await sealManifest(newer, PASSPHRASE);

    // Act
    const manifest = parseManifest(text, 'newer.manifest.json');

    // Assess
    await expect(verifyManifest(manifest, PASSPHRASE, 'newer.manifest.json')).resolves.toBeUndefined();
    expect(manifest.objects[0]?.tocPatches).toEqual([[120, '010a00000000000000']]);
  });

  it('fails when a field this version does not know was changed after sealing', async () => {
    // Prepare
    const b = await body();
    const text = await sealManifest({ ...b, addedLater: 'original' } as unknown as ManifestBody, PASSPHRASE);
    const changed = text.replace('"original"', '"changed"');
    expect(changed).not.toBe(text);

    // Act
    const manifest = parseManifest(changed, 'changed.manifest.json');

    // Assess
    await expect(verifyManifest(manifest, PASSPHRASE, 'changed.manifest.json')).rejects.toThrow(
      /modified since the backup was made/,
    );
  });

  it('fails when a recorded data offset was changed after sealing', async () => {
    // Prepare
    const text = await sealManifest(await body(), PASSPHRASE);
    const changed = text.replace('010a00000000000000', '010b00000000000000');

    // Act
    const manifest = parseManifest(changed, 'offsets.manifest.json');

    // Assess
    await expect(verifyManifest(manifest, PASSPHRASE, 'offsets.manifest.json')).rejects.toThrow(
      /modified since the backup was made/,
    );
  });
});
