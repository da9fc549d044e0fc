import { randomBytes } from 'node:crypto';
import { close, type Dirent, fsync, open as openCallback, writeFile } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { removeOnExit } from '../cleanup';
import { ObjectExistsError, ObjectNotFoundError, StorageError } from '../errors';
import { descriptorWriteStream } from '../stream/descriptor';
import type { ObjectInfo, PutOptions, StorageTarget } from './target';

/** Backups hold secrets (table data, WAL, configuration files): only the owner may read them. */
const DIRECTORY_MODE = 0o700;
const FILE_MODE = 0o600;

const openFd = promisify(openCallback);
const fsyncFd = promisify(fsync);
const closeFd = promisify(close);
const writeFileToFd = promisify(writeFile);

/** link() failing for want of hard links on the file system (not because the key exists). */
const LINK_UNSUPPORTED = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EMLINK']);

/** `.{basename}.tmp-{random}`: written next to the final key, renamed over it when complete. */
const TEMP_FILE_PATTERN = /^\..*\.tmp-[0-9a-f]+$/;

/**
 * Throws StorageError unless `key` is a relative '/'-separated path that stays inside the target's
 * root: no absolute path, no '.', '..' or empty segment, no backslash (a separator on Windows), no NUL.
 * Every backend uses the same rule so a key valid for one is valid for all.
 */
export function assertValidKey(key: string): void {
  const reason = invalidKeyReason(key, false);
  if (reason !== undefined) throw new StorageError(`invalid key ${JSON.stringify(key)}: ${reason}`);
}

/**
 * A cloud target's key prefix (S3, Azure, GCS): where its keys live inside the bucket or container,
 * without leading or trailing '/'. The one place that turns a target's keys into the store's names
 * and back.
 */
export class KeyPrefix {
  readonly value: string;
  constructor(raw: string | undefined) {
    this.value = (raw ?? '').replace(/^\/+|\/+$/g, '');
  }
  /** The store's name of a key (or list prefix) relative to the prefix. */
  full(relative: string): string {
    return this.value === '' ? relative : `${this.value}/${relative}`;
  }
  /** The key relative to the prefix of a name the store listed under it. */
  relative(full: string): string {
    return this.value === '' ? full : full.slice(this.value.length + 1);
  }
  /** The target's location: `root`, followed by the prefix when there is one. */
  location(root: string): string {
    return this.value === '' ? root : `${root}/${this.value}`;
  }
}

/** A list prefix follows the key rules, except that it may be empty and may end with '/'. */
export function assertValidPrefix(prefix: string): void {
  const reason = invalidKeyReason(prefix, true);
  if (reason !== undefined) throw new StorageError(`invalid key prefix ${JSON.stringify(prefix)}: ${reason}`);
}

function invalidKeyReason(key: string, isPrefix: boolean): string | undefined {
  if (typeof key !== 'string') return 'not a string';
  if (key === '') return isPrefix ? undefined : 'empty';
  if (key.includes('\0')) return 'contains NUL';
  if (key.includes('\\')) return 'contains a backslash';
  if (key.startsWith('/')) return 'absolute (starts with /)';
  const segments = key.split('/');
  // A prefix may stop right after a '/', which leaves one empty last segment.
  if (isPrefix && segments[segments.length - 1] === '') segments.pop();
  for (const segment of segments) {
    if (segment === '') return 'empty path segment';
    if (segment === '.' || segment === '..') return `'${segment}' segment`;
  }
  return undefined;
}

/** Compares keys as UTF-8 bytes, the order S3 lists in, so every backend lists in the same order. */
function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function errnoCode(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** An error raised by a file-system call (it has an errno code such as EACCES or ENOSPC). */
function isErrnoError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).errno === 'number';
}

/**
 * The local filesystem target (BACKUP_DIR). Writes are atomic: data goes to a temp file beside the
 * final name, is fsynced, renamed over the key, and the directory is fsynced, so a crash leaves the
 * old object or the new one, never half of one.
 */
export class FileTarget implements StorageTarget {
  readonly kind = 'file' as const;
  readonly location: string;
  readonly root: string;
  /** The setting that names the root, for messages (BACKUP_DIR, WAL_ARCHIVE_DIR). */
  private readonly setting: string;

  constructor(root: string, options: { readonly setting?: string } = {}) {
    this.root = resolve(root);
    this.location = `file://${this.root}`;
    this.setting = options.setting ?? 'BACKUP_DIR';
  }

