import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IntegrityError, StorageError } from '../../core/errors';
import { CustomArchiveParser, CustomArchiveScanner, readArchiveToc } from '../../core/pg/archive';
import { buildCustomArchive, type SyntheticEntry } from '../helpers/pg';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Deterministic chunk sizes, so a failure can be replayed. */
function* randomSizes(seed: number, max: number): Generator<number> {
  let state = seed >>> 0;
  for (;;) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    yield 1 + (state % max);
  }
}

function slices(bytes: Buffer, sizes: Iterator<number>): Buffer[] {
  const out: Buffer[] = [];
  for (let pos = 0; pos < bytes.length; ) {
    const n = sizes.next().value as number;
    out.push(bytes.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

function parseAll(chunks: Iterable<Buffer>): CustomArchiveParser {
  const parser = new CustomArchiveParser();
  for (const chunk of chunks) parser.write(chunk);
  parser.end();
  return parser;
}

async function scan(chunks: Buffer[]): Promise<{ scanner: CustomArchiveScanner; output: Buffer }> {
  const scanner = new CustomArchiveScanner();
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(chunks),
    scanner,
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        out.push(chunk);
        cb();
      },
    }),
  );
  return { scanner, output: Buffer.concat(out) };
}

/** A small database as pg_dump would archive it: rows with every COPY escape that matters. */
function sampleEntries(): SyntheticEntry[] {
  return [
    {
      dumpId: 3300,
      desc: 'ENCODING',
      tag: 'ENCODING',
      namespace: null,
      section: 2,
      defn: "SET client_encoding = 'UTF8';\n",
    },
    {
      dumpId: 5,
      desc: 'SCHEMA',
      tag: 'sales',
      namespace: null,
      defn: 'CREATE SCHEMA sales;\n',
      dropStmt: 'DROP SCHEMA sales;\n',
    },
    {
      dumpId: 210,
      desc: 'TABLE',
      tag: 'orders',
      namespace: 'sales',
      tableAm: 'heap',
      relkind: 'r',
      tableOid: 1259,
      oid: 16390,
      defn: `CREATE TABLE sales.orders (id int, note text);\n${'-- a long definition\n'.repeat(2000)}`,
      dependencies: [5],
    },
    {
      dumpId: 3310,
      desc: 'TABLE DATA',
      tag: 'orders',
      namespace: 'sales',
      copyStmt: 'COPY sales.orders (id, note) FROM stdin;\n',
      dependencies: [210],
      data: ['1\tplain\n', '2\ttwo\\nlines\n', '3\t\\\\.\n', '4\t\\N\n', '5\tüñï ✓\n', '6\t\n', '\\.\n\n\n'],
    },
    { dumpId: 211, desc: 'TABLE', tag: 'empty', namespace: 'public', tableAm: 'heap', relkind: 'r' },
    {
      dumpId: 3311,
      desc: 'TABLE DATA',
      tag: 'empty',
      namespace: 'public',
      copyStmt: 'COPY public.empty (id) FROM stdin;\n',
      dependencies: [211],
      data: ['\\.\n\n\n'],
    },
    {
      dumpId: 3312,
      desc: 'TABLE DATA',
      tag: 'no_columns',
      namespace: 'public',
      copyStmt: 'COPY public.no_columns  FROM stdin;\n',
      data: ['\n', '\n', '\n', '\\.\n\n\n'],
    },
    {
      dumpId: 3313,
      desc: 'BLOBS',
      tag: 'BLOBS',
      namespace: null,
      largeObjects: [
        { oid: 16500, chunks: ['hello\nworld\n', '\n\n'] },
        { oid: 3_000_000_000, chunks: ['x'] },
      ],
    },
    {
      dumpId: 3400,
      desc: 'INDEX',
      tag: 'orders_note_idx',
      namespace: 'sales',
      section: 4,
      dependencies: [210],
    },
  ];
}

