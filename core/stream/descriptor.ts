import { createWriteStream, open, type WriteStream, write, writev } from 'node:fs';

/**
 * A WriteStream over a descriptor its caller owns: it writes, and never closes the descriptor. With
 * `autoClose: false` alone a WriteStream still closes it when destroyed, which pipeline() does to
 * every stream on an error; the caller's own close (after an fsync) then hit EBADF, or, had the
 * number been reused meanwhile, closed another file. Hence its fs methods, with a close that leaves
 * the descriptor alone.
 */
export function descriptorWriteStream(fd: number): WriteStream {
  return createWriteStream('', {
    fd,
    autoClose: false,
    fs: {
      open,
      write,
      writev,
      close: (_fd: number, callback: (err: NodeJS.ErrnoException | null) => void) => callback(null),
    },
  });
}
