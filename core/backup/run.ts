import { randomBytes } from 'node:crypto';
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
import { ConfigError, errorMessage, ObjectNotFoundError, StorageError } from '../errors';
import type { ServerInfo } from '../pg/server';
import { refuseCopyIntoSource } from '../restore/copy';
import { targetName, targetsHolding } from '../storage';
import type { StorageTarget } from '../storage/target';
import { compressionTool, toolVersion } from '../stream/compress';
import { routedSourceNode, type SourceNode } from '../topology';
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
    /** Or a file that nobody changes meanwhile (read by the compressor itself; see ObjectWriteSpec). */
    source: Readable | EncodedSource | { readonly path: string; readonly size?: number };
    upstream: Promise<unknown>[];
    finish?: () => Pick<StoredObject, 'tables' | 'tocPatches' | 'rawSha256'>;
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
  /** An incremental base backup: the id of its parent (manifest field incrementalOf). */
  readonly incrementalOf?: string;
  /** The node read from (BACKUP_FROM); default: where config.pg's connections went (core/topology). */
  readonly node?: SourceNode;
  /** Clock for the id; tests pass a fixed one. */
  readonly now?: Date;
  /** How often the claim is written again while the run lasts. @default CLAIM_REFRESH_MS */
  readonly claimRefreshMs?: number;
}

/**
 * A running backup writes its claim again this often, so retention, which removes objects without a
 * manifest once the newest of them is a day old (LEFTOVER_AGE_MS), never takes a long run's early
 * objects (the globals, finished hours before the big dump) for a failed run's leftovers.
 */
