import { mkdir, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stopCleanlyOnInterrupt } from '../cleanup';
import type { Config } from '../config';
import { ConfigError, errorMessage, PostgresError } from '../errors';
import { serverInfo } from '../pg/server';
import { findPgBinary, pgEnv, refuseOlderClient, toolMajorVersion, withClient } from '../pg/tools';
import { refuseCopyIntoSource } from '../restore/copy';
import type { StorageTarget } from '../storage/target';
import { startTool, type ToolProcess } from '../stream/process';
import {
  forgetRoute,
  leader,
  readPatroniConfig,
  readTopology,
  resolveConnection,
  routedNode,
  serverLabel,
} from '../topology';
import { cachedArchiveIdentity } from './fetch';
import { DEFAULT_SEGMENT_BYTES, formatLsn, parseLsn, parseWalFileName, segmentStartLsn } from './naming';
import { pushFailureLine, pushWalFile } from './push';

/**
 * `wal receive`: continuous archiving over the replication protocol, for hosts where
 * archive_command cannot be set (a managed server, or a Fargate service beside it). pg_receivewal
 * streams into a staging folder through a replication slot (created once), so the server keeps
 * every segment until it has been received; each segment it completes (renamed from `.partial`)
 * goes through the same push as archive_command, and the local copy is removed once stored.
 *
 * The slot advances as pg_receivewal flushes, not as segments are stored: keep WAL_RECEIVE_DIR on a
 * volume that survives a restart, or a completed segment not yet stored could be lost with it
 * (`verify wal` would then report the gap).
 *
 * DEPLOYMENT_MODE=patroni: pg_receivewal streams from the leader (core/topology). When it exits, or
 * when the topology (asked every LEADER_CHECK_MS) names another leader, the route is looked up again
 * and pg_receivewal restarts against the new leader: it continues from the newest segment in the
 * staging folder, on the old timeline up to the switch point, then on the new one (with its history
 * file). The slot must be one of Patroni's permanent slots (`slots: {NAME: {type: physical}}` in the
 * dynamic configuration): Patroni drops slots it does not manage, and keeps permanent ones on every
 * member, so the new leader has it, advanced as far as the old one's. pgvault checks that and does
 * not create the slot itself there.
 */

export interface ReceiveContext {
  readonly config: Config;
  readonly targets: readonly StorageTarget[];
}

export interface ReceiveStatus {
  readonly at: string;
  readonly slot: string;
  /** The server pg_receivewal streams from (with Patroni: the member it was routed to). */
  readonly server?: string;
  /** Times pg_receivewal was moved to a new leader (DEPLOYMENT_MODE=patroni). */
  readonly leaderChanges?: number;
  /** pg_receivewal is running. */
  readonly receiving: boolean;
  /** Newest segment stored in every target by this run. */
  readonly archivedThrough?: string;
  /** The server's current WAL position (its receive position on a standby). */
  readonly serverLsn?: string;
  /** Bytes of WAL the server has that are not yet stored (server position minus the end of archivedThrough). */
  readonly lagBytes?: number;
  /** Completed segments received and not yet stored. */
  readonly pendingSegments: number;
  /** Age of the oldest of them. */
  readonly oldestPendingSeconds?: number;
  readonly storedThisRun: number;
  readonly restarts: number;
  readonly summary: string;
}

export interface ReceiveOptions {
  readonly slot: string;
  readonly report: (status: ReceiveStatus) => void;
  readonly log: (line: string) => void;
  /** @default 10000 */
  readonly reportEveryMs?: number;
  /** Stops the receiver (tests; the CLI stops on SIGTERM/SIGINT). */
  readonly signal?: AbortSignal;
  /**
   * A file rewritten every HEARTBEAT_EVERY_MS while pg_receivewal has been streaming for a while, and
   * removed on stop: a container health check tests its age (infra: the WAL receiver service).
   */
  readonly heartbeatFile?: string;
}

