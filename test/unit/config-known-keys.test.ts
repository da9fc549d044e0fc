import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isKnownKey, KNOWN_KEYS, loadConfig } from '../../core/config';
import { tempDir } from '../helpers/vault';

/**
 * Issue 11 follow-up: a key of a config file that pgvault does not know (`ENCRYPTON=true`) is named in
 * a warning, with the key it probably meant, instead of being ignored without a word. The one list of
 * known keys (core/config.ts KNOWN_KEYS) must hold every key pgvault or its deployment reads, or a
 * correct file would be warned about.
 */
const ROOT = resolve(__dirname, '../..');
const source = (path: string) => readFileSync(join(ROOT, path), 'utf8');

let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  work = await tempDir('pgvault-known-keys-');
});

afterAll(async () => {
  await work?.remove();
});

function keysMatching(text: string, pattern: RegExp): string[] {
  return [...new Set([...text.matchAll(pattern)].map((m) => m[1]!))].sort();
}

describe('the list of known keys', () => {
  it('holds every key core/config.ts reads', () => {
    // Prepare
    const config = source('core/config.ts');
    const reads = [
      ...keysMatching(config, /\(raw, '([A-Z][A-Z0-9_]*)'/g),
      ...keysMatching(config, /\braw\.([A-Z][A-Z0-9_]*)/g),
    ];

    // Assess
    expect(reads.length).toBeGreaterThan(50);
    expect(reads.filter((k) => !isKnownKey(k))).toEqual([]);
  });

  it("holds every key of README's configuration table", () => {
    // Prepare
    const readme = source('README.md');
    const table = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('## CLI reference'));
    const rows = table.split('\n').filter((line) => line.startsWith('| `'));
    const keys = keysMatching(rows.map((row) => row.split('|')[1]).join(' '), /`([A-Z][A-Z0-9_]*)`/g);

    // Assess
    expect(keys.length).toBeGreaterThan(50);
    expect(keys.filter((k) => !isKnownKey(k))).toEqual([]);
  });

  it("holds the keys the AWS deployment hands its functions and tasks, and bin/pgvault's", () => {
    // Prepare
    const env = source('functions/env.ts');
    const stack = source('infra/stack.ts');
    const blocks = [
      ...stack.matchAll(/(?:sharedEnvironment|functionEnvironment)[^=\n]*= \{[\s\S]*?\n {4}\};/g),
      ...stack.matchAll(/sharedEnvironment: \{[^}]*\}/g),
    ].map((m) => m[0]);
    const keys = [
      ...keysMatching(env, /\benv\.([A-Z][A-Z0-9_]*)/g),
      ...keysMatching(env, /\(env, '([A-Z][A-Z0-9_]*)'/g),
      ...keysMatching(env, /\b([A-Z][A-Z0-9_]{2,}): /g),
      ...keysMatching(blocks.join('\n'), /\b([A-Z][A-Z0-9_]{2,}): /g),
      ...keysMatching(source('bin/pgvault'), /\bsetting ([A-Z][A-Z0-9_]*)/g),
    ];

    // Assess
    expect(blocks.length).toBeGreaterThanOrEqual(3);
    expect(keys).toEqual(expect.arrayContaining(['ECS_CLUSTER_ARN', 'SNS_TOPIC_ARN', 'SPOOL_DIR', 'TMPDIR']));
    expect(keys.filter((k) => !isKnownKey(k))).toEqual([]);
  });

  it('lists each key once', () => {
    expect(KNOWN_KEYS.filter((k, i) => KNOWN_KEYS.indexOf(k) !== i)).toEqual([]);
  });
});

describe('unknown keys in a config file', () => {
  it('are named in one warning each, with the known key within two edits, from --config and .env', () => {
    // Prepare
    const dir = join(work.path, 'typos');
    mkdirSync(dir);
    const file = join(dir, 'pgvault.env');
    writeFileSync(
      file,
      [
        'BACKUP_DIR=/var/backups/postgresql',
        'ENCRYPTON=true',
        'ENCRYPTION_KEY=a-key-long-enough-to-pass',
        'RETENTION_DAY=14',
        'SLACK_CHANNEL=#db',
        // Read by libpq, the AWS SDK and the process: known.
        'PGSSLMODE=require',
        'AWS_ENDPOINT_URL_S3=http://127.0.0.1:9000',
        'TZ=Europe/Berlin',
      ].join('\n'),
    );
    writeFileSync(join(dir, '.env'), 'cluster_name=main\nCOMPRESSION=zstd\n');

    // Act
    const config = loadConfig({
      configFile: file,
      cwd: dir,
      env: { PATH: '/usr/bin', SOME_OTHER_TOOLS_SETTING: '1', ENCRYPTON: 'true' },
    });

    // Assess
    expect(config.warnings).toEqual([
      `${join(dir, '.env')}: unknown setting cluster_name (did you mean CLUSTER_NAME?); it is ignored`,
      `${file}: unknown setting ENCRYPTON (did you mean ENCRYPTION?); it is ignored`,
      `${file}: unknown setting RETENTION_DAY (did you mean RETENTION_DAYS?); it is ignored`,
      `${file}: unknown setting SLACK_CHANNEL; it is ignored`,
    ]);
    // What the user believed they had set is indeed not in effect: the warning is true.
    expect(config.encryption.enabled).toBe(false);
    expect(config.retention.days).toBe(7);
  });

  it('warn about nothing for the guide’s .env and for keys of the process environment', () => {
    // Prepare
    const dir = join(work.path, 'guide');
    mkdirSync(dir);
    writeFileSync(
      join(dir, '.env'),
      [
        'BACKUP_DIR=/var/backups/postgresql',
        'WAL_ARCHIVE_DIR=/var/backups/postgresql/wal',
        'RETENTION_DAYS=7',
        'RETENTION_WEEKS=4',
        'RETENTION_MONTHS=6',
        'COMPRESSION=gzip',
        'PARALLEL_JOBS=4',
        'ENCRYPTION=true',
        'ENCRYPTION_KEY=a-key-long-enough-to-pass',
        'EMAIL_NOTIFICATIONS=false',
        'EMAIL_TO=admin@example.com',
        'CLOUD_PROVIDER=none',
        'DEPLOYMENT_MODE=single-node',
        'PGHOST=localhost',
        'PGPORT=5432',
        'PGUSER=postgres',
        'PGDATABASE=postgres',
      ].join('\n'),
    );

    // Act
    const config = loadConfig({ cwd: dir, env: { RETENTION_DAY: '14', HOSTNAME: 'db1' } });

    // Assess
    expect(config.warnings).toEqual([]);
  });
});
