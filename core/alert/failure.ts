import type { BackupType } from '../catalog/naming';
import { type Config, loadConfig } from '../config';
import { errorMessage } from '../errors';
import { openVault } from '../vault';
import { utc } from './format';
import { alertChannels, type SendResult, sendAlerts, withTimeout } from './notify';
import type { Alert } from './types';

/**
 * The failure alert of a command (the guide's "backup failure" and "restore test failure"), sent
 * from the CLI's one error path. Only with a channel (SNS_TOPIC_ARN, SMTP_URL, ALERT_WEBHOOK_URL,
 * ALERT_COMMAND): the stderr line is the command's own error line, which this never replaces.
 */

/**
 * Commands run by PostgreSQL once per WAL file are left out: `restore wal` failing is normal (the
 * server asks for files the archive cannot have), and PostgreSQL retries `backup wal`; a stuck
 * archive shows up as the WAL-gap and RPO alerts instead of one message per retry.
 */
const QUIET_COMMANDS = new Set(['backup wal', 'restore wal', 'backup schedule', 'backup delete']);

export function failureAlertWanted(commandPath: string): boolean {
  const group = commandPath.split(' ')[0];
  return (
    (group === 'backup' || group === 'restore' || group === 'verify' || group === 'drill') &&
    !QUIET_COMMANDS.has(commandPath)
  );
}

const TITLES: Record<string, string> = {
  backup: 'backup failed',
  restore: 'restore failed',
  verify: 'verification failed',
  drill: 'restore drill failed',
};

/** Quotes an argument for a POSIX shell when it needs it, so the next step can be pasted. */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function commandFailedAlert(input: {
  readonly cluster: string;
  readonly commandPath: string;
  /** The arguments as given (process.argv.slice(2)). */
  readonly argv: readonly string[];
  readonly error: unknown;
  readonly startedAt: Date;
  /** The newest complete backup of the type the failed command takes, when known. */
  readonly lastSuccess?: { readonly id: string; readonly finishedAt: string };
}): Alert {
  const commandLine = ['pgvault', ...input.argv.filter((a) => a !== '--json')].map(shellQuote).join(' ');
  const group = input.commandPath.split(' ')[0] ?? input.commandPath;
  return {
    kind: 'command-failed',
    severity: 'critical',
    cluster: input.cluster,
    title: `${TITLES[group] ?? 'command failed'} (pgvault ${input.commandPath})`,
    what: `pgvault ${input.commandPath} failed: ${errorMessage(input.error).split('\n')[0]}`,
    since: input.startedAt.toISOString(),
    sinceKind: 'observed',
    nextStep: commandLine,
    hint: `Fix the cause named above, then run the command again.${input.lastSuccess ? ` Last successful backup of this type: ${input.lastSuccess.id}, finished ${utc(input.lastSuccess.finishedAt)}.` : ''}`,
  };
}

const BACKUP_COMMANDS: Record<string, BackupType> = {
  'backup full': 'full',
  'backup base': 'base',
  'backup config': 'config',
  'backup indexes': 'indexes',
};

/** The newest complete backup of the type a backup command takes; best effort, 5 s at most. */
async function lastSuccessOf(
  config: Config,
  commandPath: string,
): Promise<{ id: string; finishedAt: string } | undefined> {
  const type = BACKUP_COMMANDS[commandPath];
  if (type === undefined) return undefined;
  try {
    // The newest whole one: a newer backup whose data objects are gone is no success to point at.
    const { catalog } = openVault(config);
    const { whole: newest } = await withTimeout(
      catalog.list(type).then((entries) => catalog.newestWhole(entries)),
      5000,
      'listing the catalog',
    );
    return newest && { id: newest.manifest.id, finishedAt: newest.manifest.finishedAt };
  } catch {
    return undefined; // The storage may be the very failure: the alert goes out without it.
  }
}

/**
 * Sends the failure alert through the configured channels. Never throws; a config that cannot be read
 * (often the very failure) means no topic is known, and nothing is sent.
 */
export async function sendFailureAlert(input: {
  readonly configFile?: string;
  readonly commandPath: string;
  readonly argv: readonly string[];
  readonly error: unknown;
  readonly startedAt: Date;
  readonly write?: (line: string) => void;
}): Promise<SendResult | undefined> {
  if (!failureAlertWanted(input.commandPath)) return undefined;
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig({ configFile: input.configFile });
  } catch {
    return undefined;
  }
  if (alertChannels(config).length === 0) return undefined;
  try {
    const lastSuccess = await lastSuccessOf(config, input.commandPath);
    const alert = commandFailedAlert({ ...input, cluster: config.clusterName, lastSuccess });
    return await sendAlerts(config, [alert], {
      stderr: false,
      write: input.write,
    });
  } catch (err) {
    (input.write ?? ((l: string) => process.stderr.write(`${l}\n`)))(
      `pgvault: warning: failure alert not sent: ${errorMessage(err).split('\n')[0]}`,
    );
    return undefined;
  }
}
