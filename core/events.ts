import { hostname } from 'node:os';
// Types only: the EventBridge SDK is required when EVENT_BUS_NAME is set, never on CLI start-up.
import type { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { redact } from './alert/format';
import type { ThresholdInputs } from './alert/thresholds';
import { awsClientCredentials, type Config, patroniSecrets } from './config';
import { errorMessage } from './errors';
import { type LifecycleKind, lifecycleKindOf } from './lifecycle-kinds';
import { startupSecretValues } from './pg/startup-secrets';
import type { ReportData } from './report/model';

/**
 * Lifecycle events and metrics: what users hook their own automation and alarms into.
 *
 * - publishLifecycleEvent puts one event on the EventBridge bus EVENT_BUS_NAME (source `pgvault`,
 *   detail-type like `Backup Succeeded`). No bus, no call; the SDK loads only then. It never throws:
 *   a failed put is one warning line, and the command's outcome and exit code stay its own.
 * - emitMetrics writes one CloudWatch embedded-metric-format line (namespace `pgvault`, dimension
 *   `Cluster`) when PGVAULT_METRICS resolves to emf (inside Lambda or ECS by default). CloudWatch Logs
 *   turns the line into metrics: no SDK call, no permission beyond writing logs.
 * - commandOutcome maps a finished pgvault command (its result or its error) to both, so the CLI
 *   records every backup, restore, verification and drill at one place (cli/main.ts run()).
 */

export const EVENT_SOURCE = 'pgvault';
export const METRICS_NAMESPACE = 'pgvault';
/** Bumped when a field of the event detail changes meaning. */
export const EVENT_DETAIL_VERSION = 1;

export { type LifecycleKind, lifecycleKindOf };
/** 'started': a Lambda started the Fargate task that will do the work (and send its own event). */
export type LifecycleOutcome = 'started' | 'succeeded' | 'failed';

export interface LifecycleEvent {
  readonly kind: LifecycleKind;
  readonly outcome: LifecycleOutcome;
  readonly cluster: string;
  /** The pgvault command it is about, without options' values of secrets: `backup full daily`. */
  readonly command?: string;
  /** Where it ran: `cli` (a shell or a Fargate task) or `lambda:<function>`. */
  readonly origin?: string;
  readonly backupId?: string;
  readonly backupType?: string;
  readonly schedule?: string;
  readonly databases?: readonly string[];
  /** Bytes read from PostgreSQL (dumped). */
  readonly rawBytes?: number;
  /** Bytes stored (compressed, encrypted), per target. */
  readonly storedBytes?: number;
  readonly durationMs?: number;
  readonly startedAt?: string;
  readonly finishedAt?: string;
  /** The ECS task started for the work (outcome 'started'). */
  readonly taskArn?: string;
  /** The failure, one line, secrets redacted (outcome 'failed'). */
  readonly error?: string;
  /** Facts of this kind of event: faults found, RTO and RPO, what retention deleted, ... */
  readonly details?: Readonly<Record<string, unknown>>;
}

export type MetricUnit = 'Count' | 'Seconds' | 'Bytes' | 'Percent' | 'None';

export interface Metric {
  readonly name: string;
  readonly value: number;
  readonly unit: MetricUnit;
}

/** What a finished command or function records: one event and its metrics. */
export interface LifecycleRecord {
  readonly event: LifecycleEvent;
  readonly metrics: readonly Metric[];
  /** Extra dimensions (besides Cluster) for a second dimension set, e.g. { BackupType: 'full' }. */
  readonly dimensions?: Readonly<Record<string, string>>;
}

export interface RecordOptions {
  /** Where warning lines go (default stderr). */
  readonly warn?: (line: string) => void;
  /** Where metric lines go (default stdout). */
  readonly writeMetric?: (line: string) => void;
  readonly now?: Date;
}

type EventsConfig = Pick<Config, 'eventBusName' | 'metrics' | 'cloud' | 'encryption' | 'pg'>;

const KIND_TITLES: Record<LifecycleKind, string> = {
  backup: 'Backup',
  restore: 'Restore',
  verification: 'Verification',
  drill: 'Drill',
  retention: 'Retention',
  report: 'Report',
};
const OUTCOME_TITLES: Record<LifecycleOutcome, string> = {
  started: 'Started',
  succeeded: 'Succeeded',
  failed: 'Failed',
};

/** `Backup Succeeded`, `Drill Failed`, `Restore Started`: the EventBridge detail-type. */
export function detailType(event: Pick<LifecycleEvent, 'kind' | 'outcome'>): string {
  return `${KIND_TITLES[event.kind]} ${OUTCOME_TITLES[event.outcome]}`;
}

function secretsOf(config: Pick<Config, 'encryption' | 'pg'>): (string | undefined)[] {
  return [
    config.encryption.passphrase,
    config.pg.password,
    ...patroniSecrets(config.pg.patroni),
    // Read from Secrets Manager at start (Patroni API, repositories' credentials).
    ...startupSecretValues(),
    process.env.PGPASSWORD,
    process.env.AWS_SECRET_ACCESS_KEY,
    process.env.AWS_SESSION_TOKEN,
  ];
}

/** The event's detail object as it goes on the bus. */
export function eventDetail(
  config: Pick<Config, 'encryption' | 'pg'>,
  event: LifecycleEvent,
  now: Date,
): Record<string, unknown> {
  const { kind: _kind, outcome, error, ...rest } = event;
  return {
    version: EVENT_DETAIL_VERSION,
    outcome,
    ...rest,
    ...(error !== undefined ? { error: redact(error, secretsOf(config)) } : {}),
    host: hostname(),
    at: now.toISOString(),
  };
}

type EventBridgeSdk = typeof import('@aws-sdk/client-eventbridge');
let client: { key: string; client: EventBridgeClient; sdk: EventBridgeSdk } | undefined;

/** arn:aws:events:eu-west-1:123456789012:event-bus/x → eu-west-1; a bare name → the config's region. */
function regionOf(bus: string, fallback: string): string {
  return bus.startsWith('arn:') ? (bus.split(':')[3] ?? fallback) : fallback;
}

function eventBridgeFor(
  region: string,
  cloud: Pick<Config['cloud'], 'credentials' | 'profile'>,
): { client: EventBridgeClient; sdk: EventBridgeSdk } {
  const auth = awsClientCredentials(cloud);
  // One client per region and credentials (kept in memory only, never printed).
  const key = JSON.stringify([region, auth]);
  if (client?.key !== key) {
    const sdk = require('@aws-sdk/client-eventbridge') as EventBridgeSdk;
    client = {
      key,
      sdk,
      client: new sdk.EventBridgeClient({
        region,
        // Keys or a profile from the config file too, as the S3 and SNS clients get them.
        ...auth,
        maxAttempts: 3,
        requestHandler: { connectionTimeout: 3000, requestTimeout: PUT_TIMEOUT_MS },
      }),
    };
  }
  return client;
}

/** A put must not hang a cron job or a task that has finished its work. */
const PUT_TIMEOUT_MS = 10_000;

function timeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms / 1000} s`)), ms);
    timer.unref();
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

const stderrLine = (line: string) => process.stderr.write(`${line}\n`);

/**
 * Puts the event on EVENT_BUS_NAME. Returns whether it was put; false without a bus or on failure
 * (then one warning line). Never throws.
 */
export async function publishLifecycleEvent(
  config: EventsConfig,
  event: LifecycleEvent,
  options: RecordOptions = {},
): Promise<boolean> {
  const bus = config.eventBusName;
  if (bus === undefined) return false;
  const warn = options.warn ?? stderrLine;
  const type = detailType(event);
  try {
    const now = options.now ?? new Date();
    const { client: eventBridge, sdk } = eventBridgeFor(regionOf(bus, config.cloud.region), config.cloud);
    const out = await timeout(
      eventBridge.send(
        new sdk.PutEventsCommand({
          Entries: [
            {
              EventBusName: bus,
              Source: EVENT_SOURCE,
              DetailType: type,
              Detail: JSON.stringify(eventDetail(config, event, now)),
              Time: now,
            },
          ],
        }),
      ),
      PUT_TIMEOUT_MS + 2000,
      'EventBridge PutEvents',
    );
    if ((out.FailedEntryCount ?? 0) > 0) {
      const entry = out.Entries?.[0];
      throw new Error(`${entry?.ErrorCode ?? 'failed'}: ${entry?.ErrorMessage ?? 'no reason given'}`);
    }
    return true;
  } catch (err) {
    const reason = redact(errorMessage(err).split('\n')[0] ?? '', secretsOf(config));
    warn(`pgvault: warning: lifecycle event "${type}" not put on ${bus}: ${reason}`);
    return false;
  }
}

/**
 * One embedded-metric-format line with the metrics, dimension Cluster (and a second dimension set
 * with the extra dimensions). Nothing unless config.metrics is 'emf'. Returns the line written.
 */
export function emitMetrics(
  config: Pick<Config, 'metrics'>,
  cluster: string,
  metrics: readonly Metric[],
  options: RecordOptions & { dimensions?: Readonly<Record<string, string>> } = {},
): string | undefined {
  const finite = metrics.filter((m) => Number.isFinite(m.value));
  if (config.metrics !== 'emf' || finite.length === 0) return undefined;
  const extra = options.dimensions ?? {};
  const extraKeys = Object.keys(extra);
  const line = JSON.stringify({
    _aws: {
      Timestamp: (options.now ?? new Date()).getTime(),
      CloudWatchMetrics: [
        {
          Namespace: METRICS_NAMESPACE,
          Dimensions: extraKeys.length > 0 ? [['Cluster'], ['Cluster', ...extraKeys]] : [['Cluster']],
          Metrics: finite.map((m) => ({ Name: m.name, Unit: m.unit })),
        },
      ],
    },
    Cluster: cluster,
    ...extra,
    ...Object.fromEntries(finite.map((m) => [m.name, m.value])),
  });
  (options.writeMetric ?? ((l: string) => process.stdout.write(`${l}\n`)))(line);
  return line;
}

/** publishLifecycleEvent and emitMetrics for one record. Never throws. */
export async function recordLifecycle(
  config: EventsConfig,
  record: LifecycleRecord,
  options: RecordOptions = {},
): Promise<boolean> {
  try {
    emitMetrics(config, record.event.cluster, record.metrics, { ...options, dimensions: record.dimensions });
  } catch (err) {
    (options.warn ?? stderrLine)(`pgvault: warning: metrics not written: ${errorMessage(err)}`);
  }
  return publishLifecycleEvent(config, record.event, options);
}

// ---------------------------------------------------------------------------------------------
// Commands → records

export interface CommandOutcome {
  readonly cluster: string;
  /** `backup full`: the command below the program. */
  readonly commandPath: string;
  /** The arguments after the command path, options included (`daily`, `--pitr`). */
  readonly args: readonly string[];
  readonly startedAt: Date;
  readonly finishedAt: Date;
  /** What the command returned (a manifest, a restore or drill result, a report), when it finished. */
  readonly result?: unknown;
  /** Set when the command threw. */
  readonly error?: unknown;
  /** process.exitCode after the command returned: checks that found faults finish with a non-zero one. */
  readonly exitCode?: number;
  readonly origin?: string;
}

type Loose = Record<string, unknown>;
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Scalar facts worth carrying in an event's details, when a result has them. */
const DETAIL_FIELDS = [
  'database',
  'source',
  'target',
  'mode',
  'tables',
  'rows',
  'entries',
  'restoredTo',
  'rtoMs',
  'rpoMs',
  'restoreMs',
  'recoveryMs',
  'copyMs',
  'bytesRead',
  'backups',
] as const;

function pickDetails(r: Loose): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of DETAIL_FIELDS) {
    const v = r[k];
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[k] = v;
  }
  return out;
}

const BACKUP_TYPE_OF: Readonly<Record<string, string>> = {
  'backup full': 'full',
  'backup base': 'base',
  'backup config': 'config',
  'backup indexes': 'indexes',
};

/**
 * The event and metrics of a finished command, or undefined for commands that record nothing.
 * Results are read by their field names (manifests, restore, verify, drill and retention results).
 */
export function commandOutcome(input: CommandOutcome): LifecycleRecord | undefined {
  const kind = lifecycleKindOf(input.commandPath);
  if (kind === undefined) return undefined;
  const r = (input.result !== null && typeof input.result === 'object' ? input.result : {}) as Loose;
  const faults = Array.isArray(r.faults) ? (r.faults as Loose[]) : undefined;
  const failed =
    input.error !== undefined || (input.exitCode ?? 0) !== 0 || r.ok === false || (faults?.length ?? 0) > 0;
  const durationMs =
    num(r.durationMs) ??
    num(r.rtoMs) ??
    num(r.restoreMs) ??
    input.finishedAt.getTime() - input.startedAt.getTime();
  const backupType = BACKUP_TYPE_OF[input.commandPath] ?? str(r.type);
  const schedule =
    str(r.schedule) ?? (kind === 'backup' ? input.args.find((a) => !a.startsWith('-')) : undefined);
  const objects = Array.isArray(r.objects) ? (r.objects as Loose[]) : [];
  const databases = objects.map((o) => str(o.database)).filter((d): d is string => d !== undefined);
  const details: Record<string, unknown> = {
    ...pickDetails(r),
    ...(kind === 'drill' && str(r.kind) ? { drill: r.kind } : {}),
    ...(faults
      ? { faults: faults.length, ...(faults[0] ? { firstFault: str(faults[0].problem) } : {}) }
      : {}),
    ...(input.exitCode ? { exitCode: input.exitCode } : {}),
  };
  const event: LifecycleEvent = {
    kind,
    outcome: failed ? 'failed' : 'succeeded',
    cluster: input.cluster,
    command: [input.commandPath, ...input.args].join(' '),
    origin: input.origin ?? 'cli',
    backupId: str(r.backupId) ?? str(r.id),
    backupType: kind === 'backup' ? backupType : undefined,
    schedule: kind === 'backup' ? schedule : undefined,
    databases: databases.length > 0 ? databases : undefined,
    rawBytes: num(r.rawSize),
    storedBytes: num(r.storedSize),
    durationMs,
    startedAt: input.startedAt.toISOString(),
    finishedAt: input.finishedAt.toISOString(),
    error:
      input.error !== undefined
        ? errorMessage(input.error).split('\n')[0]
        : failed
          ? str(faults?.[0]?.problem)
          : undefined,
    details: Object.keys(details).length > 0 ? details : undefined,
  };
  return {
    event: dropUndefined(event),
    metrics: commandMetrics(kind, failed, r, durationMs),
    dimensions: kind === 'backup' && backupType ? { BackupType: backupType } : undefined,
  };
}

const OUTCOME_METRIC: Record<LifecycleKind, string> = {
  backup: 'Backup',
  restore: 'Restore',
  verification: 'Verification',
  drill: 'Drill',
  retention: 'Retention',
  report: 'Report',
};

function commandMetrics(kind: LifecycleKind, failed: boolean, r: Loose, durationMs: number): Metric[] {
  const prefix = OUTCOME_METRIC[kind];
  const metrics: Metric[] = [
    { name: `${prefix}${failed ? 'Failed' : 'Succeeded'}`, value: 1, unit: 'Count' },
  ];
  const seconds = (ms: number | undefined) => (ms === undefined ? undefined : ms / 1000);
  const add = (name: string, value: number | undefined, unit: MetricUnit) => {
    if (value !== undefined) metrics.push({ name, value, unit });
  };
  if (Array.isArray(r.faults)) add('VerificationFaults', r.faults.length, 'Count');
  if (failed) return metrics;
  switch (kind) {
    case 'backup':
      add('BackupDurationSeconds', seconds(durationMs), 'Seconds');
      add('BackupRawBytes', num(r.rawSize), 'Bytes');
      add('BackupStoredBytes', num(r.storedSize), 'Bytes');
      break;
    case 'restore':
      add('RestoreDurationSeconds', seconds(durationMs), 'Seconds');
      break;
    case 'drill':
      add('DrillRtoSeconds', seconds(num(r.rtoMs)), 'Seconds');
      add('DrillRpoSeconds', seconds(num(r.rpoMs)), 'Seconds');
      break;
    case 'verification':
      // verify restore stores an RTO sample, as a drill does.
      add('DrillRtoSeconds', seconds(num(r.restoreMs)), 'Seconds');
      add('RpoSeconds', num((r.wal as Loose | undefined)?.rpoSeconds), 'Seconds');
      break;
    case 'retention': {
      const deleted = r.deleted as Loose | undefined;
      add(
        'RetentionDeletedBackups',
        Array.isArray(deleted?.backups) ? deleted.backups.length : undefined,
        'Count',
      );
      break;
    }
    case 'report': {
      const data = r.report as ReportData | undefined;
      if (data?.format === 'pgvault-report/1') metrics.push(...reportMetrics(data));
      break;
    }
  }
  return metrics;
}

/** The age of the newest full or base backup and the RPO now, from the threshold inputs. */
export function recoveryMetrics(inputs: ThresholdInputs, now: Date): Metric[] {
  const metrics: Metric[] = [];
  if (inputs.newestBackup) {
    const hours = (now.getTime() - Date.parse(inputs.newestBackup.finishedAt)) / 3_600_000;
    metrics.push({ name: 'BackupAgeHours', value: round(hours), unit: 'None' });
  }
  if (inputs.recoveryPoint) {
    const seconds = (now.getTime() - Date.parse(inputs.recoveryPoint.at)) / 1000;
    metrics.push({ name: 'RpoSeconds', value: round(Math.max(0, seconds)), unit: 'Seconds' });
  }
  return metrics;
}

/** What the report measured: backup age, RPO, failing checks and storage used. */
export function reportMetrics(data: ReportData): Metric[] {
  const metrics: Metric[] = [];
  const ages = data.backups
    .filter((b) => b.type.startsWith('full') || b.type.startsWith('base'))
    .map((b) => b.ageHours);
  if (ages.length > 0)
    metrics.push({ name: 'BackupAgeHours', value: round(Math.min(...ages)), unit: 'None' });
  if (data.rpo.measuredMinutes !== undefined)
    metrics.push({ name: 'RpoSeconds', value: round(data.rpo.measuredMinutes * 60), unit: 'Seconds' });
  metrics.push({ name: 'ReportFailingChecks', value: data.failing.length, unit: 'Count' });
  const used = data.capacity.targets.map((t) => t.usedBytes);
  if (used.length > 0) metrics.push({ name: 'StorageUsedBytes', value: Math.max(...used), unit: 'Bytes' });
  const percents = data.capacity.targets.map((t) => t.percent).filter((p): p is number => p !== undefined);
  if (percents.length > 0)
    metrics.push({ name: 'StorageUsedPercent', value: round(Math.max(...percents)), unit: 'Percent' });
  return metrics;
}

const round = (n: number) => Math.round(n * 100) / 100;

function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
