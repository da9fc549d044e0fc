import { createReadStream } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';
import { errorMessage, IntegrityError, StorageError } from '../errors';

/*
 * pg_dump's custom format (-Fc), as written by pg_backup_archiver.c and pg_backup_custom.c:
 *
 *   header  "PGDMP", version major/minor/rev bytes, intSize, offSize, format (1 = custom),
 *           compression (an int zlib level before 1.15; an algorithm byte from 1.15),
 *           creation time as 7 ints (struct tm), database name, server version, pg_dump version
 *   TOC     int count, then per entry the fields read in readTocEntry below, each entry ending
 *           with the custom format's data offset (a flag byte and offSize bytes)
 *   data    per entry with data, in TOC order: a block type byte (1 = table data, 3 = large
 *           objects), the int dump id, then chunks each preceded by an int length, ended by a 0
 *           length; a large-object block repeats (int oid, chunks, 0) and ends with oid 0
 *
 * An int is a sign byte then intSize bytes little-endian; a string is an int length (-1 = null)
 * then that many bytes. Written to a pipe, pg_dump cannot seek back to fill in data offsets, so
 * the TOC says "offset not set" and data blocks are matched to entries by their dump id.
 *
 * TABLE DATA written by COPY holds the rows in COPY text format, where every row ends with a
 * newline and newlines inside values are escaped, followed by the line "\." and two empty lines.
 * So rows = newlines in the data minus that trailer.
 */

/**
 * Archive versions this parser reads: 1.12 (pg_dump 9.x and 10), 1.13 (pg_dump 11), 1.14 (12 to
 * 15, adds the table access method), 1.15 (16, compression algorithm byte in the header) and 1.16
 * (17 and 18, adds relkind).
 */
const MIN_MINOR = 12;
const MAX_MINOR = 16;

const FORMAT_CUSTOM = 1;
const BLOCK_DATA = 1;
const BLOCK_LARGE_OBJECTS = 3;

const OFFSET_NOT_SET = 1;
const OFFSET_SET = 2;
const OFFSET_NO_DATA = 3;

/** A TOC string longer than this means a corrupt archive, not a real object definition. */
const MAX_TOC_STRING = 256 * 1024 * 1024;

const COMPRESSION_ALGORITHMS = ['none', 'gzip', 'lz4', 'zstd'] as const;
export type ArchiveCompression = (typeof COMPRESSION_ALGORITHMS)[number] | 'unknown';

/** pg_dump's --section names, plus 'none' for entries (comments, ACLs) that belong anywhere. */
export type ArchiveSection = 'none' | 'pre-data' | 'data' | 'post-data' | 'unknown';
const SECTIONS: Record<number, ArchiveSection> = { 1: 'none', 2: 'pre-data', 3: 'data', 4: 'post-data' };

export interface ArchiveHeader {
  /** As pg_restore -l prints it: "1.14-0". */
  readonly version: string;
  readonly versionMajor: number;
  readonly versionMinor: number;
  readonly versionRev: number;
  readonly intSize: number;
  readonly offSize: number;
  /** 1 for the custom format. */
  readonly format: number;
  readonly compression: ArchiveCompression;
  /** The zlib level the header records, for archives before 1.15 (0 = none, -1 = default). */
  readonly compressionLevel?: number;
  /** pg_dump's local time when it started ("YYYY-MM-DD HH:MM:SS", no zone is recorded). */
  readonly createdAt: string;
  readonly databaseName: string;
  readonly serverVersion: string;
  readonly pgDumpVersion: string;
}

export type TocDataState = 'not-set' | 'set' | 'no-data';