const RESTART_MIN_MS = 1_000;
const RESTART_MAX_MS = 30_000;
const SCAN_EVERY_MS = 500;
/** How often the heartbeat file is rewritten while receiving. */
export const HEARTBEAT_EVERY_MS = 10_000;
/** pg_receivewal counts as streaming once it has run this long (a crash loop never does). */
const STREAMING_AFTER_MS = 5_000;
/** pg_receivewal gets this long to flush and leave after SIGTERM. */
const STOP_GRACE_MS = 5_000;
/** DEPLOYMENT_MODE=patroni: how often the topology is asked whether the streamed-from node still leads. */
export const LEADER_CHECK_MS = 5_000;

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    // The listener goes with the timer: the receiver sleeps twice a second for days, and listeners
    // left on the signal piled up (Node warned of a leak after 11).
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Runs until stopped: pg_receivewal supervised and restarted, completed segments pushed and removed. */
export async function receiveWal(ctx: ReceiveContext, options: ReceiveOptions): Promise<void> {
  const { config } = ctx;
  // A copy laid down by restore pitr streams WAL of the original's system: never under its name. A
  // server not reachable yet is left to pg_receivewal's retries, as before.
  const marks = await serverInfo(config.pg).catch(() => ({}));
  refuseCopyIntoSource(config.clusterName, marks, 'the WAL streamed from this server');
  const binary = findPgBinary('pg_receivewal', config.pgBinDir);
  // A server newer than every pg_receivewal here is refused before anything starts or is written.
  if ('major' in marks) {
    const client = { path: binary, major: await toolMajorVersion(binary) };
    refuseOlderClient('pg_receivewal', client, marks, config.pgBinDir);
  }
  const dir = config.walReceiveDir;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const patroni = config.pg.patroni;
  if (patroni !== undefined) await requirePermanentSlot(config, options.slot);
  // DEPLOYMENT_MODE=patroni: the leader (core/topology); the serverInfo above may not have reached it.
  let env = pgEnv(await resolveConnection(config.pg));
  let streamingFrom = nodeKey();
  let leaderChanges = 0;
  let lastStatus: ReceiveStatus | undefined;
  const stopping = new AbortController();
  options.signal?.addEventListener('abort', () => stopping.abort(), { once: true });
  let receiver: ToolProcess | undefined;
  let receiverStarted = 0;
  const streaming = () =>
    receiver !== undefined &&
    receiver.child.exitCode === null &&
    receiver.child.signalCode === null &&
    Date.now() - receiverStarted >= STREAMING_AFTER_MS;
  const heartbeatFile = options.heartbeatFile;
  const heartbeat =
    heartbeatFile === undefined
      ? undefined
      : setInterval(() => {
          // The lag in the file too (the health check reads only its age).
          if (streaming() && !stopping.signal.aborted)
            void writeFile(
              heartbeatFile,
              `${new Date().toISOString()}${lastStatus?.lagBytes !== undefined ? ` lag ${lastStatus.lagBytes} bytes` : ''}${lastStatus?.server ? ` from ${lastStatus.server}` : ''}\n`,
            ).catch(() => {});
        }, HEARTBEAT_EVERY_MS);
  heartbeat?.unref();
  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      stopping.abort();
      if (heartbeat) clearInterval(heartbeat);
      if (heartbeatFile) await rm(heartbeatFile, { force: true }).catch(() => {});
      await stopReceiver(receiver);
      await pushCompleted();
      options.report(await status());
    })();
    return stopped;
  };
  // SIGTERM / SIGINT (an ECS deployment stopping the old task): stop pg_receivewal, push every
  // completed segment (the .partial stays in the staging folder for the next run), exit 0.
  const forgetStop = stopCleanlyOnInterrupt(stop);

  let archivedThrough: string | undefined;
  let storedThisRun = 0;
  let restarts = 0;
  const failures = new Map<string, number>();

  async function pushCompleted(): Promise<void> {
    let entries: string[];
    try {
      entries = await readdir(dir);
    } catch {
      return;
    }
    const complete = entries
      .filter((e) => {
        const kind = parseWalFileName(e)?.kind;
        return kind === 'segment' || kind === 'history';
      })
      .sort((a, b) =>
        a.endsWith('.history') === b.endsWith('.history')
          ? a < b
            ? -1
            : 1
          : a.endsWith('.history')
            ? -1
            : 1,
      );
    const jobs = Math.max(1, config.parallelJobs);
    for (let i = 0; i < complete.length; i += jobs) {
      await Promise.all(
        complete.slice(i, i + jobs).map(async (name) => {
          const failedAt = failures.get(name);
          if (failedAt !== undefined && Date.now() - failedAt < RESTART_MIN_MS && !stopping.signal.aborted)
            return;
          try {
            await pushWalFile({ config, targets: ctx.targets, stateDir: dir, threads: 1 }, join(dir, name));
            await unlink(join(dir, name));
            failures.delete(name);
            storedThisRun++;
            if (
              name.endsWith('.history') === false &&
              (archivedThrough === undefined || name > archivedThrough)
            )
              archivedThrough = name;
          } catch (err) {
            failures.set(name, Date.now());
            options.log(`${name} not stored (will retry): ${pushFailureLine(err)}`);
          }
        }),
      );
    }
  }

  async function status(): Promise<ReceiveStatus> {
    const entries = await readdir(dir).catch(() => [] as string[]);
    const pending = entries.filter((e) => parseWalFileName(e)?.kind === 'segment');
    let oldest: number | undefined;
    for (const name of pending) {
      const info = await stat(join(dir, name)).catch(() => undefined);
      if (info !== undefined && (oldest === undefined || info.mtimeMs < oldest)) oldest = info.mtimeMs;
    }
    let serverLsn: bigint | undefined;
    try {
      serverLsn = await withClient(config.pg, config.pg.database, async (client) => {
        const result = await client.query<{ lsn: string | null }>(
          'SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)::text AS lsn',
        );
        const lsn = result.rows[0]?.lsn;
        return lsn ? parseLsn(lsn) : undefined;
      });
    } catch {
      // The lag is unknown while the server cannot be asked; pg_receivewal reports its own errors.
    }
    const identity = await cachedArchiveIdentity(dir, ctx.targets, config.clusterName);
    const segmentBytes = identity?.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    const archivedEnd =
      archivedThrough === undefined
        ? undefined
        : segmentStartLsn(archivedThrough, segmentBytes) + BigInt(segmentBytes);
    const lagBytes =
      serverLsn !== undefined && archivedEnd !== undefined
        ? Number(serverLsn > archivedEnd ? serverLsn - archivedEnd : 0n)
        : undefined;
    const oldestPendingSeconds = oldest === undefined ? undefined : Math.round((Date.now() - oldest) / 1000);
    const receiving = receiver !== undefined && receiver.child.exitCode === null;
    const summary = [
      receiving ? 'receiving' : 'pg_receivewal not running',
      archivedThrough ? `stored through ${archivedThrough}` : 'nothing stored yet',
      lagBytes !== undefined
        ? `${lagBytes} bytes behind the server (${formatLsn(serverLsn!)})`
        : 'lag unknown',
      `${pending.length} segment(s) waiting${oldestPendingSeconds !== undefined ? `, oldest ${oldestPendingSeconds} s` : ''}`,
    ].join('; ');
    lastStatus = {
      at: new Date().toISOString(),
      slot: options.slot,
      server: serverLabel(config.pg),
      ...(patroni !== undefined ? { leaderChanges } : {}),
      receiving,
      ...(archivedThrough ? { archivedThrough } : {}),
      ...(serverLsn !== undefined ? { serverLsn: formatLsn(serverLsn) } : {}),
      ...(lagBytes !== undefined ? { lagBytes } : {}),
      pendingSegments: pending.length,
      ...(oldestPendingSeconds !== undefined ? { oldestPendingSeconds } : {}),
      storedThisRun,
      restarts,
      summary,
    };
    return lastStatus;
  }

  function nodeKey(): string | undefined {
    const routed = routedNode(config.pg);
    return routed === undefined ? undefined : `${routed.node.host}:${routed.node.port}`;
  }

  /** Patroni: the route looked up again; false while the cluster has no leader (retried later). */
  async function reroute(): Promise<boolean> {
    forgetRoute(config.pg);
    try {
      env = pgEnv(await resolveConnection(config.pg));
    } catch (err) {
      options.log(`no leader to stream from yet: ${errorMessage(err)}`);
      return false;
    }
    const now = nodeKey();
    if (now !== streamingFrom) {
      leaderChanges++;
      options.log(`streaming from ${serverLabel(config.pg)} now (was ${streamingFrom ?? 'unknown'})`);
    }
    streamingFrom = now;
    return true;
  }

  /** Patroni: whether the topology names a leader other than the node pg_receivewal streams from. */
  async function leaderMoved(): Promise<boolean> {
    if (patroni === undefined) return false;
    try {
      const now = leader(await readTopology(config));
      return now !== undefined && `${now.host}:${now.port}` !== streamingFrom;
    } catch {
      return false; // The API down is not a reason to stop a receiver that streams.
    }
  }

  try {
    // Patroni creates and keeps its permanent slots itself (one it does not know it would drop).
    if (patroni === undefined) await createSlot(binary, env, options.slot);
    options.log(`streaming into ${dir} through slot ${options.slot}`);
    let delay = RESTART_MIN_MS;
    let lastReport = 0;
    let lastLeaderCheck = Date.now();
    let moved = false;
    const reportEvery = options.reportEveryMs ?? 10_000;
    while (!stopping.signal.aborted) {
      if (receiver === undefined || receiver.child.exitCode !== null || receiver.child.signalCode !== null) {
        if (receiver !== undefined) {
          restarts++;
          if (!moved) {
            options.log(
              `pg_receivewal exited (${exitReason(receiver)}); ${missingSlotHint(receiver, options.slot, patroni !== undefined)}restarting in ${Math.round(delay / 1000)} s`,
            );
            await sleep(delay, stopping.signal);
            delay = Math.min(delay * 2, RESTART_MAX_MS);
          }
          moved = false;
          if (stopping.signal.aborted) break;
          if (patroni !== undefined && !(await reroute())) continue;
        }
        const started = Date.now();
        receiverStarted = started;
        // Patroni: --no-loop, so that a lost connection comes back here to look the leader up again
        // (pg_receivewal's own retries go to the same host: the demoted node after a switchover).
        const args = ['-D', dir, '--slot', options.slot, '--no-password', '--verbose'];
        if (patroni !== undefined) args.push('--no-loop');
        receiver = startTool(binary, args, {
          env,
          stdin: 'ignore',
          stdout: 'ignore',
          label: 'pg_receivewal',
        });
        // A receiver that ran a while before failing starts over from the shortest delay.
        receiver.exited
          .catch(() => {})
          .finally(() => {
            if (Date.now() - started > RESTART_MAX_MS) delay = RESTART_MIN_MS;
          });
      }
      await pushCompleted();
      if (patroni !== undefined && Date.now() - lastLeaderCheck >= LEADER_CHECK_MS) {
        lastLeaderCheck = Date.now();
        if (await leaderMoved()) {
          options.log(
            `${serverLabel(config.pg)} no longer leads the Patroni cluster; following the new leader`,
          );
          moved = true;
          await stopReceiver(receiver);
          continue;
        }
      }
      if (Date.now() - lastReport >= reportEvery) {
        lastReport = Date.now();
        options.report(await status());
      }
      await sleep(SCAN_EVERY_MS, stopping.signal);
    }
  } finally {
    await stop();
    forgetStop();
  }
}

