import { hostname } from 'node:os';
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import { checkArchiveKey } from '../catalog/keys';
import { type ManifestBody, newEncryptionBlock, type StoredObject, sealManifest } from '../catalog/manifest';
import {
  type BackupType,
  backupFolder,
  backupId,
  hasSchedule,
  manifestKey,
  objectExtension,
  type Schedule,
} from '../catalog/naming';
import { type EncodedSource, writeObject } from '../catalog/objects';
import { undoOnInterrupt } from '../cleanup';
import type { Compression } from '../config';
import { errorMessage } from '../errors';
import type { ServerInfo } from '../pg/server';
import { compressionTool, toolVersion } from '../stream/compress';
import { newObjectEncryption, type Vault } from '../vault';

/** One object of a backup, produced on demand so only one stream runs at a time. */
export interface ObjectSource {
  /** The name part after the id: a database name part or 'globals'; '' for single-object backups. */
  readonly part: string;
  readonly kind: StoredObject['kind'];
  readonly format: StoredObject['format'];
  readonly database?: string;
  readonly databaseInfo?: StoredObject['databaseInfo'];
  readonly sizeHint?: number;
  /** Label for progress lines. */
  readonly label: string;
  /** A few KB (the globals): streamed beside the big objects rather than before them. */
  readonly small?: boolean;
  /**
   * Starts producing raw bytes, or bytes already compressed with the configured compression (then
   * `onProgress` hears the raw bytes passed); `upstream` settles when the producers have finished
   * for good.
   */
  open(onProgress?: (rawBytes: number) => void): {
    source: Readable | EncodedSource;
    upstream: Promise<unknown>[];
    finish?: () => Pick<StoredObject, 'tables' | 'tocPatches'>;
  };
}

/** A backup of one small object built in memory (config tarball, index SQL). */
export function inMemorySource(
  kind: StoredObject['kind'],
  format: StoredObject['format'],
  label: string,
  bytes: Buffer,
): ObjectSource {
  return {
    part: '',
    kind,
    format,
    label,
    sizeHint: bytes.length,
    open: () => ({ source: Readable.from([bytes]), upstream: [] }),
  };
}

export interface BackupRun {
  readonly type: BackupType;
  readonly schedule: Schedule;
  readonly server: ServerInfo;
  readonly tools: Record<string, string>;
  readonly sources: readonly ObjectSource[];
  /** Physical backups: LSNs and timeline, known once the objects are written. */
  readonly physical?: () => ManifestBody['physical'];
  /** Clock for the id; tests pass a fixed one. */
  readonly now?: Date;
}

export const PGVAULT_VERSION: string = (() => {
  // ../../ from the TypeScript source, ../../../ from the build in dist/.
  for (const path of ['../../package.json', '../../../package.json']) {
    try {
      return (require(path) as { version: string }).version;
    } catch {
      // Try the next layout.
    }
  }
  return 'unknown';
})();

/**
 * Versions of the programs that write a backup (the PostgreSQL program and the compressor), for the
 * manifest; all asked at once, each once per process (toolVersionOutput).
 */
export async function toolVersions(
  pgProgram: string,
  compression: Compression,
): Promise<Record<string, string>> {
  const tools: Record<string, string> = {};
  const compressor = compressionTool(compression);
  const [own, compressorVersion] = await Promise.all([
    toolVersion(pgProgram),
    compressor === 'builtin' ? undefined : toolVersion(compressor.command),
  ]);
  if (own) tools[basename(pgProgram)] = own;
  if (compressor !== 'builtin') tools[basename(compressor.command)] = compressorVersion ?? 'unknown';
  else if (compression !== 'none') tools[compression] = 'node:zlib';
  return tools;
}

/**
 * Takes one backup: every object streamed into every target, then the manifest, last. Any failure
 * removes what this run wrote, so a failed backup never looks complete and never touches another.
 */
