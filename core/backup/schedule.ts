import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';
import type { Config } from '../config';
import { errorMessage, PgVaultError } from '../errors';
import { CRON_DST, dstNote } from '../schedule-dst';

/**
 * The crontab, one line per job: the guide's entries (full daily/weekly/monthly, config, indexes,
 * retention at 5:00, verify all at 6:00), then what the guide leaves out but a recoverable setup
 * needs: base backups (point-in-time recovery starts from one; the WAL archive alone restores
 * nothing), the restore drills that prove backups restore, and the daily report. Base backups run
 * on the same daily/weekly/monthly schedules as the full ones, so retention keeps a PITR start for
 * each of them.
 */
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
  {
    cron: '30 0 * * *',
    args: 'backup base daily',
    what: 'Daily base backup at 0:30 AM (point-in-time recovery starts from one)',
  },
  { cron: '30 3 * * 0', args: 'backup base weekly', what: 'Weekly base backup on Sunday at 3:30 AM' },
  { cron: '30 4 1 * *', args: 'backup base monthly', what: 'Monthly base backup on the 1st at 4:30 AM' },
  {
    cron: '0 7 * * *',
    args: 'verify report',
    what: 'Report (HTML, Markdown, JSON) and threshold alerts daily at 7:00 AM',
  },
  {
    cron: '0 8 * * 6',
    args: 'drill',
    what: 'Restore drill on Saturday at 8:00 AM: the newest full backup restored and validated, RTO recorded',
  },
  {
    cron: '0 8 * * 0',
    args: 'drill --pitr',
    what: 'PITR drill on Sunday at 8:00 AM: recovery to one hour ago in a sandbox, RPO and RTO recorded',
  },
];

/**
 * The time zone cron runs the jobs in: the host's (TZ, else the system's), as Node resolves it.
 */
export function hostTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}

/**
 * One line per job whose run time falls into an hour the time zone skips or repeats in the coming
 * year, saying what cron does: Debian's cron runs a skipped hour's jobs right after the change and a
 * repeated hour's jobs once (cron(8), for changes under 3 hours).
 */
export function crontabDstNotes(timeZone = hostTimeZone(), from = new Date()): string[] {
  return GUIDE_SCHEDULE.map((job) =>
    dstNote(`${job.args} ('${job.cron}')`, job.cron, timeZone, CRON_DST, from),
  ).filter((n): n is string => n !== undefined);
}

/** How many rotated logs are kept (pgvault.log.1 ... .7: a week of nights). */
export const LOG_GENERATIONS = 7;

const MARK = '# pgvault schedule';

/** Shell-quotes one word for a crontab line. */
function sh(word: string): string {
  return /^[A-Za-z0-9_./:=@-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * The crontab block: absolute paths to node and pgvault, the configuration file named. Cron's
 * environment is bare, hence every path spelled out. Output goes to `pgvault.log` beside the backups,
 * rotated by a line of its own at 0:05 (seven generations, no logrotate needed, any user); or with
 * `syslog`, to the system log through `logger -t pgvault` (journald or rsyslog rotates it).
 */
export function renderCrontab(
  config: Config,
  options: { pgvault: string; configFile?: string; syslog?: boolean; timeZone?: string },
): string {
  const node = process.execPath;
  const cli = resolve(options.pgvault);
  const cfg = options.configFile ? ` --config ${sh(resolve(options.configFile))}` : '';
  const logFile = `${config.backupDir}/pgvault.log`;
  const log = sh(logFile);
  const output = options.syslog ? '2>&1 | logger -t pgvault' : `>> ${log} 2>&1`;
  const lines = [`${MARK} (begin): generated ${new Date().toISOString()}`];
  for (const note of crontabDstNotes(options.timeZone)) lines.push(`# DST: ${note}`);
  for (const job of GUIDE_SCHEDULE) {
    lines.push(`# ${job.what}`, `${job.cron} ${sh(node)} ${sh(cli)}${cfg} ${job.args} ${output}`);
  }
  if (!options.syslog) {
    // pgvault.log -> .1 -> ... -> .7 (dropped). No % in it: cron turns % into a newline.
    const shift = Array.from({ length: LOG_GENERATIONS - 1 }, (_, i) => LOG_GENERATIONS - 1 - i)
      .map(
        (i) =>
          `{ [ ! -f ${sh(`${logFile}.${i}`)} ] || mv -f ${sh(`${logFile}.${i}`)} ${sh(`${logFile}.${i + 1}`)}; }`,
      )
      .join('; ');
    lines.push(
      `# Log rotation daily at 0:05 AM: ${logFile} and ${LOG_GENERATIONS} older ones`,
      `5 0 * * * ${shift}; { [ ! -f ${log} ] || mv -f ${log} ${sh(`${logFile}.1`)}; }`,
    );
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
