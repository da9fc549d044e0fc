import { resolve } from 'node:path';
import type { Client } from 'pg';
import {
  type ArchiverState,
  archiverStateOf,
  archives,
  forceWalSwitch,
  lastAttemptFailed,
} from '../pg/archiving';
import { withClient } from '../pg/tools';
import { copyNotice } from '../restore/copy';
import { serverLabel } from '../topology';
import type { Vault } from '../vault';
import { findWalObject } from './fetch';
import { requireWalFileName } from './naming';

/**
 * `pgvault check`: does WAL archiving work, end to end, right now? The server's settings, then a
 * forced WAL switch and a bounded wait for that segment in every target. The verdict separates
 * what users cannot tell apart from a timeout alone ("WAL segment not archived before timeout"):
 * - fine: the segment arrived;
 * - broken: it will not arrive without a fix (archiving off, no archive_command, archive_command
 *   failing, or storing somewhere else than this configuration's targets);
 * - slow: no failure, the archiver is just behind (segments waiting with a .ready status file).
 * pg_stat_archiver decides between the last two: failures (failed_count, last_failed_wal,
 * last_failed_time) more recent than the last success mean broken.
 */

export type ArchivingVerdict = 'fine' | 'slow' | 'broken';

export interface ArchivingCheckItem {
  readonly check: string;
  readonly ok: boolean;
  readonly detail: string;
}

export interface ArchivingCheck {
  readonly ok: boolean;
  readonly verdict: ArchivingVerdict;
  /** One line: what is the case. */
  readonly summary: string;
  /** What to do about it (empty when fine). */
  readonly nextStep: string;
  readonly server: string;
  readonly checks: readonly ArchivingCheckItem[];
  /** The segment the check completed and waited for. */
  readonly segment?: string;
  /** Targets holding it at the end. */
  readonly arrivedIn: readonly string[];
  readonly waitedSeconds?: number;
  readonly archiver: ArchiverState;
}

export interface ArchivingCheckOptions {
  /** How long to wait for the segment. @default ARCHIVE_TIMEOUT */
  readonly timeoutSeconds?: number;
  /** The configuration file this run reads (--config / PGVAULT_CONFIG), which archive_command should name. */
  readonly configFile?: string;
  /** @default 500 */
  readonly pollMs?: number;
}

export async function checkArchiving(
  vault: Vault,
  options: ArchivingCheckOptions = {},
): Promise<ArchivingCheck> {
  const { config } = vault;
  return withClient(config.pg, config.pg.database ?? 'postgres', async (c) => {
    // After the connection: with Patroni, the leader it went to (core/topology).
    const server = serverLabel(config.pg);
    const before = await archiverStateOf(c);
    const checks = settingChecks(before, options.configFile);
    const base = { server, checks, arrivedIn: [] as string[] };
    const copy = copyNotice(config.clusterName, before);
    if (copy !== undefined) {
      checks.unshift({ check: 'copy', ok: false, detail: `${copy.summary}; ${copy.nextStep}` });
      return { ...base, ...copy, ok: false, verdict: 'broken', archiver: before };
    }
    const stop = settingsVerdict(before, options.configFile);
    if (stop !== undefined) return { ...base, ...stop, ok: false, verdict: 'broken', archiver: before };
    const timeoutMs = (options.timeoutSeconds ?? config.archiveTimeoutSeconds) * 1000;
    return waitForSegment(vault, c, before, { ...base, timeoutMs, pollMs: options.pollMs ?? 500 });
  });
}

function settingChecks(s: ArchiverState, configFile: string | undefined): ArchivingCheckItem[] {
  const items: ArchivingCheckItem[] = [
    {
      check: 'wal_level',
      ok: s.walLevel !== 'minimal',
      detail: s.walLevel === 'minimal' ? 'minimal: WAL cannot be archived' : s.walLevel,
    },
    {
      check: 'archive_mode',
      ok: archives(s),
      detail: archives(s) ? s.archiveMode : `${s.archiveMode}: this server archives no WAL`,
    },
  ];
  if (s.archiveLibrary !== '') {
    items.push({
      check: 'archive_library',
      ok: false,
      detail: `${s.archiveLibrary} archives instead of archive_command; pgvault is an archive_command`,
    });
  }
  items.push({
    check: 'archive_command',
    ok: commandProblem(s, configFile) === undefined,
    detail: commandDetail(s, configFile),
  });
  return items;
}