const EXPECTED_COUNTS = [
  { schema: 'sales', table: 'orders', rows: 6 },
  { schema: 'public', table: 'empty', rows: 0 },
  { schema: 'public', table: 'no_columns', rows: 3 },
];

describe('CustomArchiveParser on every supported archive version', () => {
  for (const minor of [12, 13, 14, 15, 16]) {
    describe(`archive 1.${minor}`, () => {
      const archive = buildCustomArchive({ minor, entries: sampleEntries(), databaseName: 'shop' });

      it('reads the header, the TOC fields this version has, and exact row counts', () => {
        const parser = parseAll([archive]);

        expect(parser.complete).toBe(true);
        expect(parser.unsupportedReason).toBeUndefined();
        expect(parser.header).toMatchObject({
          version: `1.${minor}-0`,
          intSize: 4,
          offSize: 8,
          format: 1,
          compression: 'none',
          databaseName: 'shop',
          createdAt: '2026-02-09 12:34:56',
          serverVersion: '15.18 (synthetic)',
          pgDumpVersion: '15.18 (synthetic)',
        });
        expect(parser.header?.compressionLevel).toBe(minor >= 15 ? undefined : 0);
        expect(parser.entries.map((e) => e.dumpId)).toEqual([
          3300, 5, 210, 3310, 211, 3311, 3312, 3313, 3400,
        ]);
        const table = parser.entries.find((e) => e.dumpId === 210)!;
        expect(table).toMatchObject({
          desc: 'TABLE',
          tag: 'orders',
          namespace: 'sales',
          tableOid: 1259,
          oid: 16390,
          owner: 'postgres',
          section: 'pre-data',
          dependencies: [5],
          dataState: 'no-data',
          hadDumper: false,
        });
        expect(table.defn?.length).toBeGreaterThan(40_000);
        expect(table.tableAccessMethod).toBe(minor >= 14 ? 'heap' : undefined);
        expect(table.relkind).toBe(minor >= 16 ? 'r' : undefined);
        expect(parser.entries.find((e) => e.dumpId === 3310)).toMatchObject({
          section: 'data',
          dataState: 'not-set',
          hadDumper: true,
          copyStmt: 'COPY sales.orders (id, note) FROM stdin;\n',
        });
        expect(parser.entries.find((e) => e.dumpId === 5)?.namespace).toBeUndefined();
        expect(parser.tableRowCounts()).toEqual(EXPECTED_COUNTS);
      });

      it('gives the same result fed one byte at a time and in random slices', () => {
        const whole = parseAll([archive]);
        const byByte = parseAll(slices(archive, randomSizes(1, 1)));
        const random = parseAll(slices(archive, randomSizes(minor, 37)));
        for (const parser of [byByte, random]) {
          expect(parser.complete).toBe(true);
          expect(parser.header).toEqual(whole.header);
          expect(parser.entries).toEqual(whole.entries);
          expect(parser.tableRowCounts()).toEqual(EXPECTED_COUNTS);
        }
      });
    });
  }

  it('reads archives written with 8-byte integers', () => {
    const parser = parseAll([buildCustomArchive({ minor: 14, intSize: 8, entries: sampleEntries() })]);
    expect(parser.header?.intSize).toBe(8);
    expect(parser.complete).toBe(true);
    expect(parser.tableRowCounts()).toEqual(EXPECTED_COUNTS);
  });

  it('decodes names byte for byte when the database encoding is not UTF8', () => {
    const entries: SyntheticEntry[] = [
      {
        dumpId: 1,
        desc: 'ENCODING',
        tag: 'ENCODING',
        namespace: null,
        defn: "SET client_encoding = 'LATIN1';\n",
      },
      { dumpId: 2, desc: 'TABLE', tag: 'caf\u00e9', namespace: 'public' },
    ];
    const parser = parseAll([buildCustomArchive({ minor: 14, entries })]);
    // The synthetic writer wrote UTF-8; read as LATIN1 each of its two bytes is one character.
    expect(parser.entries[1]?.tag).toBe('caf\u00c3\u00a9');
  });
});

