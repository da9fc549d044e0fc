import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { UsageError } from '../errors';
import { findPgBinary } from '../pg/tools';
import type { Vault } from '../vault';
import { buildBeside, clearInterruptedRestore, type DataDirectorySlot } from './datadir';

export type { DataDirectorySlot } from './datadir';

import { COPY_OF_SETTING, copyLineageName, LINEAGE_SETTING } from './copy';
import { describeTarget, type PitrPlan, planPitr, type RecoveryTarget, recoverySettings } from './pitr';
import {
  assertServerUserCanUse,
  extractBaseBackup,
  prepareRecovery,
  writeRestoreCommandFiles,
} from './sandbox';

/*
 * Patroni's two hooks for data directories that come from somewhere else than initdb or
 * pg_basebackup (Patroni 3.0, postgresql/bootstrap.py):
 *
 * - create_replica_methods: Patroni runs `<command> --scope=S --role=replica --datadir=D
 *   --connstring=C` (plus `--KEY=VALUE` for every other key of the method's section), after
 *   emptying D unless the method says keep_data; exit 0 means D holds a replica's data directory,
 *   which Patroni then starts as a standby of the leader (standby.signal, primary_conninfo and its
 *   own postgresql.recovery_conf, restore_command included; it strips recovery settings from
 *   postgresql.auto.conf). Non-zero: the next method (basebackup) is tried.
 * - bootstrap.method: Patroni runs `<command> --scope=S --datadir=D` to create a new cluster; with
 *   keep_existing_recovery_conf it keeps the recovery.signal and postgresql.auto.conf settings the
 *   command wrote, starts the server (hot_standby off), waits until it has promoted, then takes the
 *   leader key.
 *
 * Both are built beside D (a hidden sibling directory) and renamed into place only once complete,
 * so a failure or a kill never leaves a partial directory that Patroni could start.
 */

/** Whether a data directory option ("--replace=True" from Patroni's YAML, "--replace") says yes. */
export function truthy(value: unknown): boolean {
  if (value === true) return true;
  if (typeof value !== 'string') return false;
  return /^(true|yes|on|1|y)$/i.test(value.trim());
}

/**
 * Refuses a data directory that holds anything, unless told it may be replaced; never one that a
 * running server may use (postmaster.pid).
 */
export async function checkDataDirectorySlot(
  dir: string,
  replace: boolean,
  say?: (line: string) => void,
): Promise<DataDirectorySlot> {
  const pgdata = resolve(dir);
  // What a killed restore of this place left (beside it, or inside it when it is a mount point) is ours: gone first.
  await clearInterruptedRestore(pgdata, say);
  let entries: string[];
  try {
    const info = await stat(pgdata);
    if (!info.isDirectory()) {
      throw new UsageError(`--datadir ${pgdata} exists and is not a directory; nothing was restored`);
    }
    entries = await readdir(pgdata);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { pgdata, replaces: false };
    throw err;
  }
  if (entries.includes('postmaster.pid')) {
    throw new UsageError(
      `--datadir ${pgdata} holds postmaster.pid: a server may be running on it; stop it and remove a stale postmaster.pid, then retry; nothing was restored`,
    );
  }
  if (entries.length > 0 && !replace) {
    throw new UsageError(
      `--datadir ${pgdata} is not empty (${entries.length} entries) and was not given to replace; Patroni empties it before this method unless keep_data is set (add replace: true to the method's section to swap it for the restored one); nothing was restored`,
    );
  }
  return { pgdata, replaces: entries.length > 0 };
}

export interface ReplicaOptions {
  /** Patroni's --datadir: where the replica's data directory goes. */
  readonly datadir: string;
  /** Patroni's --scope: refused when the base backup was taken from another Patroni cluster. */
  readonly scope?: string;
  /** Replace a data directory that is not empty (the method's `replace: true`). */
  readonly replace?: boolean;
  /** A base backup by id (default: the newest complete one). */
  readonly backup?: string;
  /**
   * Patroni's --connstring: the replication connection to the member to clone from (its password in
   * PGPASSFILE, which Patroni writes). Its system identifier must be the backup's.
   */
  readonly connstring?: string;
}

/** A replication connection string: Patroni's key=value form, or a URI. */
export function withReplication(connstring: string): string {
  if (/^postgres(ql)?:\/\//.test(connstring)) {
    return `${connstring}${connstring.includes('?') ? '&' : '?'}replication=true`;
  }
  return `${connstring} replication=true`;
}

