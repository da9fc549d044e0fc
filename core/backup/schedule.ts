import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';
import type { Config } from '../config';
import { errorMessage, PgVaultError } from '../errors';

/** The guide's crontab, one line per job. */
export const GUIDE_SCHEDULE: ReadonlyArray<{
  readonly cron: string;
  readonly args: string;
  readonly what: string;
}> = [
  { cron: '0 2 * * *', args: 'backup full daily', what: 'Daily full backup at 2:00 AM' },
  { cron: '0 3 * * 0', args: 'backup full weekly', what: 'Weekly backup on Sunday at 3:00 AM' },
  { cron: '0 4 1 * *', args: 'backup full monthly', what: 'Monthly backup on the 1st at 4:00 AM' },
  { cron: '0 1 * * *', args: 'backup config', what: 'Config backup daily at 1:00 AM' },
  { cron: '30 1 * * *', args: 'backup indexes', what: 'Index backup daily at 1:30 AM' },
  { cron: '0 5 * * *', args: 'backup retention', what: 'Retention policy at 5:00 AM' },
  { cron: '0 6 * * *', args: 'verify all', what: 'Verification daily at 6:00 AM' },
];

const MARK = '# pgvault schedule';

/** Shell-quotes one word for a crontab line. */
function sh(word: string): string {
  return /^[A-Za-z0-9_./:=@-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * The crontab block: absolute paths to node and pgvault, the configuration file named, output
 * appended to a log beside the backups. Cron's environment is bare, hence every path spelled out.
 */
export function renderCrontab(config: Config, options: { pgvault: string; configFile?: string }): string {
  const node = process.execPath;
  const cli = resolve(options.pgvault);
  const cfg = options.configFile ? ` --config ${sh(resolve(options.configFile))}` : '';
  const log = sh(`${config.backupDir}/pgvault.log`);
  const lines = [`${MARK} (begin): generated ${new Date().toISOString()}`];
  for (const job of GUIDE_SCHEDULE) {
    lines.push(`# ${job.what}`, `${job.cron} ${sh(node)} ${sh(cli)}${cfg} ${job.args} >> ${log} 2>&1`);
  }
  lines.push(`${MARK} (end)`);
  return `${lines.join('\n')}\n`;
}

/** Replaces pgvault's block in the user's crontab (or adds it), leaving every other line alone. */
export function installCrontab(block: string): void {
  let current = '';
  try {
    current = execFileSync('crontab', ['-l'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    // No crontab yet for this user.
  }
  const kept = current.replace(new RegExp(`${MARK} \\(begin\\)[\\s\\S]*?${MARK} \\(end\\)\\n?`, 'g'), '');
  try {
    execFileSync('crontab', ['-'], {
      input: `${kept}${kept.endsWith('\n') || kept === '' ? '' : '\n'}${block}`,
    });
  } catch (err) {
    throw new PgVaultError(
      `cannot install the crontab (${errorMessage(err)}); is cron installed (apt-get install cron)?`,
    );
  }
}
