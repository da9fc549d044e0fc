import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarArchive } from '../../core/backup/tar';
import { IntegrityError } from '../../core/errors';
import { parseTarNumber, type TarEntry, TarScanner, type TarScannerOptions } from '../../core/pg/tar';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function slices(bytes: Buffer, sizes: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let k = 0;
  for (let pos = 0; pos < bytes.length; k++) {
    const n = sizes[k % sizes.length]!;
    out.push(bytes.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

/** Runs bytes through a scanner in the given chunks; returns what came out and the scanner. */
async function scan(
  chunks: readonly Buffer[],
  options: TarScannerOptions = {},
): Promise<{ out: Buffer; scanner: TarScanner; entries: TarEntry[] }> {
  const entries: TarEntry[] = [];
  const scanner = new TarScanner({ ...options, onEntry: (e) => entries.push(e) });
  const parts: Buffer[] = [];
  await pipeline(
    Readable.from(chunks, { objectMode: false }),
    scanner,
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        parts.push(chunk);
        cb();
      },
    }),
  );
  return { out: Buffer.concat(parts), scanner, entries };
}

const LABEL = [
  'START WAL LOCATION: 0/2000028 (file 000000010000000000000002)',
  'CHECKPOINT LOCATION: 0/2000060',
  'BACKUP METHOD: streamed',
  'BACKUP FROM: primary',
  'START TIME: 2026-11-24 09:42:56 UTC',
  'LABEL: pg_basebackup base backup',
  'START TIMELINE: 1',
  '',
].join('\n');

let work: string;
let manifest: Buffer;
let gnuTar: Buffer;
let paxTar: Buffer;
const longPath = `base/${'d'.repeat(60)}/${'e'.repeat(60)}/${'f'.repeat(40)}.dat`;