describe('COPY end-of-data trailer', () => {
  const table = (data: string[]): SyntheticEntry => ({
    dumpId: 10,
    desc: 'TABLE DATA',
    tag: 't',
    namespace: 'public',
    copyStmt: 'COPY public.t (a) FROM stdin;\n',
    data,
  });
  const rowsOf = (data: string[]) =>
    parseAll([buildCustomArchive({ minor: 14, entries: [table(data)] })]).tableRowCounts()[0]?.rows;

  it('subtracts the "\\." line and the empty lines after it', () => {
    expect(rowsOf(['a\n', 'b\n', '\\.\n\n\n'])).toBe(2);
    expect(rowsOf(['a\nb\n\\.\n\n\n'])).toBe(2);
    expect(rowsOf(['\\.\n\n\n'])).toBe(0);
    expect(rowsOf(['\\', '.', '\n', '\n', '\n'])).toBe(0);
  });

  it('counts rows that only look like the trailer', () => {
    // A value "\." is written "\\." by COPY; a lone "." and empty values are rows too.
    expect(rowsOf(['\\\\.\n', '\\.\n\n\n'])).toBe(1);
    expect(rowsOf(['.\n', '\n', '\\.\n\n\n'])).toBe(2);
    expect(rowsOf(['x\\\\.\n\n\n'])).toBe(3);
  });

  it('does not mistake a chunk length byte for the newline before a line', () => {
    // With 1-byte integers a 10-byte chunk's length byte is 0x0a, a newline. The chunk below
    // continues the row a\\. (COPY text for "a", a backslash, ".") and is not a line of its own.
    const data = ['a\\', `\\.${'\n'.repeat(8)}`];
    const archive = buildCustomArchive({ minor: 14, intSize: 1, entries: [table(data)] });
    expect(archive.includes(Buffer.from([0, 10, 0x5c, 0x2e]))).toBe(true);
    expect(parseAll([archive]).tableRowCounts()[0]?.rows).toBe(8);
  });

  it('counts every newline when a pg_dump writes no trailer', () => {
    expect(rowsOf(['a\n', 'b\n'])).toBe(2);
    expect(rowsOf([])).toBe(0);
  });

  it('leaves out TABLE DATA written as INSERT statements, whose lines are not rows', () => {
    const inserts: SyntheticEntry = { ...table(["INSERT INTO t VALUES ('a\nb');\n"]), copyStmt: '' };
    const parser = parseAll([buildCustomArchive({ minor: 14, entries: [inserts] })]);
    expect(parser.complete).toBe(true);
    expect(parser.tableRowCounts()).toEqual([]);
  });
});

describe('row counting, property-based', () => {
  // Pieces of COPY text rows as COPY writes them, with the bytes of the end marker among them. A
  // backslash in a row always starts an escape (\\ for a backslash, \n, \N, ...), so a row is never
  // the bare end-marker line and no lone backslash is generated.
  const rowPiece = fc.constantFrom('a', 'ü', '.', '\\\\', '\\n', '\t', '\\N', '\\\\.', '\\t');
  const row = fc.array(rowPiece, { maxLength: 6 }).map((pieces) => `${pieces.join('')}\n`);

  it('counts every row whatever the rows, the data chunking and the stream slicing', () => {
    fc.assert(
      fc.property(
        fc.array(row, { maxLength: 40 }),
        fc.constantFrom('\\.\n\n\n', '\\.\n', ''),
        fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 1, maxLength: 20 }),
        fc.constantFrom(1, 4, 8),
        fc.integer({ min: 1, max: 50 }),
        (rows, trailer, cuts, intSize, slice) => {
          const text = rows.join('') + trailer;
          // Split the data into archive chunks at arbitrary places, "\." included.
          const chunks: string[] = [];
          let pos = 0;
          for (let i = 0; pos < text.length; i++) {
            const n = cuts[i % cuts.length]!;
            chunks.push(text.slice(pos, pos + n));
            pos += n;
          }
          const archive = buildCustomArchive({
            minor: 14,
            intSize,
            entries: [
              {
                dumpId: 7,
                desc: 'TABLE DATA',
                tag: 't',
                copyStmt: 'COPY public.t (a) FROM stdin;\n',
                data: chunks,
              },
            ],
          });
          const parser = parseAll(slices(archive, randomSizes(slice, slice)));
          expect(parser.complete).toBe(true);
          expect(parser.tableRowCounts()).toEqual([{ schema: 'public', table: 't', rows: rows.length }]);
        },
      ),
      { numRuns: 400 },
    );
  });
});