async function createSlot(binary: string, env: NodeJS.ProcessEnv, slot: string): Promise<void> {
  const tool = startTool(binary, ['--create-slot', '--if-not-exists', '--slot', slot, '--no-password'], {
    env,
    stdin: 'ignore',
    stdout: 'ignore',
    label: 'pg_receivewal --create-slot',
  });
  try {
    await tool.exited;
  } catch (err) {
    throw new PostgresError(
      `cannot create the replication slot ${slot}: ${errorMessage(err)}; the user needs the REPLICATION attribute and pg_hba.conf a "replication" line for this host`,
      { cause: err },
    );
  }
}

/**
 * DEPLOYMENT_MODE=patroni: the slot must be a Patroni permanent slot. One it does not manage is
 * dropped by Patroni on the leader, and a new leader would not have it after a failover.
 */
async function requirePermanentSlot(config: Config, slot: string): Promise<void> {
  if (config.pg.patroni === undefined) return;
  const dynamic = await readPatroniConfig(config.pg.patroni);
  let type: unknown;
  try {
    type = (JSON.parse(dynamic.text) as { slots?: Record<string, { type?: unknown } | null> }).slots?.[slot]
      ?.type;
  } catch {
    type = undefined;
  }
  if (type !== 'physical') {
    throw new ConfigError(
      `the replication slot ${slot} is not a Patroni permanent slot (slots in Patroni's dynamic configuration, per ${dynamic.source}), so Patroni would drop it and a new leader would not have it; add it: patronictl edit-config -s slots.${slot}.type=physical (or PATCH /config {"slots":{"${slot}":{"type":"physical"}}})`,
    );
  }
}

