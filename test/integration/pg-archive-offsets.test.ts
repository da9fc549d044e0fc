import { execFileSync, spawn } from 'node:child_process';
import { createWriteStream, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CustomArchiveScanner, readArchiveToc } from '../../core/pg/archive';
import type { TempCluster } from '../../core/pg/cluster';
import { findPgBinary, pgEnv } from '../../core/pg/tools';
import { createSampleData, startCluster } from '../helpers/pg';
import { tempDir } from '../helpers/vault';

/**
 * pg_dump writing to a pipe cannot go back to fill in data offsets; pgvault fills them in on the
 * local copy a restore makes, so pg_restore --jobs seeks instead of scanning. The patched archive
 * must carry exactly the offsets pg_dump itself writes when it dumps to a file.
 */
let cluster: TempCluster;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [cluster, work] = await Promise.all([startCluster(), tempDir()]);
  await createSampleData(cluster, 'app');
});

afterAll(async () => {
  await Promise.all([cluster?.stop(), work?.remove()]);
});

describe('data offsets for pipe-written archives', () => {
  it('patches the TOC to the offsets pg_dump writes to a file', async () => {
    // Prepare: the same static database dumped to a pipe and to a file.
    const env = pgEnv(cluster.connection('app'));
    const pgDump = findPgBinary('pg_dump');
    const piped = `${work.path}/piped.dump`;
    const filed = `${work.path}/filed.dump`;
    execFileSync(pgDump, ['-Fc', '-Z0', '-f', filed], { env });
    const child = spawn(pgDump, ['-Fc', '-Z0'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    const scanner = new CustomArchiveScanner();
    await pipeline(child.stdout, scanner, createWriteStream(piped));

    // Act
    const patches = scanner.offsetPatches();
    const handle = await open(piped, 'r+');
    for (const p of patches) await handle.write(p.bytes, 0, p.bytes.length, p.position);
    await handle.close();

    // Assess
    const before = (await readArchiveToc(filed)).entries;
    const after = (await readArchiveToc(piped)).entries;
    const offsets = (entries: typeof before) =>
      entries.filter((e) => e.dataState === 'set').map((e) => [e.dumpId, e.desc, e.tag, e.dataOffset]);
    expect(patches.length).toBeGreaterThan(5);
    expect(offsets(after)).toEqual(offsets(before));
    expect(after.filter((e) => e.dataState === 'not-set')).toEqual([]);
    const fd = openSync(piped, 'r');
    for (const e of after.filter((x) => x.dataState === 'set')) {
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, e.dataOffset!);
      expect(b[0], `block type at the offset of entry ${e.dumpId}`).toBe(1);
    }
  });
});