export interface TocEntry {
  readonly dumpId: number;
  readonly hadDumper: boolean;
  readonly tableOid: number;
  readonly oid: number;
  readonly tag: string;
  /** The object kind: TABLE, TABLE DATA, INDEX, ACL, ... */
  readonly desc: string;
  readonly section: ArchiveSection;
  readonly defn?: string;
  readonly dropStmt?: string;
  /** "COPY schema.table (cols) FROM stdin;" for TABLE DATA dumped with COPY. */
  readonly copyStmt?: string;
  readonly namespace?: string;
  readonly tablespace?: string;
  /** Table access method (archive 1.14+). */
  readonly tableAccessMethod?: string;
  /** pg_class.relkind of TABLE entries (archive 1.16+). */
  readonly relkind?: string;
  readonly owner?: string;
  readonly dependencies: readonly number[];
  readonly dataState: TocDataState;
  /** Byte offset of the entry's data block, when pg_dump could record it (file output). */
  readonly dataOffset?: number;
}

export interface TableRowCount {
  readonly schema: string;
  readonly table: string;
  readonly rows: number;
}

/** The parser asks for this many bytes and gets them as one Buffer. */
type ByteRequest = Generator<number, void, Buffer>;

class ArchiveFormatError extends Error {}

const EMPTY = Buffer.alloc(0);

/** What a line holds so far, as far as the end-of-data marker "\." is concerned. */
const LINE_EMPTY = 0;
const LINE_BACKSLASH = 1;
const LINE_END_MARKER = 2;
const LINE_OTHER = 3;

/** Extends a line known to hold `before` with bytes [start, end), none of them a newline. */
function classifyLine(before: number, bytes: Buffer, start: number, end: number): number {
  let state = before;
  for (let i = start; i < end && state !== LINE_OTHER; i++) {
    const b = bytes[i];
    if (state === LINE_EMPTY && b === 0x5c) state = LINE_BACKSLASH;
    else if (state === LINE_BACKSLASH && b === 0x2e) state = LINE_END_MARKER;
    else state = LINE_OTHER;
  }
  return state;
}

/**
 * Incremental parser: write() any slices of an archive, end() when done. Never throws: a problem
 * stops parsing and is reported in unsupportedReason. Memory is bounded by the TOC; data chunks
 * are counted as they pass, never kept.
 */
export class CustomArchiveParser {
  header: ArchiveHeader | undefined;
  readonly entries: TocEntry[] = [];
  /** Set when parsing stopped: not a custom archive, an unknown version, corrupt bytes. */
  failure: string | undefined;
  private compressionReason: string | undefined;
  /** Why complete is false after end(), when it is. */
  incompleteReason: string | undefined;
  /** True after end() when every byte was understood and every expected data block was seen. */
  complete = false;
  /** True once the whole TOC has been read. */
  tocComplete = false;
  /** Bytes seen so far. */
  bytesSeen = 0;

  private phase: 'toc' | 'data' | 'stopped' = 'toc';
  private intSize = 4;
  private offSize = 8;
  private version = 0;
  private textEncoding: BufferEncoding = 'utf8';

  // Header and TOC: a generator that asks for byte counts, fed from accumulated input.
  private readonly tocReader: ByteRequest;
  private wanted = 0;
  private pending: Buffer | undefined;
  private pendingHave = 0;

  // Data section: a hand-written state machine, because it runs once per row.
  private dataState: 'blockType' | 'blockId' | 'chunkLength' | 'chunkBody' | 'objectOid' = 'blockType';
  private readonly field = Buffer.alloc(16);
  private fieldHave = 0;
  private fieldNeed = 1;
  private chunkRemaining = 0;
  private blockType = 0;
  private inLargeObject = false;
  private blockEntry: TocEntry | undefined;
  private counting = false;
  private newlines = 0;
  // End-of-data trailer tracking, see trackSuffix.
  private lineSoFar = LINE_EMPTY;
  private newlineRun = 0;
  private runAfterEndMarker = false;

  private readonly entryById = new Map<number, TocEntry>();
  private readonly expectedData = new Set<number>();
  private readonly seenBlocks = new Set<number>();
  private readonly rowCounts = new Map<number, number>();
  /** Absolute stream position where the current TOC read request started. */
  private requestStart = 0;
  /** Absolute stream position where the data field being read started. */
  private fieldStart = 0;
  private blockStart = 0;
  /** Where each TOC entry's offset field sits, and where each data block begins (pipe-written archives). */
  private readonly offsetFieldAt = new Map<number, number>();
  private readonly blockAt = new Map<number, number>();
  private compressed = false;