/** IDENTIFY_SYSTEM over the member's replication connection: its system identifier, or why not. */
function memberSystemIdentifier(
  connstring: string,
  binDir: string | undefined,
): Promise<{ id?: string; why?: string }> {
  const psql = findPgBinary('psql', binDir);
  return new Promise((done) => {
    execFile(
      psql,
      ['-X', '-A', '-t', '-c', 'IDENTIFY_SYSTEM', '-d', withReplication(connstring)],
      { timeout: 30_000, env: { ...process.env, PGCONNECT_TIMEOUT: '10' } },
      (err, stdout, stderr) => {
        const id = stdout.trim().split('|')[0];
        if (err || !id || !/^\d+$/.test(id)) {
          done({ why: (String(stderr).trim() || (err?.message ?? 'no answer')).split('\n')[0] });
        } else done({ id });
      },
    );
  });
}

export interface ReplicaResult {
  readonly backupId: string;
  readonly choice: string;
  readonly datadir: string;
  readonly timeline: number;
  readonly stopLsn: string;
  /** Where the archive carries the backup to (its last continuously archived segment). */
  readonly archiveEnd?: string;
  readonly replaced: boolean;
  readonly warnings: readonly string[];
  readonly durationMs: number;
}

/**
 * `pgvault restore replica`, Patroni's create_replica_methods hook: the newest base backup (as
 * `restore pitr latest` chooses and checks it, key included) extracted into a new data directory
 * that Patroni then starts as a standby. It replays the archived WAL through Patroni's
 * recovery_conf restore_command and then streams from the leader, so the leader serves no base
 * backup. The archive must carry the backup without a gap, else the replica could never catch up
 * from it: refused, and Patroni moves on to basebackup.
 */
export async function restoreReplica(vault: Vault, options: ReplicaOptions): Promise<ReplicaResult> {
  const started = Date.now();
  const slot = await checkDataDirectorySlot(options.datadir, options.replace === true, (line) =>
    vault.reporter.warn(line),
  );
  const plan = await planPitr(vault, options.backup ?? 'latest', { kind: 'end' });
  const manifest = plan.manifest;
  const from = manifest.node?.scope;
  if (options.scope !== undefined && from !== undefined && from !== options.scope) {
    throw new UsageError(
      `the base backup ${manifest.id} of CLUSTER_NAME=${vault.config.clusterName} was taken from Patroni cluster ${from}, not ${options.scope}; point this member's pgvault config at ${options.scope}'s vault; nothing was restored`,
    );
  }
  const { config, reporter } = vault;
  // A vault of another cluster would give a replica that can never stream: refused, so Patroni
  // goes on to basebackup. Without a member to ask (no leader), nothing to compare.
  if (options.connstring !== undefined && options.connstring.trim() !== '') {
    const member = await memberSystemIdentifier(options.connstring, config.pgBinDir);
    const own = manifest.server.systemIdentifier;
    if (member.id !== undefined && own !== 'unknown' && member.id !== own) {
      throw new UsageError(
        `the base backup ${manifest.id} (CLUSTER_NAME=${config.clusterName}) is of database system ${own}, but the member Patroni clones from reports system ${member.id}: this vault holds another cluster's backups; point this member's pgvault config at its own cluster; nothing was restored`,
      );
    }
    if (member.id === undefined) {
      reporter.warn(
        `could not ask the member to clone from for its system identifier (${member.why}); the backup's system ${own} was not compared`,
      );
    }
  }
  for (const w of plan.warnings) reporter.warn(w);
  reporter.info(`building a replica of ${options.scope ?? 'the cluster'} from ${plan.choice}`);
  await assertServerUserCanUse(config, [
    { path: dirname(slot.pgdata), what: 'the parent of --datadir', write: true },
  ]);
  await buildBeside(
    slot,
    async (dir) => {
      await extractBaseBackup({
        entry: plan.reach.entry,
        object: plan.object,
        config,
        reporter,
        dataDir: dir,
        chain: plan.chain,
      });
      // Patroni writes standby.signal and the recovery settings itself when it starts the replica.
      await rm(join(dir, 'recovery.signal'), { force: true });
      await rm(join(dir, 'standby.signal'), { force: true });
    },
    (line) => reporter.warn(line),
  );
  return {
    backupId: manifest.id,
    choice: plan.choice,
    datadir: slot.pgdata,
    timeline: plan.reach.physical.timeline,
    stopLsn: plan.reach.physical.stopLsn,
    archiveEnd: plan.reach.endSegment,
    replaced: slot.replaces,
    warnings: plan.warnings,
    durationMs: Date.now() - started,
  };
}

