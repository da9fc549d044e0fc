import { type Config, collectRawConfig, loadConfig, unknownKeyWarnings } from '../core/config';
import { errorMessage, PgVaultError } from '../core/errors';
import { formatBytes } from '../core/format';
import { lifecycleKindOf } from '../core/lifecycle-kinds';
import type { Reporter, Vault } from '../core/vault';

export interface GlobalOptions {
  readonly config?: string;
  readonly json?: boolean;
  readonly quiet?: boolean;
}

export { formatBytes };

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/**
 * Terminal reporter: info lines on stderr (so stdout stays for results and --json), and a progress
 * line redrawn in place at most 5 times a second, only when stderr is a terminal.
 */
export function terminalReporter(options: GlobalOptions): Reporter {
  const tty = process.stderr.isTTY === true && !options.quiet;
  let last = 0;
  let drawn = false;
  const start = new Map<string, number>();
  const clear = () => {
    if (drawn) process.stderr.write('\r\x1b[K');
    drawn = false;
  };
  return {
    info(line) {
      if (options.quiet) return;
      clear();
      process.stderr.write(`${line}\n`);
    },
    warn(line) {
      clear();
      process.stderr.write(`pgvault: warning: ${line}\n`);
    },
    progress(label, done, total) {
      if (!tty) return;
      const now = Date.now();
      if (!start.has(label)) start.set(label, now);
      if (now - last < 200) return;
      last = now;
      const secs = Math.max(0.001, (now - start.get(label)!) / 1000);
      const pct = total
        ? ` (${Math.min(100, (100 * done) / total).toFixed(0)}% of ~${formatBytes(total)})`
        : '';
      process.stderr.write(`\r\x1b[K${label}: ${formatBytes(done)}${pct}, ${formatBytes(done / secs)}/s`);
      drawn = true;
    },
  };
}

/** The config; `load.lazyAlerts` for the per-segment commands, which send no alert (core/config.ts). */
export function readConfig(options: GlobalOptions, load: { readonly lazyAlerts?: boolean } = {}): Config {
  return loadConfig({ configFile: options.config, ...load });
}

/**
 * The config's warnings (a placeholder key, a DEPLOYMENT_MODE not built yet, a key of a config file
 * pgvault does not know), one stderr line each; stdout stays for --json. A config that cannot be read
 * prints only its unknown keys here (`ENCRYPTON_KEY` may be why it fails); the command says why.
 */
export function printConfigWarnings(options: GlobalOptions): void {
  let warnings: readonly string[];
  try {
    warnings = readConfig(options).warnings;
  } catch {
    try {
      warnings = unknownKeyWarnings(collectRawConfig({ configFile: options.config }).files);
    } catch {
      return;
    }
  }
  for (const w of warnings) process.stderr.write(`pgvault: warning: ${w}\n`);
}

export function vaultFor(options: GlobalOptions): Vault {
  // Loaded here, not at the top: the catalog pulls in zod (~100 ms), which --help, --version and
  // the WAL commands must not pay for.
  const { openVault } = require('../core/vault') as typeof import('../core/vault');
  return openVault(readConfig(options), terminalReporter(options));
}

/** Prints a result: JSON on stdout with --json, else the human text. */
export function emit(options: GlobalOptions, json: unknown, text: string | (() => string)): void {
  if (options.json) process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
  else process.stdout.write(`${typeof text === 'function' ? text() : text}\n`);
}

/** One clear line on stderr and a non-zero exit; no stack trace for known failures. */
export function fail(err: unknown, options: GlobalOptions): never {
  process.exit(printFailure(err, options));
}

/** Prints the failure line (and the --json object); returns the exit code. */
function printFailure(err: unknown, options: GlobalOptions): number {
  const message = errorMessage(err).split('\n')[0];
  const code = err instanceof PgVaultError ? err.exitCode : 1;
  if (options.json)
    process.stdout.write(`${JSON.stringify({ ok: false, error: message, kind: (err as Error)?.name })}\n`);
  process.stderr.write(`pgvault: ${message}\n`);
  if (!(err instanceof PgVaultError) && process.env.PGVAULT_DEBUG)
    process.stderr.write(`${(err as Error)?.stack}\n`);
  return code;
}

