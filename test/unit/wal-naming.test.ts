import { pbkdf2Sync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { ConfigError } from '../../core/errors';
import { decodedFileProblem, newArchiveIdentity, parseArchiveIdentity, walCodec } from '../../core/wal/fetch';
import {
  parseWalSegmentHeader,
  requireWalFileName,
  segmentHeaderMismatch,
  walKey,
  walKeyExtension,
  walNameFromKey,
} from '../../core/wal/naming';

const SYSID = 7345123456789012345n;

/** The first 40 bytes of a segment as PostgreSQL 15 writes them (XLogLongPageHeaderData). */
function longHeader(options: {
  tli?: number;
  pageAddress: bigint;
  sysid?: bigint;
  segmentBytes?: number;
}): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt16LE(0xd110, 0);
  b.writeUInt16LE(0x0002 | 0x0004, 2); // XLP_LONG_HEADER | XLP_BKP_REMOVABLE
  b.writeUInt32LE(options.tli ?? 1, 4);
  b.writeBigUInt64LE(options.pageAddress, 8);
  b.writeBigUInt64LE(options.sysid ?? SYSID, 24);
  b.writeUInt32LE(options.segmentBytes ?? 16 * 1024 * 1024, 32);
  b.writeUInt32LE(8192, 36);
  return b;
}

