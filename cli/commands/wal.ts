import { spawn } from 'node:child_process';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { loadConfig } from '../../core/config';
import { IntegrityError } from '../../core/errors';
import { refuseCopyWal } from '../../core/restore/copy';
import { createTargets, targetsHolding } from '../../core/storage';
import {
  PREFETCHER_MARKER,
  PREFETCHER_STARTING,
  prefetchDirFor,
  prefetcherRunning,
  restoreWalFile,
  runPrefetcher,
} from '../../core/wal/fetch';
import { requireWalFileName } from '../../core/wal/naming';
import { pushWalFile, refuseUnfinishedSegment, WalConflictError } from '../../core/wal/push';
import {
  awaitingArchive,
  confirmUpload,
  runUploader,
  SPOOL_FOLDER,
  spoolDirFor,
  startUploaderProcess,
  uploaderRunning,
} from '../../core/wal/spool';
import {
  emit,
  failAfterReport,
  formatDuration,
  type GlobalOptions,
  readConfig,
  table,
  vaultFor,
} from '../output';

/**
 * WAL commands. `backup wal` and `restore wal` run once per file under PostgreSQL, so this module
 * loads only the storage and stream code they need: no zod, no pg, and the AWS SDK only for S3.
 * Verification and `wal receive` load the rest when they run.
 */

/** This CLI's entry script, for the background processes it starts. */
const CLI_ENTRY = join(__dirname, '..', 'main.js');

/**
 * archive_command, restore_command and what they start send no alert: a mistake in the alert settings
 * must not stop them (core/config.ts lazyAlerts); every other command still stops on it.
 */
const PER_SEGMENT = { lazyAlerts: true } as const;

/** Exits as soon as the answer is out: PostgreSQL waits for the process, not for idle sockets. */
function finish(code = 0): never {
  process.exit(code);
}

export async function backupWalCommand(path: string, opts: GlobalOptions) {
  const config = readConfig(opts, PER_SEGMENT);
  const file = requireWalFileName(basename(path));
  // One stat, the one PostgreSQL's own calls always pass: it writes the .ready file first.
  const ready = await awaitingArchive(path);
  if (!ready) {
    // By hand (PostgreSQL writes .ready first): a copy's WAL is refused for what it is, before the
    // segment's own state is looked at.
    await refuseCopyWal(config.clusterName, path);
    await refuseUnfinishedSegment(path, file);
  }
  if (config.archiveAsync && ready) {
    const spoolDir = spoolDirFor(config.spoolDir, path);
    await confirmUpload({
      spoolDir,
      walPath: path,
      timeoutMs: config.archiveTimeoutSeconds * 1000,
      ensureUploader: async () => {
        if (await uploaderRunning(spoolDir)) return;
        startUploaderProcess({
          entry: CLI_ENTRY,
          configFile: opts.config,
          pgWalDir: dirname(resolve(path)),
          spoolDir,
          cwd: process.cwd(),
        });
      },
    });
    if (opts.json) emit(opts, { ok: true, name: file.name, acknowledged: 'uploader' }, '');
    finish();
  }
  const inPgWal = basename(dirname(resolve(path))) === 'pg_wal';
  const stateDir = config.spoolDir !== undefined || inPgWal ? spoolDirFor(config.spoolDir, path) : undefined;
  const result = await pushWalFile(
    {
      config,
      targets: targetsHolding(createTargets(config), 'wal'),
      stateDir,
      threads: config.parallelJobs,
      warn: (line) => process.stderr.write(`pgvault: warning: ${line}\n`),
    },
    path,
  ).catch(async (err: unknown) => {
    // Two nodes' copies of one segment differ: the one failure of archive_command that alerts (once).
    if (err instanceof WalConflictError) {
      const { alertWalConflictOnce } =
        require('../../core/alert/wal-conflict') as typeof import('../../core/alert/wal-conflict');
      await alertWalConflictOnce(config, err, stateDir);
    }
    throw err;
  });
  if (opts.json) emit(opts, { ok: true, ...result }, '');
  finish();
}

