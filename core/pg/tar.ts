import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';
import { IntegrityError } from '../errors';

/*
 * A pass-through tar reader. pg_basebackup -Ft -D - writes one tar to stdout; pgvault streams it
 * into storage unchanged and reads what it needs on the way (backup_label, the tail of
 * backup_manifest), so no second pass and no temporary copy is ever made.
 *
 * Formats read: POSIX ustar (name + prefix), GNU ('ustar  ' magic, 'L'/'K' long names, base-256
 * sizes for members of 8 GiB and more) and pax ('x' extended headers: path, size; 'g' ignored).
 * Every 512-byte header is checksummed; a bad one fails the stream, since the bytes after it cannot
 * be framed. Member data is never held: a capture keeps at most its configured head and tail bytes
 * (and may write the whole member to a file as it passes: TarCaptureSpec.toFile).
 */

const BLOCK = 512;

/** Meta entries whose data describes the next header (GNU long names, pax records) are read whole up to this. */
const MAX_META_BYTES = 1024 * 1024;

/** Type flags that carry no data, whatever their size field says (links, devices, directories, FIFOs). */
const NO_DATA_TYPES = new Set(['1', '2', '3', '4', '5', '6']);

export interface TarCaptureSpec {
  /** Keep the first this many bytes of the member. */
  readonly headBytes?: number;
  /** Keep the last this many bytes of the member. */
  readonly tailBytes?: number;
  /** Compute the sha256 of the member's whole content. */
  readonly sha256?: boolean;
  /**
   * Write the member's whole content to this file (created 0600, replaced if there), as it passes:
   * for members needed whole but too big to hold (the server's backup_manifest of a large cluster).
   */
  readonly toFile?: string;
}

export interface TarEntry {
  /** Path inside the archive, without a leading './'. */
  readonly name: string;
  /** The header's type flag: '0' file, '5' directory, '2' symlink, ... */
  readonly type: string;
  readonly size: number;
  /** Byte offset of the member's header in the stream. */
  readonly offset: number;
}

export interface CapturedMember extends TarEntry {
  readonly head: Buffer;
  readonly tail: Buffer;
  /** Hex sha256 of the content, when asked for. */
  readonly sha256?: string;
  /** When the member's header went past: the producer had written everything before it by then. */
  readonly seenAt: Date;
}

export interface TarScannerOptions {
  /** Members to capture, by name ('backup_label', 'backup_manifest'). */
  readonly capture?: Readonly<Record<string, TarCaptureSpec>>;
  /** Called for every member header as it passes (after long-name and pax records are applied). */
  readonly onEntry?: (entry: TarEntry) => void;
  /** What the stream is, for messages: 'pg_basebackup output'. */
  readonly label?: string;
}

type State = 'header' | 'data' | 'padding' | 'end';

/** Keeps the last `limit` bytes of what it is given, in chunks, without copying on every write. */
class Tail {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly limit: number) {}
  push(chunk: Buffer): void {
    if (this.limit <= 0) return;
    const kept = chunk.length > this.limit ? chunk.subarray(chunk.length - this.limit) : chunk;
    // Copied: the source chunk belongs to the stream and may be reused by its producer.
    this.chunks.push(Buffer.from(kept));
    this.size += kept.length;
    while (this.chunks.length > 1 && this.size - this.chunks[0]!.length >= this.limit) {
      this.size -= this.chunks.shift()!.length;
    }
  }
  bytes(): Buffer {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit));
  }
}

/** A member being captured while its data flows past. */
class Capture {
  private readonly head: Buffer[] = [];
  private headSize = 0;
  private readonly tail: Tail;
  private readonly hash: Hash | undefined;
  private fd: number | undefined;
  constructor(
    readonly entry: TarEntry,
    private readonly spec: TarCaptureSpec,
    private readonly seenAt: Date,
  ) {
    this.tail = new Tail(spec.tailBytes ?? 0);
    this.hash = spec.sha256 ? createHash('sha256') : undefined;
    if (spec.toFile !== undefined) this.fd = openSync(spec.toFile, 'w', 0o600);
  }
  write(chunk: Buffer): void {
    const wantHead = (this.spec.headBytes ?? 0) - this.headSize;
    if (wantHead > 0) {
      const part = chunk.subarray(0, wantHead);
      this.head.push(Buffer.from(part));
      this.headSize += part.length;
    }
    this.tail.push(chunk);
    this.hash?.update(chunk);
    if (this.fd !== undefined) {
      for (let at = 0; at < chunk.length; ) at += writeSync(this.fd, chunk, at, chunk.length - at);
    }
  }
  /** Closes the file of a `toFile` capture (idempotent). */
  close(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    closeSync(fd);
  }
  done(): CapturedMember {
    this.close();
    return {
      ...this.entry,
      head: Buffer.concat(this.head),
      tail: this.tail.bytes(),
      sha256: this.hash?.digest('hex'),
      seenAt: this.seenAt,
    };
  }
}

