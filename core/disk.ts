import { statfs } from 'node:fs/promises';
import { UsageError } from './errors';

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