export interface BootstrapOptions {
  /** Patroni's --datadir. */
  readonly datadir: string;
  /** Patroni's --scope: the new cluster's name, for messages. */
  readonly scope?: string;
  readonly replace?: boolean;
  /**
   * The new cluster replaces the original (gone for good): not marked as a copy, so it may archive
   * and back up under the original's CLUSTER_NAME.
   */
  readonly asOriginal?: boolean;
}

export interface BootstrapResult {
  readonly backupId: string;
  readonly choice: string;
  readonly target: string;
  readonly datadir: string;
  readonly configFile: string;
  readonly keyFile?: string;
  readonly keyFileWritten: boolean;
  readonly credentialsWritten: boolean;
  readonly restoreCommand: string;
  /** The CLUSTER_NAME the new cluster must archive and back up under; the original's is refused unless asOriginal. */
  readonly lineage: string;
  readonly copyOf?: string;
  readonly window: string;
  readonly warnings: readonly string[];
  readonly durationMs: number;
}

/**
 * `pgvault restore bootstrap`, Patroni's bootstrap.method hook: a new cluster from a base backup
 * rolled forward to a target, as `restore pitr --pgdata` lays it down (the same plan, checks and
 * recovery settings, its restore_command reading the vault with a config file written beside the
 * data directory), minus what Patroni owns (port, listen address, archiving: its postgresql.conf).
 * Patroni must keep the recovery settings (keep_existing_recovery_conf: true).
 */
export async function restoreBootstrap(
  vault: Vault,
  ref: string,
  target: RecoveryTarget,
  options: BootstrapOptions,
): Promise<BootstrapResult> {
  const started = Date.now();
  const slot = await checkDataDirectorySlot(options.datadir, options.replace === true, (line) =>
    vault.reporter.warn(line),
  );
  const plan: PitrPlan = await planPitr(vault, ref, target);
  const { config, reporter } = vault;
  for (const w of plan.warnings) reporter.warn(w);
  reporter.info(
    `bootstrapping ${options.scope ?? 'a new cluster'} from ${plan.choice} to ${describeTarget(target)}`,
  );
  const asCopy = options.asOriginal !== true;
  const lineage = asCopy ? copyLineageName(config.clusterName) : config.clusterName;
  const files = await writeRestoreCommandFiles(config, dirname(slot.pgdata), bootstrapFilesStem(slot.pgdata));
  try {
    await assertServerUserCanUse(config, [
      { path: dirname(slot.pgdata), what: 'the parent of --datadir', write: true },
      { path: files.configFile, what: 'the restore_command config file' },
      ...(files.keyFile ? [{ path: files.keyFile, what: 'ENCRYPTION_KEY_FILE' }] : []),
    ]);
    const warnings = [...plan.warnings];
    await buildBeside(
      slot,
      async (dir) => {
        await extractBaseBackup({
          entry: plan.reach.entry,
          object: plan.object,
          config,
          reporter,
          dataDir: dir,
          chain: plan.chain,
        });
        const recovery = await prepareRecovery(
          dir,
          {
            ...recoverySettings(files.restoreCommand, target),
            // Marked as a copy (see ./copy.ts): its WAL and backups are refused under the original's name.
            ...(asCopy ? { [COPY_OF_SETTING]: config.clusterName, [LINEAGE_SETTING]: lineage } : {}),
          },
          `pgvault restore bootstrap (Patroni ${options.scope ?? 'cluster'}) from ${plan.manifest.id} to ${describeTarget(target)}`,
        );
        // Patroni writes its own postgresql.conf: the base backup's lack of one is no concern here.
        warnings.push(...recovery.warnings.filter((w) => !w.includes('holds no postgresql.conf')));
      },
      (line) => reporter.warn(line),
    );
    return {
      backupId: plan.manifest.id,
      choice: plan.choice,
      target: describeTarget(target),
      datadir: slot.pgdata,
      configFile: files.configFile,
      keyFile: files.keyFile,
      keyFileWritten: files.keyFileWritten,
      credentialsWritten: files.credentialsWritten,
      restoreCommand: files.restoreCommand,
      lineage,
      copyOf: asCopy ? config.clusterName : undefined,
      window: plan.window,
      warnings,
      durationMs: Date.now() - started,
    };
  } catch (err) {
    await files.remove();
    throw err;
  }
}