/** Why archive_command does not look like pgvault with this configuration; undefined when it does. */
function commandProblem(s: ArchiverState, configFile: string | undefined): string | undefined {
  const cmd = s.archiveCommand.trim();
  if (cmd === '' || cmd === '(disabled)')
    return 'it is empty: segments wait in pg_wal and are never archived';
  if (!/pgvault/.test(cmd) || !/backup\s+wal/.test(cmd)) return 'it does not run pgvault backup wal';
  if (configFile !== undefined && !cmd.includes(resolve(configFile)) && !cmd.includes(configFile))
    return `it does not name this configuration (${resolve(configFile)})`;
  return undefined;
}

function commandDetail(s: ArchiverState, configFile: string | undefined): string {
  const problem = commandProblem(s, configFile);
  return problem === undefined ? s.archiveCommand : `'${s.archiveCommand}': ${problem}`;
}

function suggestedCommand(configFile: string | undefined): string {
  const cfg = configFile === undefined ? '' : ` --config ${resolve(configFile)}`;
  return `pgvault${cfg} backup wal %p`;
}

/** A verdict from the settings alone, when no segment can arrive. */
function settingsVerdict(
  s: ArchiverState,
  configFile: string | undefined,
): { summary: string; nextStep: string } | undefined {
  if (s.walLevel === 'minimal')
    return {
      summary: 'WAL archiving is BROKEN: wal_level is minimal, which cannot be archived',
      nextStep: 'ALTER SYSTEM SET wal_level = replica; then restart PostgreSQL',
    };
  if (!archives(s))
    return {
      summary: `WAL archiving is OFF: archive_mode is ${s.archiveMode}, so no WAL is archived and there is no point-in-time recovery`,
      nextStep: `ALTER SYSTEM SET archive_mode = on; ALTER SYSTEM SET archive_command = '${suggestedCommand(configFile)}'; then restart PostgreSQL`,
    };
  if (s.inRecovery)
    return {
      summary: 'the server is a standby: a WAL switch cannot be forced here',
      nextStep: 'run pgvault check against the primary (PGHOST)',
    };
  if (s.archiveLibrary !== '')
    return {
      summary: `WAL archiving does not use pgvault: archive_library is ${s.archiveLibrary}`,
      nextStep: `ALTER SYSTEM RESET archive_library; ALTER SYSTEM SET archive_command = '${suggestedCommand(configFile)}'; then restart PostgreSQL`,
    };
  const cmd = s.archiveCommand.trim();
  if (cmd === '' || cmd === '(disabled)')
    return {
      summary:
        'WAL archiving is BROKEN: archive_command is empty, segments wait in pg_wal and are never archived',
      nextStep: `ALTER SYSTEM SET archive_command = '${suggestedCommand(configFile)}'; SELECT pg_reload_conf();`,
    };
  return undefined;
}

