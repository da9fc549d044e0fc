import { spawn } from 'node:child_process';
import { closeSync, type FSWatcher, openSync, renameSync, statSync, watch } from 'node:fs';
import { mkdir, readdir, readFile, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { alertWalConflictOnce } from '../alert/wal-conflict';
import { StorageError } from '../errors';
import { holdsLock, lockHeld, releaseLock, takeLock, writeFileAtomically } from './fetch';
import { parseWalFileName } from './naming';
import { pushFailureLine, pushWalFiles, WalConflictError, type WalPushContext } from './push';

/**
 * Asynchronous archiving (ARCHIVE_ASYNC=true), as pgBackRest's archive-async: a long-lived uploader
 * (`pgvault wal push-async`) pushes the files PostgreSQL has marked `.ready` in
 * pg_wal/archive_status ahead of time, several at once, oldest first, and leaves a marker in the
 * spool for each: `<name>.ok` once the file is durably stored in every target, `<name>.error` with
 * the one-line reason otherwise. archive_command then only has to find and remove the `.ok`, which
 * bin/pgvault (a shell script) does without starting Node.
 *
 * Safety rests on one rule: a `.ok` is written only after the push resolved, and a push resolves only
 * once every target holds the object. Killing the uploader at any point leaves no `.ok` for a file
 * that is not stored. A `.ok` counts only when it is not older than the WAL file (a marker left from
 * an earlier life of the data directory cannot acknowledge a new file of the same name).
 */

export const SPOOL_FOLDER = 'pgvault-spool';
/** Appears on the uploader's command line; how a pid in the lock file is recognised as one. */
export const UPLOADER_MARKER = 'push-async';
const UPLOADER_LOCK = 'uploader.pid';
export const UPLOADER_LOG = 'uploader.log';
const LOG_ROTATE_BYTES = 1024 * 1024;
/** The uploader leaves after this long with nothing to push. */
export const UPLOADER_IDLE_MS = 60_000;
/** A failed file is tried again after 1 s, doubling up to this. */
const MAX_RETRY_DELAY_MS = 10_000;
/** Markers for files PostgreSQL no longer waits for are removed after this long. */
const STALE_MARKER_MS = 60_000;
/**
 * A stored file whose `.ok` was taken but whose `.ready` is still there this much later was not
 * acknowledged after all (the command failed after taking it): the `.ok` is written again.
 */
const REACKNOWLEDGE_AFTER_MS = 5_000;

/** The spool for a WAL path: SPOOL_DIR, else `pgvault-spool` beside the file (pg_wal/pgvault-spool). */
export function spoolDirFor(spoolDir: string | undefined, walPath: string): string {
  return spoolDir ?? join(dirname(resolve(walPath)), SPOOL_FOLDER);
}

/** Whether PostgreSQL marked this file as waiting for archiving (`archive_status/<name>.ready` beside it). */
export async function awaitingArchive(walPath: string): Promise<boolean> {
  const absolute = resolve(walPath);
  const ready = join(dirname(absolute), 'archive_status', `${basename(absolute)}.ready`);
  return stat(ready).then(
    () => true,
    () => false,
  );
}

const okMarker = (spoolDir: string, name: string) => join(spoolDir, `${name}.ok`);
const errorMarker = (spoolDir: string, name: string) => join(spoolDir, `${name}.error`);

/**
 * Takes the `.ok` marker of a WAL file if there is a valid one (not older than the file): true means
 * the file is stored and PostgreSQL may be told so.
 */
export async function takeAcknowledgement(spoolDir: string, walPath: string): Promise<boolean> {
  const name = basename(walPath);
  const marker = okMarker(spoolDir, name);
  const [markerInfo, fileInfo] = await Promise.all([
    stat(marker).catch(() => undefined),
    stat(walPath).catch(() => undefined),
  ]);
  if (markerInfo === undefined || fileInfo === undefined) return false;
  // Empty: taken already (bin/pgvault takes a marker by emptying it).
  if (markerInfo.size === 0 || markerInfo.mtimeMs < fileInfo.mtimeMs) return false;
  try {
    await unlink(marker);
    return true;
  } catch {
    // Taken by a concurrent call for the same file; that call answers PostgreSQL.
    return false;
  }
}

/** The uploader could not store a file; the line is the uploader's reason. */
export class WalUploadError extends StorageError {}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves on the first change in `directory` (or never, when it cannot be watched); close() stops it. */
function changesIn(directory: string): { next(): Promise<void>; close(): void } {
  let waiting: (() => void) | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(directory, { persistent: false }, () => waiting?.());
    watcher.on('error', () => {});
  } catch {
    watcher = undefined;
  }
  return {
    next: () =>
      new Promise<void>((resolve) => {
        waiting = resolve;
      }),
    close: () => watcher?.close(),
  };
}

