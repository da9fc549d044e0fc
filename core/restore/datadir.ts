import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readdir, readFile, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { promisify } from 'node:util';
import { removeOnExit } from '../cleanup';
import { UsageError } from '../errors';
import { chownToServerUser } from '../pg/cluster';
import { stopProcessesUsing } from './sandbox';

/*
 * A data directory built where nothing can start it half-made: in a hidden sibling of its place
 * (the same file system), renamed into place only once complete. Used by every restore that lays
 * down a data directory (`restore pitr --pgdata`, `restore replica`, `restore bootstrap`).
 *
 * The sibling is `.<name>.pgvault-building-<pid>-<tag>`: a failure removes it, and so does a normal
 * exit; after a SIGKILL (or a power loss) it stays, and the next build for the same place removes
 * it once the pid it names is no longer running.
 */

/** Where a data directory goes, as checked by its command (empty, or allowed to be replaced). */
export interface DataDirectorySlot {
  readonly pgdata: string;
  /** The directory held something and the caller said it may be replaced. */
  readonly replaces: boolean;
}

const BUILDING = '.pgvault-building-';
const REPLACED = '.pgvault-replaced-';
/**
 * In buildInside's hidden folder, written once the build is complete and before the first entry
 * moves up: the names that move (JSON). It is how a later run tells the entries a killed move left
 * in the data directory from anyone else's.
 */
const MOVING = '.pgvault-moving';

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Siblings of `pgdata` that an earlier build left when it was killed (its pid gone): half-built
 * directories are removed; an old data directory set aside by a replace that never finished is
 * kept and named (it is the only copy of that data).
 */
export async function removeAbandonedBuilds(
  pgdata: string,
  say: (line: string) => void = () => {},
): Promise<string[]> {
  const parent = dirname(pgdata);
  const prefix = `.${basename(pgdata)}`;
  let entries: string[];
  try {
    entries = await readdir(parent);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of entries) {
    if (!name.startsWith(prefix)) continue;
    const rest = name.slice(prefix.length);
    const kind = rest.startsWith(BUILDING) ? 'building' : rest.startsWith(REPLACED) ? 'replaced' : undefined;
    if (kind === undefined) continue;
    const pid = Number(/^(\d+)-/.exec(rest.slice((kind === 'building' ? BUILDING : REPLACED).length))?.[1]);
    if (!Number.isInteger(pid) || pid <= 0 || running(pid)) continue;
    const path = join(parent, name);
    if (kind === 'replaced') {
      say(
        `${path} is the data directory an interrupted replace (pid ${pid}) set aside; it was kept: remove it once ${pgdata} is what you want`,
      );
      continue;
    }
    await stopProcessesUsing(path);
    await rm(path, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    removed.push(path);
    say(`removed ${path}, a data directory an interrupted restore (pid ${pid}) left half-built`);
  }
  return removed;
}

/**
 * Builds a data directory in a hidden sibling of `slot.pgdata` (same file system, so the final
 * rename is atomic) and renames it into place only when `build` succeeded. On failure (or exit) the
 * sibling is removed and `slot.pgdata` is as it was.
 */
export async function buildBeside<T>(
  slot: DataDirectorySlot,
  build: (dir: string) => Promise<T>,
  say?: (line: string) => void,
): Promise<T> {
  const parent = dirname(slot.pgdata);
  await mkdir(parent, { recursive: true });
  if (await isMountPoint(slot.pgdata)) return buildInside(slot, build);
  await removeAbandonedBuilds(slot.pgdata, say);
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const building = join(parent, `.${basename(slot.pgdata)}${BUILDING}${tag}`);
  await mkdir(building, { mode: 0o700 });
  const forget = removeOnExit(building);
  try {
    await chownToServerUser(building);
    const result = await build(building);
    await stopProcessesUsing(building);
    // Every file of the build on disk before the rename that makes it the data directory.
    await syncFileSystem(building);
    if (slot.replaces) {
      // The old directory goes aside first and only then away: between the renames nothing is at
      // pgdata, which Patroni reads as "no data directory", never as a half-restored one.
      const old = join(parent, `.${basename(slot.pgdata)}${REPLACED}${tag}`);
      await rename(slot.pgdata, old);
      const forgetOld = removeOnExit(old);
      await testOnlyPause('beside-move');
      await rename(building, slot.pgdata);
      forget();
      await syncDirectory(parent);
      await rm(old, { recursive: true, force: true });
      forgetOld();
    } else {
      // rename(2) replaces an empty directory; an existing one is removed first to keep its name free.
      const cannotMove = (err: NodeJS.ErrnoException) =>
        new UsageError(
          `cannot move the restored data directory into ${slot.pgdata} (${err.code ?? err.message}); a data directory that is itself a mount point cannot be swapped in: make the data directory a directory below the mount point; nothing was restored`,
        );
      await rmdir(slot.pgdata).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw cannotMove(err);
      });
      await testOnlyPause('beside-move');
      await rename(building, slot.pgdata).catch((err: NodeJS.ErrnoException) => {
        throw cannotMove(err);
      });
      forget();
      await syncDirectory(parent);
    }
    return result;
  } catch (err) {
    await stopProcessesUsing(building);
    await rm(building, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    forget();
    throw err;
  }
}

