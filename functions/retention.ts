import { z } from 'zod';
import { runRetention } from '../core/retention/apply';
import { openVault } from '../core/vault';
import {
  clusterConfig,
  clusterNameSchema,
  findCluster,
  logReporter,
  parsePayload,
  recordFailure,
  recordOutcome,
} from './env';

/**
 * retention: GFS retention of one cluster, in Lambda (listings and deletes only; no byte is read).
 * The same rules as `pgvault backup retention`; objects under S3 Object Lock are left for a later run.
 *
 * Payload: {"cluster": "main"}
 */

const payloadSchema = z.strictObject({ cluster: clusterNameSchema });

export interface RetentionFunctionResult {
  readonly cluster: string;
  /** false when some object could not be deleted (listed in `failed`); the next run tries again. */
  readonly ok: boolean;
  readonly kept: number;
  readonly deletedBackups: readonly string[];
  readonly deletedLeftoverObjects: number;
  readonly deletedWalObjects: number;
  readonly deletedBytes: number;
  readonly locked: number;
  readonly failed: readonly { key: string; target: string; error: string }[];
}

export const handler = async (event: unknown): Promise<RetentionFunctionResult> => {
  const { cluster: name } = parsePayload(payloadSchema, event);
  const config = await clusterConfig(findCluster(name), { withKey: true });
  const startedAt = new Date();
  let result: Awaited<ReturnType<typeof runRetention>>;
  try {
    result = await runRetention(openVault(config, logReporter), { now: startedAt });
  } catch (err) {
    await recordFailure(config, 'retention', {
      kind: 'retention',
      commandPath: 'backup retention',
      argv: ['backup', 'retention'],
      error: err,
      startedAt,
    });
    throw err;
  }
  const out: RetentionFunctionResult = {
    cluster: config.clusterName,
    ok: result.failed.length === 0,
    kept: result.plan.summary.keep,
    deletedBackups: result.deleted.backups,
    deletedLeftoverObjects: result.deleted.leftoverObjects,
    deletedWalObjects: result.deleted.walObjects,
    deletedBytes: result.plan.summary.deleteBytes,
    locked: result.locked.length,
    failed: result.failed,
  };
  const finishedAt = new Date();
  await recordOutcome(
    config,
    'retention',
    {
      kind: 'retention',
      outcome: out.ok ? 'succeeded' : 'failed',
      cluster: config.clusterName,
      command: 'backup retention',
      durationMs: finishedAt.getTime() - startedAt.getTime(),
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      ...(out.ok
        ? {}
        : {
            error: `${out.failed.length} object(s) could not be deleted; first: ${out.failed[0]!.key}: ${out.failed[0]!.error}`,
          }),
      details: {
        kept: out.kept,
        deletedBackups: out.deletedBackups,
        deletedLeftoverObjects: out.deletedLeftoverObjects,
        deletedWalObjects: out.deletedWalObjects,
        deletedBytes: out.deletedBytes,
        locked: out.locked,
      },
    },
    [
      { name: out.ok ? 'RetentionSucceeded' : 'RetentionFailed', value: 1, unit: 'Count' },
      { name: 'RetentionDeletedBackups', value: out.deletedBackups.length, unit: 'Count' },
    ],
  );
  return out;
};