/** Reads an octal field, or GNU's base-256 form (high bit of the first byte set). */
export function parseTarNumber(field: Buffer): number {
  if (field.length > 0 && (field[0]! & 0x80) !== 0) {
    // Base-256, big-endian, the first byte's high bit a marker (a set 0x40 bit means negative: not for sizes).
    if ((field[0]! & 0x40) !== 0) return Number.NaN;
    let value = field[0]! & 0x3f;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i]!;
    return value;
  }
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  if (text === '') return 0;
  return /^[0-7]+$/.test(text) ? Number.parseInt(text, 8) : Number.NaN;
}

function cString(field: Buffer): string {
  const nul = field.indexOf(0);
  return field.subarray(0, nul === -1 ? field.length : nul).toString('utf8');
}

function normaliseName(name: string): string {
  let n = name;
  while (n.startsWith('./')) n = n.slice(2);
  return n;
}

/** Parses pax extended header records: "<length> <key>=<value>\n" ... */
export function parsePaxRecords(data: Buffer): Map<string, string> {
  const records = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space === -1) break;
    const length = Number.parseInt(data.subarray(pos, space).toString('ascii'), 10);
    if (!Number.isFinite(length) || length <= 0 || pos + length > data.length) break;
    const record = data.subarray(space + 1, pos + length - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) records.set(record.slice(0, eq), record.slice(eq + 1));
    pos += length;
  }
  return records;
}

/**
 * Passes a tar stream through unchanged while parsing its headers. After the stream ended,
 * `member(name)` returns what was captured of a member, `complete` says whether the end-of-archive
 * blocks were seen, and `entries` counts the members.
 */
export class TarScanner extends Transform {
  /** Members seen so far (files, directories, links). */
  entries = 0;
  /** Whether the end-of-archive marker (a zero block) was reached. */
  complete = false;

  private readonly captureSpecs: ReadonlyMap<string, TarCaptureSpec>;
  private readonly captured = new Map<string, CapturedMember>();
  private readonly onEntry?: (entry: TarEntry) => void;
  private readonly label: string;

  private state: State = 'header';
  private readonly header = Buffer.alloc(BLOCK);
  private headerFill = 0;
  /** Stream offset of the next byte. */
  private offset = 0;
  private remaining = 0;
  private padding = 0;
  private capture: Capture | undefined;
  /** Data of a meta entry (long name, pax header), read whole. */
  private meta: { type: string; chunks: Buffer[] } | undefined;
  private longName: string | undefined;
  private pax: Map<string, string> | undefined;

  constructor(options: TarScannerOptions = {}) {
    super({ highWaterMark: 1 << 20 });
    this.captureSpecs = new Map(Object.entries(options.capture ?? {}));
    this.onEntry = options.onEntry;
    this.label = options.label ?? 'tar stream';
  }

  /** What was captured of a member, once its data has passed; undefined when it was not seen. */
  member(name: string): CapturedMember | undefined {
    return this.captured.get(name);
  }