/**
 * fail() plus the failure alert (core/alert/failure.ts): the error line is printed first and the
 * exit code is the error's own; publishing to SNS_TOPIC_ARN comes after, and a publish that fails
 * adds one warning line. Commands that send no alert (see failureAlertWanted) load nothing more.
 */
export async function failWithAlert(
  err: unknown,
  options: GlobalOptions,
  command: CommandRun,
): Promise<never> {
  const code = printFailure(err, options);
  await recordCommandOutcome(options, command, { error: err });
  try {
    const { sendFailureAlert } = require('../core/alert/failure') as typeof import('../core/alert/failure');
    await sendFailureAlert({
      configFile: options.config,
      commandPath: command.path,
      argv: process.argv.slice(2),
      error: err,
      startedAt: command.startedAt,
    });
  } catch (alertErr) {
    process.stderr.write(
      `pgvault: warning: failure alert not sent: ${errorMessage(alertErr).split('\n')[0]}\n`,
    );
  }
  process.exit(code);
}

/** A command as run: its path below the program (`backup full`), its arguments, when it started. */
export interface CommandRun {
  readonly path: string;
  /** Operands and the options given on the command line (`daily`, `--pitr`), for the event. */
  readonly args?: readonly string[];
  readonly startedAt: Date;
}

/**
 * The lifecycle event and metrics of a finished command (core/events.ts): backups, restores,
 * verifications, drills and retention record theirs; other commands nothing. The command's result is
 * what its handler returned to run(). Never throws, never changes the exit code; a config that cannot
 * be read (often the very failure) means no bus is known and nothing is recorded.
 */
/**
 * A check that found faults after printing its report (so --json stays one object): the one error
 * line, the exit code, and the failure alert the CLI's error path would have sent. The command then
 * returns normally, so its outcome is recorded as a failure by that exit code.
 */
export async function failAfterReport(
  err: PgVaultError,
  opts: GlobalOptions,
  commandPath: string,
): Promise<void> {
  process.stderr.write(`pgvault: ${err.message}\n`);
  process.exitCode = err.exitCode;
  const { sendFailureAlert } = require('../core/alert/failure') as typeof import('../core/alert/failure');
  await sendFailureAlert({
    configFile: opts.config,
    commandPath,
    argv: process.argv.slice(2),
    error: err,
    startedAt: new Date(Date.now() - process.uptime() * 1000),
  });
}

export async function recordCommandOutcome(
  options: GlobalOptions,
  command: CommandRun,
  outcome: { readonly result?: unknown; readonly error?: unknown },
): Promise<void> {
  // Asked of a module without imports: `backup wal` and `restore wal`, run once per WAL segment,
  // record nothing and so never load core/events.
  if (lifecycleKindOf(command.path) === undefined) return;
  try {
    const events = require('../core/events') as typeof import('../core/events');
    let config: Config;
    try {
      config = readConfig(options);
    } catch {
      return;
    }
    const record = events.commandOutcome({
      cluster: config.clusterName,
      commandPath: command.path,
      args: command.args ?? [],
      startedAt: command.startedAt,
      finishedAt: new Date(),
      result: outcome.result,
      error: outcome.error,
      exitCode: typeof process.exitCode === 'number' ? process.exitCode : undefined,
    });
    if (record === undefined) return;
    // With --json, stdout holds one JSON document: metric lines go to stderr (CloudWatch takes both).
    const toStderr = (line: string) => process.stderr.write(`${line}\n`);
    await events.recordLifecycle(config, record, options.json ? { writeMetric: toStderr } : {});
  } catch (err) {
    process.stderr.write(
      `pgvault: warning: lifecycle event not recorded: ${errorMessage(err).split('\n')[0]}\n`,
    );
  }
}

/** A table for terminals: columns padded to their widest cell. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]) =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}
