import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ObjectSource, runBackup } from '../../core/backup/run';
import { Catalog } from '../../core/catalog/catalog';
import { archiveKeysKey, checkArchiveKey, keyId } from '../../core/catalog/keys';
import { parseConfig } from '../../core/config';
import { ConfigError } from '../../core/errors';
import { FileTarget } from '../../core/storage/file';
import { S3Target } from '../../core/storage/s3';
import type { StorageTarget } from '../../core/storage/target';
import { deriveWalPassphrase } from '../../core/stream/encrypt';
import type { Vault } from '../../core/vault';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { recordingReporter, tempDir } from '../helpers/vault';

/**
 * keys.json under concurrency (issue 11's "last write wins" hole): two writers with different keys
 * on an empty archive, a backup racing a WAL writer, two rotations at once, and a lost answer, on the
 * file target and on s3rver. Each writer has its own target objects, as two processes would; the
 * races are forced by gating the writers' keys.json requests (real storage underneath).
 */
const CLUSTER = 'race';
let work: { path: string; remove(): Promise<void> };
let s3: S3TestServer;
let proxy: FaultProxy;
let n = 0;

beforeAll(async () => {
  work = await tempDir('pgvault-keys-race-');
  s3 = await startS3Server('pgvault-keys-race');
  proxy = await startFaultProxy(s3.endpoint);
}, 60_000);
afterAll(async () => {
  await proxy?.stop();
  await s3?.stop();
  await work?.remove();
});

type Kind = 'file' | 's3';

/** A place for one archive: a folder, or a prefix of the bucket. */
async function newArchive(kind: Kind): Promise<string> {
  const name = `archive-${++n}`;
  if (kind === 'file') await mkdir(join(work.path, name), { recursive: true });
  return name;
}

function targetOf(kind: Kind, archive: string, through: 'direct' | 'proxy' = 'direct'): StorageTarget {
  if (kind === 'file') return new FileTarget(join(work.path, archive));
  return new S3Target({
    bucket: s3.bucket,
    prefix: archive,
    region: s3.region,
    endpoint: through === 'proxy' ? proxy.endpoint : s3.endpoint,
    credentials: { ...s3.credentials },
    maxAttempts: 2,
  });
}

/** One writer (a process of its own): its config with `key` current and `retired` keys, and its target. */
async function writer(kind: Kind, archive: string, key: string, retired: string[] = [], through?: 'proxy') {
  const extra: Record<string, string> = {};
  if (retired.length > 0) {
    const file = join(work.path, `retired-${++n}`);
    const { writeFile } = await import('node:fs/promises');
    await writeFile(file, `${retired.join('\n')}\n`, { mode: 0o600 });
    extra.ENCRYPTION_KEYS_RETIRED_FILE = file;
  }
  const config = parseConfig({
    BACKUP_DIR: join(work.path, 'unused'),
    CLUSTER_NAME: CLUSTER,
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: key,
    ENCRYPTION_ITERATIONS: '1000',
    COMPRESSION: 'none',
    ...extra,
  });
  const target = targetOf(kind, archive, through);
  const reporter = recordingReporter();
  const vault: Vault = {
    config,
    targets: [target],
    catalog: new Catalog([target], CLUSTER, config.backupDir, () => {}),
    reporter,
  };
  return { config, targets: [target], target, vault, reporter };
}

/** Resolves for everyone once `parties` have arrived. */
function barrier(parties: number): () => Promise<void> {
  let arrived = 0;
  let open: () => void = () => {};
  const opened = new Promise<void>((r) => {
    open = r;
  });
  return () => {
    if (++arrived >= parties) open();
    return opened;
  };
}

/**
 * Gates the first keys.json write of a target: it starts only once every writer has arrived (all
 * have read the archive's keys.json as it was), and returns only once every writer's write is done
 * (no one reads back before the others wrote). The worst interleaving of two processes.
 */
function gateFirstKeysWrite(target: StorageTarget, before: () => Promise<void>, after: () => Promise<void>) {
  const key = archiveKeysKey(CLUSTER);
  let gated = false;
  const wrap =
    <A extends unknown[], R>(write: (k: string, ...rest: A) => Promise<R>) =>
    async (k: string, ...rest: A): Promise<R> => {
      if (k !== key || gated) return write(k, ...rest);
      gated = true;
      await before();
      try {
        return await write(k, ...rest);
      } finally {
        await after();
      }
    };
  target.put = wrap(target.put.bind(target));
  target.putBytes = wrap(target.putBytes.bind(target));
}

async function storedKeyIds(kind: Kind, archive: string): Promise<string[]> {
  const text = (await targetOf(kind, archive).getBytes(archiveKeysKey(CLUSTER))).toString('utf8');
  return (JSON.parse(text) as { keys: { id: string }[] }).keys.map((k) => k.id);
}

async function listing(kind: Kind, archive: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of targetOf(kind, archive).list(`${CLUSTER}/`)) keys.push(o.key);
  return keys.sort();
}