export const CLAIM_REFRESH_MS = 3600 * 1000;

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
  const { config, reporter } = vault;
  refuseCopyIntoSource(config.clusterName, run.server, `this ${run.type} backup`);
  const started = run.now ?? new Date();
  // Several repositories: only those whose REPO<n>_HOLDS takes this kind (and schedule).
  const schedule = hasSchedule(run.type) ? run.schedule : undefined;
  const holding = targetsHolding(vault.targets, run.type, schedule);
  if (holding.length === 0) {
    throw new ConfigError(
      `no repository holds ${run.type}${schedule ? `:${schedule}` : ''} backups; add ${run.type}${schedule ? ` or ${run.type}:${schedule}` : ''} to a REPO<n>_HOLDS`,
    );
  }
  /**
   * Several repositories: one that fails drops out of the run (named at the end, the command fails)
   * and the others still get a whole backup. One target set (the single-target keys): any failure
   * fails the run, as before.
   */
  const failed = new Map<StorageTarget, unknown>();
  const tolerant = config.repositories !== undefined && holding.length > 1;
  const dropOut = tolerant
    ? (t: StorageTarget, err: unknown) => {
        if (failed.has(t)) return;
        failed.set(t, err);
        reporter.warn(`backup: ${targetName(t)} failed and is left out of this run: ${errorMessage(err)}`);
      }
    : undefined;
  const live = () => holding.filter((t) => !failed.has(t));
  if (dropOut) {
    const probes = await Promise.allSettled(holding.map((t) => t.probe(config.clusterName)));
    const down = probes.findIndex((p) => p.status === 'fulfilled') === -1;
    if (down) throw (probes[0] as PromiseRejectedResult).reason;
    probes.forEach((p, i) => {
      if (p.status === 'rejected') dropOut(holding[i]!, p.reason);
    });
  }
  // One key per archive: a key (or ENCRYPTION setting) that is not the archive's stores nothing.
  await checkArchiveKey({
    config,
    targets: dropOut ? vault.targets.filter((t) => !failed.has(t)) : vault.targets,
    warn: (line) => reporter.warn(line),
  });
  const folder = backupFolder(config.clusterName, run.type, run.schedule);
  const { id, claimKey, claimText } = await claimId(
    holding,
    folder,
    backupId(run.type, run.schedule, started),
    dropOut,
  );
  const targets = holding;
  const encryption = newObjectEncryption(config);
  // The manifest's key check costs a slow PBKDF2: derived while the objects stream, not after.
  const encryptionBlock = encryption ? newEncryptionBlock(encryption) : Promise.resolve(null);
  encryptionBlock.catch(() => {});
  const written: StoredObject[] = [];
  const tools = { pgvault: PGVAULT_VERSION, ...run.tools };
  const mKey = manifestKey(folder, id);
  /** Every data key whose write began: an object may complete between an interrupt and the exit. */
  const keysBegun: string[] = [];
  let manifestBegun = false;
  /** The manifest is stored where the run could store it: nothing is undone from then on. */
  let manifestDone = false;
  /** Every store started, the manifest's included (settled ones count as done at once). */
  const storing: Promise<unknown>[] = [];
  /** This run's data objects and claim in one target. */
  const removeData = (t: StorageTarget) =>
    Promise.allSettled([...keysBegun, claimKey].map((key) => t.delete(key)));
  /**
   * Removes what this run wrote, the manifest first: in each target the data goes only once the
   * manifest is gone there, so a manifest can never outlive its objects. Where the manifest cannot
   * be removed, the objects stay (the backup stays whole) and the warning says so.
   */
  const undo = async (): Promise<string[]> => {
    await stopRefresh();
    const kept: string[] = [];
    await Promise.all(
      targets.map(async (t) => {
        if (manifestBegun) {
          try {
            await t.delete(mKey);
          } catch (err) {
            // The delete's answer may be what was lost: gone is gone.
            const left = await t.stat(mKey).catch(() => null);
            if (left === undefined) return removeData(t);
            reporter.warn(
              `backup ${id}: its manifest could not be removed from ${t.location} (${errorMessage(err)}); its objects are kept there so it stays whole; check it with \`pgvault verify file ${id}\` and remove it with \`pgvault backup delete ${id} --yes\``,
            );
            kept.push(t.location);
            return;
          }
        }
        await removeData(t);
      }),
    );
    return kept;
  };
  let refreshing: Promise<unknown> = Promise.resolve();
  const refresh = setInterval(() => {
    refreshing = Promise.allSettled(
      targets.map((t) =>
        t
          .putBytes(claimKey, claimText)
          .catch((err: unknown) =>
            reporter.warn(`cannot refresh the claim of ${id} in ${t.location}: ${errorMessage(err)}`),
          ),
      ),
    );
  }, run.claimRefreshMs ?? CLAIM_REFRESH_MS);
  refresh.unref();
  /** Before the claim goes: no refresh may put it back after. */
  const stopRefresh = () => {
    clearInterval(refresh);
    return refreshing;
  };
  const forgetUndo = undoOnInterrupt(async () => {
    // The programs got the signal too, so the writes in progress end soon, most by failing (and
    // removing their own object); one that completes meanwhile is removed by the second pass.
    await undo();
    await Promise.race([Promise.allSettled(storing), new Promise((r) => setTimeout(r, 5_000).unref())]);
    await undo();
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
      targets: live(),
      sizeHint: src.sizeHint,
      onProgress,
      ...(dropOut ? { onTargetFailure: dropOut } : {}),
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
    // Objects finished hours ago (the globals of a long dump) may have gone meanwhile (retention
    // takes a day-old object without a manifest for a leftover, or a hand): a manifest is written
    // only over objects that are all still there, one stat each.
    await assertStillStored(live(), written, dropOut);
    const finished = new Date();
    const body: ManifestBody = {
      format: 'pgvault-manifest/1',
      id,
      type: run.type,
      schedule: hasSchedule(run.type) ? run.schedule : undefined,
      cluster: config.clusterName,
      node: run.node ??
        routedSourceNode(config.pg) ?? {
          host: config.pg.host ?? hostname(),
          port: config.pg.port ?? 5432,
          ...(config.patroniName !== undefined ? { name: config.patroniName } : {}),
        },
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
      ...(run.incrementalOf !== undefined ? { incrementalOf: run.incrementalOf } : {}),
    };
    const text = await sealManifest(body, encryption?.passphrase);
    // Interrupted from here on, the manifest goes first, then the objects: none may be left alone.
    manifestBegun = true;
    // Each repository's manifest only where all its objects are stored (a dropped one gets none).
    const manifestTargets = live();
    const putting = Promise.allSettled(manifestTargets.map((t) => t.putBytes(mKey, text)));
    storing.push(putting);
    const results = await putting;
    // A write that failed may still have been stored (its answer lost): read it back before
    // calling the backup failed, so the exit and the catalog agree.
    const outcomes = await Promise.all(
      results.map((r, i) =>
        r.status === 'fulfilled'
          ? ('stored' as const)
          : settleWrite(manifestTargets[i]!, mKey, text, reporter),
      ),
    );
    if (dropOut && outcomes.some((o) => o === 'stored')) {
      for (const [i, o] of outcomes.entries()) {
        if (o !== 'stored') dropOut(manifestTargets[i]!, (results[i] as PromiseRejectedResult).reason);
      }
    }
    const failedAt = outcomes.findIndex((o, i) => o !== 'stored' && !failed.has(manifestTargets[i]!));
    if (failedAt !== -1) {
      const reason = (results[failedAt] as PromiseRejectedResult).reason;
      throw new StorageError(
        `the manifest of backup ${id} could not be stored in ${targetName(manifestTargets[failedAt]!)}${outcomes[failedAt] === 'unknown' ? ' (and could not be read back to tell)' : ''}: ${errorMessage(reason)}`,
        { cause: reason },
      );
    }
    manifestDone = true;
    // The manifest now holds the id: the claim is no longer needed.
    await stopRefresh();
    await Promise.allSettled(targets.map((t) => t.delete(claimKey)));
    if (failed.size > 0) {
      // The repositories that failed keep nothing of this run (no manifest there, so no backup);
      // the others hold a whole one: recorded, and the command still fails naming what is missing.
      await Promise.allSettled([...failed.keys()].map(removeData));
      const [first, reason] = [...failed.entries()][0]!;
      throw new StorageError(
        `backup ${id} is stored in ${live().map(targetName).join(', ')} but not in ${[...failed.keys()].map(targetName).join(', ')} (${errorMessage(reason)}); once ${targetName(first)} is back, copy it there with \`pgvault repo sync\``,
        { cause: reason },
      );
    }
    return body;
  } catch (err) {
    if (manifestDone) throw err;
    // A small object still streaming would be left behind by a cleanup that did not wait for it.
    await beside;
    const kept = await undo();
    reporter.warn(
      kept.length === 0
        ? `backup ${id} failed and was removed: ${errorMessage(err)}`
        : `backup ${id} failed and was removed except in ${kept.join(', ')}, where its manifest stayed and so its objects were kept: ${errorMessage(err)}`,
    );
    throw err;
  } finally {
    clearInterval(refresh);
    forgetUndo();
  }
}