export async function restoreWalCommand(name: string, path: string, opts: GlobalOptions) {
  const config = readConfig(opts, PER_SEGMENT);
  const result = await restoreWalFile({ config, targets: createTargets(config) }, name, path, {
    prefetchDir: prefetchDirFor(resolve(path)),
    startPrefetcher: async (prefetchDir) => {
      if (!(await prefetcherRunning(prefetchDir))) startPrefetcherProcess(prefetchDir, opts);
    },
    warn: (line) => process.stderr.write(`pgvault: warning: ${line}\n`),
  });
  if (opts.json) emit(opts, { ok: true, ...result }, '');
  finish();
}

/** The prefetcher runs this module as a script (see the end of the file): no CLI parsing, no commander. */
function startPrefetcherProcess(prefetchDir: string, opts: GlobalOptions): void {
  const fd = openSync(join(prefetchDir, 'prefetcher.log'), 'a', 0o600);
  try {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    };
    if (opts.config !== undefined) env.PGVAULT_CONFIG = resolve(opts.config);
    const child = spawn(process.execPath, [__filename, PREFETCHER_MARKER, prefetchDir], {
      cwd: process.cwd(),
      detached: true,
      stdio: ['ignore', fd, fd],
      env,
    });
    child.on('error', () => {});
    child.unref();
    // bin/pgvault waits for a prefetcher still starting up rather than start Node again.
    if (child.pid !== undefined) writeFileSync(join(prefetchDir, PREFETCHER_STARTING), `${child.pid}\n`);
  } finally {
    closeSync(fd);
  }
}

export async function verifyWalCommand(opts: GlobalOptions) {
  const { verifyWalArchive } = require('../../core/wal/archive') as typeof import('../../core/wal/archive');
  const vault = vaultFor(opts);
  const report = await verifyWalArchive(vault, new Date(), { keys: true });
  const keyFault = report.keys?.faults[0];
  const problem = report.ok
    ? undefined
    : keyFault !== undefined
      ? `${report.keys!.faults.length} WAL object(s) cannot be read with the keys set; first: ${keyFault.problem}`
      : `the WAL archive has ${report.gaps.length} gap(s): ${report.gaps
          .slice(0, 3)
          .map((g) => (g.count > 1 ? `${g.from}..${g.to} (${g.count})` : g.from))
          .join(
            ', ',
          )}${report.gaps.length > 3 ? ', ...' : ''}; recovery cannot pass them: take a new base backup after the last gap`;
  // The server feeding the archive, when one answers (core/verify/wal-health.ts).
  const { walServerHealth, walServerFailure, describeWalServerHealth } =
    require('../../core/verify/wal-health') as typeof import('../../core/verify/wal-health');
  const server = await walServerHealth(vault, report);
  const serverFailure = walServerFailure(server);
  emit(opts, { ...report, ok: report.ok && serverFailure === undefined, server }, () =>
    [describeVerifyReport(report, serverFailure === undefined), ...describeWalServerHealth(server)].join(
      '\n',
    ),
  );
  // The report is already out (stdout); the exit code, one line and the alert say it failed.
  if (problem !== undefined) await failAfterReport(new IntegrityError(problem), opts, 'verify wal');
  else if (serverFailure !== undefined) await failAfterReport(serverFailure, opts, 'verify wal');
}

type VerifyReport = Awaited<ReturnType<typeof import('../../core/wal/archive').verifyWalArchive>>;