describe('WAL segment header', () => {
  it('reads the system identifier, segment size and page address', () => {
    // Act
    const header = parseWalSegmentHeader(longHeader({ pageAddress: 0x3000000n }));

    // Assess
    expect(header).toMatchObject({
      systemIdentifier: SYSID.toString(),
      segmentBytes: 16 * 1024 * 1024,
      pageAddress: 0x3000000n,
      timeline: 1,
      blockBytes: 8192,
    });
  });

  it('rejects bytes that are no long page header', () => {
    const short = parseWalSegmentHeader(Buffer.alloc(20));
    const noLongFlag = longHeader({ pageAddress: 0n });
    noLongFlag.writeUInt16LE(0, 2);
    const oddSize = longHeader({ pageAddress: 0n, segmentBytes: 3 * 1024 * 1024 });

    expect(short).toBeUndefined();
    expect(parseWalSegmentHeader(noLongFlag)).toBeUndefined();
    expect(parseWalSegmentHeader(oddSize)).toBeUndefined();
  });

  it('checks the header against the name: page address, and a timeline not newer than the name', () => {
    // Prepare: 1 MiB segments, segment 0x805 of log 1 on timeline 2 starts at 1/80500000.
    const file = requireWalFileName('000000020000000100000805');
    const address = (1n << 32n) + 0x805n * 1024n * 1024n;

    // Act
    const fits = segmentHeaderMismatch(
      file,
      parseWalSegmentHeader(longHeader({ tli: 1, pageAddress: address, segmentBytes: 1 << 20 }))!,
    );
    const wrongPlace = segmentHeaderMismatch(
      file,
      parseWalSegmentHeader(longHeader({ tli: 2, pageAddress: 0n, segmentBytes: 1 << 20 }))!,
    );
    const newerTimeline = segmentHeaderMismatch(
      file,
      parseWalSegmentHeader(longHeader({ tli: 3, pageAddress: address, segmentBytes: 1 << 20 }))!,
    );

    // Assess: the first segment of a new timeline starts with its parent's pages, so tli 1 fits.
    expect(fits).toBeUndefined();
    expect(wrongPlace).toMatch(/first page is for LSN 0\/0, the name says 1\/80500000/);
    expect(newerTimeline).toMatch(/timeline 3, newer than the name's 2/);
  });

  it('refuses to serve a decoded segment of the wrong size or another server', () => {
    const file = requireWalFileName('000000010000000000000003');
    const identity = newArchiveIdentity('c', SYSID.toString(), 16 * 1024 * 1024, 1000);
    const head = longHeader({ pageAddress: 0x3000000n });
    const foreign = longHeader({ pageAddress: 0x3000000n, sysid: SYSID + 1n });

    expect(decodedFileProblem(file, 16 * 1024 * 1024, head, identity)).toBeUndefined();
    expect(decodedFileProblem(file, 1000, head, identity)).toMatch(/decoded size 1000 bytes/);
    expect(decodedFileProblem(file, 16 * 1024 * 1024, foreign, identity)).toMatch(/system identifier/);
    expect(
      decodedFileProblem(
        requireWalFileName('00000002.history'),
        12,
        Buffer.from('1\t0/3000000\tx'),
        identity,
      ),
    ).toBeUndefined();
  });
});

describe('WAL keys', () => {
  it('finds the WAL file and its extension in a key, and nothing for another file', () => {
    const segment = requireWalFileName('000000010000000000000002');
    const key = walKey('c', segment, '.zst.enc');

    expect(key).toBe('c/wal/00000001/0000000100000000/000000010000000000000002.zst.enc');
    expect(walKeyExtension(key, segment)).toBe('.zst.enc');
    expect(walKeyExtension('c/wal/00000001/0000000100000000/000000010000000000000002', segment)).toBe('');
    expect(
      walKeyExtension('c/wal/00000001/0000000100000000/000000010000000000000002.partial.zst', segment),
    ).toBeUndefined();
    expect(walNameFromKey('c/wal/00000002/00000002.history.gz')?.kind).toBe('history');
  });
});

describe('archive identity', () => {
  it('round-trips and refuses anything else', () => {
    const identity = newArchiveIdentity('main', '123', 1 << 24, 100000, new Date('2026-01-01T00:00:00Z'));

    expect(parseArchiveIdentity(JSON.stringify(identity), 'x')).toEqual(identity);
    expect(() => parseArchiveIdentity('{"format":"other"}', 'c/wal/archive.json')).toThrow(
      /c\/wal\/archive.json is not a pgvault WAL archive identity/,
    );
  });
});

describe('WAL encryption passphrase', () => {
  const config = parseConfig(
    { ENCRYPTION: 'true', ENCRYPTION_KEY: 'the user key', ENCRYPTION_ITERATIONS: '200000' },
    [],
    '/data',
  );
  const segment = requireWalFileName('000000010000000000000003');
  const history = requireWalFileName('00000002.history');

  it('segments of a new archive use a passphrase derived once from the key; other files the key itself', async () => {
    // Prepare
    const identity = newArchiveIdentity('main', '7300', 1 << 24, 200_000);
    const expected = pbkdf2Sync('the user key', 'pgvault-wal-key/main/7300', 200_000, 32, 'sha256').toString(
      'hex',
    );

    // Act
    const forSegment = await walCodec(config, identity, segment);
    const forHistory = await walCodec(config, identity, history);

    // Assess
    expect(identity.walKey).toEqual({
      kdf: 'pbkdf2-sha256',
      salt: 'pgvault-wal-key/main/7300',
      iterations: 200_000,
      objectIterations: 1000,
    });
    expect(forSegment).toEqual({ passphrase: expected, iterations: 1000 });
    expect(forHistory).toEqual({ passphrase: 'the user key', iterations: 200_000 });
  });

  it('an archive made before derived passphrases keeps using the key at its own iteration count', async () => {
    // Prepare: an identity as pgvault 0.1 wrote it.
    const { walKey: _dropped, ...old } = newArchiveIdentity('main', '7300', 1 << 24, 50_000);
    const parsed = parseArchiveIdentity(JSON.stringify(old), 'archive.json');

    // Act
    const codec = await walCodec(config, parsed, segment);

    // Assess
    expect(parsed.walKey).toBeUndefined();
    expect(codec).toEqual({ passphrase: 'the user key', iterations: 50_000 });
  });

  it('refuses an identity whose derivation is malformed', () => {
    const identity = newArchiveIdentity('main', '7300', 1 << 24, 1000);
    const broken = { ...identity, walKey: { ...identity.walKey, iterations: 0 } };
    expect(() => parseArchiveIdentity(JSON.stringify(broken), 'archive.json')).toThrow(
      /not a pgvault WAL archive identity/,
    );
  });
});

describe('WAL settings', () => {
  it('reads ARCHIVE_ASYNC, SPOOL_DIR (from the data directory), ARCHIVE_TIMEOUT and WAL_PREFETCH', () => {
    const config = parseConfig(
      { ARCHIVE_ASYNC: 'yes', SPOOL_DIR: 'spool', ARCHIVE_TIMEOUT: '5', PARALLEL_JOBS: '3' },
      [],
      '/data',
    );
    const defaults = parseConfig({ PARALLEL_JOBS: '2' }, [], '/data');

    expect(config).toMatchObject({
      archiveAsync: true,
      spoolDir: '/data/spool',
      archiveTimeoutSeconds: 5,
      walPrefetch: 6,
    });
    expect(defaults).toMatchObject({
      archiveAsync: false,
      spoolDir: undefined,
      archiveTimeoutSeconds: 60,
      walPrefetch: 4,
    });
  });

  it('names the key, the value and what is allowed', () => {
    expect(() => parseConfig({ ARCHIVE_ASYNC: 'sometimes' })).toThrow(
      new ConfigError('ARCHIVE_ASYNC=sometimes is not allowed; use true or false'),
    );
    expect(() => parseConfig({ WAL_PREFETCH: '-1' })).toThrow(
      /WAL_PREFETCH=-1 is not allowed; use a whole number, 0 to 1024/,
    );
  });
});
