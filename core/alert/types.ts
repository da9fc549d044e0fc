/**
 * An alert: one thing that needs a person. It names the cluster, what failed, since when, and the
 * exact command to run next; core/alert/format.ts turns it into the stderr line and the SNS message.
 */
export const ALERT_KINDS = [
  /** A backup, restore, verify or drill command failed (sent from the CLI's error path). */
  'command-failed',
  /** A target's disk, or STORAGE_QUOTA_GB, is used at or above ALERT_CAPACITY_PERCENT. */
  'capacity',
  /** The newest full or base backup is older than ALERT_BACKUP_AGE_HOURS (or there is none). */
  'backup-age',
  /** A newer full or base backup is listed (its manifest is there) but its data objects are gone. */
  'backup-incomplete',
  /** WAL files are missing between a base backup and the newest segment. */
  'wal-gap',
  /** The measured RPO (data that would be lost now) is over RPO_TARGET_MINUTES. */
  'rpo',
  /** The newest measured recovery time is over RTO_TARGET_MINUTES. */
  'rto',
  /** The newest restore drill or restore test failed. */
  'drill-failed',
  /** A backup is much smaller than the previous one of the same database (ALERT_SHRINK_PERCENT). */
  'size-shrink',
  /** A repository (REPO<n>_*) could not be listed, or lacks backups it should hold (REPO<n>_HOLDS). */
  'repository',
] as const;
export type AlertKind = (typeof ALERT_KINDS)[number];

export interface Alert {
  readonly kind: AlertKind;
  readonly severity: 'critical' | 'warning';
  readonly cluster: string;
  /** Short title for the subject line: "backup failed", "WAL gap", ... */
  readonly title: string;
  /** One sentence: what failed, with the numbers. */
  readonly what: string;
  /** ISO time the condition began (or was first seen, see sinceKind). */
  readonly since: string;
  /** observed: known from the catalog; estimated: extrapolated; checked: at least since this check. */
  readonly sinceKind: 'observed' | 'estimated' | 'checked';
  /** The exact command to run next. */
  readonly nextStep: string;
  /** Optional second sentence: what to look at besides the command. */
  readonly hint?: string;
}

/** Where and when an alert was raised: the host pgvault ran on and the time it checked. */
export interface AlertContext {
  readonly host: string;
  readonly checkedAt: string;
}

/**
 * One way an alert leaves the machine (SNS, SMTP, webhook, ALERT_COMMAND; core/alert/channels.ts).
 * send() gets an alert already redacted and throws when it was not delivered.
 */
export interface AlertChannel {
  /** Where it goes, for the "not sent" line: never a password or a token (no URL path or query). */
  readonly name: string;
  send(alert: Alert, context: AlertContext): Promise<void>;
}
