import { statfs } from 'node:fs/promises';
import { errorMessage, StorageError, UsageError } from './errors';

function size(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/**
 * Refuses up front, in one line, work that would fill a disk halfway through (a restore staging a
 * dump, a base backup extracted): `what` names the work, `hint` the way out.
 */
export async function ensureFreeSpace(dir: string, bytes: number, what: string, hint: string): Promise<void> {
  let free: number;
  try {
    const s = await statfs(dir);
    free = Number(s.bavail) * Number(s.bsize);
  } catch {
    return; // statfs unsupported here: the write itself reports a full disk.
  }
  if (free < bytes * 1.05) {
    throw new UsageError(`${what} needs ${size(bytes)} in ${dir} but only ${size(free)} is free; ${hint}`);
  }
}

/**
 * Whether a failure is a full disk (or quota) on the writing side: Node's ENOSPC/EDQUOT, or a
 * program that wrote the file itself (zstd writing a restore's staging file) saying so on stderr.
 */
export function isDiskFull(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return true;
    const stderr = (e as { stderr?: unknown }).stderr;
    const text = `${e.message}\n${typeof stderr === 'string' ? stderr : ''}`;
    if (/No space left on device|Disk quota exceeded/i.test(text)) return true;
  }
  return false;
}

/**
 * A full disk named by the path being written, with the way out; undefined for any other failure.
 * (A descriptor's write error carries no path, and a program's names only its stdout.)
 */
export function diskFullError(err: unknown, path: string, hint: string): StorageError | undefined {
  if (!isDiskFull(err)) return undefined;
  const code = /EDQUOT|quota/i.test(errorMessage(err)) ? 'EDQUOT' : 'ENOSPC';
  return new StorageError(`no space left writing ${path} (${code}); ${hint}`, { cause: err });
}