/** A small full backup (no server needed: the sources are in-memory streams). */
function backup(vault: Vault, label: string) {
  const sources: ObjectSource[] = [
    {
      part: 'app',
      kind: 'database',
      format: 'dump',
      database: 'app',
      label: 'dump app',
      open: () => ({ source: Readable.from([Buffer.from(`data of ${label}\n`)]), upstream: [] }),
    },
  ];
  return runBackup(vault, {
    type: 'full',
    schedule: 'manual',
    server: { version: '15.0', versionNum: 150000, major: 15, systemIdentifier: '1', superuser: true },
    tools: {},
    sources,
  });
}

describe.each<Kind>(['file', 's3'])('keys.json under concurrency (%s target)', (kind) => {
  it('two first backups with different keys at once: exactly one key becomes the archive key, the other backup exits 2 and stores nothing', async () => {
    // Prepare: both have read "no keys.json" before either writes one.
    const archive = await newArchive(kind);
    const x = await writer(kind, archive, 'key X');
    const y = await writer(kind, archive, 'key Y');
    const before = barrier(2);
    const after = barrier(2);
    gateFirstKeysWrite(x.target, before, after);
    gateFirstKeysWrite(y.target, before, after);

    // Act
    const results = await Promise.allSettled([backup(x.vault, 'X'), backup(y.vault, 'Y')]);

    // Assert: one completed backup, one refusal with exit 2; the archive's key is the winner's.
    const done = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    expect(done).toHaveLength(1);
    expect(refused).toHaveLength(1);
    expect(refused[0]!.reason).toBeInstanceOf(ConfigError);
    expect((refused[0]!.reason as ConfigError).exitCode).toBe(2);
    expect((refused[0]!.reason as Error).message).toMatch(/is not a key of the archive/);
    const winner = results[0]!.status === 'fulfilled' ? 'key X' : 'key Y';
    expect(await storedKeyIds(kind, archive)).toEqual([await keyId(winner)]);
    const objects = (await listing(kind, archive)).filter((k) => !k.endsWith('/keys.json'));
    expect(objects.filter((k) => k.endsWith('.manifest.json'))).toHaveLength(1);
    expect(objects.filter((k) => k.includes('.app.'))).toHaveLength(1);
  }, 120_000);

  it('a first backup establishes keys.json before its first object: a WAL writer with another key meanwhile is refused', async () => {
    // Prepare: the backup's first data object waits until the WAL writer has been answered.
    const archive = await newArchive(kind);
    const x = await writer(kind, archive, 'key X');
    const y = await writer(kind, archive, 'key Y');
    let walAnswered: () => void = () => {};
    const walDone = new Promise<void>((r) => {
      walAnswered = r;
    });
    const put = x.target.put.bind(x.target);
    x.target.put = async (key, source, options) => {
      if (key.includes('.app.')) await walDone;
      return put(key, source, options);
    };
    const walPass = await deriveWalPassphrase('key Y', `pgvault-wal-key/${CLUSTER}/1`, 1000);

    // Act
    const running = backup(x.vault, 'X');
    running.catch(() => {});
    await new Promise((r) => setTimeout(r, 0));
    // The WAL writer starts once the backup has passed its key check (its claim is being written).
    while (!(await listing(kind, archive)).some((k) => k.includes('.claim-')))
      await new Promise((r) => setTimeout(r, 20));
    const wal = await checkArchiveKey(
      { config: y.config, targets: y.targets, stateDir: join(work.path, `spool-${++n}`) },
      walPass,
    ).then(
      () => undefined,
      (err: unknown) => err,
    );
    walAnswered();
    const manifest = await running;

    // Assert: the archive holds objects of key X only.
    expect(wal).toBeInstanceOf(ConfigError);
    expect((wal as Error).message).toMatch(/is not a key of the archive/);
    expect(manifest.encryption?.keyId).toBe(await keyId('key X'));
    expect(await storedKeyIds(kind, archive)).toEqual([await keyId('key X')]);
  }, 120_000);

  it('a failed first backup leaves no data object, only keys.json naming its own key', async () => {
    // Prepare
    const archive = await newArchive(kind);
    const x = await writer(kind, archive, 'key X');
    const failing: ObjectSource = {
      part: 'app',
      kind: 'database',
      format: 'dump',
      database: 'app',
      label: 'dump app',
      open: () => ({
        source: new Readable({
          read() {
            this.destroy(new Error('pg_dump: connection lost'));
          },
        }),
        upstream: [],
      }),
    };

    // Act
    const result = runBackup(x.vault, {
      type: 'full',
      schedule: 'manual',
      server: { version: '15.0', versionNum: 150000, major: 15, systemIdentifier: '1', superuser: true },
      tools: {},
      sources: [failing],
    });

    // Assert
    await expect(result).rejects.toThrow(/connection lost/);
    expect(await listing(kind, archive)).toEqual([`${CLUSTER}/keys.json`]);
    expect(await storedKeyIds(kind, archive)).toEqual([await keyId('key X')]);
  }, 120_000);

  it('two rotations at once (keys B and C, both with the archive key A retired) lose neither addition', async () => {
    // Prepare: an archive of key A; both rotating writers read it before either writes.
    const archive = await newArchive(kind);
    const a = await writer(kind, archive, 'key A');
    await checkArchiveKey(a);
    const b = await writer(kind, archive, 'key B', ['key A']);
    const c = await writer(kind, archive, 'key C', ['key A']);
    const before = barrier(2);
    const after = barrier(2);
    gateFirstKeysWrite(b.target, before, after);
    gateFirstKeysWrite(c.target, before, after);

    // Act
    await Promise.all([checkArchiveKey(b), checkArchiveKey(c)]);

    // Assert: A first, then B and C in either order; both writers are keys of the archive.
    const ids = await storedKeyIds(kind, archive);
    expect(ids[0]).toBe(await keyId('key A'));
    expect([...ids].sort()).toEqual(
      [await keyId('key A'), await keyId('key B'), await keyId('key C')].sort(),
    );
    const plainC = await writer(kind, archive, 'key C');
    await expect(checkArchiveKey(plainC)).resolves.toBeUndefined();
  }, 120_000);
});