/** The hint added when pg_receivewal left because the slot is missing (Patroni: not created on the new leader yet). */
function missingSlotHint(tool: ToolProcess, slot: string, patroni: boolean): string {
  if (!/replication slot .* does not exist/.test(tool.stderrTail())) return '';
  return patroni
    ? `the slot ${slot} is not on this leader yet (Patroni creates its permanent slots within loop_wait; if this repeats, check slots.${slot} in Patroni's dynamic configuration); `
    : `the slot ${slot} was dropped; `;
}

function exitReason(tool: ToolProcess): string {
  const { exitCode, signalCode } = tool.child;
  const last = tool
    .stderrTail()
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .pop();
  return `${signalCode ? `signal ${signalCode}` : `exit code ${exitCode}`}${last ? `: ${last}` : ''}`;
}

async function stopReceiver(tool: ToolProcess | undefined): Promise<void> {
  if (tool === undefined || tool.child.exitCode !== null || tool.child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => tool.child.once('exit', () => resolve()));
  // SIGTERM makes pg_receivewal flush what it has and leave; the .partial stays for the next run.
  tool.child.kill('SIGTERM');
  const killer = setTimeout(() => tool.child.kill('SIGKILL'), STOP_GRACE_MS);
  await exited;
  clearTimeout(killer);
}
