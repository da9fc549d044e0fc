import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CustomArchiveParser,
  CustomArchiveScanner,
  readArchiveToc,
  type TocEntry,
} from '../../core/pg/archive';
import { archiveScannerScript, startArchiveScanner } from '../../core/pg/archive-pump';
import type { TempCluster } from '../../core/pg/cluster';
import { findPgBinary, pgEnv } from '../../core/pg/tools';
import { startTool } from '../../core/stream/process';
import {
  buildCustomArchive,
  createSampleData,
  SAMPLE_TABLES,
  type SyntheticEntry,
  startCluster,
} from '../helpers/pg';

const DB = 'shop';
const BIG_ROWS = 100_000;

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Runs a program and returns its stdout as bytes; rejects with its stderr on failure. */
function runForBytes(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve(Buffer.concat(out))
        : reject(new Error(`${file} exited ${code}: ${Buffer.concat(err).toString()}`)),
    );
  });
}

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

async function scanChunks(chunks: Buffer[]): Promise<{ scanner: CustomArchiveScanner; output: Buffer }> {
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

/** Parses `pg_restore -l` lines: "215; 1259 16390 TABLE public customers postgres". */
function restoreListing(
  text: string,
): Array<{ dumpId: number; tableOid: number; oid: number; rest: string }> {
  return text
    .split('\n')
    .filter((line) => /^\d+;/.test(line))
    .map((line) => {
      const m = /^(\d+); (\d+) (\d+) (.*)$/.exec(line)!;
      return { dumpId: Number(m[1]), tableOid: Number(m[2]), oid: Number(m[3]), rest: m[4]!.trimEnd() };
    });
}

/** The same line as pg_restore -l prints it for a TOC entry. */
function listingRest(e: TocEntry): string {
  return `${e.desc} ${e.namespace || '-'} ${e.tag} ${e.owner ?? ''}`.trimEnd();
}

describe('CustomArchiveScanner on real pg_dump output', () => {
  let cluster: TempCluster;
  let dir: string;
  let pipedDump: Buffer;
  let fileDumpPath: string;
  let expectedCounts: Map<string, number>;

  const dumpEnv = () => pgEnv(cluster.connection(DB));
  const pgDump = () => findPgBinary('pg_dump');

  beforeAll(async () => {
    cluster = await startCluster();
    dir = await mkdtemp(join(tmpdir(), 'pgvault-archive-it-'));
    await createSampleData(cluster, DB);
    await cluster.psql(
      `CREATE TABLE public.big_events (id bigint PRIMARY KEY, kind text, payload text);
       INSERT INTO public.big_events
       SELECT g, 'kind' || (g % 13), CASE WHEN g % 1000 = 0 THEN E'multi\\nline\\\\' ELSE md5(g::text) END
         FROM generate_series(1, ${BIG_ROWS}) AS g;
       SELECT lo_from_bytea(0, E'large\\nobject\\n'::bytea);`,
      DB,
    );
    const tables = await cluster.query<{ name: string }>(
      `SELECT n.nspname || '.' || c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname IN ('public', 'sales')`,
      [],
      DB,
    );
    expectedCounts = new Map();
    for (const { name } of tables) {
      const [row] = await cluster.query<{ n: string }>(
        `SELECT count(*)::text AS n FROM ONLY ${name}`,
        [],
        DB,
      );
      expectedCounts.set(name, Number(row!.n));
    }
    // To a pipe, as the backup pipeline runs it: pg_dump cannot seek, so data offsets stay unset.
    pipedDump = await runForBytes(pgDump(), ['-Fc', '-Z0'], dumpEnv());
    // To a file: pg_dump seeks back and rewrites the TOC with data offsets.
    fileDumpPath = join(dir, 'shop.dump');
    await runForBytes(pgDump(), ['-Fc', '-Z0', '-f', fileDumpPath], dumpEnv());
  });

  afterAll(async () => {
    await cluster?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('counts exactly the rows of every table while pg_dump streams through it, bytes untouched', async () => {
    // Prepare
    const child = spawn(pgDump(), ['-Fc', '-Z0'], { env: dumpEnv(), stdio: ['ignore', 'pipe', 'inherit'] });
    const inputHash = createHash('sha256');
    const outputHash = createHash('sha256');
    const tap = new PassThrough();
    tap.on('data', (b: Buffer) => inputHash.update(b));
    const scanner = new CustomArchiveScanner();

    // Act
    await pipeline(
      child.stdout,
      tap,
      scanner,
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          outputHash.update(chunk);
          cb();
        },
      }),
    );

    // Assess
    expect(outputHash.digest('hex')).toBe(inputHash.digest('hex'));
    expect(scanner.complete).toBe(true);
    expect(scanner.unsupportedReason).toBeUndefined();
    // pg_dump 15 writes archive version 1.14 (with a compression level), 16 writes 1.15 and 17
    // writes 1.16 (a compression algorithm, no level): the major installed decides which.
    const major = Number(/postgresql\/(\d+)\//.exec(pgDump())?.[1] ?? '15');
    const archiveVersion = major <= 15 ? '1.14-0' : major === 16 ? '1.15-0' : '1.16-0';
    expect(scanner.header).toMatchObject({
      version: archiveVersion,
      compression: 'none',
      databaseName: DB,
      intSize: 4,
      offSize: 8,
    });
    if (major <= 15) expect(scanner.header?.compressionLevel).toBe(0);
    expect(scanner.header?.serverVersion).toMatch(new RegExp(`^${major}\\.`));
    expect(scanner.header?.pgDumpVersion).toMatch(new RegExp(`^${major}\\.`));
    const counted = new Map(scanner.tableRowCounts().map((t) => [`${t.schema}.${t.table}`, t.rows]));
    expect(counted).toEqual(expectedCounts);
    expect(counted.get('public.big_events')).toBe(BIG_ROWS);
    for (const [table, rows] of Object.entries(SAMPLE_TABLES)) expect(counted.get(table), table).toBe(rows);
    expect(scanner.toc().some((e) => e.desc === 'BLOBS')).toBe(true);
  });

  it('gives the same counts fed one byte at a time and in random slices', async () => {
    const reference = new CustomArchiveParser();
    reference.write(pipedDump);
    reference.end();

    const byByte = new CustomArchiveParser();
    for (let i = 0; i < pipedDump.length; i++) byByte.write(pipedDump.subarray(i, i + 1));
    byByte.end();
    const random = await scanChunks(slices(pipedDump, randomSizes(42, 70_000)));

    expect(sha256(random.output)).toBe(sha256(pipedDump));
    for (const result of [byByte, random.scanner]) {
      expect(result.complete).toBe(true);
      expect(result.tableRowCounts()).toEqual(reference.tableRowCounts());
    }
    expect(byByte.entries).toEqual(reference.entries);
    expect(random.scanner.toc()).toEqual(reference.entries);
    expect(new Map(reference.tableRowCounts().map((t) => [`${t.schema}.${t.table}`, t.rows]))).toEqual(
      expectedCounts,
    );
  });

  it('reads from a dump file the same TOC that pg_restore -l lists', async () => {
    const { header, entries } = await readArchiveToc(fileDumpPath);
    // -C so the DATABASE entries are listed too; pg_restore never lists the session settings.
    const listing = (
      await runForBytes(findPgBinary('pg_restore'), ['-C', '-l', fileDumpPath], process.env)
    ).toString();

    const listed = restoreListing(listing);
    const settings = entries.filter((e) => !listed.some((l) => l.dumpId === e.dumpId));
    expect(settings.map((e) => e.desc)).toEqual(['ENCODING', 'STDSTRINGS', 'SEARCHPATH']);
    const listable = entries.filter((e) => !settings.includes(e));
    expect(listable.map((e) => e.dumpId)).toEqual(listed.map((l) => l.dumpId));
    expect(listable.map((e) => [e.dumpId, e.tableOid, e.oid, listingRest(e)])).toEqual(
      listed.map((l) => [l.dumpId, l.tableOid, l.oid, l.rest]),
    );
    expect(listing).toContain(`;     dbname: ${header.databaseName}\n`);
    expect(listing).toContain(`;     Dump Version: ${header.version}\n`);
    expect(listing).toContain(`;     Dumped from database version: ${header.serverVersion}\n`);
    expect(listing).toContain(`;     Dumped by pg_dump version: ${header.pgDumpVersion}\n`);
    expect(listing).toContain(`;     TOC Entries: ${entries.length}\n`);
    // pg_dump rewrote the TOC of the file with the position of each data block.
    const data = entries.filter((e) => e.desc === 'TABLE DATA');
    expect(data.every((e) => e.dataState === 'set' && (e.dataOffset ?? 0) > 0)).toBe(true);
    const piped = new CustomArchiveParser();
    piped.write(pipedDump);
    expect(piped.entries.filter((e) => e.desc === 'TABLE DATA').every((e) => e.dataState === 'not-set')).toBe(
      true,
    );
  });

  it('counts the rows of a dump file too (offsets set in its TOC)', async () => {
    const { readFile } = await import('node:fs/promises');
    const bytes = await readFile(fileDumpPath);
    const { scanner } = await scanChunks(slices(bytes, randomSizes(9, 200_000)));
    expect(scanner.complete).toBe(true);
    expect(new Map(scanner.tableRowCounts().map((t) => [`${t.schema}.${t.table}`, t.rows]))).toEqual(
      expectedCounts,
    );
  });

  it('passes a compressed (-Z6) archive through and says why it has no counts', async () => {
    const compressed = await runForBytes(pgDump(), ['-Fc', '-Z6'], dumpEnv());
    const { scanner, output } = await scanChunks(slices(compressed, randomSizes(5, 65_536)));
    expect(sha256(output)).toBe(sha256(compressed));
    // Archives before 1.15 record the level; later ones only the algorithm.
    expect(scanner.unsupportedReason).toMatch(/compressed \(gzip( level 6)?\)/);
    expect(scanner.header?.compression).toBe('gzip');
    expect(scanner.toc().length).toBeGreaterThan(20);
    expect(scanner.tableRowCounts()).toEqual([]);
  });

  it('reports a truncated archive as incomplete, wherever it was cut', async () => {
    const tocProbe = new CustomArchiveParser();
    for (let i = 0; !tocProbe.tocComplete; i += 64) tocProbe.write(pipedDump.subarray(i, i + 64));
    const cuts = [10, 100, Math.floor(tocProbe.bytesSeen / 2), pipedDump.length / 2, pipedDump.length - 1];
    for (const cut of cuts.map(Math.floor)) {
      const truncated = pipedDump.subarray(0, cut);
      const { scanner, output } = await scanChunks(slices(truncated, randomSizes(cut, 30_000)));
      expect(output.equals(truncated), `cut at ${cut}`).toBe(true);
      expect(scanner.complete, `cut at ${cut}`).toBe(false);
      expect(scanner.incompleteReason).toMatch(/archive ends/);
      expect(scanner.tableRowCounts()).toEqual([]);
    }
  });

  it('reads a schema-only dump as complete with no tables to count', async () => {
    const schemaOnly = await runForBytes(pgDump(), ['-Fc', '-Z0', '--schema-only'], dumpEnv());
    const { scanner } = await scanChunks([schemaOnly]);
    expect(scanner.complete).toBe(true);
    expect(scanner.tableRowCounts()).toEqual([]);
  });

  /** pg_dump → scanner process → `consumer`, as `backup full` wires them; the consumer's output. */
  async function throughScannerProcess(consumer: { command: string; args: string[] }) {
    const script = archiveScannerScript();
    expect(script, 'the build (npm run build) provides dist/core/pg/archive-pump.js').toBeDefined();
    const sink = startTool(consumer.command, consumer.args, { stdin: 'pipe' });
    const progress: number[] = [];
    const scanner = startArchiveScanner(script!, sink.child.stdin!, (bytes) => progress.push(bytes));
    const dump = startTool(pgDump(), ['-Fc', '-Z0'], {
      env: dumpEnv(),
      stdin: 'ignore',
      stdout: scanner.input,
    });
    sink.child.stdin!.destroy();
    scanner.input.destroy();
    const out: Buffer[] = [];
    sink.stdout.on('data', (b: Buffer) => out.push(b));
    const settled = await Promise.allSettled([dump.exited, scanner.exited, sink.exited, scanner.result]);
    return { settled, output: Buffer.concat(out), scanner, progress };
  }

  it('the scanner process passes the archive on unchanged and finds what the in-process parser finds', async () => {
    // Act
    const { settled, output, scanner } = await throughScannerProcess({ command: 'cat', args: [] });

    // Assess
    expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
    const result = await scanner.result;
    const reference = new CustomArchiveParser();
    reference.write(output);
    reference.end();
    expect(reference.complete).toBe(true);
    expect(result.bytes).toBe(output.length);
    expect(result.complete).toBe(true);
    expect(result.unsupportedReason).toBeUndefined();
    expect(result.tables).toEqual(reference.tableRowCounts());
    expect(result.tocPatches).toEqual(
      reference.offsetPatches().map((p) => [p.position, p.bytes.toString('hex')]),
    );
    expect(result.tocPatches.length).toBeGreaterThan(0);
    expect(new Map(result.tables.map((t) => [`${t.schema}.${t.table}`, t.rows]))).toEqual(expectedCounts);
  });

  it('the scanner process fails loudly when its reader stops early, and pg_dump stops too', async () => {
    // Act: a consumer that takes 1000 bytes and leaves.
    const { settled } = await throughScannerProcess({ command: 'head', args: ['-c', '1000'] });

    // Assess
    const [dump, scanned] = settled;
    expect(dump.status).toBe('rejected');
    expect(scanned.status).toBe('rejected');
    expect(String((scanned as PromiseRejectedResult).reason)).toMatch(/stopped reading/);
  });
});

describe('synthetic archives cross-checked with pg_restore', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pgvault-synthetic-'));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const entries: SyntheticEntry[] = [
    {
      dumpId: 1,
      desc: 'ENCODING',
      tag: 'ENCODING',
      namespace: null,
      section: 2,
      defn: "SET client_encoding = 'UTF8';\n",
    },
    {
      dumpId: 2,
      desc: 'TABLE',
      tag: 't',
      namespace: 'public',
      tableAm: 'heap',
      defn: 'CREATE TABLE public.t (a text);\n',
      dropStmt: 'DROP TABLE public.t;\n',
    },
    {
      dumpId: 3,
      desc: 'TABLE DATA',
      tag: 't',
      namespace: 'public',
      copyStmt: 'COPY public.t (a) FROM stdin;\n',
      dependencies: [2],
      data: ['one\n', 'two\\nlines\n', '\\\\.\n', '\\.\n\n\n'],
    },
  ];

  // pg_restore 15 reads archive versions up to 1.14; it confirms the synthetic writer, and so the
  // unit tests built on it, follow the real layout of those versions.
  for (const minor of [12, 13, 14]) {
    it(`pg_restore 15 reads a synthetic 1.${minor} archive the way the parser does`, async () => {
      const path = join(dir, `synthetic-1.${minor}.dump`);
      const archive = buildCustomArchive({ minor, entries });
      await writeFile(path, archive);
      const pgRestore = findPgBinary('pg_restore');

      const listing = (await runForBytes(pgRestore, ['-l', path], process.env)).toString();
      const script = (await runForBytes(pgRestore, ['--data-only', '-f', '-', path], process.env)).toString();
      const parser = new CustomArchiveParser();
      parser.write(archive);
      parser.end();

      expect(listing).toContain(`Dump Version: 1.${minor}-0`);
      expect(restoreListing(listing).map((l) => l.rest)).toEqual(parser.entries.slice(1).map(listingRest));
      expect(script).toContain('COPY public.t (a) FROM stdin;\none\ntwo\\nlines\n\\\\.\n\\.\n');
      expect(parser.tableRowCounts()).toEqual([{ schema: 'public', table: 't', rows: 3 }]);
    });
  }
});
