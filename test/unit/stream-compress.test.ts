import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COMPRESSIONS, type Compression } from '../../core/config';
import { ConfigError, MissingToolError } from '../../core/errors';
import {
  compressionExtension,
  compressionFromExtension,
  compressionInvocation,
  compressStage,
  decompressStage,
  parseVersion,
  versionAtLeast,
} from '../../core/stream/compress';

const installed =
  (...names: string[]) =>
  (name: string) =>
    names.includes(name);

describe('compression extensions', () => {
  it.each([
    ['gzip', '.gz'],
    ['bzip2', '.bz2'],
    ['xz', '.xz'],
    ['zstd', '.zst'],
    ['lz4', '.lz4'],
    ['none', ''],
  ] as const)('%s uses %j', (algorithm, extension) => {
    // Act / Assess
    expect(compressionExtension(algorithm)).toBe(extension);
  });

  it('finds the compression back from a name, through .enc', () => {
    // Act / Assess
    expect(compressionFromExtension('full-daily-20260212-020000.dump.zst.enc')).toBe('zstd');
    expect(compressionFromExtension('base-weekly-20260209-030000.tar.gz')).toBe('gzip');
    expect(compressionFromExtension('000000010000000000000001.xz.enc')).toBe('xz');
    expect(compressionFromExtension('x.sql.bz2')).toBe('bzip2');
    expect(compressionFromExtension('x.sql.lz4')).toBe('lz4');
    expect(compressionFromExtension('full-daily-20260212-020000.dump')).toBeUndefined();
    expect(compressionFromExtension('full-daily-20260212-020000.dump.enc')).toBeUndefined();
  });

  it('round-trips every compression through its extension', () => {
    // Act / Assess
    for (const algorithm of COMPRESSIONS.filter((a) => a !== 'none')) {
      expect(compressionFromExtension(`backup.dump${compressionExtension(algorithm)}`)).toBe(algorithm);
    }
  });
});

describe('compressionInvocation', () => {
  it('prefers the multi-core tools and passes threads and level', () => {
    // Prepare
    const all = installed('zstd', 'pigz', 'gzip', 'lbzip2', 'pbzip2', 'bzip2', 'xz', 'lz4');

    // Act / Assess
    expect(compressionInvocation('zstd', 'compress', { threads: 4 }, all)).toEqual({
      command: 'zstd',
      args: ['-q', '-c', '-3', '-T4'],
    });
    expect(compressionInvocation('gzip', 'compress', { threads: 4, level: 9 }, all)).toEqual({
      command: 'pigz',
      args: ['-c', '-9', '-p4'],
    });
    expect(compressionInvocation('bzip2', 'decompress', { threads: 2 }, all)).toEqual({
      command: 'lbzip2',
      args: ['-d', '-c', '-n2'],
    });
    expect(compressionInvocation('xz', 'compress', { threads: 2 }, all)).toEqual({
      command: 'xz',
      args: ['-c', '-1', '-T2'],
    });
    expect(compressionInvocation('lz4', 'decompress', { threads: 8 }, all)).toEqual({
      command: 'lz4',
      args: ['-d', '-q', '-c'],
    });
    expect(compressionInvocation('none', 'compress', { threads: 2 }, all)).toBe('builtin');
  });

  it('falls back to the single-threaded tools, then to node:zlib for gzip', () => {
    // Act / Assess
    expect(compressionInvocation('gzip', 'compress', { threads: 2 }, installed('gzip'))).toEqual({
      command: 'gzip',
      args: ['-c', '-6'],
    });
    expect(compressionInvocation('gzip', 'decompress', { threads: 2 }, installed())).toBe('builtin');
    expect(compressionInvocation('bzip2', 'compress', { threads: 2 }, installed('pbzip2', 'bzip2'))).toEqual({
      command: 'pbzip2',
      args: ['-c', '-9', '-p2'],
    });
    expect(compressionInvocation('bzip2', 'compress', { threads: 2 }, installed('bzip2'))).toEqual({
      command: 'bzip2',
      args: ['-c', '-9'],
    });
  });

  it('names the preferred tool when nothing is installed, so starting it says what to install', () => {
    // Act / Assess
    expect(compressionInvocation('zstd', 'compress', { threads: 1 }, installed())).toMatchObject({
      command: 'zstd',
    });
    expect(compressionInvocation('bzip2', 'compress', { threads: 1 }, installed())).toMatchObject({
      command: 'bzip2',
    });
  });

  it('adds --ultra above zstd level 19', () => {
    // Act
    const invocation = compressionInvocation(
      'zstd',
      'compress',
      { threads: 1, level: 22 },
      installed('zstd'),
    );

    // Assess
    expect(invocation).toEqual({ command: 'zstd', args: ['-q', '-c', '-22', '--ultra', '--single-thread'] });
  });

  it.each([
    ['zstd', 23],
    ['gzip', 0],
    ['bzip2', 10],
    ['xz', -1],
    ['lz4', 2.5],
  ] as [Compression, number][])('refuses %s level %d with the valid range', (algorithm, level) => {
    // Act
    const planning = () => compressionInvocation(algorithm, 'compress', { threads: 1, level }, installed());

    // Assess
    expect(planning).toThrow(ConfigError);
    expect(planning).toThrow(/COMPRESSION_LEVEL=.* is out of range .* use \d+-\d+/);
  });

  it('refuses a thread count below one', () => {
    // Act / Assess
    expect(() => compressionInvocation('zstd', 'compress', { threads: 0 }, installed())).toThrow(
      'PARALLEL_JOBS must be a whole number of at least 1',
    );
  });
});

