import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../core/config';

/*
 * The shared settings are parsed once per load, and each repository's view (REPO<n>_*) is derived
 * from them: only what a repository sets for itself is read again. Seen through a key file that
 * answers something new on every read (/proc/sys/kernel/random/uuid): parsed once, the shared config
 * and every repository hold the one passphrase; parsed once per repository, each held its own.
 */

const EVERY_READ_NEW = '/proc/sys/kernel/random/uuid';
const work = mkdtempSync(join(tmpdir(), 'pgvault-single-parse-'));

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

const REPOSITORIES = {
  REPO1_TYPE: 'file',
  REPO1_PATH: '/var/backups/postgresql',
  REPO2_TYPE: 's3',
  REPO2_BUCKET: 'company-backups',
  REPO2_RETENTION_DAYS: '30',
};

function passphrases(config: ReturnType<typeof parseConfig>): (string | undefined)[] {
  return [config, ...(config.repositories ?? []).map((r) => r.config)].map((c) => c.encryption.passphrase);
}

describe('one parse of the shared settings for every repository', () => {
  it('parseConfig reads ENCRYPTION_KEY_FILE once: the shared config and both repositories hold the same key', () => {
    // Act
    const config = parseConfig({ ENCRYPTION: 'true', ENCRYPTION_KEY_FILE: EVERY_READ_NEW, ...REPOSITORIES });

    // Assess
    const keys = passphrases(config);
    expect(keys).toHaveLength(3);
    expect(keys[0]).toMatch(/^[0-9a-f-]{36}$/);
    expect(new Set(keys).size).toBe(1);
    // What a repository sets for itself is still its own.
    expect(config.repositories?.map((r) => r.config.retention.days)).toEqual([7, 30]);
  });

  it('loadConfig from a --config file (as `backup wal` loads it) reads the key file once', () => {
    // Prepare
    const file = join(work, 'pgvault.env');
    writeFileSync(
      file,
      `${Object.entries({ ENCRYPTION: 'true', ENCRYPTION_KEY_FILE: EVERY_READ_NEW, ...REPOSITORIES })
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
    );

    // Act
    const config = loadConfig({ configFile: file, env: {}, cwd: work, lazyAlerts: true });

    // Assess
    expect(new Set(passphrases(config)).size).toBe(1);
  });

  it("a repository's own key file is read for that repository alone", () => {
    // Prepare
    const own = join(work, 'repo2.key');
    writeFileSync(own, 'the second repository key\n');

    // Act
    const config = parseConfig({
      ENCRYPTION: 'true',
      ENCRYPTION_KEY_FILE: EVERY_READ_NEW,
      ...REPOSITORIES,
      REPO2_ENCRYPTION_KEY_FILE: own,
    });

    // Assess
    const [shared, first, second] = passphrases(config);
    expect(first).toBe(shared);
    expect(second).toBe('the second repository key');
  });
});