  override _destroy(err: Error | null, callback: (error: Error | null) => void): void {
    try {
      this.capture?.close();
    } catch {
      // The stream is going anyway; its own error says why.
    }
    callback(err);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.scan(chunk);
    } catch (err) {
      callback(err as Error);
      return;
    }
    callback(null, chunk);
  }

  private scan(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length) {
      switch (this.state) {
        case 'header': {
          const n = Math.min(BLOCK - this.headerFill, chunk.length - i);
          chunk.copy(this.header, this.headerFill, i, i + n);
          this.headerFill += n;
          i += n;
          this.offset += n;
          if (this.headerFill === BLOCK) {
            this.headerFill = 0;
            this.readHeader(this.offset - BLOCK);
          }
          break;
        }
        case 'data': {
          const n = Math.min(this.remaining, chunk.length - i);
          const part = chunk.subarray(i, i + n);
          if (this.meta) this.meta.chunks.push(Buffer.from(part));
          this.capture?.write(part);
          this.remaining -= n;
          i += n;
          this.offset += n;
          if (this.remaining === 0) this.endOfData();
          break;
        }
        case 'padding': {
          const n = Math.min(this.padding, chunk.length - i);
          this.padding -= n;
          i += n;
          this.offset += n;
          if (this.padding === 0) this.state = 'header';
          break;
        }
        case 'end':
          // Blocking pads the archive after its end marker with more zeros; nothing to read there.
          this.offset += chunk.length - i;
          i = chunk.length;
          break;
      }
    }
  }

  private readHeader(at: number): void {
    const h = this.header;
    if (h.every((b) => b === 0)) {
      this.complete = true;
      this.state = 'end';
      return;
    }
    const recorded = parseTarNumber(h.subarray(148, 156));
    let unsigned = 0;
    let signed = 0;
    for (let k = 0; k < BLOCK; k++) {
      const b = k >= 148 && k < 156 ? 0x20 : h[k]!;
      unsigned += b;
      signed += b > 127 ? b - 256 : b;
    }
    if (recorded !== unsigned && recorded !== signed) {
      throw new IntegrityError(
        `${this.label} is not a valid tar archive: header at byte ${at} has a bad checksum; the stream is corrupt or not a tar`,
      );
    }
    const type = h[156] === 0 ? '0' : String.fromCharCode(h[156]!);
    let size = parseTarNumber(h.subarray(124, 136));
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new IntegrityError(`${this.label}: header at byte ${at} has an unreadable size field`);
    }

    if (type === 'L' || type === 'K' || type === 'x' || type === 'g') {
      if (size > MAX_META_BYTES) {
        throw new IntegrityError(
          `${this.label}: ${type} record at byte ${at} is implausibly large (${size} bytes)`,
        );
      }
      this.meta = { type, chunks: [] };
      this.startData(size);
      return;
    }

    const magic = h.subarray(257, 263).toString('latin1');
    let name = cString(h.subarray(0, 100));
    // POSIX ustar splits long paths into prefix + name; GNU's "ustar  " uses those bytes otherwise.
    if (magic === 'ustar\0') {
      const prefix = cString(h.subarray(345, 500));
      if (prefix !== '') name = `${prefix}/${name}`;
    }
    if (this.longName !== undefined) name = this.longName;
    const paxPath = this.pax?.get('path');
    if (paxPath !== undefined) name = paxPath;
    const paxSize = this.pax?.get('size');
    if (paxSize !== undefined && /^\d+$/.test(paxSize)) size = Number(paxSize);
    this.longName = undefined;
    this.pax = undefined;

    const entry: TarEntry = { name: normaliseName(name), type, size, offset: at };
    this.entries++;
    this.onEntry?.(entry);
    const dataBytes = NO_DATA_TYPES.has(type) ? 0 : size;
    const spec = this.captureSpecs.get(entry.name);
    this.capture = spec && !NO_DATA_TYPES.has(type) ? new Capture(entry, spec, new Date()) : undefined;
    this.startData(dataBytes);
  }

  private startData(size: number): void {
    this.remaining = size;
    this.padding = (BLOCK - (size % BLOCK)) % BLOCK;
    if (size === 0) this.endOfData();
    else this.state = 'data';
  }

  private endOfData(): void {
    if (this.meta) {
      const data = Buffer.concat(this.meta.chunks);
      if (this.meta.type === 'L') this.longName = cString(data);
      else if (this.meta.type === 'x') this.pax = parsePaxRecords(data);
      // 'K' (long link target) and 'g' (global pax) change nothing this reader needs.
      this.meta = undefined;
    }
    if (this.capture) {
      const done = this.capture.done();
      this.captured.set(done.name, done);
      this.capture = undefined;
    }
    this.state = this.padding > 0 ? 'padding' : 'header';
  }
}

/** What backup_label says (PostgreSQL writes it at the start of every base backup). */
export interface BackupLabel {
  readonly startLsn: string;
  readonly startWal: string;
  readonly checkpointLsn: string;
  readonly startTimeline: number;
  /** 'primary' or 'standby'. */
  readonly backupFrom?: string;
  /** As written: '2026-02-12 02:00:00 UTC'. */
  readonly startTime?: string;
}

/** Parses backup_label; undefined when a required line is missing. */
export function parseBackupLabel(text: string): BackupLabel | undefined {
  const start = /^START WAL LOCATION: ([0-9A-F]+\/[0-9A-F]+) \(file ([0-9A-F]{24})\)$/m.exec(text);
  const checkpoint = /^CHECKPOINT LOCATION: ([0-9A-F]+\/[0-9A-F]+)$/m.exec(text);
  const timeline = /^START TIMELINE: (\d+)$/m.exec(text);
  if (!start || !checkpoint || !timeline) return undefined;
  return {
    startLsn: start[1]!,
    startWal: start[2]!,
    checkpointLsn: checkpoint[1]!,
    startTimeline: Number(timeline[1]),
    backupFrom: /^BACKUP FROM: (\S+)$/m.exec(text)?.[1],
    startTime: /^START TIME: (.+)$/m.exec(text)?.[1],
  };
}

export interface WalRange {
  readonly timeline: number;
  readonly startLsn: string;
  readonly endLsn: string;
}

/**
 * The "WAL-Ranges" array near the end of backup_manifest: the WAL needed to make the backup
 * consistent, one range per timeline crossed (more than one only for a backup of a standby that
 * was promoted meanwhile). Reads the tail only: the manifest lists every file before it.
 */
export function parseWalRanges(manifestTail: string): WalRange[] | undefined {
  const at = manifestTail.lastIndexOf('"WAL-Ranges"');
  if (at === -1) return undefined;
  const section = manifestTail.slice(at);
  const close = section.indexOf(']');
  if (close === -1) return undefined;
  const ranges: WalRange[] = [];
  const entry =
    /\{\s*"Timeline"\s*:\s*(\d+)\s*,\s*"Start-LSN"\s*:\s*"([0-9A-F]+\/[0-9A-F]+)"\s*,\s*"End-LSN"\s*:\s*"([0-9A-F]+\/[0-9A-F]+)"\s*\}/gi;
  for (const m of section.slice(0, close).matchAll(entry)) {
    ranges.push({ timeline: Number(m[1]), startLsn: m[2]!.toUpperCase(), endLsn: m[3]!.toUpperCase() });
  }
  return ranges.length > 0 ? ranges : undefined;
}