export interface ConfirmUploadOptions {
  readonly spoolDir: string;
  readonly walPath: string;
  readonly timeoutMs: number;
  /** Makes sure an uploader runs (starts one when none does); called at once and every second. */
  readonly ensureUploader: () => Promise<void>;
}

/**
 * archive_command in async mode: resolves once the uploader has acknowledged the file (its `.ok` is
 * taken), rejects with the uploader's reason when it reports a failure that happened after this
 * call began, or when nothing came within the timeout. PostgreSQL retries a failure.
 */
export async function confirmUpload(options: ConfirmUploadOptions): Promise<void> {
  const { spoolDir, walPath } = options;
  const name = basename(walPath);
  const started = Date.now();
  if (await takeAcknowledgement(spoolDir, walPath)) return;
  await mkdir(spoolDir, { recursive: true, mode: 0o700 });
  await options.ensureUploader();
  let lastEnsure = Date.now();
  const changes = changesIn(spoolDir);
  try {
    while (Date.now() - started < options.timeoutMs) {
      if (await takeAcknowledgement(spoolDir, walPath)) return;
      const failure = await stat(errorMarker(spoolDir, name)).catch(() => undefined);
      // A report from before this call may predate a target coming back; the uploader retries soon.
      if (failure !== undefined && failure.mtimeMs >= started) {
        const reason = (await readFile(errorMarker(spoolDir, name), 'utf8').catch(() => '')).trim();
        await unlink(errorMarker(spoolDir, name)).catch(() => {});
        throw new WalUploadError(
          reason || `the WAL uploader could not store ${name}; see ${join(spoolDir, UPLOADER_LOG)}`,
        );
      }
      if (Date.now() - lastEnsure >= 1000) {
        await options.ensureUploader();
        lastEnsure = Date.now();
      }
      await Promise.race([changes.next(), sleep(100)]);
    }
  } finally {
    changes.close();
  }
  throw new WalUploadError(
    `WAL file ${name} was not stored by the uploader within ${Math.round(options.timeoutMs / 1000)} s (ARCHIVE_TIMEOUT); PostgreSQL will retry; see ${join(spoolDir, UPLOADER_LOG)}`,
  );
}

/** Whether an uploader holds this spool's lock. */
export function uploaderRunning(spoolDir: string): Promise<boolean> {
  return lockHeld(join(spoolDir, UPLOADER_LOCK), UPLOADER_MARKER);
}

export interface StartUploaderOptions {
  /** The CLI's entry script (dist/cli/main.js). */
  readonly entry: string;
  readonly configFile?: string;
  readonly pgWalDir: string;
  readonly spoolDir: string;
  /** Working directory (the data directory, so relative settings resolve as for the command). */
  readonly cwd: string;
}

/**
 * Starts `pgvault wal push-async` detached (its own session: PostgreSQL stopping the archiver does
 * not stop it), output appended to the spool's uploader.log. The child takes the lock itself; a
 * second one started in a race sees the lock and leaves.
 */
export function startUploaderProcess(options: StartUploaderOptions): void {
  const log = join(options.spoolDir, UPLOADER_LOG);
  try {
    if (statSync(log).size > LOG_ROTATE_BYTES) renameSync(log, `${log}.1`);
  } catch {
    // No log yet.
  }
  const fd = openSync(log, 'a', 0o600);
  try {
    const args = [
      options.entry,
      ...(options.configFile !== undefined ? ['--config', resolve(options.cwd, options.configFile)] : []),
      'wal',
      UPLOADER_MARKER,
      '--pg-wal',
      resolve(options.cwd, options.pgWalDir),
    ];
    const child = spawn(process.execPath, args, {
      cwd: options.cwd,
      detached: true,
      stdio: ['ignore', fd, fd],
      env: {
        ...process.env,
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        GLIBC_TUNABLES: withHugePages(process.env.GLIBC_TUNABLES),
      },
    });
    child.on('error', () => {});
    child.unref();
  } finally {
    closeSync(fd);
  }
}

/**
 * GLIBC_TUNABLES for the uploader and its compressors: malloc asks for transparent huge pages
 * (glibc 2.35 and later; older ones ignore it, as does a kernel with THP off). The uploader moves
 * every stored byte through fresh buffers; with 4 KiB pages a drain of 64 segments took 60,000 page
 * faults in Node, with huge pages 14,000, and Node's CPU fell from 3.4 to 2.4 s (session 5). The
 * same setting is in bin/pgvault, which starts the uploader too.
 */
