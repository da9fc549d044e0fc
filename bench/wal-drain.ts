/**
 * The WAL part: how fast each archive_command drains a backlog left by a stalled archiver.
 *
 * For each command, archive_command is emptied (PostgreSQL keeps every completed segment, marked
 * .ready, and archives nothing), N segments of WAL are written from the generated data, a checkpoint
 * is taken, and then the clock starts: the command is set with ALTER SYSTEM and pg_reload_conf(),
 * and each segment's .ready marker is watched until PostgreSQL renames it to .done (the archiver works
 * oldest first, one segment at a time, and marks a segment done only once its command exited 0).
 * The drain time is when the last one went; per-segment latency is the interval between two
 * segments marked done, which for a synchronous command is the command's own run time.
 *
 * Commands: plain `cp` (reference: no compression, encryption or fsync), pgBackRest archive-push
 * (sync, and async with its spool), pgvault backup wal (sync, and ARCHIVE_ASYNC=true with its
 * uploader), all storing into their own repository in the run's temporary directory, with zstd and
 * AES-256-CBC for pgBackRest and pgvault. The CPU of the archive commands (and the uploaders they
 * start) is the row's; the archiver and other backends are "server".
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { chownToServerUser } from '../core/pg/cluster';
import {
  archiverPid,
  archiverState,
  dropWalLoad,
  enableArchiving,
  logTail,
  makeBacklog,
  setArchiveCommand,
  sleep,
  stopProcessesNaming,
  WAL_LOAD_TABLE,
  walSegmentBytes,
} from './archiving';
import { measureTask } from './measure';
import {
  type ArchiveSetup,
  PARALLEL_JOBS,
  pgvaultConfig,
  pgvaultLauncher,
  prepareArchiveSetup,
} from './physical';
import type { Row, WalDrain, WalInfo } from './report';
import { type Context, heartbeat, runStep, type Step, say } from './steps';

export interface WalOptions {
  /** Segments in each backlog. */
  readonly segments: number;
  /** false: leave pgBackRest out. */
  readonly pgbackrest: boolean;
}

interface Method {
  readonly id: string;
  readonly name: string;
  readonly command: string;
  readonly runs: number;
  readonly baseline?: string;
  /** Text in the command lines of the processes the command starts and leaves behind. */
  readonly processMarker: string;
  /** Whether the archive holds `segment` afterwards. */
  readonly stored: (segment: string) => Promise<boolean>;
  readonly afterRun?: () => Promise<void>;
}

