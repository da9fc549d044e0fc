import { UsageError } from '../errors';

/**
 * WAL file names and where they live in a target. Segments are grouped by timeline and by "log"
 * (the first 16 hex digits of the name: timeline + high 32 bits of the LSN; 256 segments, 4 GB of
 * WAL with the default 16 MB segments), so retention drops whole folders by prefix and a
 * listing never has to walk every segment:
 *
 *   {cluster}/wal/{timeline}/{timeline+log}/{segment}{ext}        000000010000000000000002.zst.enc
 *   {cluster}/wal/{timeline}/{timeline+log}/{segment}.{off}.backup{ext}
 *   {cluster}/wal/{timeline}/{timeline+log}/{segment}.partial{ext}
 *   {cluster}/wal/{timeline}/{timeline}.history{ext}
 */

export type WalFileKind = 'segment' | 'partial' | 'backup' | 'history';

export interface WalFileName {
  readonly name: string;
  readonly kind: WalFileKind;
  /** Timeline as 8 hex digits. */
  readonly timeline: string;
  /** For segments, partials and .backup files: the 24-hex-digit segment name. */
  readonly segment?: string;
}

const SEGMENT = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/;
const PARTIAL = /^([0-9A-F]{24})\.partial$/;
const BACKUP = /^([0-9A-F]{24})\.[0-9A-F]{8}\.backup$/;
const HISTORY = /^([0-9A-F]{8})\.history$/;

/** Parses a WAL file name as PostgreSQL passes it (%f), or undefined when it is none. */
export function parseWalFileName(name: string): WalFileName | undefined {
  if (SEGMENT.test(name)) return { name, kind: 'segment', timeline: name.slice(0, 8), segment: name };
  const partial = PARTIAL.exec(name);
  if (partial) return { name, kind: 'partial', timeline: name.slice(0, 8), segment: partial[1]! };
  const backup = BACKUP.exec(name);
  if (backup) return { name, kind: 'backup', timeline: name.slice(0, 8), segment: backup[1]! };
  const history = HISTORY.exec(name);
  if (history) return { name, kind: 'history', timeline: history[1]! };
  return undefined;
}

export function requireWalFileName(name: string): WalFileName {
  const parsed = parseWalFileName(name);
  if (!parsed) {
    throw new UsageError(
      `${name} is not a WAL file name (like 000000010000000000000002, 00000002.history, or a .backup/.partial file)`,
    );
  }
  return parsed;
}

/** Folder of a WAL file, relative to the target root. */
export function walFolder(cluster: string, file: WalFileName): string {
  const base = `${cluster}/wal/${file.timeline}`;
  return file.kind === 'history' ? base : `${base}/${file.segment!.slice(0, 16)}`;
}

/** Full key of a WAL file: folder + name + the compression and encryption extensions. */
export function walKey(cluster: string, file: WalFileName, extension: string): string {
  return `${walFolder(cluster, file)}/${file.name}${extension}`;
}

