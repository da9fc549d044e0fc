/**
 * The metric contract between infra/ (alarms, dashboard) and the code that publishes (functions/, the
 * container). Publishers print CloudWatch Embedded Metric Format lines on stdout:
 *
 *   {"_aws":{"Timestamp":1767225600000,"CloudWatchMetrics":[{"Namespace":"pgvault","Dimensions":[["Cluster"]],
 *     "Metrics":[{"Name":"BackupDurationSeconds","Unit":"Seconds"}]}]},"Cluster":"main","BackupDurationSeconds":812}
 *
 * core/events.ts (emitMetrics) writes them; the names below are the ones it uses.
 *
 * Lambda turns such lines into metrics by itself; the task log group has one metric filter per metric
 * below doing the same for Fargate (the awslogs driver does not extract EMF). Nothing needs
 * cloudwatch:PutMetricData.
 */
export const METRIC_NAMESPACE = 'pgvault';
export const CLUSTER_DIMENSION = 'Cluster';

export const METRICS = {
  /** Hours since the newest complete full or base backup finished (report, verify). */
  backupAgeHours: { name: 'BackupAgeHours', unit: 'None' },
  /** Stored bytes of a backup that just completed (backup task). */
  backupStoredBytes: { name: 'BackupStoredBytes', unit: 'Bytes' },
  /** Seconds a backup took (backup task). */
  backupDurationSeconds: { name: 'BackupDurationSeconds', unit: 'Seconds' },
  /** 1 per failed backup command (backup task). */
  backupFailed: { name: 'BackupFailed', unit: 'Count' },
  /** Measured RPO: now minus the newest recoverable point (report, verify). */
  rpoSeconds: { name: 'RpoSeconds', unit: 'Seconds' },
  /** RTO measured by the newest drill or restore test (verify/drill task). */
  drillRtoSeconds: { name: 'DrillRtoSeconds', unit: 'Seconds' },
  /** 1 per failed drill (`drill` task; the dispatch function when it cannot start one). */
  drillFailed: { name: 'DrillFailed', unit: 'Count' },
  /** 1 per failed restore (restore task; the restore function when it cannot start one). */
  restoreFailed: { name: 'RestoreFailed', unit: 'Count' },
  /**
   * 1 per failed verification: faults found or an error, in the verify function's quick checks or a
   * verify command (the deep `verify restore latest` task, scheduled `verify all`).
   */
  verificationFailed: { name: 'VerificationFailed', unit: 'Count' },
  /**
   * 1 per successful backup command (backup task; also with dimension BackupType: full, base, config,
   * indexes): the full backups' heartbeat. A metric filter of its own (with BackupType) turns it into a metric.
   */
  backupSucceeded: { name: 'BackupSucceeded', unit: 'Count' },
  /** 1 per stored report (report function, EMF read by Lambda): the report heartbeat. */
  reportSucceeded: { name: 'ReportSucceeded', unit: 'Count' },
  /** Bytes the cluster's folder holds in the vault, and that as a share of STORAGE_QUOTA_GB (report). */
  storageUsedBytes: { name: 'StorageUsedBytes', unit: 'Bytes' },
  storageUsedPercent: { name: 'StorageUsedPercent', unit: 'Percent' },
} as const;
export type MetricKey = keyof typeof METRICS;

/** Metrics the tasks publish (metric filters on the task log group turn their EMF lines into metrics). */
export const TASK_METRICS: readonly MetricKey[] = [
  'backupStoredBytes',
  'backupDurationSeconds',
  'backupFailed',
  'rpoSeconds',
  'drillRtoSeconds',
  'backupAgeHours',
  'drillFailed',
  'restoreFailed',
  'verificationFailed',
];

/**
 * Outcomes that alarm on the first occurrence (Sum >= 1 in five minutes), per cluster. The functions'
 * EMF lines and the task log group's metric filters feed the same metric (namespace, name, Cluster).
 */
export const FAILURE_ALARMS: readonly { readonly key: MetricKey; readonly what: string }[] = [
  { key: 'drillFailed', what: 'DR drill failed' },
  { key: 'restoreFailed', what: 'restore failed' },
  { key: 'verificationFailed', what: 'verification failed' },
];

/** The second dimension of BackupSucceeded (core/events.ts: the backup type, `full` for pg_dump backups). */
export const BACKUP_TYPE_DIMENSION = 'BackupType';