function walObjectPath(vaultDir: string, name: string): string {
  return join(vaultDir, 'bench', 'wal', name.slice(0, 8), name.slice(0, 16), `${name}.zst.enc`);
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

export async function runWalDrain(
  ctx: Context,
  options: WalOptions,
  physical: ArchiveSetup | undefined,
): Promise<{ rows: Row[]; info: WalInfo; setup: ArchiveSetup }> {
  const { cluster } = ctx;
  say(`WAL part: draining backlogs of ${options.segments} segments`);
  await enableArchiving(ctx);
  const setup = physical ?? (await prepareArchiveSetup(ctx, options.pgbackrest));
  const root = join(setup.root, 'wal');
  await mkdir(root, { recursive: true, mode: 0o700 });
  const cpDir = join(root, 'cp');
  await mkdir(cpDir, { recursive: true, mode: 0o700 });
  const vaultDir = join(root, 'vault');
  const syncConfig = join(root, 'pgvault-sync.env');
  const asyncConfig = join(root, 'pgvault-async.env');
  await pgvaultConfig(setup, syncConfig, vaultDir);
  await pgvaultConfig(setup, asyncConfig, vaultDir, { ARCHIVE_ASYNC: 'true' });
  await chownToServerUser(root);
  await chownToServerUser(cpDir);
  const segmentBytes = await walSegmentBytes(cluster);
  const launcher = pgvaultLauncher(ctx);
  const snapshot = join(ctx.work, 'pgvault');
  const short = (text: string) => text.replaceAll(`${ctx.work}/`, '$WORK/');

  const methods: Method[] = [
    {
      id: 'wal_cp',
      name: 'cp (reference: no compression, encryption or fsync)',
      command: `test ! -f ${cpDir}/%f && cp %p ${cpDir}/%f`,
      runs: 1,
      processMarker: cpDir,
      stored: async (segment) => existsSync(join(cpDir, segment)),
      // 16 MiB a segment, uncompressed: do not keep them.
      afterRun: async () => {
        for (const f of await readdir(cpDir)) await rm(join(cpDir, f), { force: true });
      },
    },
  ];
  const { pgbackrest } = setup;
  if (pgbackrest) {
    const storedIn = async (segment: string) => {
      const out = await pgbackrest.exec(['info', '--output=json']);
      const info = JSON.parse(out) as Array<{ archive?: Array<{ max?: string }> }>;
      const max =
        info[0]?.archive
          ?.map((a) => a.max ?? '')
          .sort()
          .at(-1) ?? '';
      return max >= segment;
    };
    methods.push(
      {
        id: 'wal_pgbackrest_sync',
        name: 'pgBackRest archive-push (sync)',
        command: pgbackrest.archiveCommand(false),
        runs: 1,
        baseline: 'wal_cp',
        processMarker: pgbackrest.configFile,
        stored: storedIn,
      },
      {
        id: 'wal_pgbackrest_async',
        name: 'pgBackRest archive-push --archive-async',
        command: pgbackrest.archiveCommand(true),
        runs: ctx.repeat,
        baseline: 'wal_cp',
        processMarker: pgbackrest.configFile,
        stored: storedIn,
      },
    );
  }
  methods.push(
    {
      id: 'wal_pgvault_sync',
      name: 'pgvault backup wal (sync)',
      command: `${launcher} --config ${syncConfig} backup wal %p`,
      runs: 1,
      baseline: pgbackrest ? 'wal_pgbackrest_sync' : 'wal_cp',
      processMarker: snapshot,
      stored: async (segment) => existsSync(walObjectPath(vaultDir, segment)),
    },
    {
      id: 'wal_pgvault_async',
      name: 'pgvault backup wal (ARCHIVE_ASYNC=true)',
      command: `${launcher} --config ${asyncConfig} backup wal %p`,
      runs: ctx.repeat,
      baseline: pgbackrest ? 'wal_pgbackrest_async' : 'wal_cp',
      processMarker: snapshot,
      stored: async (segment) => existsSync(walObjectPath(vaultDir, segment)),
    },
  );

  const rows: Row[] = [];
  for (const method of methods) rows.push(await runStep(drainStep(ctx, method, options, segmentBytes, root)));
  await setArchiveCommand(cluster, '');
  await dropWalLoad(cluster);
  return {
    rows,
    setup,
    info: {
      segments: options.segments,
      segmentBytes,
      parallelJobs: PARALLEL_JOBS,
      commands: Object.fromEntries(methods.map((m) => [m.id, short(m.command)])),
    },
  };

  function drainStep(ctx: Context, method: Method, opts: WalOptions, bytes: number, claimRoot: string): Step {
    let backlog: string[] = [];
    let archiver = 0;
    let failedBefore = 0;
    let completions: number[] = [];
    const display = `archive_command = '${short(method.command)}'`;
    return {
      id: method.id,
      name: method.name,
      group: 'wal',
      display,
      runs: method.runs,
      baseline: method.baseline,
      before: async () => {
        // Stall the archiver, make the backlog, and let the checkpointer settle before the clock runs.
        await setArchiveCommand(cluster, '');
        await stopProcessesNaming(method.processMarker);
        await cluster.query(`TRUNCATE ${WAL_LOAD_TABLE}`, [], 'bench').catch(() => {});
        say(`  writing ${opts.segments} segments of WAL while archive_command is empty`);
        backlog = await makeBacklog(cluster, opts.segments, bytes);
        await cluster.query('CHECKPOINT');
        archiver = await archiverPid(cluster);
        failedBefore = (await archiverState(cluster)).failed;
        completions = [];
      },
      measure: () =>
        measureTask(
          async (elapsed) => {
            await setArchiveCommand(cluster, method.command);
            const statusDir = join(cluster.dataDir, 'pg_wal', 'archive_status');
            const timeoutMs = 120_000 + backlog.length * 10_000;
            let next = 0;
            while (next < backlog.length) {
              while (next < backlog.length && !existsSync(join(statusDir, `${backlog[next]}.ready`))) {
                completions.push(elapsed());
                next++;
              }
              if (next >= backlog.length) break;
              if (elapsed() > timeoutMs) {
                const s = await archiverState(cluster);
                throw new Error(
                  `${backlog.length - next} of ${backlog.length} segments still not archived after ${Math.round(timeoutMs / 1000)} s (${s.failed - failedBefore} failed attempts, last failed ${s.lastFailed}); server log:\n    ${logTail(cluster, 6)}`,
                );
              }
              await sleep(10);
            }
            return { wallMs: completions.at(-1) ?? elapsed() };
          },
          {
            label: method.name,
            treeRoots: [archiver],
            watchRoots: ctx.postmasterPid ? [ctx.postmasterPid] : [],
            claim: (cmd) => cmd.includes(claimRoot) || cmd.includes(method.processMarker),
            ...heartbeat(method.name),
          },
        ),
      after: async (m) => {
        const state = await archiverState(cluster);
        const last = backlog.at(-1)!;
        if (!(await method.stored(last))) {
          throw new Error(
            `${method.name}: PostgreSQL counted ${last} archived, but the archive does not hold it`,
          );
        }
        await stopProcessesNaming(method.processMarker);
        await method.afterRun?.();
        const intervals = completions.slice(1).map((t, i) => t - completions[i]!);
        const sorted = [...intervals].sort((a, b) => a - b);
        const drain: WalDrain = {
          segments: backlog.length,
          segmentBytes: bytes,
          drainMs: m.wallMs,
          perSecond: backlog.length / (m.wallMs / 1000),
          firstMs: completions[0] ?? 0,
          medianMs: percentile(sorted, 0.5),
          p90Ms: percentile(sorted, 0.9),
          maxMs: sorted.at(-1) ?? 0,
          failedAttempts: state.failed - failedBefore,
        };
        say(
          `  ${drain.segments} segments in ${(drain.drainMs / 1000).toFixed(2)} s: ${drain.perSecond.toFixed(1)} segments/s, median ${Math.round(drain.medianMs)} ms a segment, first after ${Math.round(drain.firstMs)} ms${drain.failedAttempts ? `, ${drain.failedAttempts} failed attempts` : ''}`,
        );
        return { extra: { wal: drain } };
      },
      rank: (m, out) => m.wallMs / Math.max(1, out.extra?.wal?.segments ?? 1),
    };
  }
}