/** The WAL file name inside a key (strips folder and .zst/.enc style extensions). */
export function walNameFromKey(key: string): WalFileName | undefined {
  const base = key.slice(key.lastIndexOf('/') + 1);
  const m = /^([0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)(?:\.[a-z0-9]+)*$/.exec(
    base,
  );
  return m ? parseWalFileName(m[1]!) : undefined;
}

/** Bytes per segment (wal_segment_size); 16 MB unless initdb was told otherwise. */
export const DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024;

/** Segments per 4 GB "log" for a segment size. */
export function segmentsPerLog(segmentBytes = DEFAULT_SEGMENT_BYTES): number {
  return 0x1_0000_0000 / segmentBytes;
}

/** Position of a segment within its timeline: log * segmentsPerLog + seg. */
export function segmentNumber(segment: string, segmentBytes = DEFAULT_SEGMENT_BYTES): bigint {
  const m = SEGMENT.exec(segment);
  if (!m) throw new UsageError(`${segment} is not a WAL segment name`);
  return BigInt(`0x${m[2]}`) * BigInt(segmentsPerLog(segmentBytes)) + BigInt(`0x${m[3]}`);
}

/** The segment name of a number on a timeline. */
export function segmentName(
  timeline: string | number,
  n: bigint,
  segmentBytes = DEFAULT_SEGMENT_BYTES,
): string {
  const per = BigInt(segmentsPerLog(segmentBytes));
  const tli = typeof timeline === 'number' ? timeline.toString(16) : timeline;
  const hex = (v: bigint) => v.toString(16).toUpperCase().padStart(8, '0');
  return `${tli.toUpperCase().padStart(8, '0')}${hex(n / per)}${hex(n % per)}`;
}

/** The segment after this one on the same timeline (for prefetch). */
export function nextSegment(segment: string, segmentBytes = DEFAULT_SEGMENT_BYTES): string {
  return segmentName(segment.slice(0, 8), segmentNumber(segment, segmentBytes) + 1n, segmentBytes);
}

/** An LSN like 0/2000028 as a bigint. */
export function parseLsn(lsn: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn.trim());
  if (!m) throw new UsageError(`${lsn} is not an LSN (like 0/2000028)`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** The segment holding an LSN on a timeline. */
export function segmentOfLsn(timeline: number, lsn: bigint, segmentBytes = DEFAULT_SEGMENT_BYTES): string {
  return segmentName(timeline, lsn / BigInt(segmentBytes), segmentBytes);
}

/** The extension WAL objects get under a config: compression's, then `.enc` when encrypted. */
export function walObjectExtension(compressionExt: string, encrypted: boolean): string {
  return `${compressionExt}${encrypted ? '.enc' : ''}`;
}

/** The part of a stored key after the WAL file name (`.zst.enc`), or undefined when the key is another file's. */
export function walKeyExtension(key: string, file: WalFileName): string | undefined {
  const base = key.slice(key.lastIndexOf('/') + 1);
  if (!base.startsWith(file.name)) return undefined;
  const extension = base.slice(file.name.length);
  return /^(\.[a-z0-9]+)*$/.test(extension) && walNameFromKey(key)?.name === file.name
    ? extension
    : undefined;
}

/** Timeline number of a WAL file name or an 8-hex-digit timeline. */
export function timelineOf(nameOrTimeline: string): number {
  return Number.parseInt(nameOrTimeline.slice(0, 8), 16);
}

/** First LSN of a segment (its page address). */
export function segmentStartLsn(segment: string, segmentBytes = DEFAULT_SEGMENT_BYTES): bigint {
  return segmentNumber(segment, segmentBytes) * BigInt(segmentBytes);
}

/**
 * The long page header at the start of every WAL segment (XLogLongPageHeaderData, little-endian on
 * the platforms PostgreSQL archives from):
 *
 *   0 xlp_magic u16 · 2 xlp_info u16 · 4 xlp_tli u32 · 8 xlp_pageaddr u64 · 16 xlp_rem_len u32 ·
 *   24 xlp_sysid u64 · 32 xlp_seg_size u32 · 36 xlp_xlog_blcksz u32
 */
export interface WalSegmentHeader {
  readonly magic: number;
  readonly timeline: number;
  readonly pageAddress: bigint;
  /** The cluster's system identifier, as decimal text (pg_controldata prints it so). */
  readonly systemIdentifier: string;
  readonly segmentBytes: number;
  readonly blockBytes: number;
}

export const WAL_LONG_HEADER_BYTES = 40;
/** xlp_info bit: this page has the long header (always so on a segment's first page). */
const XLP_LONG_HEADER = 0x0002;
const MIN_SEGMENT_BYTES = 1024 * 1024;
const MAX_SEGMENT_BYTES = 1024 * 1024 * 1024;

/**
 * Reads the long page header from the first bytes of a segment; undefined when they are not one
 * (too short, no long-header flag, or a segment size PostgreSQL cannot have).
 */
export function parseWalSegmentHeader(firstBytes: Buffer): WalSegmentHeader | undefined {
  if (firstBytes.length < WAL_LONG_HEADER_BYTES) return undefined;
  const info = firstBytes.readUInt16LE(2);
  if ((info & XLP_LONG_HEADER) === 0) return undefined;
  const segmentBytes = firstBytes.readUInt32LE(32);
  const blockBytes = firstBytes.readUInt32LE(36);
  const powerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (!powerOfTwo(segmentBytes) || segmentBytes < MIN_SEGMENT_BYTES || segmentBytes > MAX_SEGMENT_BYTES)
    return undefined;
  if (!powerOfTwo(blockBytes) || blockBytes < 1024 || blockBytes > 65536) return undefined;
  return {
    magic: firstBytes.readUInt16LE(0),
    timeline: firstBytes.readUInt32LE(4),
    pageAddress: firstBytes.readBigUInt64LE(8),
    systemIdentifier: firstBytes.readBigUInt64LE(24).toString(),
    segmentBytes,
    blockBytes,
  };
}

/**
 * Why a segment (or .partial) with this name cannot have this header, or undefined when it fits:
 * the first page's address must be the segment's start, and its timeline cannot be newer than the
 * name's (the first segment of a new timeline starts with its parent's pages).
 */
export function segmentHeaderMismatch(file: WalFileName, header: WalSegmentHeader): string | undefined {
  const segment = file.segment!;
  const expected = segmentStartLsn(segment, header.segmentBytes);
  if (header.pageAddress !== expected) {
    return `its first page is for LSN ${formatLsn(header.pageAddress)}, the name says ${formatLsn(expected)}`;
  }
  if (header.timeline > timelineOf(file.timeline)) {
    return `its first page is from timeline ${header.timeline}, newer than the name's ${timelineOf(file.timeline)}`;
  }
  return undefined;
}