async function assertStillStored(
  targets: readonly StorageTarget[],
  objects: readonly StoredObject[],
  dropOut?: (t: StorageTarget, err: unknown) => void,
) {
  const problems: unknown[] = [];
  for (const target of targets) {
    for (const object of objects) {
      const info = await target.stat(object.key).catch((err: unknown) => {
        if (!dropOut) throw err;
        problems.push(err);
        dropOut(target, err);
        return null;
      });
      if (info === null) break;
      if (info?.size !== object.storedSize) {
        const err = new StorageError(
          `${object.key} ${info ? `has ${info.size} bytes instead of ${object.storedSize}` : 'is gone'} in ${target.location} before the manifest was written (removed by retention or by hand while the backup ran?); no manifest written, take the backup again`,
        );
        if (!dropOut) throw err;
        problems.push(err);
        dropOut(target, err);
        break;
      }
    }
  }
  if (problems.length === targets.length && problems.length > 0) throw problems[0];
}

/**
 * Whether a write whose request failed is stored after all (the answer may be lost after the store
 * took it): `stored` when the object reads back byte for byte, `absent` when it is not there,
 * `unknown` when it cannot be read.
 */
async function settleWrite(
  target: StorageTarget,
  key: string,
  text: string,
  reporter: Vault['reporter'],
): Promise<'stored' | 'absent' | 'unknown'> {
  try {
    const back = await target.getBytes(key);
    if (back.equals(Buffer.from(text, 'utf8'))) {
      reporter.warn(
        `${key} in ${target.location}: the write's answer was lost, but it reads back whole: stored`,
      );
      return 'stored';
    }
    return 'unknown';
  } catch (err) {
    return err instanceof ObjectNotFoundError ? 'absent' : 'unknown';
  }
}

