import { z } from 'zod';
import { SCHEDULES } from '../core/catalog/naming';
import type { LifecycleKind } from '../core/events';
import {
  clusterConfig,
  clusterNameSchema,
  findCluster,
  InvalidPayloadError,
  parsePayload,
  recordFailure,
  recordOutcome,
  startPgvaultTask,
} from './env';

/**
 * dispatch: EventBridge Scheduler's target for the work that streams a database. It starts the
 * Fargate task that runs the same `pgvault` command a user would run by hand, and returns. The
 * command comes from an allow-list: a payload can never make the task run arbitrary arguments.
 *
 * Payload: {"cluster": "main", "command": ["backup", "full", "daily"]}
 */

/** Every command the dispatcher starts, exactly as the task runs it. */
export const DISPATCH_COMMANDS: readonly (readonly string[])[] = [
  ...SCHEDULES.map((s) => ['backup', 'full', s]),
  ...SCHEDULES.map((s) => ['backup', 'base', s]),
  ['backup', 'config'],
  ['backup', 'indexes'],
  ['verify', 'restore', 'latest'],
  ['drill'],
  ['drill', '--pitr'],
];

const ALLOWED =
  'backup full|base daily|weekly|monthly|manual, backup config, backup indexes, verify restore latest, drill, drill --pitr';

const payloadSchema = z.strictObject({
  cluster: clusterNameSchema,
  command: z.array(z.string()).min(1, 'give the pgvault command as a list of words'),
});

export interface DispatchResult {
  readonly cluster: string;
  readonly command: readonly string[];
  readonly taskArn: string;
}

const KINDS: Record<string, LifecycleKind> = { backup: 'backup', verify: 'verification', drill: 'drill' };

export function allowedCommand(command: readonly string[]): readonly string[] {
  const found = DISPATCH_COMMANDS.find(
    (c) => c.length === command.length && c.every((word, i) => word === command[i]),
  );
  if (found === undefined) {
    throw new InvalidPayloadError(
      `invalid payload: "command": ${JSON.stringify(command)} is not a command the dispatcher starts; use one of: ${ALLOWED}`,
    );
  }
  return found;
}

export const handler = async (event: unknown): Promise<DispatchResult> => {
  const payload = parsePayload(payloadSchema, event);
  const argv = allowedCommand(payload.command);
  const cluster = findCluster(payload.cluster);
  const config = await clusterConfig(cluster, { withKey: false });
  const kind = KINDS[argv[0]!]!;
  const startedAt = new Date();
  let taskArn: string;
  try {
    ({ taskArn } = await startPgvaultTask(cluster, {
      argv,
      startedBy: 'pgvault-dispatch',
      definition: 'task',
    }));
  } catch (err) {
    // A scheduled backup that never started is a failed backup: alert now, not when it is missed.
    await recordFailure(config, 'dispatch', {
      kind,
      commandPath: argv
        .filter((a) => !a.startsWith('-'))
        .slice(0, argv[0] === 'drill' ? 1 : 2)
        .join(' '),
      argv,
      error: err,
      startedAt,
    });
    throw err;
  }
  await recordOutcome(config, 'dispatch', {
    kind,
    outcome: 'started',
    cluster: cluster.name,
    command: argv.join(' '),
    taskArn,
    startedAt: startedAt.toISOString(),
    ...(kind === 'backup' ? { backupType: argv[1], ...(argv[2] ? { schedule: argv[2] } : {}) } : {}),
  });
  return { cluster: cluster.name, command: [...argv], taskArn };
};
