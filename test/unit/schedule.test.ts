import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { renderCrontab } from '../../core/backup/schedule';
import { parseConfig } from '../../core/config';

/** `backup schedule`: the guide's jobs and what recovery needs beside them, with logs that rotate. */

const config = parseConfig({ BACKUP_DIR: '/var/backups/postgresql' });
const options = { pgvault: '/opt/pgvault/bin/pgvault.js', configFile: '/etc/pgvault.env' };

/** The crontab's job lines (not comments), as [schedule, command]. */
function jobs(block: string): Array<[string, string]> {
  return block
    .split('\n')
    .filter((l) => /^[0-9*]/.test(l))
    .map((l) => {
      const fields = l.split(' ');
      return [fields.slice(0, 5).join(' '), fields.slice(5).join(' ')];
    });
}

function job(block: string, args: string): string | undefined {
  return jobs(block).find(([, cmd]) => cmd.includes(`pgvault.env ${args} `))?.[0];
}

describe('backup schedule', () => {
  it("keeps the guide's entries", () => {
    const block = renderCrontab(config, options);
    expect(job(block, 'backup full daily')).toBe('0 2 * * *');
    expect(job(block, 'backup full weekly')).toBe('0 3 * * 0');
    expect(job(block, 'backup full monthly')).toBe('0 4 1 * *');
    expect(job(block, 'backup config')).toBe('0 1 * * *');
    expect(job(block, 'backup indexes')).toBe('30 1 * * *');
    expect(job(block, 'backup retention')).toBe('0 5 * * *');
    expect(job(block, 'verify all')).toBe('0 6 * * *');
  });

  it('adds base backups, the drills and the report', () => {
    const block = renderCrontab(config, options);
    expect(job(block, 'backup base daily')).toBe('30 0 * * *');
    expect(job(block, 'backup base weekly')).toBe('30 3 * * 0');
    expect(job(block, 'backup base monthly')).toBe('30 4 1 * *');
    expect(job(block, 'drill')).toBe('0 8 * * 6');
    expect(job(block, 'drill --pitr')).toBe('0 8 * * 0');
    expect(job(block, 'verify report')).toBe('0 7 * * *');
  });

  it('rotates its log: the rotation line keeps seven older logs', () => {
    // Prepare: the rotation line run by sh, as cron would, on a folder holding 8 generations.
    const dir = mkdtempSync(join(tmpdir(), 'pgvault-schedule-'));
    try {
      const block = renderCrontab(parseConfig({ BACKUP_DIR: dir }), options);
      const rotation = jobs(block).find(([, cmd]) => !cmd.includes('pgvault.js'));
      expect(rotation?.[0]).toBe('5 0 * * *');
      expect(rotation![1]).not.toContain('%');
      writeFileSync(join(dir, 'pgvault.log'), 'today\n');
      for (let i = 1; i <= 7; i++) writeFileSync(join(dir, `pgvault.log.${i}`), `${i} day(s) ago\n`);

      // Act
      execFileSync('sh', ['-c', rotation![1]]);

      // Assert
      expect(existsSync(join(dir, 'pgvault.log'))).toBe(false);
      expect(readFileSync(join(dir, 'pgvault.log.1'), 'utf8')).toBe('today\n');
      expect(readFileSync(join(dir, 'pgvault.log.7'), 'utf8')).toBe('6 day(s) ago\n');
      expect(existsSync(join(dir, 'pgvault.log.8'))).toBe(false);
      for (const [, cmd] of jobs(block).filter(([, c]) => c.includes('pgvault.js')))
        expect(cmd).toMatch(/ >> \S+\/pgvault\.log 2>&1$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('sends every job to syslog instead, with no rotation line, when asked', () => {
    const block = renderCrontab(config, { ...options, syslog: true });
    const lines = jobs(block);
    expect(lines).toHaveLength(13);
    for (const [, cmd] of lines) expect(cmd).toMatch(/ 2>&1 \| logger -t pgvault$/);
  });
});