beforeAll(async () => {
  // Prepare: a small data directory with what pg_basebackup writes, plus what other tars do.
  work = await mkdtemp(join(tmpdir(), 'pgvault-tar-unit-'));
  const src = join(work, 'src');
  await mkdir(join(src, 'base', 'd'.repeat(60), 'e'.repeat(60)), { recursive: true });
  await mkdir(join(src, 'pg_wal', 'archive_status'), { recursive: true });
  await writeFile(join(src, 'backup_label'), LABEL);
  await writeFile(join(src, 'empty'), '');
  await writeFile(join(src, 'base', 'blob'), randomBytes(70_001));
  await writeFile(join(src, longPath), 'long path content');
  await symlink('base/blob', join(src, 'link'));
  manifest = Buffer.concat([
    Buffer.from('{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n'),
    Buffer.from(
      Array.from(
        { length: 3000 },
        (_, i) => `{ "Path": "base/1/${i}", "Size": 8192, "Checksum": "${i.toString(16)}" },\n`,
      ).join(''),
    ),
    Buffer.from(
      '],\n"WAL-Ranges": [\n{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }\n],\n"Manifest-Checksum": "cc3b"}\n',
    ),
  ]);
  await writeFile(join(src, 'backup_manifest'), manifest);
  const members = ['backup_label', 'empty', 'base', 'link', 'pg_wal', 'backup_manifest'];
  gnuTar = execFileSync('tar', ['-c', '--format=gnu', '-C', src, ...members], { maxBuffer: 1 << 26 });
  paxTar = execFileSync('tar', ['-c', '--format=pax', '-C', src, ...members], { maxBuffer: 1 << 26 });
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const capture = {
  backup_label: { headBytes: 64 * 1024 },
  backup_manifest: { tailBytes: 4096, sha256: true },
};

describe('TarScanner', () => {
  it.each([
    ['GNU', () => gnuTar],
    ['pax', () => paxTar],
  ])('passes a %s tar through unchanged and captures the named members', async (_name, archive) => {
    // Act
    const bytes = archive();
    const { out, scanner, entries } = await scan(slices(bytes, [777, 1, 512, 4096, 13]), { capture });

    // Assess
    expect(out.equals(bytes)).toBe(true);
    expect(scanner.complete).toBe(true);
    expect(scanner.member('backup_label')?.head.toString()).toBe(LABEL);
    const m = scanner.member('backup_manifest')!;
    expect(m.size).toBe(manifest.length);
    expect(m.sha256).toBe(sha256(manifest));
    expect(m.tail.equals(manifest.subarray(manifest.length - 4096))).toBe(true);
    const names = entries.map((e) => e.name.replace(/\/$/, ''));
    expect(names).toContain(longPath);
    expect(names).toContain('link');
    expect(names).toContain('pg_wal/archive_status');
    expect(entries.find((e) => e.name === 'base/blob')?.size).toBe(70_001);
    expect(scanner.entries).toBe(entries.length);
  });

  it('writes a member whole to a file as it passes (toFile), in any chunking, with the captured digest', async () => {
    // Prepare
    const file = join(work, 'captured-manifest');

    // Act
    const { out, scanner } = await scan(slices(gnuTar, [333, 1, 8192, 511]), {
      capture: { backup_manifest: { tailBytes: 4096, sha256: true, toFile: file } },
    });

    // Assess
    expect(out.equals(gnuTar)).toBe(true);
    const written = await readFile(file);
    expect(written.equals(manifest)).toBe(true);
    expect(sha256(written)).toBe(scanner.member('backup_manifest')!.sha256);
  });

  it('frames any chunking the same way (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 20 }),
        async (sizes) => {
          const { out, scanner } = await scan(slices(gnuTar, sizes), { capture });
          expect(out.equals(gnuTar)).toBe(true);
          expect(scanner.member('backup_manifest')?.sha256).toBe(sha256(manifest));
          expect(scanner.member('backup_label')?.head.toString()).toBe(LABEL);
        },
      ),
      { numRuns: 40 },
    );
  });

  it("reads pgvault's own ustar writer", async () => {
    const bytes = tarArchive([
      { name: 'a.txt', content: 'alpha' },
      { name: 'backup_label', content: LABEL },
    ]);
    const { scanner, entries } = await scan([bytes], { capture });
    expect(entries.map((e) => e.name)).toEqual(['a.txt', 'backup_label']);
    expect(scanner.member('backup_label')?.head.toString()).toBe(LABEL);
    expect(scanner.complete).toBe(true);
  });

  it('keeps only the configured head of a large member', async () => {
    const { scanner } = await scan([gnuTar], { capture: { 'base/blob': { headBytes: 100, tailBytes: 50 } } });
    const blob = await readFile(join(work, 'src', 'base', 'blob'));
    const m = scanner.member('base/blob')!;
    expect(m.head.equals(blob.subarray(0, 100))).toBe(true);
    expect(m.tail.equals(blob.subarray(blob.length - 50))).toBe(true);
    expect(m.sha256).toBeUndefined();
  });

  it('reports a truncated archive as incomplete', async () => {
    const whole = await scan([gnuTar]);
    const at = whole.entries.find((e) => e.name === 'backup_manifest')!.offset;
    const { scanner } = await scan([gnuTar.subarray(0, at + 512 + 1000)], { capture });
    expect(scanner.complete).toBe(false);
    expect(scanner.member('backup_manifest')).toBeUndefined();
  });

  it('fails on a header with a bad checksum, naming the offset', async () => {
    const damaged = Buffer.from(gnuTar);
    damaged[1] = damaged[1]! ^ 0x01; // inside the first header's name
    await expect(scan([damaged], { label: 'pg_basebackup output' })).rejects.toThrow(IntegrityError);
    await expect(scan([damaged], { label: 'pg_basebackup output' })).rejects.toThrow(
      /pg_basebackup output is not a valid tar archive: header at byte 0 has a bad checksum/,
    );
  });
});

describe('parseTarNumber', () => {
  it('reads octal fields with NUL or space terminators', () => {
    expect(parseTarNumber(Buffer.from('00000001750\0', 'latin1'))).toBe(1000);
    expect(parseTarNumber(Buffer.from('   1750 \0', 'latin1'))).toBe(1000);
    expect(parseTarNumber(Buffer.alloc(12))).toBe(0);
  });

  it('reads the GNU base-256 form used for members of 8 GiB and more', () => {
    const field = Buffer.alloc(12);
    field[0] = 0x80;
    field.writeUIntBE(10 * 1024 ** 3, 6, 6);
    expect(parseTarNumber(field)).toBe(10 * 1024 ** 3);
  });

  it('refuses garbage', () => {
    expect(parseTarNumber(Buffer.from('12x4\0', 'latin1'))).toBeNaN();
  });
});
