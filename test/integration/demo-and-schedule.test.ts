import { spawnSync } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installCrontab, renderCrontab } from '../../core/backup/schedule';
import { parseConfig } from '../../core/config';
import { tempDir } from '../helpers/vault';

let work: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await work?.remove();
});

describe('npm run demo', () => {
  it('says in one line how to install PostgreSQL when its server binaries are missing', () => {
    // Act: the built demo, pointed at a folder with no PostgreSQL in it.
    const r = spawnSync(process.execPath, [resolve(__dirname, '../../dist/scripts/demo.js')], {
      encoding: 'utf8',
      env: { ...process.env, PG_BIN_DIR: work.path },
    });

    // Assess
    expect(r.status).not.toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /PostgreSQL server binaries not found \(initdb\).*apt-get install postgresql-\d+/,
    );
  });
});

describe('backup schedule --install', () => {
  it('replaces its own block in the crontab and keeps every other line', () => {
    // Prepare: a stand-in crontab program that keeps the table in a file.
    const table = `${work.path}/crontab.txt`;
    writeFileSync(table, 'MAILTO=ops@example.com\n15 * * * * /usr/bin/other-job\n');
    const bin = `${work.path}/bin`;
    spawnSync('mkdir', ['-p', bin]);
    writeFileSync(
      `${bin}/crontab`,
      `#!/bin/sh\nif [ "$1" = "-l" ]; then cat "${table}"; else cat > "${table}"; fi\n`,
    );
    chmodSync(`${bin}/crontab`, 0o755);
    const config = parseConfig({ BACKUP_DIR: '/var/backups/postgresql' });
    const block = renderCrontab(config, {
      pgvault: '/opt/pgvault/bin/pgvault.js',
      configFile: '/etc/pgvault.env',
    });
    const oldPath = process.env.PATH;
    process.env.PATH = `${bin}:${oldPath}`;

    // Act: installing twice must leave one block.
    try {
      installCrontab(block);
      installCrontab(block);
    } finally {
      process.env.PATH = oldPath;
    }

    // Assess
    const text = readFileSync(table, 'utf8');
    expect(text.startsWith('MAILTO=ops@example.com\n15 * * * * /usr/bin/other-job\n')).toBe(true);
    expect(text.match(/# pgvault schedule \(begin\)/g)).toHaveLength(1);
    expect(text).toContain(
      `0 3 * * 0 ${process.execPath} /opt/pgvault/bin/pgvault.js --config /etc/pgvault.env backup full weekly >> /var/backups/postgresql/pgvault.log 2>&1`,
    );
    expect(text.split('\n').filter((l) => /^[0-9*]/.test(l) && l.includes('pgvault.js'))).toHaveLength(13);
  });
});
