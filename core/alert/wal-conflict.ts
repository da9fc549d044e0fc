import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../config';
import type { WalConflictError } from '../wal/push';
import { sendAlerts } from './notify';
import type { Alert } from './types';

/**
 * The alert for two nodes archiving one WAL segment with different content (`backup wal`, under
 * PostgreSQL, which retries the segment until it succeeds). Sent once per segment, node and
 * timeline: a marker in the spool folder (`stateDir`) says it went out, so PostgreSQL's retries
 * (every few seconds) do not repeat it; without a spool folder (a path outside pg_wal) every call
 * sends it. A channel that failed leaves no marker, so the next retry tries again. Never throws:
 * the caller's own error line and exit code say what failed whatever happens here.
 */
export async function alertWalConflictOnce(
  config: Config,
  conflict: WalConflictError,
  stateDir: string | undefined,
  now: Date = new Date(),
): Promise<void> {
  try {
    const marker =
      stateDir === undefined
        ? undefined
        : join(stateDir, `conflict-${conflict.segment}-tl${conflict.timeline}.alerted`);
    if (marker !== undefined && (await exists(marker))) return;
    const alert: Alert = {
      kind: 'command-failed',
      severity: 'critical',
      cluster: config.clusterName,
      title: `WAL conflict: ${conflict.segment} differs between nodes (pgvault backup wal)`,
      what: conflict.message.split('\n')[0]!,
      since: now.toISOString(),
      sinceKind: 'observed',
      nextStep: 'pgvault verify wal',
      hint: `PostgreSQL on node ${conflict.node} keeps ${conflict.segment} and retries it; archiving from that node is stuck until the archived copy or this node's history is settled.`,
    };
    // The error line is the CLI's own: publish only.
    const result = await sendAlerts(config, [alert], { stderr: false, write: () => {} });
    if (marker === undefined || result.failures.length > 0) return;
    await mkdir(stateDir!, { recursive: true });
    await writeFile(marker, `${now.toISOString()} ${conflict.node}\n`);
  } catch {
    // An alert setting in error, a spool folder not writable: the exit code still says it.
  }
}

function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