describe('archives the scanner cannot count', () => {
  it('reads the TOC of a compressed archive but gives no row counts (zlib level before 1.15)', () => {
    const archive = buildCustomArchive({ minor: 14, compression: -1, entries: sampleEntries() });
    const parser = parseAll([archive]);
    expect(parser.header?.compression).toBe('gzip');
    expect(parser.header?.compressionLevel).toBe(-1);
    expect(parser.unsupportedReason).toMatch(/compressed \(gzip level -1\).*-Z0/);
    expect(parser.entries).toHaveLength(9);
    expect(parser.complete).toBe(true);
    expect(parser.tableRowCounts()).toEqual([]);
  });

  it('names the algorithm of a compressed 1.15+ archive', () => {
    const parser = parseAll([buildCustomArchive({ minor: 16, compression: 3, entries: sampleEntries() })]);
    expect(parser.header?.compression).toBe('zstd');
    expect(parser.unsupportedReason).toMatch(/compressed \(zstd\)/);
    expect(parser.tableRowCounts()).toEqual([]);
  });

  it.each([
    [
      'a newer archive version',
      buildCustomArchive({ minor: 17, entries: [] }),
      /version 1\.17-0 is not one pgvault reads/,
    ],
    ['an older archive version', buildCustomArchive({ minor: 11, entries: [] }), /version 1\.11-0/],
    [
      'a plain SQL dump',
      Buffer.from('--\n-- PostgreSQL database dump\n--\n'),
      /not a pg_dump custom-format archive/,
    ],
    ['a tar archive', Buffer.alloc(1024), /not a pg_dump custom-format archive/],
  ])('passes %s through untouched and says why it is not counted', async (_what, bytes, reason) => {
    const { scanner, output } = await scan(slices(bytes, randomSizes(7, 100)));
    expect(sha256(output)).toBe(sha256(bytes));
    expect(scanner.unsupportedReason).toMatch(reason);
    expect(scanner.complete).toBe(false);
    expect(scanner.tableRowCounts()).toEqual([]);
  });

  it('stops at a corrupt data block without failing the stream', async () => {
    const archive = buildCustomArchive({ minor: 14, entries: sampleEntries() });
    const corrupt = Buffer.concat([archive, Buffer.from([9, 0, 1, 0, 0, 0])]);
    const { scanner, output } = await scan([corrupt]);
    expect(output.equals(corrupt)).toBe(true);
    expect(scanner.unsupportedReason).toMatch(/unknown archive data block type 9/);
    expect(scanner.complete).toBe(false);
    expect(scanner.tableRowCounts()).toEqual([]);
  });

  it('never throws and never calls a truncated archive complete, wherever it is cut', () => {
    const archive = buildCustomArchive({
      minor: 16,
      entries: sampleEntries().filter((e) => e.dumpId !== 210),
    });
    for (let cut = 0; cut < archive.length; cut++) {
      const parser = parseAll([archive.subarray(0, cut)]);
      expect(parser.complete, `cut at ${cut}`).toBe(false);
      expect(parser.tableRowCounts()).toEqual([]);
      expect(parser.incompleteReason).toBeDefined();
    }
    expect(parseAll([archive]).complete).toBe(true);
  });

  it('notices a data block that never came', () => {
    const archive = buildCustomArchive({ minor: 14, entries: sampleEntries() });
    // The BLOBS block is last: type byte, id, two objects (oid, chunks, end marker), end oid.
    const blobsBlock = 1 + 5 + (5 + (5 + 12) + (5 + 2) + 5) + (5 + (5 + 1) + 5) + 5;
    const parser = parseAll([archive.subarray(0, archive.length - blobsBlock)]);
    expect(parser.complete).toBe(false);
    expect(parser.incompleteReason).toMatch(
      /ends before the data of 1 entries \(first: 3313 \(BLOBS BLOBS\)\)/,
    );
  });
});