describe('parseVersion', () => {
  it.each([
    ['*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***', '1.5.4'],
    ['pigz 2.6', '2.6'],
    ['lbzip2 version 2.5', '2.5'],
    ['xz (XZ Utils) 5.4.1\nliblzma 5.4.1', '5.4.1'],
    ['OpenSSL 3.0.19 27 Jan 2026 (Library: OpenSSL 3.0.19 27 Jan 2026)', '3.0.19'],
    ['no version here', undefined],
  ])('reads %j as %s', (output, version) => {
    // Act / Assess
    expect(parseVersion(output)).toBe(version);
  });
});

describe('versionAtLeast', () => {
  it.each([
    ['1.5.4', true],
    ['1.5.3', true],
    ['1.5', false],
    ['1.4.8', false],
    ['2.0', true],
    [undefined, false],
  ])('says whether %s is at least 1.5.3: %s', (version, expected) => {
    expect(versionAtLeast(version, [1, 5, 3])).toBe(expected);
  });
});

describe('without any compression program on PATH', () => {
  // The PATH lookups are cached per process, so this file only ever sees an empty PATH.
  const originalPath = process.env.PATH;
  let emptyDirectory = '';

  beforeAll(() => {
    emptyDirectory = mkdtempSync(join(tmpdir(), 'pgvault-empty-path-'));
    process.env.PATH = emptyDirectory;
  });

  afterAll(() => {
    process.env.PATH = originalPath;
    rmSync(emptyDirectory, { recursive: true, force: true });
  });

  it('compresses gzip with node:zlib into a standard gzip file', async () => {
    // Prepare
    const data = Buffer.concat([randomBytes(100_000), Buffer.alloc(100_000, 'a')]);
    const output: Buffer[] = [];

    // Act
    await pipeline(Readable.from([data]), compressStage('gzip', { threads: 2 }), async (source) => {
      for await (const chunk of source) output.push(chunk as Buffer);
    });

    // Assess
    expect(gunzipSync(Buffer.concat(output)).equals(data)).toBe(true);
  });

  it('decompresses gzip with node:zlib', async () => {
    // Prepare
    const data = randomBytes(50_000);
    const compressed: Buffer[] = [];
    await pipeline(Readable.from([data]), compressStage('gzip', { threads: 1, level: 1 }), async (source) => {
      for await (const chunk of source) compressed.push(chunk as Buffer);
    });
    const output: Buffer[] = [];

    // Act
    await pipeline(Readable.from(compressed), decompressStage('gzip', { threads: 1 }), async (source) => {
      for await (const chunk of source) output.push(chunk as Buffer);
    });

    // Assess
    expect(Buffer.concat(output).equals(data)).toBe(true);
  });

  it('reports a missing zstd with the command that installs it', async () => {
    // Prepare
    const stage = compressStage('zstd', { threads: 1 });

    // Act
    const running = pipeline(Readable.from([Buffer.from('data')]), stage, async (source) => {
      for await (const _chunk of source) {
        // drain
      }
    });

    // Assess
    await expect(running).rejects.toBeInstanceOf(MissingToolError);
    await expect(running).rejects.toThrow('zstd is not installed; install it with: apt-get install zstd');
  });

  it('passes data through unchanged for none', async () => {
    // Prepare
    const data = randomBytes(1000);
    const output: Buffer[] = [];

    // Act
    await pipeline(Readable.from([data]), compressStage('none', { threads: 1 }), async (source) => {
      for await (const chunk of source) output.push(chunk as Buffer);
    });

    // Assess
    expect(Buffer.concat(output).equals(data)).toBe(true);
  });
});
