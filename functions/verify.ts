import { z } from 'zod';
import { commandFailedAlert } from '../core/alert/failure';
import { sendAlerts } from '../core/alert/notify';
import { collectThresholdInputs, thresholdAlerts } from '../core/alert/thresholds';
import { recoveryMetrics } from '../core/events';
import { openVault } from '../core/vault';
import { type VerifyAllReport, verifyAll, verifyAllFailure } from '../core/verify/all';
import {
  clusterConfig,
  clusterNameSchema,
  findCluster,
  logReporter,
  parsePayload,
  recordFailure,
  recordOutcome,
  type StartedTask,
  startPgvaultTask,
} from './env';

/**
 * verify: the quick checks in Lambda (`pgvault verify all --quick`: every manifest, its HMAC and the
 * objects' sizes, WAL continuity; no object is read) and the threshold alerts (backup age, RPO, RTO,
 * capacity, ...), as the CLI sends them. With "deep": true it then starts the deep verification on
 * Fargate: `pgvault verify restore latest` restores the newest full backup into temporary databases,
 * validates the row counts against the manifest and stores the RTO sample.
 *
 * Payload: {"cluster": "main", "deep": true}
 */

const payloadSchema = z.strictObject({ cluster: clusterNameSchema, deep: z.boolean().optional() });

/** What the deep verification task runs (one of the dispatcher's commands). */
export const DEEP_VERIFY_COMMAND = ['verify', 'restore', 'latest'] as const;

export interface VerifyFunctionResult {
  readonly cluster: string;
  /** No fault in the quick checks (threshold alerts are reported apart, in `alerts`). */
  readonly ok: boolean;
  readonly mode: 'quick';
  readonly backups: number;
  readonly faults: VerifyAllReport['faults'];
  /** The threshold alerts sent (their titles). */
  readonly alerts: readonly string[];
  readonly rpoSeconds?: number;
  /** The server's WAL archiving: checked, or skipped and why (a function with no database access). */
  readonly server: Pick<VerifyAllReport['server'], 'checked' | 'server' | 'skipped' | 'problems'>;
  /** The deep verification task, when "deep" was true. */
  readonly deepTask?: StartedTask;
}

export const handler = async (event: unknown): Promise<VerifyFunctionResult> => {
  const payload = parsePayload(payloadSchema, event);
  const cluster = findCluster(payload.cluster);
  const config = await clusterConfig(cluster, { withKey: true });
  const vault = openVault(config, logReporter);
  const startedAt = new Date();
  const argv = ['verify', 'all', '--quick'];
  let report: VerifyAllReport;
  let inputs: Awaited<ReturnType<typeof collectThresholdInputs>>;
  try {
    report = await verifyAll(vault, { quick: true, now: startedAt });
    inputs = await collectThresholdInputs(vault, startedAt);
  } catch (err) {
    await recordFailure(config, 'verify', {
      kind: 'verification',
      commandPath: 'verify all',
      argv,
      error: err,
      startedAt,
    });
    throw err;
  }
  const alerts = thresholdAlerts(inputs, config.alerts);
  const log = { write: (line: string) => console.warn(line) };
  await sendAlerts(config, alerts, log);
  const error = verifyAllFailure(report);
  if (error !== undefined) {
    await sendAlerts(
      config,
      [commandFailedAlert({ cluster: cluster.name, commandPath: 'verify all', argv, error, startedAt })],
      log,
    );
  }
  const finishedAt = new Date();
  await recordOutcome(
    config,
    'verify',
    {
      kind: 'verification',
      outcome: report.ok ? 'succeeded' : 'failed',
      cluster: cluster.name,
      command: argv.join(' '),
      durationMs: report.durationMs,
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      ...(report.ok ? {} : { error: report.faults[0]!.problem }),
      details: {
        mode: 'quick',
        backups: report.backups,
        faults: report.faults.length,
        alerts: alerts.map((a) => a.kind),
      },
    },
    [
      { name: report.ok ? 'VerificationSucceeded' : 'VerificationFailed', value: 1, unit: 'Count' },
      { name: 'VerificationFaults', value: report.faults.length, unit: 'Count' },
      ...recoveryMetrics(inputs, finishedAt),
    ],
  );
  let deepTask: StartedTask | undefined;
  if (payload.deep) {
    const deepArgv = [...DEEP_VERIFY_COMMAND];
    try {
      deepTask = await startPgvaultTask(cluster, {
        argv: deepArgv,
        startedBy: 'pgvault-verify',
        definition: 'task',
      });
    } catch (err) {
      await recordFailure(config, 'verify', {
        kind: 'verification',
        commandPath: 'verify restore',
        argv: deepArgv,
        error: err,
        startedAt: new Date(),
      });
      throw err;
    }
    await recordOutcome(config, 'verify', {
      kind: 'verification',
      outcome: 'started',
      cluster: cluster.name,
      command: deepArgv.join(' '),
      taskArn: deepTask.taskArn,
      startedAt: new Date().toISOString(),
    });
  }
  return {
    cluster: cluster.name,
    ok: report.ok,
    mode: 'quick',
    backups: report.backups,
    faults: report.faults,
    alerts: alerts.map((a) => a.title),
    server: {
      checked: report.server.checked,
      server: report.server.server,
      ...(report.server.skipped !== undefined ? { skipped: report.server.skipped } : {}),
      problems: report.server.problems,
    },
    ...(report.wal?.rpoSeconds !== undefined ? { rpoSeconds: report.wal.rpoSeconds } : {}),
    ...(deepTask ? { deepTask } : {}),
  };
};