  constructor() {
    this.tocReader = this.readHeaderAndToc();
    this.advanceToc(this.tocReader.next());
  }

  write(chunk: Buffer): void {
    if (this.phase === 'stopped' || chunk.length === 0) return;
    const base = this.bytesSeen;
    this.bytesSeen += chunk.length;
    try {
      let pos = 0;
      if (this.phase === 'toc') pos = this.feedToc(chunk, 0, base);
      if (this.phase === 'data' && pos < chunk.length) this.feedData(chunk, pos, base);
    } catch (err) {
      this.stop(
        err instanceof ArchiveFormatError
          ? err.message
          : `archive parsing failed near byte ${this.bytesSeen}: ${errorMessage(err)}`,
      );
    }
  }

  /** The input is over: decides whether the archive was complete. */
  end(): void {
    if (this.phase === 'toc') {
      this.incompleteReason ??= `archive ends inside its ${this.header ? 'table of contents' : 'header'}`;
    } else if (this.phase === 'data') {
      if (this.dataState !== 'blockType' || this.fieldHave !== 0) {
        const entry = this.blockEntry;
        this.incompleteReason = `archive ends inside the data of entry ${entry ? describe(entry) : '(unknown)'}`;
      } else {
        const missing = [...this.expectedData].filter((id) => !this.seenBlocks.has(id));
        if (missing.length > 0) {
          const first = this.entryById.get(missing[0]!);
          this.incompleteReason = `archive ends before the data of ${missing.length} entries (first: ${first ? describe(first) : missing[0]})`;
        } else {
          this.complete = true;
        }
      }
    } else {
      this.incompleteReason ??= this.failure;
    }
    this.phase = 'stopped';
  }

  /** Exact COPY row counts per TABLE DATA entry, in TOC order; empty unless the archive was complete and readable. */
  tableRowCounts(): TableRowCount[] {
    if (!this.complete || this.unsupportedReason !== undefined) return [];
    const out: TableRowCount[] = [];
    for (const entry of this.entries) {
      const rows = this.rowCounts.get(entry.dumpId);
      if (entry.desc === 'TABLE DATA' && rows !== undefined) {
        out.push({ schema: entry.namespace ?? '', table: entry.tag, rows });
      }
    }
    return out;
  }

  /**
   * Byte patches that turn a pipe-written archive into one with data offsets, as pg_dump writes
   * when it can seek: each TOC entry's "offset not set" field becomes "set" with the position of its
   * data block. Applied to a local copy, they let `pg_restore --jobs` and `-L` seek straight to a
   * table's data instead of every worker scanning the archive from the start. Empty unless the
   * archive was read completely.
   */
  offsetPatches(): Array<{ position: number; bytes: Buffer }> {
    if (!this.complete) return [];
    const patches: Array<{ position: number; bytes: Buffer }> = [];
    for (const entry of this.entries) {
      const field = this.offsetFieldAt.get(entry.dumpId);
      const block = this.blockAt.get(entry.dumpId);
      if (entry.dataState !== 'not-set' || field === undefined || block === undefined) continue;
      const bytes = Buffer.alloc(1 + this.offSize);
      bytes[0] = OFFSET_SET;
      let value = block;
      for (let i = 1; i <= this.offSize; i++) {
        bytes[i] = value % 256;
        value = Math.floor(value / 256);
      }
      patches.push({ position: field, bytes });
    }
    return patches;
  }

  /** Why no row counts can be had (compressed, unknown version, corrupt); undefined when they can. */
  get unsupportedReason(): string | undefined {
    return this.failure ?? this.compressionReason;
  }

  private stop(reason: string): void {
    this.failure ??= reason;
    this.phase = 'stopped';
    this.pending = undefined;
  }

  // ---- header and TOC ------------------------------------------------------------------------