/** The name (without .conf/.key) of the files restore bootstrap writes beside the data directory. */
export function bootstrapFilesStem(pgdata: string): string {
  return `${basename(pgdata)}.pgvault-recovery`;
}

export interface FinishOptions {
  /** The new cluster's data directory; else asked over `connstring` (SHOW data_directory). */
  readonly datadir?: string;
  /** Patroni's post_bootstrap argument: a libpq connection string to the new cluster (PGPASSFILE in the environment). */
  readonly connstring?: string;
  readonly binDir?: string;
}

export interface FinishResult {
  readonly datadir: string;
  /** The files removed (none when an earlier run removed them). */
  readonly removed: readonly string[];
}

/** data_directory and whether it is still recovering, over a libpq connection string. */
function askServer(
  connstring: string,
  binDir: string | undefined,
): Promise<{ dir: string; recovering: boolean }> {
  const psql = findPgBinary('psql', binDir);
  return new Promise((done, fail) => {
    execFile(
      psql,
      [
        '-X',
        '-A',
        '-t',
        '-c',
        "SELECT current_setting('data_directory') || CASE WHEN pg_is_in_recovery() THEN '|t' ELSE '|f' END",
        '-d',
        connstring,
      ],
      { timeout: 30_000, env: { ...process.env, PGCONNECT_TIMEOUT: '10' } },
      (err, stdout, stderr) => {
        const [dir, recovering] = stdout.trim().split('|');
        if (err || !dir || (recovering !== 't' && recovering !== 'f')) {
          const why = (String(stderr).trim() || (err?.message ?? 'no answer')).split('\n')[0];
          fail(
            new UsageError(
              `restore bootstrap --finish cannot ask the new cluster for its data directory (${why}); pass --datadir=DIR; nothing was removed`,
            ),
          );
        } else done({ dir, recovering: recovering === 't' });
      },
    );
  });
}

/**
 * `pgvault restore bootstrap --finish` (Patroni's bootstrap.post_bootstrap, which Patroni runs once
 * the bootstrapped cluster has promoted, with a connection string to it): removes the
 * restore_command config file (it may hold cloud credentials) and the key file restore bootstrap
 * wrote beside the data directory. Refused while the cluster still recovers (it reads them). A key
 * file of the user's own (ENCRYPTION_KEY_FILE) is never touched: only `<data_dir>.pgvault-recovery.*`.
 */
export async function finishBootstrap(options: FinishOptions): Promise<FinishResult> {
  let pgdata: string;
  if (options.datadir !== undefined && options.datadir !== '') {
    pgdata = resolve(options.datadir);
    const left = ['recovery.signal', 'standby.signal'].filter((f) => existsSync(join(pgdata, f)));
    if (!existsSync(pgdata) || left.length > 0) {
      throw new UsageError(
        `${pgdata} ${left.length > 0 ? `still holds ${left.join(', ')}: it has not promoted` : 'does not exist'}; run restore bootstrap --finish once the cluster has promoted; nothing was removed`,
      );
    }
  } else if (options.connstring !== undefined && options.connstring.trim() !== '') {
    const server = await askServer(options.connstring, options.binDir);
    if (server.recovering) {
      throw new UsageError(
        `the cluster at ${server.dir} is still in recovery and reads the restore_command files; run restore bootstrap --finish once it has promoted; nothing was removed`,
      );
    }
    pgdata = server.dir;
  } else {
    throw new UsageError(
      'restore bootstrap --finish needs the new cluster: Patroni passes a connection string to post_bootstrap, or give --datadir=DIR; nothing was removed',
    );
  }
  const stem = join(dirname(pgdata), bootstrapFilesStem(pgdata));
  const removed: string[] = [];
  for (const file of [`${stem}.conf`, `${stem}.key`]) {
    if (!existsSync(file)) continue;
    await rm(file, { force: true });
    removed.push(file);
  }
  return { datadir: pgdata, removed };
}