/**
 * The probe before a backup: every target must answer; with several repositories (REPO<n>_*) one
 * that answers is enough (runBackup leaves the others out, names them and fails the command).
 */
export async function probeTargets(vault: Vault): Promise<void> {
  const { config } = vault;
  if (config.repositories === undefined) {
    await Promise.all(vault.targets.map((t) => t.probe(config.clusterName)));
    return;
  }
  const probes = await Promise.allSettled(vault.targets.map((t) => t.probe(config.clusterName)));
  if (!probes.some((p) => p.status === 'fulfilled')) throw (probes[0] as PromiseRejectedResult).reason;
}

/** Tries before giving up on finding a free id (each try moves one suffix on). */
const CLAIM_TRIES = 50;

/**
 * Claims a backup id in every target, so two runs never share one (a retry beside cron, two hosts
 * writing one bucket in the same second). In each target the run writes a claim object of its own
 * (`{id}.claim-{random}`, a name no other run writes), then lists `{id}.`: the id is its own only
 * when that listing holds its claim and nothing else (no other claim, no object, no manifest).
 * Two runs racing for one id can both see the other and both move on, never both win: the listing
 * is read after the own claim is stored, and stores list what they stored (S3 is strongly
 * consistent, so are files). Conditional writes (S3 If-None-Match) would do it in one request,
 * but S3-compatible stores (s3rver among them) ignore that header on PUT and overwrite silently.
 * A lost race moves to the next suffix (-2, -3, ...) after a short random pause.
 */
async function claimId(
  allTargets: readonly StorageTarget[],
  folder: string,
  base: string,
  dropOut?: (t: StorageTarget, err: unknown) => void,
): Promise<{ id: string; claimKey: string; claimText: string }> {
  const down = new Set<StorageTarget>();
  const token = randomBytes(8).toString('hex');
  const claim = `${JSON.stringify({ host: hostname(), pid: process.pid, claimedAt: new Date().toISOString() })}\n`;
  for (let n = 1; n <= CLAIM_TRIES; n++) {
    const id = n === 1 ? base : `${base}-${n}`;
    const claimKey = `${folder}/${id}.claim-${token}`;
    const claimed: StorageTarget[] = [];
    let free = true;
    try {
      for (const target of allTargets) {
        if (down.has(target)) continue;
        try {
          if (!(await idFreeBeforeClaim(target, folder, id))) {
            free = false;
            break;
          }
          await target.putBytes(claimKey, claim);
          claimed.push(target);
          for await (const o of target.list(`${folder}/${id}.`)) {
            if (o.key !== claimKey) {
              free = false;
              break;
            }
          }
        } catch (err) {
          // Several repositories: one that cannot be reached drops out; the others go on.
          if (!dropOut || down.size + 1 >= allTargets.length) throw err;
          down.add(target);
          dropOut(target, err);
          await target.delete(claimKey).catch(() => {});
        }
        if (!free) break;
      }
    } catch (err) {
      // In every target: a claim whose write failed may still have been stored.
      await Promise.allSettled(allTargets.map((t) => t.delete(claimKey)));
      throw err;
    }
    if (free) return { id, claimKey, claimText: claim };
    await Promise.allSettled(claimed.map((t) => t.delete(claimKey)));
    if (claimed.length > 0) await new Promise((r) => setTimeout(r, 20 + Math.random() * 200));
  }
  throw new StorageError(
    `no free backup id from ${base} to ${base}-${CLAIM_TRIES} in ${folder}; other backups are running or left claims behind (\`pgvault backup retention\` removes claims older than a day)`,
  );
}

/** Cheap look before writing a claim: anything under the id already (a finished backup, a claim). */
async function idFreeBeforeClaim(target: StorageTarget, folder: string, id: string): Promise<boolean> {
  for await (const _ of target.list(`${folder}/${id}.`)) return false;
  return true;
}
