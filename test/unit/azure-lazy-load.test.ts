import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const DIST = resolve(__dirname, '../../dist');

/**
 * `backup wal` runs once per WAL segment: its start-up must not grow by the Azure SDK. Making the
 * targets of a CLOUD_PROVIDER=azure config (as every command does) loads no @azure module; the SDK
 * is imported on the first request. Runs the built code (`npm run build` first), in a fresh process.
 */
describe('Azure SDK loading', () => {
  it('loads no @azure module when the targets of an azure config are made', () => {
    // Prepare
    const script = `
      const { parseConfig } = require(${JSON.stringify(`${DIST}/core/config.js`)});
      const { createTargets } = require(${JSON.stringify(`${DIST}/core/storage/index.js`)});
      const targets = createTargets(parseConfig({ BACKUP_DIR: '/tmp/x', CLOUD_PROVIDER: 'azure',
        CLOUD_BUCKET: 'c', AZURE_STORAGE_ACCOUNT: 'acct', AZURE_STORAGE_KEY: 'a2V5', LOCAL_COPY: 'false' }));
      const loaded = () => Object.keys(require.cache).filter((k) => k.includes('/@azure/')).length;
      const before = loaded();
      process.stdout.write(JSON.stringify({ kind: targets[0].kind, before }));
    `;

    // Act
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });

    // Assess
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({ kind: 'azure', before: 0 });
  });
});