export function withHugePages(tunables: string | undefined): string {
  const setting = 'glibc.malloc.hugetlb=1';
  if (tunables === undefined || tunables === '') return setting;
  return tunables.includes('glibc.malloc.hugetlb=') ? tunables : `${tunables}:${setting}`;
}

export interface UploaderOptions {
  readonly pgWalDir: string;
  readonly spoolDir: string;
  readonly idleMs?: number;
  readonly log?: (line: string) => void;
}

/** Order PostgreSQL's own archiver uses: timeline history files first, then oldest first. */
function archiveOrder(a: string, b: string): number {
  const aHistory = a.endsWith('.history');
  const bHistory = b.endsWith('.history');
  if (aHistory !== bHistory) return aHistory ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The uploader's loop: pushes every `.ready` file (in 2 × PARALLEL_JOBS batches at a time, oldest first) and writes
 * its marker; a failed file is retried after a growing delay (1 s to 10 s). Leaves after `idleMs`
 * with nothing to do, when pg_wal disappears, or when another uploader took the lock. Resolves
 * without doing anything when an uploader already runs for this spool.
 */
export async function runUploader(
  ctx: Omit<WalPushContext, 'stateDir'>,
  options: UploaderOptions,
): Promise<void> {
  const { pgWalDir, spoolDir } = options;
  const statusDir = join(pgWalDir, 'archive_status');
  const log = options.log ?? (() => {});
  const idleMs = options.idleMs ?? UPLOADER_IDLE_MS;
  // Two batches per core: each runs one compressor over its files (see pushWalFiles), and Node
  // encrypts and stores the frames of all batches as they come. With one per core a core idled
  // while its lane's objects were written and fsynced; draining 64 segments on 2 cores (same hour,
  // pgBackRest async as the yardstick): 2 lanes 6.3-6.6 segments/s, 3 lanes 6.9, 4 lanes 6.7-7.2.
  // Session 5, with per-file acknowledgement, the uploader alone over 64 segments: 2 lanes 10.4,
  // 3 lanes 10.5-10.9, 4 lanes 11.4-12.7 segments/s (and the least CPU in Node, 2.3 s against 3.6).
  const lanes = 2 * Math.max(1, ctx.config.parallelJobs);
  await mkdir(spoolDir, { recursive: true, mode: 0o700 });
  const lock = join(spoolDir, UPLOADER_LOCK);
  if (!(await takeLock(lock, UPLOADER_MARKER))) return;
  const pushCtx: WalPushContext = {
    ...ctx,
    stateDir: spoolDir,
    threads: 1,
    warn: (line) => log(`warning: ${line}`),
  };
  const inFlight = new Map<string, Promise<void>>();
  /** Files stored by this uploader, and when their `.ok` was (last) written. */
  const stored = new Map<string, number>();
  /** Files whose spool was looked at for an earlier uploader's `.ok`. */
  const looked = new Set<string>();
  const failures = new Map<string, { at: number; count: number }>();
  /**
   * After a failure nothing new starts until this time (1 s doubling to 10 s while failures go on):
   * a target that is down must not be hammered with every file of a backlog, nor the log flooded.
   */
  let pausedUntil = 0;
  let failuresInARow = 0;
  const logged = new Map<string, number>();
  const changes = changesIn(statusDir);
  let idleSince = Date.now();
  let lastSweep = 0;
  let lastReacknowledge = 0;
  let storedCount = 0;
  log(`uploader started: pid ${process.pid}, ${lanes} batches at a time, spool ${spoolDir}`);

  const onStored = async (name: string) => {
    // A new timeline's history file: the old timeline's segments its leader never archived are
    // queued (.ready) for this uploader and PostgreSQL's archiver (core/wal/backfill.ts), before the
    // archiver hears that the history file is stored.
    // Loaded here: this module is part of every archive_command's start-up.
    if (name.endsWith('.history')) {
      const { backfillAfterHistory } = require('./backfill') as typeof import('./backfill');
      await backfillAfterHistory(pushCtx, pgWalDir, join(pgWalDir, name), {
        info: log,
        warn: (line) => log(`warning: ${line}`),
      });
    }
    await writeFileAtomically(okMarker(spoolDir, name), `${name}\n`);
    await wakeWaiter(spoolDir, name);
    await unlink(errorMarker(spoolDir, name)).catch(() => {});
    stored.set(name, Date.now());
    failures.delete(name);
    failuresInARow = 0;
    storedCount++;
  };
  const onFailed = async (name: string, err: unknown) => {
    const line = pushFailureLine(err);
    // Another node's different copy under this name: one alert, however often it is retried.
    if (err instanceof WalConflictError) await alertWalConflictOnce(ctx.config, err, spoolDir);
    const count = (failures.get(name)?.count ?? 0) + 1;
    const now = Date.now();
    failures.set(name, { at: now, count });
    failuresInARow++;
    pausedUntil = now + retryDelay(failuresInARow);
    // The same reason over and over is logged once a minute.
    if ((logged.get(line) ?? 0) < now - STALE_MARKER_MS) {
      logged.set(line, now);
      log(`${name}: ${line}`);
    }
    await writeFileAtomically(errorMarker(spoolDir, name), `${line}\n`).catch(() => {});
  };
  let batches = 0;
  /** Wakes the loop when a lane frees up before its batch's objects are all complete. */
  let wake: () => void = () => {};
  const push = (names: readonly string[]) => {
    batches++;
    // A lane is free once its compressor is done: the next batch compresses while this one's last
    // objects are still being encrypted, written and fsynced.
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      batches--;
      wake();
    };
    const job = pushWalFiles(
      pushCtx,
      names.map((name) => join(pgWalDir, name)),
      (outcome) => {
        const name = basename(outcome.path);
        return 'result' in outcome ? onStored(name) : onFailed(name, outcome.error);
      },
      release,
    )
      .catch(async (err: unknown) => {
        // Only a failure to write a marker lands here; the files are tried again.
        for (const name of names) if (!stored.has(name)) await onFailed(name, err);
      })
      .finally(() => {
        release();
        for (const name of names) inFlight.delete(name);
      });
    for (const name of names) inFlight.set(name, job);
  };

  try {
    while (await holdsLock(lock)) {
      let entries: string[];
      try {
        entries = await readdir(statusDir);
      } catch {
        log(`${statusDir} is gone; the uploader stops`);
        break;
      }
      const ready = entries
        .filter((e) => e.endsWith('.ready'))
        .map((e) => e.slice(0, -'.ready'.length))
        .filter((name) => parseWalFileName(name) !== undefined)
        .sort(archiveOrder);
      const waiting = new Set(ready);
      for (const name of stored.keys()) if (!waiting.has(name)) stored.delete(name);
      for (const name of failures.keys()) if (!waiting.has(name)) failures.delete(name);
      for (const name of looked) if (!waiting.has(name)) looked.delete(name);
      const now = Date.now();
      if (now - lastReacknowledge > REACKNOWLEDGE_AFTER_MS) {
        lastReacknowledge = now;
        await reacknowledge(spoolDir, stored, now);
      }
      let pending = 0;
      const due = new Set<string>();
      for (const name of ready) {
        if (inFlight.has(name) || stored.has(name)) continue;
        if (!looked.has(name)) {
          looked.add(name);
          if (await acknowledgedEarlier(spoolDir, pgWalDir, name)) {
            // Acknowledged by an earlier uploader whose .ok is still waiting to be taken.
            stored.set(name, now);
            continue;
          }
        }
        pending++;
        const failure = failures.get(name);
        if (failure !== undefined && now - failure.at < retryDelay(failure.count)) continue;
        due.add(name);
      }
      if (now >= pausedUntil) {
        const free = lanes - batches;
        for (const batch of batchesFor(
          ready,
          (name) => due.has(name),
          free,
          lanes,
          (name) => failures.has(name),
        ))
          push(batch);
      }
      if (now - lastSweep > STALE_MARKER_MS / 4) {
        lastSweep = now;
        await removeStaleMarkers(spoolDir, waiting);
      }
      if (inFlight.size > 0 || pending > 0) idleSince = now;
      else if (now - idleSince > idleMs) break;
      const laneFree = new Promise<void>((resolve) => {
        wake = resolve;
      });
      await Promise.race([
        changes.next(),
        laneFree,
        sleep(inFlight.size > 0 ? 1000 : 250),
        ...inFlight.values(),
      ]);
    }
  } finally {
    changes.close();
    await Promise.allSettled(inFlight.values());
    await releaseLock(lock);
    log(`uploader stopped: ${storedCount} file(s) stored`);
  }
}