  private feedToc(chunk: Buffer, start: number, base: number): number {
    let pos = start;
    while (pos < chunk.length && this.phase === 'toc') {
      if (this.pending === undefined) this.requestStart = base + pos;
      if (this.pending === undefined && chunk.length - pos >= this.wanted) {
        // The whole request is in this chunk: hand out a view, no copy.
        const piece = chunk.subarray(pos, pos + this.wanted);
        pos += this.wanted;
        this.advanceToc(this.tocReader.next(piece));
        continue;
      }
      if (this.pending === undefined) {
        this.pending = Buffer.allocUnsafe(this.wanted);
        this.pendingHave = 0;
      }
      const take = Math.min(this.wanted - this.pendingHave, chunk.length - pos);
      chunk.copy(this.pending, this.pendingHave, pos, pos + take);
      this.pendingHave += take;
      pos += take;
      if (this.pendingHave === this.wanted) {
        const piece = this.pending;
        this.pending = undefined;
        this.advanceToc(this.tocReader.next(piece));
      }
    }
    return pos;
  }

  private advanceToc(step: IteratorResult<number, void>): void {
    let current = step;
    while (!current.done && current.value === 0) current = this.tocReader.next(EMPTY);
    if (current.done) {
      if (this.phase === 'toc') this.startData();
      return;
    }
    this.wanted = current.value;
  }

  private *readBytes(count: number): Generator<number, Buffer, Buffer> {
    return yield count;
  }

  private *readInt(): Generator<number, number, Buffer> {
    const bytes = yield 1 + this.intSize;
    let value = 0;
    let scale = 1;
    for (let i = 1; i <= this.intSize; i++) {
      value += bytes[i]! * scale;
      scale *= 256;
    }
    return bytes[0] === 0 ? value : -value;
  }

  private *readString(what: string): Generator<number, string | undefined, Buffer> {
    const length = yield* this.readInt();
    if (length === -1) return undefined;
    if (length < 0 || length > MAX_TOC_STRING) {
      throw new ArchiveFormatError(
        `archive ${what} has an impossible length (${length}) near byte ${this.bytesSeen}; the archive is corrupt`,
      );
    }
    const bytes = yield length;
    return bytes.toString(this.textEncoding);
  }