describe('CustomArchiveScanner as a stream', () => {
  it('passes every byte through unchanged', async () => {
    const archive = buildCustomArchive({ minor: 15, entries: sampleEntries() });
    const { scanner, output } = await scan(slices(archive, randomSizes(3, 4096)));
    expect(sha256(output)).toBe(sha256(archive));
    expect(scanner.complete).toBe(true);
    expect(scanner.bytesSeen).toBe(archive.length);
    expect(scanner.header?.version).toBe('1.15-0');
    expect(scanner.toc().map((e) => e.desc)).toContain('BLOBS');
    expect(scanner.tableRowCounts()).toEqual(EXPECTED_COUNTS);
  });

  it('is not complete when the stream fails before its end', async () => {
    const archive = buildCustomArchive({ minor: 14, entries: sampleEntries() });
    const scanner = new CustomArchiveScanner();
    const source = new Readable({ read() {} });
    const done = pipeline(source, scanner, new Writable({ write: (_c, _e, cb) => cb() }));
    source.push(archive.subarray(0, 100));
    source.destroy(new Error('pg_dump died'));
    await expect(done).rejects.toThrow('pg_dump died');
    expect(scanner.complete).toBe(false);
  });
});

describe('readArchiveToc', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pgvault-archive-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads the header and TOC and stops there', async () => {
    const archive = buildCustomArchive({ minor: 14, entries: sampleEntries() });
    const probe = new CustomArchiveParser();
    for (let i = 0; !probe.tocComplete; i++) probe.write(archive.subarray(i, i + 1));
    const tocEnd = probe.bytesSeen;
    // Garbage after the TOC proves nothing past it is read.
    const path = join(dir, 'toc-only.dump');
    await writeFile(path, Buffer.concat([archive.subarray(0, tocEnd), Buffer.alloc(2_000_000, 0xff)]));
    const { header, entries } = await readArchiveToc(path);
    expect(header.version).toBe('1.14-0');
    expect(entries.map((e) => e.dumpId)).toEqual([3300, 5, 210, 3310, 211, 3311, 3312, 3313, 3400]);
  });

  it('reads the TOC of a compressed archive', async () => {
    const path = join(dir, 'compressed.dump');
    await writeFile(path, buildCustomArchive({ minor: 16, compression: 1, entries: sampleEntries() }));
    const { header, entries } = await readArchiveToc(path);
    expect(header.compression).toBe('gzip');
    expect(entries).toHaveLength(9);
  });

  it('refuses a file that is not an archive, or ends inside its TOC', async () => {
    const notArchive = join(dir, 'plain.sql');
    await writeFile(notArchive, '-- PostgreSQL database dump\n');
    await expect(readArchiveToc(notArchive)).rejects.toThrow(IntegrityError);
    await expect(readArchiveToc(notArchive)).rejects.toThrow(/not a pg_dump custom-format archive/);
    const cut = join(dir, 'cut.dump');
    await writeFile(cut, buildCustomArchive({ minor: 14, entries: sampleEntries() }).subarray(0, 300));
    await expect(readArchiveToc(cut)).rejects.toThrow(/ends before the table of contents does/);
  });

  it('says which file it could not read', async () => {
    await expect(readArchiveToc(join(dir, 'missing.dump'))).rejects.toThrow(StorageError);
    await expect(readArchiveToc(join(dir, 'missing.dump'))).rejects.toThrow(/missing\.dump \(ENOENT\)/);
  });
});
