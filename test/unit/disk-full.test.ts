import { describe, expect, it } from 'vitest';
import { diskFullError, isDiskFull } from '../../core/disk';
import { IntegrityError, StorageError } from '../../core/errors';
import { ToolExitError } from '../../core/stream/process';

/**
 * A full disk while writing is named by the path being written, and never taken for a corrupt
 * object: Node's ENOSPC carries no path for a descriptor write, and zstd writing a file itself says
 * it only on stderr. (Integration: check.test.ts fills a real 256 kB tmpfs with restore wal.)
 */
describe('disk full', () => {
  it("recognises Node's ENOSPC and EDQUOT, and zstd's words for them", () => {
    const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const zstd = new ToolExitError(
      'zstd',
      1,
      null,
      'zstd: error 70 : Write error : cannot write decoded block : No space left on device',
    );
    expect(isDiskFull(enospc)).toBe(true);
    expect(isDiskFull(Object.assign(new Error('quota'), { code: 'EDQUOT' }))).toBe(true);
    expect(isDiskFull(zstd)).toBe(true);
    expect(isDiskFull(new Error('wrapped', { cause: enospc }))).toBe(true);
  });

  it('leaves corruption and other failures alone', () => {
    const corrupt = new ToolExitError(
      'zstd',
      1,
      null,
      '/*stdin*\\ : Decoding error (36) : Data corruption detected',
    );
    expect(isDiskFull(corrupt)).toBe(false);
    expect(isDiskFull(new IntegrityError('sha256 differs'))).toBe(false);
    expect(diskFullError(corrupt, '/x', 'hint')).toBeUndefined();
  });

  it('names the path and the way out', () => {
    const err = diskFullError(
      Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }),
      '/var/lib/postgresql/15/main/pg_wal/000000010000000000000003',
      'free space and retry',
    );
    expect(err).toBeInstanceOf(StorageError);
    expect(err?.message).toBe(
      'no space left writing /var/lib/postgresql/15/main/pg_wal/000000010000000000000003 (ENOSPC); free space and retry',
    );
  });
});