async function waitForSegment(
  vault: Vault,
  c: Client,
  before: ArchiverState,
  run: {
    server: string;
    checks: ArchivingCheckItem[];
    arrivedIn: string[];
    timeoutMs: number;
    pollMs: number;
  },
): Promise<ArchivingCheck> {
  const { config, targets } = vault;
  const started = Date.now();
  const segment = await forceWalSwitch(c);
  const file = requireWalFileName(segment);
  const holding = async () => {
    const found = await Promise.all(targets.map((t) => findWalObject(t, config.clusterName, file)));
    return targets.filter((_, i) => found[i] !== undefined).map((t) => t.location);
  };
  const waited = () => Math.round((Date.now() - started) / 100) / 10;
  const result = (
    verdict: ArchivingVerdict,
    summary: string,
    nextStep: string,
    state: ArchiverState,
    arrivedIn: string[],
  ) => ({
    ok: verdict === 'fine',
    verdict,
    summary,
    nextStep,
    server: run.server,
    checks: run.checks,
    segment,
    arrivedIn,
    waitedSeconds: waited(),
    archiver: state,
  });
  let state = before;
  let archivedElsewhereSince: number | undefined;
  for (;;) {
    const arrivedIn = await holding();
    if (arrivedIn.length === targets.length) {
      return result(
        'fine',
        `WAL archiving works: segment ${segment} was switched and arrived in ${arrivedIn.join(', ')} after ${waited()} s`,
        '',
        state,
        arrivedIn,
      );
    }
    state = await archiverStateOf(c);
    if (state.failedCount > before.failedCount) {
      return result('broken', brokenSummary(state), brokenNextStep(state), state, arrivedIn);
    }
    // PostgreSQL says it is archived, yet it is not here: archive_command stores it elsewhere.
    if (state.lastArchivedWal !== null && sameTimelineAtOrAfter(state.lastArchivedWal, segment)) {
      archivedElsewhereSince ??= Date.now();
      if (Date.now() - archivedElsewhereSince > 2000) {
        return result(
          'broken',
          `WAL archiving is BROKEN: PostgreSQL archived ${segment} (archive_command '${state.archiveCommand}' exited 0) but it is not in ${targets
            .filter((t) => !arrivedIn.includes(t.location))
            .map((t) => t.location)
            .join(', ')}: the command stores WAL somewhere else`,
          `ALTER SYSTEM SET archive_command = '${suggestedCommand(undefined)}' (with --config naming this configuration); SELECT pg_reload_conf();`,
          state,
          arrivedIn,
        );
      }
    }
    if (Date.now() - started >= run.timeoutMs) {
      if (lastAttemptFailed(state))
        return result('broken', brokenSummary(state), brokenNextStep(state), state, arrivedIn);
      return result('slow', slowSummary(state, segment, run.timeoutMs), slowNextStep(), state, arrivedIn);
    }
    await new Promise((r) => setTimeout(r, run.pollMs));
  }
}

function sameTimelineAtOrAfter(archived: string, segment: string): boolean {
  return (
    /^[0-9A-F]{24}$/.test(archived) && archived.slice(0, 8) === segment.slice(0, 8) && archived >= segment
  );
}

function brokenSummary(s: ArchiverState): string {
  const success =
    s.lastArchivedWal === null
      ? 'nothing archived since statistics were reset'
      : `last success ${s.lastArchivedWal} at ${s.lastArchivedTime}`;
  return `WAL archiving is BROKEN: archive_command failed on ${s.lastFailedWal} at ${s.lastFailedTime} (${s.failedCount} failure(s) in pg_stat_archiver; ${success})`;
}

function brokenNextStep(s: ArchiverState): string {
  const name = s.lastFailedWal ?? '<segment>';
  const byHand = s.archiveCommand.replace(/%p/g, `pg_wal/${name}`).replace(/%f/g, name).replace(/%%/g, '%');
  return `the command's own error is in the PostgreSQL server log (look for "archive command failed"); run it by hand as the server's OS user, from the data directory: ${byHand}. Until it is fixed, WAL piles up in pg_wal`;
}

function slowSummary(s: ArchiverState, segment: string, timeoutMs: number): string {
  const waiting =
    s.ready === undefined
      ? 'the files waiting in pg_wal cannot be listed by this role'
      : `${s.ready.count} file(s) wait for archive_command${s.ready.oldest ? `, the oldest (${s.ready.oldest}) for ${s.ready.oldestAgeSeconds} s` : ''}`;
  const last =
    s.lastArchivedWal === null
      ? 'nothing archived yet'
      : `last archived ${s.lastArchivedWal} at ${s.lastArchivedTime}`;
  return `WAL archiving is SLOW, not broken: ${segment} did not arrive within ${Math.round(timeoutMs / 1000)} s, and the archiver reports no failure; ${waiting}; ${last}`;
}

function slowNextStep(): string {
  return 'archiving must be faster than WAL is written: set ARCHIVE_ASYNC=true (a background uploader sends PARALLEL_JOBS files at once), check the bandwidth to the targets, and run pgvault check --timeout 600 to wait longer';
}