/** Whether `path` is a directory on another file system than its parent (a volume mounted there). */
async function isMountPoint(path: string): Promise<boolean> {
  try {
    const [self, parent] = await Promise.all([stat(path), stat(dirname(path))]);
    return self.isDirectory() && self.dev !== parent.dev;
  } catch {
    return false;
  }
}

/**
 * A data directory that is itself a mount point cannot be renamed onto, and its parent is another
 * file system. So the build goes into a hidden folder inside it (the mount's own file system), and
 * its entries are moved up only once it is complete, PG_VERSION last: until then the directory has
 * no PG_VERSION, which PostgreSQL refuses to start. The old contents (a replace) are set aside the
 * same way first, PG_VERSION first, and removed at the end.
 *
 * Before the first entry moves, the whole build is made durable (syncfs) and the list of what moves
 * is written into the hidden folder (MOVING); from then on the folder is no longer removed at exit,
 * so a kill or a power loss mid-move leaves entries the next run can tell as ours
 * (recoverInterruptedMove): it removes them and the folder and restores anew.
 */
async function buildInside<T>(slot: DataDirectorySlot, build: (dir: string) => Promise<T>): Promise<T> {
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const building = join(slot.pgdata, `${BUILDING}${tag}`);
  await mkdir(building, { mode: 0o700 });
  let forget = removeOnExit(building);
  let moving: string[] | undefined;
  try {
    await chownToServerUser(building);
    const result = await build(building);
    await stopProcessesUsing(building);
    if (slot.replaces) {
      const old = join(slot.pgdata, `${REPLACED}${tag}`);
      await mkdir(old, { mode: 0o700 });
      const current = (await readdir(slot.pgdata)).filter(
        (n) => n !== basename(building) && n !== basename(old),
      );
      for (const name of pgVersionLast(current).reverse())
        await rename(join(slot.pgdata, name), join(old, name));
      await rm(old, { recursive: true, force: true });
    }
    await testOnlyPause('inside-built');
    const names = pgVersionLast((await readdir(building)).filter((n) => n !== MOVING));
    await syncFileSystem(building);
    await writeDurably(join(building, MOVING), `${JSON.stringify({ pid: process.pid, entries: names })}\n`);
    // From here the folder must outlive an exit (SIGTERM's cleanup too): without it and its list,
    // the entries already moved up could not be told from anyone else's.
    forget();
    forget = () => false;
    moving = names;
    for (const name of names) {
      // Every other entry's move durable before PG_VERSION's: never a startable half-directory.
      if (name === 'PG_VERSION') await Promise.all([syncDirectory(slot.pgdata), syncDirectory(building)]);
      await rename(join(building, name), join(slot.pgdata, name));
      if (name === names[Math.floor((names.length - 1) / 2)] && name !== 'PG_VERSION')
        await testOnlyPause('inside-move');
    }
    await syncDirectory(slot.pgdata);
    // Only the list is left in it; it goes last, once every entry is in place.
    await rm(building, { recursive: true, force: true });
    // PostgreSQL starts only in a directory of its own user with mode 0700.
    await chownToServerUser(slot.pgdata);
    await chmod(slot.pgdata, 0o700);
    return result;
  } catch (err) {
    await stopProcessesUsing(building);
    if (moving !== undefined) await removeEntries(slot.pgdata, moving);
    await rm(building, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    forget();
    throw err;
  }
}

function pgVersionLast(names: string[]): string[] {
  return [...names.filter((n) => n !== 'PG_VERSION'), ...names.filter((n) => n === 'PG_VERSION')];
}

/** Removes `names` from `dir`, PG_VERSION first (what is left is never a startable directory). */
async function removeEntries(dir: string, names: readonly string[]): Promise<void> {
  for (const name of pgVersionLast([...names]).reverse())
    await rm(join(dir, name), { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  await syncDirectory(dir);
}

/**
 * What a killed buildInside left inside `pgdata` (a hidden `.pgvault-building-<pid>-…` folder whose
 * pid is gone, and the entries its MOVING list names): when `pgdata` holds nothing else, the entries
 * and the folder are removed (PG_VERSION first) and one line says so; the restore then starts over
 * in an empty directory. A folder without the list (killed while building) is removed the same way.
 * Anything else in `pgdata` (someone's file, a server's postmaster.pid, a `.pgvault-replaced-` folder
 * with old data, a build of a running pgvault) leaves it all untouched: the caller refuses the
 * directory unless told to replace its contents.
 */
async function recoverInterruptedMove(pgdata: string, say: (line: string) => void): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(pgdata);
  } catch {
    return;
  }
  const folders = new Map<string, { pid: number; moving?: string[] }>();
  for (const name of entries) {
    if (!name.startsWith(BUILDING)) continue;
    const pid = Number(/^(\d+)-/.exec(name.slice(BUILDING.length))?.[1]);
    if (!Number.isInteger(pid) || pid <= 0 || running(pid)) continue;
    folders.set(name, { pid, moving: await readMovingList(join(pgdata, name, MOVING)) });
  }
  if (folders.size === 0) return;
  const listed = new Set([...folders.values()].flatMap((f) => f.moving ?? []));
  if (entries.some((n) => !folders.has(n) && !listed.has(n))) return;
  for (const [name, folder] of folders) {
    const path = join(pgdata, name);
    await stopProcessesUsing(path);
    if (folder.moving === undefined) {
      await rm(path, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
      say(`removed ${path}, a data directory an interrupted restore (pid ${folder.pid}) left half-built`);
      continue;
    }
    const moved = folder.moving.filter((n) => entries.includes(n));
    // The moved entries first, the folder (with its list) last: a kill in between is recovered again.
    await removeEntries(pgdata, moved);
    await rm(path, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    say(
      `${pgdata} held a data directory an interrupted restore (pid ${folder.pid}) was moving into place (${moved.length} of ${folder.moving.length} entries moved up, the rest in ${name}): removed it all; restoring anew`,
    );
  }
}

async function readMovingList(path: string): Promise<string[] | undefined> {
  try {
    const parsed = JSON.parse(await readFile(path, 'utf8')) as { entries?: unknown };
    const entries = parsed.entries;
    if (Array.isArray(entries) && entries.every((e) => typeof e === 'string' && e !== '' && !e.includes('/')))
      return entries as string[];
  } catch {
    // No list (killed while building, or before the list was durable): a half-built folder.
  }
  return undefined;
}

/**
 * Before a restore checks that its data directory is empty: removes what an earlier restore of the
 * same place left when it was killed, beside it (removeAbandonedBuilds) and inside it when it is a
 * mount point (recoverInterruptedMove), each with one line to `say`.
 */
export async function clearInterruptedRestore(
  pgdata: string,
  say: (line: string) => void = () => {},
): Promise<void> {
  await removeAbandonedBuilds(pgdata, say);
  await recoverInterruptedMove(pgdata, say);
}

async function writeDurably(path: string, text: string): Promise<void> {
  await writeFile(path, text, { mode: 0o600 });
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  await syncDirectory(dirname(path));
}

/** fsync of a directory: the renames into and out of it survive a power loss. */
async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw err;
  } finally {
    await handle.close();
  }
}

/** syncfs(2) of the file system holding `path` (coreutils `sync -f`): every file of a build on disk. */
async function syncFileSystem(path: string): Promise<void> {
  await promisify(execFile)('sync', ['-f', path]);
}

/**
 * TEST ONLY: lets a test SIGKILL a restore at a given step. PGVAULT_TEST_ONLY_PAUSE_AT=<step>:<dir>,
 * <dir> an absolute path to an existing directory: on reaching <step> the process writes <dir>/<step>
 * and waits forever. Anything else in the variable (unset, another step, a relative or missing
 * directory) does nothing.
 */
async function testOnlyPause(step: 'inside-built' | 'inside-move' | 'beside-move'): Promise<void> {
  const value = process.env.PGVAULT_TEST_ONLY_PAUSE_AT;
  if (value === undefined || !value.startsWith(`${step}:`)) return;
  const dir = value.slice(step.length + 1);
  if (
    !isAbsolute(dir) ||
    !(await stat(dir)
      .then((s) => s.isDirectory())
      .catch(() => false))
  )
    return;
  // Whole or not at all: the test reads the pid as soon as the file appears.
  await writeFile(join(dir, `${step}.tmp`), `${process.pid}\n`);
  await rename(join(dir, `${step}.tmp`), join(dir, step));
  await new Promise(() => setInterval(() => {}, 1 << 30));
}