  private *readHeaderAndToc(): Generator<number, void, Buffer> {
    const magic = yield* this.readBytes(5);
    if (magic.toString('latin1') !== 'PGDMP') {
      throw new ArchiveFormatError('not a pg_dump custom-format archive (no PGDMP signature)');
    }
    const versionBytes = yield* this.readBytes(3);
    const [major, minor, rev] = [versionBytes[0]!, versionBytes[1]!, versionBytes[2]!];
    const version = `${major}.${minor}-${rev}`;
    if (major !== 1 || minor < MIN_MINOR || minor > MAX_MINOR) {
      throw new ArchiveFormatError(
        `archive version ${version} is not one pgvault reads (1.${MIN_MINOR} to 1.${MAX_MINOR}, written by pg_dump 9.x to 18)`,
      );
    }
    this.version = minor;
    const sizes = yield* this.readBytes(3);
    this.intSize = sizes[0]!;
    this.offSize = sizes[1]!;
    const format = sizes[2]!;
    if (this.intSize < 1 || this.intSize > 8 || this.offSize < 1 || this.offSize > 8) {
      throw new ArchiveFormatError(
        `archive integer size ${this.intSize} / offset size ${this.offSize} is not supported (expected 4 / 8)`,
      );
    }
    if (format !== FORMAT_CUSTOM) {
      throw new ArchiveFormatError(`archive format ${format} is not the custom format (1)`);
    }
    let compression: ArchiveCompression;
    let compressionLevel: number | undefined;
    if (minor >= 15) {
      const algorithm = (yield* this.readBytes(1))[0]!;
      compression = COMPRESSION_ALGORITHMS[algorithm] ?? 'unknown';
    } else {
      compressionLevel = yield* this.readInt();
      compression = compressionLevel === 0 ? 'none' : 'gzip';
    }
    const tm: number[] = [];
    for (let i = 0; i < 7; i++) tm.push(yield* this.readInt());
    const [sec, min, hour, mday, mon, year] = tm as [number, number, number, number, number, number, number];
    const two = (n: number) => String(n).padStart(2, '0');
    const createdAt = `${1900 + year}-${two(mon + 1)}-${two(mday)} ${two(hour)}:${two(min)}:${two(sec)}`;
    const databaseName = (yield* this.readString('database name')) ?? '';
    const serverVersion = (yield* this.readString('server version')) ?? '';
    const pgDumpVersion = (yield* this.readString('pg_dump version')) ?? '';
    this.header = {
      version,
      versionMajor: major,
      versionMinor: minor,
      versionRev: rev,
      intSize: this.intSize,
      offSize: this.offSize,
      format,
      compression,
      compressionLevel,
      createdAt,
      databaseName,
      serverVersion,
      pgDumpVersion,
    };
    if (compression !== 'none') {
      this.compressed = true;
      this.compressionReason = `archive data is compressed (${compression}${compressionLevel !== undefined ? ` level ${compressionLevel}` : ''}); row counts need pg_dump -Z0`;
    }

    const count = yield* this.readInt();
    if (count < 0)
      throw new ArchiveFormatError(`archive TOC count ${count} is impossible; the archive is corrupt`);
    for (let i = 0; i < count; i++) {
      const entry = yield* this.readTocEntry();
      this.entries.push(entry);
      this.entryById.set(entry.dumpId, entry);
      if (entry.dataState !== 'no-data') this.expectedData.add(entry.dumpId);
      if (entry.desc === 'ENCODING' && entry.defn) {
        // Names are stored in the database encoding; decode UTF8 as text, anything else byte for byte.
        const name = /'([^']*)'/.exec(entry.defn)?.[1]?.toUpperCase();
        this.textEncoding = name === 'UTF8' || name === 'UTF-8' ? 'utf8' : 'latin1';
      }
    }
    this.tocComplete = true;
  }

  private *readTocEntry(): Generator<number, TocEntry, Buffer> {
    const dumpId = yield* this.readInt();
    if (dumpId <= 0) {
      throw new ArchiveFormatError(`archive TOC entry id ${dumpId} is out of range; the archive is corrupt`);
    }
    const hadDumper = (yield* this.readInt()) !== 0;
    // OIDs are stored as decimal strings for historical reasons.
    const tableOid = Number((yield* this.readString('table oid')) ?? 0);
    const oid = Number((yield* this.readString('oid')) ?? 0);
    const tag = (yield* this.readString('tag')) ?? '';
    const desc = (yield* this.readString('object type')) ?? '';
    const section = SECTIONS[yield* this.readInt()] ?? 'unknown';
    const defn = yield* this.readString('definition');
    const dropStmt = yield* this.readString('drop statement');
    const copyStmt = yield* this.readString('copy statement');
    const namespace = yield* this.readString('schema');
    const tablespace = yield* this.readString('tablespace');
    const tableAccessMethod = this.version >= 14 ? yield* this.readString('table access method') : undefined;
    let relkind: string | undefined;
    if (this.version >= 16) {
      const kind = yield* this.readInt();
      relkind = kind > 0 ? String.fromCharCode(kind) : undefined;
    }
    const owner = yield* this.readString('owner');
    // The old WITH OIDS flag, still written as "false" by every pg_dump this parser reads.
    yield* this.readString('with-oids flag');
    const dependencies: number[] = [];
    for (;;) {
      const dependency = yield* this.readString('dependency');
      if (dependency === undefined) break;
      dependencies.push(Number(dependency));
    }
    const offsetBytes = yield* this.readBytes(1 + this.offSize);
    this.offsetFieldAt.set(dumpId, this.requestStart);
    const flag = offsetBytes[0]!;
    let dataState: TocDataState;
    if (flag === OFFSET_NOT_SET) dataState = 'not-set';
    else if (flag === OFFSET_SET) dataState = 'set';
    else if (flag === OFFSET_NO_DATA) dataState = 'no-data';
    else {
      throw new ArchiveFormatError(
        `archive TOC entry ${dumpId} has an unknown data offset flag ${flag}; the archive is corrupt`,
      );
    }
    let dataOffset: number | undefined;
    if (dataState === 'set') {
      dataOffset = 0;
      let scale = 1;
      for (let i = 1; i <= this.offSize; i++) {
        dataOffset += offsetBytes[i]! * scale;
        scale *= 256;
      }
    }
    return {
      dumpId,
      hadDumper,
      tableOid,
      oid,
      tag,
      desc,
      section,
      defn,
      dropStmt,
      copyStmt,
      namespace,
      tablespace,
      tableAccessMethod,
      relkind,
      owner,
      dependencies,
      dataState,
      dataOffset,
    };
  }

  // ---- data blocks ---------------------------------------------------------------------------

  private startData(): void {
    this.phase = 'data';
    this.expectField('blockType', 1);
  }

  private expectField(state: CustomArchiveParser['dataState'], size: number): void {
    this.dataState = state;
    this.fieldNeed = size;
    this.fieldHave = 0;
  }

  private fieldInt(bytes: Buffer, at: number): number {
    let value = 0;
    let scale = 1;
    for (let i = 1; i <= this.intSize; i++) {
      value += bytes[at + i]! * scale;
      scale *= 256;
    }
    return bytes[at] === 0 ? value : -value;
  }

  private feedData(chunk: Buffer, start: number, base: number): void {
    let pos = start;
    const length = chunk.length;
    while (pos < length) {
      if (this.fieldHave === 0 && this.dataState !== 'chunkBody') this.fieldStart = base + pos;
      if (this.dataState === 'chunkBody') {
        const end = Math.min(length, pos + this.chunkRemaining);
        if (this.counting) this.countRows(chunk, pos, end);
        this.chunkRemaining -= end - pos;
        pos = end;
        if (this.chunkRemaining === 0) this.expectField('chunkLength', 1 + this.intSize);
        continue;
      }
      if (this.fieldHave === 0 && length - pos >= this.fieldNeed) {
        // The common case: the whole field is in this chunk.
        const at = pos;
        pos += this.fieldNeed;
        this.onField(chunk, at);
        continue;
      }
      const take = Math.min(this.fieldNeed - this.fieldHave, length - pos);
      chunk.copy(this.field, this.fieldHave, pos, pos + take);
      this.fieldHave += take;
      pos += take;
      if (this.fieldHave === this.fieldNeed) {
        this.fieldHave = 0;
        this.onField(this.field, 0);
      }
    }
  }

  private onField(bytes: Buffer, at: number): void {
    switch (this.dataState) {
      case 'blockType': {
        const type = bytes[at]!;
        if (type !== BLOCK_DATA && type !== BLOCK_LARGE_OBJECTS) {
          throw new ArchiveFormatError(
            `unknown archive data block type ${type} near byte ${this.bytesSeen}; the archive is corrupt or newer than pgvault`,
          );
        }
        this.blockType = type;
        this.blockStart = this.fieldStart;
        this.expectField('blockId', 1 + this.intSize);
        return;
      }
      case 'blockId': {
        const id = this.fieldInt(bytes, at);
        if (this.seenBlocks.has(id)) {
          throw new ArchiveFormatError(`archive holds the data of entry ${id} twice; the archive is corrupt`);
        }
        this.seenBlocks.add(id);
        this.blockAt.set(id, this.blockStart);
        const entry = this.entryById.get(id);
        this.blockEntry = entry;
        this.counting =
          this.blockType === BLOCK_DATA &&
          !this.compressed &&
          entry !== undefined &&
          entry.desc === 'TABLE DATA' &&
          (entry.copyStmt ?? '') !== '';
        this.newlines = 0;
        this.lineSoFar = LINE_EMPTY;
        this.newlineRun = 0;
        this.runAfterEndMarker = false;
        this.inLargeObject = false;
        if (this.blockType === BLOCK_DATA) this.expectField('chunkLength', 1 + this.intSize);
        else this.expectField('objectOid', 1 + this.intSize);
        return;
      }
      case 'chunkLength': {
        const size = this.fieldInt(bytes, at);
        if (size < 0) {
          throw new ArchiveFormatError(
            `archive data chunk length ${size} near byte ${this.bytesSeen}; the archive is corrupt`,
          );
        }
        if (size > 0) {
          this.chunkRemaining = size;
          this.dataState = 'chunkBody';
        } else if (this.blockType === BLOCK_LARGE_OBJECTS && this.inLargeObject) {
          this.inLargeObject = false;
          this.expectField('objectOid', 1 + this.intSize);
        } else {
          this.finishBlock();
        }
        return;
      }
      case 'objectOid': {
        const oid = this.fieldInt(bytes, at);
        if (oid === 0) {
          this.finishBlock();
        } else {
          this.inLargeObject = true;
          this.expectField('chunkLength', 1 + this.intSize);
        }
        return;
      }
      default:
        throw new ArchiveFormatError(`archive parser reached an impossible state ${this.dataState}`);
    }
  }

  private finishBlock(): void {
    const entry = this.blockEntry;
    if (this.counting && entry !== undefined) {
      this.rowCounts.set(entry.dumpId, this.newlines - this.trailerNewlines());
    }
    this.blockEntry = undefined;
    this.counting = false;
    this.expectField('blockType', 1);
  }

  private countRows(chunk: Buffer, start: number, end: number): void {
    let newlines = 0;
    if (end - start < 256) {
      for (let i = start; i < end; i++) if (chunk[i] === 0x0a) newlines++;
    } else {
      const view = chunk.subarray(start, end);
      for (let at = view.indexOf(0x0a); at !== -1; at = view.indexOf(0x0a, at + 1)) newlines++;
    }
    this.newlines += newlines;
    this.trackSuffix(chunk, start, end);
  }

  /**
   * Keeps just enough about the end of a table's data to recognise pg_dump's end-of-data trailer,
   * "\." alone on a line followed by newlines, looking only at the last bytes of each piece.
   */
  private trackSuffix(chunk: Buffer, start: number, end: number): void {
    let last = end - 1;
    while (last >= start && chunk[last] === 0x0a) last--;
    const trailing = end - 1 - last;
    if (last < start) {
      // Only newlines: they extend the current run, or end the line in progress.
      if (this.newlineRun === 0) this.runAfterEndMarker = this.lineSoFar === LINE_END_MARKER;
      this.newlineRun += trailing;
      this.lineSoFar = LINE_EMPTY;
      return;
    }
    // The line holding the last non-newline byte: at most 3 bytes back decide whether it is "\.".
    let first = last;
    while (first > start && last - first < 3 && chunk[first - 1] !== 0x0a) first--;
    let line: number;
    if (first > start) {
      // Stopped at a newline (the line starts here) or after 4 bytes (too long to be the marker).
      line = chunk[first - 1] === 0x0a ? classifyLine(LINE_EMPTY, chunk, first, last + 1) : LINE_OTHER;
    } else {
      // The line began in an earlier piece, or at the start of this one.
      const before = this.newlineRun > 0 ? LINE_EMPTY : this.lineSoFar;
      line = classifyLine(before, chunk, first, last + 1);
    }
    if (trailing > 0) {
      this.newlineRun = trailing;
      this.runAfterEndMarker = line === LINE_END_MARKER;
      this.lineSoFar = LINE_EMPTY;
    } else {
      this.newlineRun = 0;
      this.runAfterEndMarker = false;
      this.lineSoFar = line;
    }
  }

  /** Newlines at the end of the data that belong to the end-of-data trailer, not to rows. */
  private trailerNewlines(): number {
    return this.runAfterEndMarker ? this.newlineRun : 0;
  }
}