function describeVerifyReport(report: VerifyReport, serverOk = true): string {
  const lines: string[] = [];
  const identity = report.systemIdentifier ? `system identifier ${report.systemIdentifier}, ` : '';
  lines.push(
    `WAL archive of cluster ${report.cluster} (${identity}${report.segmentBytes / 1024 / 1024} MiB segments)`,
  );
  if (report.timelines.length === 0) lines.push('no WAL archived yet');
  else {
    lines.push(
      table(
        ['timeline', 'segments', 'first', 'last', 'gaps', 'branched from'],
        report.timelines.map((t) => [
          String(t.timeline),
          String(t.segments),
          t.first ?? '-',
          t.last ?? '-',
          String(t.gaps.length),
          t.parent !== undefined ? `${t.parent} at ${t.switchLsn}` : '-',
        ]),
      ),
    );
  }
  for (const b of report.backups) {
    const until = b.recoverableToTime ? ` (archived ${b.recoverableToTime})` : '';
    lines.push(
      `${b.id}: from ${b.startWal} recoverable to ${b.recoverableTo}${until}, timelines ${b.timelinePath.join(' → ')}`,
    );
  }
  for (const w of report.windows) {
    lines.push(
      `timeline ${w.timeline}: continuous ${w.from} .. ${w.to}${w.toTime ? ` (to ${w.toTime})` : ''}`,
    );
  }
  for (const g of report.gaps) {
    lines.push(
      `GAP on timeline ${g.timeline}: ${g.from}${g.count > 1 ? ` .. ${g.to} (${g.count} files)` : ''} missing`,
    );
  }
  if (report.rpoSeconds !== undefined) {
    lines.push(
      `RPO: ${formatDuration(report.rpoSeconds * 1000)} since the newest archived WAL (${report.newestModified})`,
    );
  }
  if (report.keys !== undefined) {
    const byKey = Object.entries(report.keys.keys).map(([id, n]) => `${n} with key id ${id}`);
    lines.push(
      `encryption: ${report.keys.checked} object(s) checked${byKey.length > 0 ? ` (${byKey.join(', ')})` : ''}, ${report.keys.readThrough} newest segment(s) read through`,
    );
    for (const f of report.keys.faults) lines.push(`KEY FAULT: ${f.problem}`);
  }
  lines.push(
    !report.ok
      ? report.gaps.length > 0
        ? 'WAL archive has gaps'
        : 'WAL archive has objects that do not decrypt'
      : serverOk
        ? 'WAL archive OK'
        : 'WAL archive NOT OK: see the server below',
  );
  return lines.join('\n');
}

export async function walReceiveCommand(
  opts: GlobalOptions & { readonly slot?: string; readonly heartbeat?: string },
) {
  const { receiveWal } = require('../../core/wal/receive') as typeof import('../../core/wal/receive');
  const config = readConfig(opts);
  await receiveWal(
    { config, targets: targetsHolding(createTargets(config), 'wal') },
    {
      slot: opts.slot ?? 'pgvault',
      ...(opts.heartbeat ? { heartbeatFile: resolve(opts.heartbeat) } : {}),
      report: (status) => {
        if (opts.json) process.stdout.write(`${JSON.stringify(status)}\n`);
        else if (!opts.quiet) process.stderr.write(`pgvault wal receive: ${status.summary}\n`);
      },
      log: (line) => process.stderr.write(`pgvault wal receive: ${line}\n`),
    },
  );
  finish();
}

export async function walPushAsyncCommand(opts: GlobalOptions & { readonly pgWal?: string }) {
  const config = readConfig(opts, PER_SEGMENT);
  const pgWalDir = resolve(opts.pgWal ?? 'pg_wal');
  await runUploader(
    { config, targets: targetsHolding(createTargets(config), 'wal') },
    {
      pgWalDir,
      spoolDir: config.spoolDir ?? join(pgWalDir, SPOOL_FOLDER),
      log: (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`),
    },
  );
  finish();
}

/** Entry of the detached prefetcher: `node wal.js prefetch <folder>` (config from PGVAULT_CONFIG and the env). */
async function prefetcherMain(prefetchDir: string): Promise<void> {
  const config = loadConfig(PER_SEGMENT);
  await runPrefetcher({ config, targets: createTargets(config) }, prefetchDir, {
    log: (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`),
  });
}

if (require.main === module) {
  const [mode, prefetchDir] = process.argv.slice(2);
  if (mode !== PREFETCHER_MARKER || prefetchDir === undefined) {
    process.stderr.write('usage: node wal.js prefetch <folder> (started by pgvault restore wal)\n');
    process.exit(2);
  }
  prefetcherMain(prefetchDir).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`${new Date().toISOString()} prefetcher failed: ${String(err)}\n`);
      process.exit(1);
    },
  );
}