describe('keys.json on S3: a write whose answer is lost', () => {
  it('a rotation whose keys.json PUT is stored but never answered succeeds once keys.json is read back', async () => {
    // Prepare: an archive of key A; every PUT of keys.json reaches s3rver but its answer is cut.
    const archive = await newArchive('s3');
    await checkArchiveKey(await writer('s3', archive, 'key A'));
    const b = await writer('s3', archive, 'key B', ['key A'], 'proxy');
    const rule = proxy.addRule({
      method: 'PUT',
      path: new RegExp(`/${archive}/${CLUSTER}/keys\\.json$`),
      action: { kind: 'lose-response' },
    });

    // Act
    const outcome = await checkArchiveKey(b).then(
      () => undefined,
      (err: unknown) => err,
    );
    const fired = proxy.hits(rule);
    proxy.clearRules();

    // Assert
    expect(fired).toBeGreaterThan(0);
    expect(outcome).toBeUndefined();
    expect(await storedKeyIds('s3', archive)).toEqual([await keyId('key A'), await keyId('key B')]);
  }, 120_000);
});

describe('keys.json on a store that ignores If-None-Match (s3rver)', () => {
  it('a second creator whose PUT lands after the first one read its keys.json back still leaves one key: the first writer refuses on its second read', async () => {
    // Prepare: X creates and reads back; only then does Y's PUT (which s3rver does not refuse) land;
    // X's second read comes after it.
    const archive = await newArchive('s3');
    const x = await writer('s3', archive, 'key X');
    const y = await writer('s3', archive, 'key Y');
    const key = archiveKeysKey(CLUSTER);
    const bothLooked = barrier(2);
    let xReadBack: () => void = () => {};
    const xHasReadBack = new Promise<void>((r) => {
      xReadBack = r;
    });
    let yPut: () => void = () => {};
    const yHasPut = new Promise<void>((r) => {
      yPut = r;
    });
    const xPut = x.target.put.bind(x.target);
    let xWrote = false;
    x.target.put = async (k, source, options) => {
      if (k !== key || xWrote) return xPut(k, source, options);
      await bothLooked();
      const result = await xPut(k, source, options);
      xWrote = true;
      return result;
    };
    const xGet = x.target.getBytes.bind(x.target);
    let xReadsAfterWrite = 0;
    x.target.getBytes = async (k) => {
      if (k !== key || !xWrote) return xGet(k);
      const nth = ++xReadsAfterWrite;
      // The old code never reads back: Y goes on after a while then.
      if (nth === 2) await yHasPut;
      const bytes = await xGet(k);
      if (nth === 1) xReadBack();
      return bytes;
    };
    const yPutOrig = y.target.put.bind(y.target);
    let yWrote = false;
    y.target.put = async (k, source, options) => {
      if (k !== key || yWrote) return yPutOrig(k, source, options);
      yWrote = true;
      await bothLooked();
      await Promise.race([xHasReadBack, new Promise((r) => setTimeout(r, 3000))]);
      try {
        return await yPutOrig(k, source, options);
      } finally {
        yPut();
      }
    };

    // Act
    const [rx, ry] = await Promise.allSettled([checkArchiveKey(x), checkArchiveKey(y)]);

    // Assert: Y's keys.json is what is stored, and X (whose key it is not) refuses.
    expect(ry.status).toBe('fulfilled');
    expect(rx.status).toBe('rejected');
    expect((rx as PromiseRejectedResult).reason).toBeInstanceOf(ConfigError);
    expect(await storedKeyIds('s3', archive)).toEqual([await keyId('key Y')]);
  }, 120_000);
});