function describe(entry: TocEntry): string {
  const name = entry.namespace ? `${entry.namespace}.${entry.tag}` : entry.tag;
  return `${entry.dumpId} (${entry.desc} ${name})`;
}

/**
 * Passes a custom-format archive through unchanged while reading its header, TOC and, for
 * uncompressed archives (pg_dump -Fc -Z0), the exact row count of every table as of the dump's
 * snapshot. Parsing problems never fail the stream: they leave unsupportedReason set and no counts.
 */
export class CustomArchiveScanner extends Transform {
  private readonly parser = new CustomArchiveParser();

  override _transform(chunk: Buffer | string, encoding: BufferEncoding, callback: TransformCallback): void {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunk;
    this.parser.write(bytes);
    callback(null, bytes);
  }

  override _flush(callback: TransformCallback): void {
    this.parser.end();
    callback();
  }

  get header(): ArchiveHeader | undefined {
    return this.parser.header;
  }

  toc(): TocEntry[] {
    return [...this.parser.entries];
  }

  /** See CustomArchiveParser.offsetPatches. */
  offsetPatches(): Array<{ position: number; bytes: Buffer }> {
    return this.parser.offsetPatches();
  }

  tableRowCounts(): TableRowCount[] {
    return this.parser.tableRowCounts();
  }