/** Files one compressor run takes at most: enough to spread its start-up, few enough to finish soon. */
const MAX_BATCH = 16;

/**
 * Splits the files due into at most `free` batches, one per free lane, each at most MAX_BATCH and
 * an even share of the files over all `lanes`. `waiting` is every file PostgreSQL waits for, oldest
 * first; `due` says which of them may start now (not in flight, not stored, not waiting to be
 * retried). Files are dealt across the lanes like cards: a batch takes the oldest file due and then
 * every `lanes`-th file after it, so the lanes together finish files in the order PostgreSQL's
 * archiver asks for them (oldest first, one at a time), each acknowledged as soon as it is stored;
 * batches of consecutive files made the archiver wait for one lane while the files of the others
 * piled up, and then work through them after the last one was stored. A file that failed before
 * goes alone: one unreadable file must not hold back the files batched with it again and again.
 */
export function batchesFor(
  waiting: readonly string[],
  due: (name: string) => boolean,
  free: number,
  lanes: number,
  failedBefore: (name: string) => boolean,
): string[][] {
  const batches: string[][] = [];
  const fresh = new Set<string>();
  for (const name of waiting) {
    if (!due(name)) continue;
    if (!failedBefore(name)) fresh.add(name);
    else if (batches.length < free) batches.push([name]);
  }
  const size = Math.min(MAX_BATCH, Math.ceil(fresh.size / Math.max(1, lanes)));
  let first = 0;
  while (batches.length < free && fresh.size > 0) {
    while (!fresh.has(waiting[first]!)) first++;
    const batch: string[] = [];
    for (let i = first; i < waiting.length && batch.length < size; i += lanes) {
      const name = waiting[i]!;
      if (fresh.delete(name)) batch.push(name);
    }
    batches.push(batch);
  }
  return batches;
}