  async put(key: string, source: Readable, options: PutOptions = {}): Promise<{ size: number }> {
    const path = this.pathOf(key);
    // pipeline() hands the first error to the other stream too, so whichever failed first is the cause:
    // a source failure is rethrown as it is, a write failure becomes a StorageError.
    let firstFailure: { readonly from: 'source' | 'output'; readonly error: unknown } | undefined =
      source.errored ? { from: 'source', error: source.errored } : undefined;
    const onSourceError = (error: unknown) => {
      firstFailure ??= { from: 'source', error };
    };
    source.on('error', onSourceError);
    try {
      return await this.writeAtomically(
        path,
        async (fd) => {
          // The descriptor stays open after the pipeline so it can be fsynced before the rename.
          const output = descriptorWriteStream(fd);
          output.on('error', (error) => {
            firstFailure ??= { from: 'output', error };
          });
          await pipeline(source, output);
          return output.bytesWritten;
        },
        options.ifAbsent === true ? key : undefined,
      );
    } catch (err) {
      // Failing before the pipeline started (mkdir, open) must still stop the producer.
      if (!source.destroyed) source.destroy();
      if (firstFailure?.from === 'source' || !isErrnoError(err)) throw err;
      throw this.writeError(key, err);
    } finally {
      source.off('error', onSourceError);
    }
  }

  async putBytes(key: string, data: Buffer | string): Promise<void> {
    const path = this.pathOf(key);
    try {
      await this.writeAtomically(path, async (fd) => {
        const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
        await writeFileToFd(fd, bytes);
        return bytes.length;
      });
    } catch (err) {
      if (!isErrnoError(err)) throw err;
      throw this.writeError(key, err);
    }
  }