  /** The whole archive went through and made sense. */
  get complete(): boolean {
    return this.parser.complete;
  }

  get unsupportedReason(): string | undefined {
    return this.parser.unsupportedReason;
  }

  get incompleteReason(): string | undefined {
    return this.parser.incompleteReason;
  }

  get bytesSeen(): number {
    return this.parser.bytesSeen;
  }
}

/** What a scan of a whole archive found; `bytes` is the raw archive's size. */
export interface ArchiveScanResult {
  readonly bytes: number;
  readonly complete: boolean;
  readonly unsupportedReason?: string;
  readonly incompleteReason?: string;
  readonly tables: TableRowCount[];
  /** CustomArchiveParser.offsetPatches, as [position, hex bytes] (the manifest's form). */
  readonly tocPatches: Array<[number, string]>;
}

/**
 * The findings of a parser (or scanner) that has seen the whole archive; `bytes` is counted by the
 * caller, because a parser that stopped on something it does not understand stops counting too.
 */
export function scanFindings(
  scan: Pick<
    CustomArchiveParser,
    'complete' | 'unsupportedReason' | 'incompleteReason' | 'tableRowCounts' | 'offsetPatches'
  >,
  bytes: number,
): ArchiveScanResult {
  return {
    bytes,
    complete: scan.complete,
    unsupportedReason: scan.unsupportedReason,
    incompleteReason: scan.incompleteReason,
    tables: scan.tableRowCounts(),
    tocPatches: scan.offsetPatches().map((p) => [p.position, p.bytes.toString('hex')]),
  };
}