function retryDelay(failures: number): number {
  return Math.min(MAX_RETRY_DELAY_MS, 1000 * 2 ** Math.max(0, failures - 1));
}

/**
 * Stored files whose `.ok` was taken while PostgreSQL still waits for them (the command failed
 * after taking it): their `.ok` is written again.
 */
async function reacknowledge(spoolDir: string, stored: Map<string, number>, now: number): Promise<void> {
  for (const [name, at] of stored) {
    if (now - at <= REACKNOWLEDGE_AFTER_MS || (await markerSize(okMarker(spoolDir, name))) > 0) continue;
    await writeFileAtomically(okMarker(spoolDir, name), `${name}\n`).catch(() => {});
    stored.set(name, now);
  }
}

/** A valid `.ok` is already there (not older than the file); an outdated one is removed. */
async function acknowledgedEarlier(spoolDir: string, pgWalDir: string, name: string): Promise<boolean> {
  const marker = await stat(okMarker(spoolDir, name)).catch(() => undefined);
  if (marker === undefined || marker.size === 0) return false;
  const file = await stat(join(pgWalDir, name)).catch(() => undefined);
  if (file !== undefined && marker.mtimeMs >= file.mtimeMs) return true;
  await unlink(okMarker(spoolDir, name)).catch(() => {});
  return false;
}

/** The size of a marker file, -1 when there is none. */
async function markerSize(path: string): Promise<number> {
  return stat(path).then(
    (info) => info.size,
    () => -1,
  );
}

/**
 * Wakes the bin/pgvault waiting for this file's marker, if one left its pid in `<name>.waiting`:
 * it sleeps a quarter second at a time and would otherwise notice the marker only then. Only a
 * process whose command line is the launcher's for this file gets the signal (the pid of a launcher
 * long gone may belong to another process by now; the launcher also becomes Node, with its pid, when
 * it hands over to the CLI).
 */
export async function wakeWaiter(spoolDir: string, name: string): Promise<void> {
  const text = await readFile(join(spoolDir, `${name}.waiting`), 'utf8').catch(() => '');
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 1) return;
  const args = (await readFile(`/proc/${pid}/cmdline`, 'latin1').catch(() => '')).split('\0');
  // The launcher script itself, never a Node process (Node starts its debugger on SIGUSR1).
  if (!args.some((arg) => basename(arg) === 'pgvault')) return;
  if (!args.some((arg) => arg.endsWith(`/${name}`) || arg === name)) return;
  try {
    process.kill(pid, 'SIGUSR1');
  } catch {
    // Gone meanwhile.
  }
}

/** Removes markers of files PostgreSQL no longer waits for, once they are old enough not to be in use. */
async function removeStaleMarkers(spoolDir: string, waiting: ReadonlySet<string>): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(spoolDir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const entry of entries) {
    const match = /^(.+)\.(ok|error|waiting)$/.exec(entry);
    if (!match || waiting.has(match[1]!)) continue;
    const info = await stat(join(spoolDir, entry)).catch(() => undefined);
    if (info !== undefined && now - info.mtimeMs > STALE_MARKER_MS)
      await unlink(join(spoolDir, entry)).catch(() => {});
  }
}