  async get(key: string): Promise<Readable> {
    const path = this.pathOf(key);
    // Opening first turns a missing key into ObjectNotFoundError here, not an ENOENT event on the stream later.
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      throw this.readError(key, err);
    }
    try {
      if (!(await handle.stat()).isFile()) throw new ObjectNotFoundError(key, this.location);
    } catch (err) {
      await handle.close();
      throw err;
    }
    return handle.createReadStream();
  }

  async getBytes(key: string): Promise<Buffer> {
    const path = this.pathOf(key);
    try {
      return await readFile(path);
    } catch (err) {
      throw this.readError(key, err);
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const path = this.pathOf(key);
    try {
      const info = await stat(path);
      if (!info.isFile()) return undefined;
      return { key, size: info.size, modified: info.mtime };
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw this.readError(key, err);
    }
  }

  async *list(prefix: string): AsyncGenerator<ObjectInfo> {
    assertValidPrefix(prefix);
    // 'c1/full/full-daily-2026' walks c1/full and keeps names starting with 'full-daily-2026'.
    const slash = prefix.lastIndexOf('/');
    const directoryKey = slash === -1 ? '' : prefix.slice(0, slash);
    const namePrefix = prefix.slice(slash + 1);
    yield* this.walk(directoryKey, namePrefix);
  }

  async delete(key: string): Promise<void> {
    const path = this.pathOf(key);
    try {
      await unlink(path);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw new StorageError(
        `cannot delete ${key} in ${this.location} (${code ?? errorText(err)}); check the owner and permissions of ${this.setting} ${this.root}`,
        { cause: err },
      );
    }
  }

  async probe(prefix: string): Promise<void> {
    const directory = this.pathOf(prefix);
    const probePath = join(directory, `.pgvault-probe.tmp-${randomBytes(6).toString('hex')}`);
    try {
      await mkdir(directory, { recursive: true, mode: DIRECTORY_MODE });
      const handle = await open(probePath, 'wx', FILE_MODE);
      try {
        await handle.write('pgvault probe\n');
      } finally {
        await handle.close();
      }
      await unlink(probePath);
    } catch (err) {
      await unlink(probePath).catch(() => {});
      throw this.notWritableError(err);
    }
  }

  /** Absolute path of a key, after checking the key cannot leave the root. */
  private pathOf(key: string): string {
    assertValidKey(key);
    const path = join(this.root, ...key.split('/'));
    // Validation already rules this out; the check keeps a future change to it from opening a hole.
    if (!path.startsWith(this.root + sep))
      throw new StorageError(`invalid key ${JSON.stringify(key)}: outside the root`);
    return path;
  }

  /**
   * Writes through `write` into a temp file beside `path`, then fsyncs, renames over `path` and fsyncs
   * the directory. On any failure the temp file is removed and the original error is rethrown.
   * With `createOnly` (the key, PutOptions.ifAbsent) the temp file is linked to `path` instead, which
   * fails rather than replace another writer's object: ObjectExistsError, and that object untouched.
   */
  private async writeAtomically(
    path: string,
    write: (fd: number) => Promise<number>,
    createOnly?: string,
  ): Promise<{ size: number }> {
    const directory = dirname(path);
    await mkdir(directory, { recursive: true, mode: DIRECTORY_MODE });
    const tempPath = join(directory, `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
    // A plain descriptor, not a FileHandle: a FileHandle's close() waits forever for a stream made
    // from it with autoClose: false.
    const fd = await openFd(tempPath, 'wx', FILE_MODE);
    const forget = removeOnExit(tempPath);
    try {
      let size: number;
      try {
        size = await write(fd);
        await fsyncFd(fd);
      } finally {
        await closeFd(fd);
      }
      if (createOnly === undefined) {
        await rename(tempPath, path);
      } else {
        try {
          await link(tempPath, path);
        } catch (err) {
          const code = errnoCode(err);
          if (code === 'EEXIST') throw new ObjectExistsError(createOnly, this.location, { cause: err });
          if (!LINK_UNSUPPORTED.has(code ?? '')) throw err;
          // A file system without hard links: look, then rename (a narrow race instead of none).
          if ((await stat(path).catch(() => undefined)) !== undefined) {
            throw new ObjectExistsError(createOnly, this.location, { cause: err });
          }
          await rename(tempPath, path);
        }
        await unlink(tempPath).catch((err: unknown) => {
          if (errnoCode(err) !== 'ENOENT') throw err;
        });
      }
      forget();
      await syncDirectory(directory);
      return { size };
    } catch (err) {
      await unlink(tempPath).catch(() => {});
      throw err;
    } finally {
      forget();
    }
  }

  private writeError(key: string, err: NodeJS.ErrnoException): StorageError {
    const code = err.code ?? String(err.errno);
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return this.notWritableError(err);
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      return new StorageError(
        `${this.setting} ${this.root} is full (${code}) while writing ${key}; free space or move ${this.setting} to a larger volume`,
        { cause: err },
      );
    }
    return new StorageError(
      `cannot write ${key} in ${this.location} (${code}); check ${this.setting} ${this.root} and its volume`,
      { cause: err },
    );
  }

  private readError(key: string, err: unknown): Error {
    if (err instanceof StorageError) return err;
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR')
      return new ObjectNotFoundError(key, this.location);
    if (code === 'EACCES' || code === 'EPERM') {
      return new StorageError(
        `cannot read ${key} in ${this.location} (${code}); fix the owner or permissions of ${this.setting} ${this.root}`,
        { cause: err },
      );
    }
    return new StorageError(
      `cannot read ${key} in ${this.location} (${code ?? errorText(err)}); check the volume`,
      {
        cause: err,
      },
    );
  }

  private notWritableError(err: unknown): StorageError {
    const code = errnoCode(err);
    if (code === 'EROFS') {
      return new StorageError(
        `${this.setting} ${this.root} is not writable (EROFS); mount its file system read-write or choose another directory`,
        { cause: err },
      );
    }
    if (code === 'EACCES' || code === 'EPERM') {
      return new StorageError(
        `${this.setting} ${this.root} is not writable (${code}); fix its owner or permissions`,
        {
          cause: err,
        },
      );
    }
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      return new StorageError(
        `${this.setting} ${this.root} is full (${code}); free space or use a larger volume`,
        {
          cause: err,
        },
      );
    }
    if (code === 'ENOTDIR' || code === 'EEXIST') {
      return new StorageError(
        `${this.setting} ${this.root} is not a directory (${code}); point it at a directory`,
        {
          cause: err,
        },
      );
    }
    return new StorageError(
      `${this.setting} ${this.root} cannot be written (${code ?? errorText(err)}); check the path`,
      {
        cause: err,
      },
    );
  }

  /**
   * Yields the objects under `directoryKey` whose first name component starts with `namePrefix`, in
   * ascending key order, one directory read at a time.
   */
  private async *walk(directoryKey: string, namePrefix: string): AsyncGenerator<ObjectInfo> {
    const directoryPath = directoryKey === '' ? this.root : join(this.root, ...directoryKey.split('/'));
    let entries: Dirent[];
    try {
      entries = await readdir(directoryPath, { withFileTypes: true });
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw new StorageError(
        `cannot list ${directoryKey || '/'} in ${this.location} (${code ?? errorText(err)}); fix the owner or permissions of ${this.setting} ${this.root}`,
        { cause: err },
      );
    }
    // A directory sorts as 'name/': every key under it then falls between its siblings exactly where a
    // flat sorted listing (S3's) would put it, e.g. 'a-c' before 'a/b'.
    const candidates = entries
      .filter((entry) => entry.name.startsWith(namePrefix) && !TEMP_FILE_PATTERN.test(entry.name))
      .map((entry) => ({ entry, sortName: entry.isDirectory() ? `${entry.name}/` : entry.name }))
      .sort((a, b) => compareKeys(a.sortName, b.sortName));
    for (const { entry } of candidates) {
      const key = directoryKey === '' ? entry.name : `${directoryKey}/${entry.name}`;
      if (entry.isDirectory()) {
        yield* this.walk(key, '');
        continue;
      }
      let info: Awaited<ReturnType<typeof stat>>;
      try {
        // stat follows a symlink to a file; directories are only entered when real, so no loops.
        info = await stat(join(directoryPath, entry.name));
      } catch (err) {
        // Deleted between readdir and stat (retention running concurrently): no longer listed.
        if (errnoCode(err) === 'ENOENT') continue;
        throw err;
      }
      if (info.isFile()) yield { key, size: info.size, modified: info.mtime };
    }
  }
}

async function syncDirectory(directory: string): Promise<void> {
  let handle: Awaited<ReturnType<typeof open>> | undefined;
  try {
    handle = await open(directory, 'r');
    await handle.sync();
  } catch (err) {
    // Some file systems cannot fsync a directory; the rename itself has still happened.
    const code = errnoCode(err);
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw err;
  } finally {
    await handle?.close();
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
