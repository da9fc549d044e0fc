import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { UsageError } from '../../core/errors';
import {
  copyLineageName,
  copyMarksOfDataDirectory,
  copySettings,
  refuseCopyIntoSource,
  refuseCopyWal,
} from '../../core/restore/copy';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgvault-copy-marks-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("a copy's lineage name", () => {
  it('is a valid CLUSTER_NAME of at most 63 characters, even for the longest cluster name', () => {
    const long = `a${'b'.repeat(62)}`;
    const name = copyLineageName(long, new Date('2026-12-05T13:14:15Z'));
    expect(name.length).toBeLessThanOrEqual(63);
    expect(name.endsWith('-copy-20261205131415')).toBe(true);
    expect(parseConfig({ CLUSTER_NAME: name }).clusterName).toBe(name);
    expect(copyLineageName('prod', new Date('2026-12-05T13:14:15Z'))).toBe('prod-copy-20261205131415');
  });
});

describe('the marks in postgresql.auto.conf', () => {
  it('are read as ALTER SYSTEM writes them, the last one winning, and gone once reset', async () => {
    // Prepare: a data directory whose copy was itself copied (two blocks), then an ALTER SYSTEM rewrite
    const data = join(dir, 'data');
    await rm(data, { recursive: true, force: true });
    await mkdir(join(data, 'pg_wal'), { recursive: true });
    const settings = copySettings({ sourceCluster: 'prod', lineage: 'prod-copy-1', port: 6000 });
    const block = Object.entries(settings)
      .map(([k, v]) => `${k} = '${v}'`)
      .join('\n');
    await writeFile(
      join(data, 'postgresql.auto.conf'),
      `${block}\npgvault.copy_of = 'prod-copy-1'\npgvault.lineage = 'it''s-own'\n`,
    );
    // Act
    const marks = await copyMarksOfDataDirectory(data);
    // Assert
    expect(settings.archive_mode).toBe('off');
    expect(settings.archive_command).toBe('');
    expect(marks).toEqual({ copyOf: 'prod-copy-1', lineage: "it's-own" });
    await expect(
      refuseCopyWal('prod-copy-1', join(data, 'pg_wal', '000000020000000000000005')),
    ).rejects.toThrow(UsageError);
    await expect(
      refuseCopyWal('prod', join(data, 'pg_wal', '000000020000000000000005')),
    ).resolves.toBeUndefined();
    // A file outside a pg_wal directory (wal receive's folder) is not looked at.
    await expect(
      refuseCopyWal('prod-copy-1', join(data, '000000020000000000000005')),
    ).resolves.toBeUndefined();

    await writeFile(join(data, 'postgresql.auto.conf'), "# reset\nport = '6000'\n");
    expect(await copyMarksOfDataDirectory(data)).toEqual({ copyOf: undefined, lineage: undefined });
    await expect(refuseCopyWal('prod-copy-1', join(data, 'pg_wal', 'x'))).resolves.toBeUndefined();
  });

  it('refuse the original cluster name in one line naming the lineage to use, and nothing else', () => {
    const refuse = () =>
      refuseCopyIntoSource(
        'prod',
        { copyOf: 'prod', lineage: 'prod-copy-20261205131415' },
        'this full backup',
      );
    expect(refuse).toThrow(UsageError);
    expect(refuse).toThrow(
      /^this full backup comes from a copy of cluster prod .*set CLUSTER_NAME=prod-copy-20261205131415 /,
    );
    expect(() => refuse()).not.toThrow(/\n/);
    expect(() =>
      refuseCopyIntoSource(
        'prod-copy-20261205131415',
        { copyOf: 'prod', lineage: 'prod-copy-20261205131415' },
        'x',
      ),
    ).not.toThrow();
    expect(() => refuseCopyIntoSource('prod', {}, 'x')).not.toThrow();
  });
});