/** Reads a local custom-format archive only as far as the end of its TOC. */
export async function readArchiveToc(path: string): Promise<{ header: ArchiveHeader; entries: TocEntry[] }> {
  const parser = new CustomArchiveParser();
  const stream = createReadStream(path, { highWaterMark: 256 * 1024 });
  try {
    for await (const chunk of stream) {
      parser.write(chunk as Buffer);
      if (parser.tocComplete || parser.failure !== undefined) break;
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? errorMessage(err);
    throw new StorageError(`cannot read archive ${path} (${code}); check the path and its permissions`, {
      cause: err,
    });
  } finally {
    stream.destroy();
  }
  if (!parser.tocComplete || parser.header === undefined) {
    throw new IntegrityError(
      `cannot read the table of contents of ${path}: ${parser.failure ?? 'the file ends before the table of contents does'}; check that it is a complete pg_dump -Fc archive`,
    );
  }
  return { header: parser.header, entries: [...parser.entries] };
}

/**
 * Reads a whole local archive that pg_dump wrote to a pipe and returns the patches that give its TOC
 * the data offsets (see CustomArchiveParser.offsetPatches); empty when the archive cannot be parsed
 * to the end, and pg_restore then scans for the data, slower but still correct. Reading a staged
 * file back from the page cache costs less than passing the same bytes through a stream on their
 * way to disk.
 */
export async function archiveOffsetPatches(
  path: string,
): Promise<Array<{ position: number; bytes: Buffer }>> {
  const parser = new CustomArchiveParser();
  const stream = createReadStream(path, { highWaterMark: 1 << 20 });
  try {
    for await (const chunk of stream) {
      parser.write(chunk as Buffer);
      if (parser.failure !== undefined) return [];
    }
  } finally {
    stream.destroy();
  }
  parser.end();
  return parser.offsetPatches();
}
