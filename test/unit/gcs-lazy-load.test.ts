import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const DIST = resolve(__dirname, '../../dist');

/**
 * `backup wal` runs once per WAL segment: its start-up must not grow by the GCS client (and the
 * google-auth-library, gaxios and friends under it). Making the targets of a CLOUD_PROVIDER=gcs
 * config (as every command does) loads none of them; the SDK is imported on the first request.
 * Runs the built code (`npm run build` first), in a fresh process.
 */
describe('GCS SDK loading', () => {
  it('loads no Google client module when the targets of a gcs config are made', () => {
    // Prepare
    const script = `
      const { parseConfig } = require(${JSON.stringify(`${DIST}/core/config.js`)});
      const { createTargets } = require(${JSON.stringify(`${DIST}/core/storage/index.js`)});
      const targets = createTargets(parseConfig({ BACKUP_DIR: '/tmp/x', CLOUD_PROVIDER: 'gcs',
        CLOUD_BUCKET: 'b', STORAGE_EMULATOR_HOST: 'http://127.0.0.1:1', LOCAL_COPY: 'false' }));
      const loaded = () => Object.keys(require.cache)
        .filter((k) => /\\/node_modules\\/(@google-cloud|google-auth-library|gaxios|gcp-metadata)\\//.test(k)).length;
      process.stdout.write(JSON.stringify({ kind: targets[0].kind, location: targets[0].location, before: loaded() }));
    `;

    // Act
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });

    // Assess
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({ kind: 'gcs', location: 'gs://b', before: 0 });
  });
});
