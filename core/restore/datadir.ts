import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
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
    if (slot.replaces) {
      // The old directory goes aside first and only then away: between the renames nothing is at
      // pgdata, which Patroni reads as "no data directory", never as a half-restored one.
      const old = join(parent, `.${basename(slot.pgdata)}${REPLACED}${tag}`);
      await rename(slot.pgdata, old);
      const forgetOld = removeOnExit(old);
      await rename(building, slot.pgdata);
      forget();
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
      await rename(building, slot.pgdata).catch((err: NodeJS.ErrnoException) => {
        throw cannotMove(err);
      });
      forget();
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
 */
async function buildInside<T>(slot: DataDirectorySlot, build: (dir: string) => Promise<T>): Promise<T> {
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const building = join(slot.pgdata, `${BUILDING}${tag}`);
  await mkdir(building, { mode: 0o700 });
  const forget = removeOnExit(building);
  try {
    await chownToServerUser(building);
    const result = await build(building);
    await stopProcessesUsing(building);
    const pgVersionLast = (names: string[]) => [
      ...names.filter((n) => n !== 'PG_VERSION'),
      ...names.filter((n) => n === 'PG_VERSION'),
    ];
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
    for (const name of pgVersionLast(await readdir(building)))
      await rename(join(building, name), join(slot.pgdata, name));
    await rmdir(building);
    forget();
    // PostgreSQL starts only in a directory of its own user with mode 0700.
    await chownToServerUser(slot.pgdata);
    await chmod(slot.pgdata, 0o700);
    return result;
  } catch (err) {
    await stopProcessesUsing(building);
    await rm(building, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    forget();
    throw err;
  }
}