export async function runBackup(vault: Vault, run: BackupRun): Promise<ManifestBody> {
  const { config, targets, reporter } = vault;
  const started = run.now ?? new Date();
  // One key per archive: a key (or ENCRYPTION setting) that is not the archive's stores nothing.
  await checkArchiveKey({ config, targets, warn: (line) => reporter.warn(line), deferNewArchive: true });
  const folder = backupFolder(config.clusterName, run.type, run.schedule);
  const id = await uniqueId(vault, folder, backupId(run.type, run.schedule, started));
  const encryption = newObjectEncryption(config);
  // The manifest's key check costs a slow PBKDF2: derived while the objects stream, not after.
  const encryptionBlock = encryption ? newEncryptionBlock(encryption) : Promise.resolve(null);
  encryptionBlock.catch(() => {});
  const written: StoredObject[] = [];
  const tools = { pgvault: PGVAULT_VERSION, ...run.tools };
  /** Every key whose write began: an object may complete between an interrupt and the exit. */
  const keysBegun: string[] = [];
  /** Every store started (settled ones count as done at once). */
  const storing: Promise<void>[] = [];
  const removeWritten = () =>
    Promise.allSettled(keysBegun.flatMap((key) => targets.map((t) => t.delete(key))));
  const forgetUndo = undoOnInterrupt(async () => {
    // The programs got the signal too, so the writes in progress end soon, most by failing (and
    // removing their own object); one that completes meanwhile is removed by the second pass.
    await removeWritten();
    await Promise.race([Promise.allSettled(storing), new Promise((r) => setTimeout(r, 5_000).unref())]);
    await removeWritten();
  });
  const store = async (src: ObjectSource): Promise<void> => {
    const key = `${folder}/${id}${src.part ? `.${src.part}` : ''}${objectExtension(src.format, config.compression, encryption !== undefined)}`;
    keysBegun.push(key);
    const onProgress = (bytes: number) => reporter.progress(src.label, bytes, src.sizeHint);
    const { source, upstream, finish } = src.open(onProgress);
    reporter.info(`${src.label} → ${key}`);
    const result = await writeObject({
      key,
      source,
      upstream,
      compression: config.compression,
      compressionLevel: config.compressionLevel,
      threads: config.parallelJobs,
      encryption,
      targets,
      sizeHint: src.sizeHint,
      onProgress,
    });
    const object: StoredObject = {
      key,
      kind: src.kind,
      format: src.format,
      database: src.database,
      databaseInfo: src.databaseInfo,
      rawSize: result.rawSize,
      storedSize: result.storedSize,
      sha256: result.sha256,
      ...(finish ? finish() : {}),
    };
    position.set(object, run.sources.indexOf(src));
    written.push(object);
  };
  const storeTracked = (src: ObjectSource): Promise<void> => {
    const p = store(src);
    storing.push(p);
    return p;
  };
  const position = new Map<StoredObject, number>();
  // Small objects (the globals) stream beside the big ones instead of before them; the big ones
  // go one at a time, so memory stays flat and pg_dumps do not compete. The first big one starts
  // first: it is what the run's time depends on.
  const big = run.sources.filter((s) => !s.small);
  const first = big.length > 0 ? storeTracked(big[0]!) : Promise.resolve();
  first.catch(() => {});
  const beside = Promise.allSettled(run.sources.filter((src) => src.small).map(storeTracked));
  try {
    await first;
    for (const src of big.slice(1)) await storeTracked(src);
    const failedBeside = (await beside).find((r) => r.status === 'rejected') as
      | PromiseRejectedResult
      | undefined;
    if (failedBeside) throw failedBeside.reason;
    // The manifest lists objects in the order of the sources, however they finished.
    written.sort((a, b) => (position.get(a) ?? 0) - (position.get(b) ?? 0));
    const finished = new Date();
    const body: ManifestBody = {
      format: 'pgvault-manifest/1',
      id,
      type: run.type,
      schedule: hasSchedule(run.type) ? run.schedule : undefined,
      cluster: config.clusterName,
      node: { host: config.pg.host ?? hostname(), port: config.pg.port ?? 5432 },
      server: {
        version: run.server.version,
        versionNum: run.server.versionNum,
        systemIdentifier: run.server.systemIdentifier,
      },
      tools,
      startedAt: started.toISOString(),
      finishedAt: finished.toISOString(),
      durationMs: finished.getTime() - started.getTime(),
      compression: { algorithm: config.compression, level: config.compressionLevel },
      encryption: await encryptionBlock,
      objects: written,
      rawSize: written.reduce((n, o) => n + o.rawSize, 0),
      storedSize: written.reduce((n, o) => n + o.storedSize, 0),
      physical: run.physical?.(),
    };
    const text = await sealManifest(body, encryption?.passphrase);
    const key = manifestKey(folder, id);
    // Interrupted from here on, the manifest goes with the objects: none of them may be left alone.
    keysBegun.push(key);
    const results = await Promise.allSettled(targets.map((t) => t.putBytes(key, text)));
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
    if (failed) {
      await Promise.allSettled(targets.map((t) => t.delete(key)));
      throw failed.reason;
    }
    return body;
  } catch (err) {
    // A small object still streaming would be left behind by a cleanup that did not wait for it.
    await beside;
    await removeWritten();
    reporter.warn(`backup ${id} failed and was removed: ${errorMessage(err)}`);
    throw err;
  } finally {
    forgetUndo();
  }
}

/** Two backups in the same second (a retry, a manual run beside cron) get -2, -3, ... */
async function uniqueId(vault: Vault, folder: string, base: string): Promise<string> {
  for (let n = 1; ; n++) {
    const id = n === 1 ? base : `${base}-${n}`;
    const taken = await Promise.all(vault.targets.map((t) => t.stat(manifestKey(folder, id))));
    if (taken.every((x) => x === undefined)) return id;
  }
}
