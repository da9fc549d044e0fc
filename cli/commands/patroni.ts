import { UsageError } from '../../core/errors';
import { finishBootstrap, restoreBootstrap, restoreReplica, truthy } from '../../core/restore/patroni';
import { parseRecoveryTarget, targetTimeLine, targetTimeOf } from '../../core/restore/pitr';
import { emit, formatDuration, type GlobalOptions, readConfig, vaultFor } from '../output';

/**
 * `restore replica` and `restore bootstrap`: the commands Patroni runs (create_replica_methods and
 * bootstrap.method). Patroni adds `--scope=`, `--datadir=` (and for a replica `--role=`,
 * `--connstring=`, and every other key of the method's YAML section as `--key=value`).
 */
interface PatroniHookOptions extends GlobalOptions {
  readonly datadir?: string;
  readonly scope?: string;
  readonly role?: string;
  readonly connstring?: string;
  readonly replace?: string | boolean;
  readonly backup?: string;
}

function requireDatadir(opts: PatroniHookOptions, command: string): string {
  if (opts.datadir === undefined || opts.datadir === '') {
    throw new UsageError(
      `${command} needs --datadir=DIR (Patroni passes its postgresql.data_dir); nothing was restored`,
    );
  }
  return opts.datadir;
}

export async function restoreReplicaCommand(opts: PatroniHookOptions) {
  const datadir = requireDatadir(opts, 'restore replica');
  if (opts.role !== undefined && opts.role !== 'replica') {
    throw new UsageError(
      `restore replica builds replicas, not --role=${opts.role}; for a new cluster use bootstrap.method with restore bootstrap; nothing was restored`,
    );
  }
  const r = await restoreReplica(vaultFor(opts), {
    datadir,
    scope: opts.scope,
    replace: truthy(opts.replace),
    backup: opts.backup,
    connstring: opts.connstring,
  });
  emit(opts, { ok: true, ...r }, () =>
    [
      `replica data directory ${r.datadir} laid down from ${r.backupId} in ${formatDuration(r.durationMs)}${r.replaced ? ' (it replaced what was there)' : ''}`,
      `  base backup: ${r.choice}; timeline ${r.timeline}, consistent at LSN ${r.stopLsn}`,
      `  Patroni starts it as a standby: it replays the archived WAL${r.archiveEnd ? ` (to ${r.archiveEnd} now)` : ''} through postgresql.recovery_conf's restore_command, then streams from the leader`,
      ...r.warnings.map((w) => `  warning: ${w}`),
    ].join('\n'),
  );
  return r;
}

interface BootstrapCommandOptions extends PatroniHookOptions {
  readonly targetTime?: string;
  readonly targetLsn?: string;
  readonly targetXid?: string;
  readonly targetName?: string;
  readonly immediate?: boolean;
  readonly asOriginal?: boolean;
  readonly finish?: boolean;
}

/**
 * `restore bootstrap --finish [CONNSTRING]`: Patroni's post_bootstrap appends a connection string
 * to the new cluster, which arrives as the positional argument.
 */
export async function finishBootstrapCommand(connstring: string | undefined, opts: BootstrapCommandOptions) {
  const r = await finishBootstrap({ datadir: opts.datadir, connstring, binDir: readConfig(opts).pgBinDir });
  emit(opts, { ok: true, ...r }, () =>
    r.removed.length > 0
      ? `removed ${r.removed.join(' and ')}: the bootstrap of ${r.datadir} is finished`
      : `nothing to remove beside ${r.datadir}: the bootstrap's restore_command files are gone already`,
  );
  return r;
}

export async function restoreBootstrapCommand(backup: string | undefined, opts: BootstrapCommandOptions) {
  if (opts.finish === true) return finishBootstrapCommand(backup, opts);
  const datadir = requireDatadir(opts, 'restore bootstrap');
  const target = parseRecoveryTarget({
    time: opts.targetTime,
    lsn: opts.targetLsn,
    xid: opts.targetXid,
    name: opts.targetName,
    immediate: opts.immediate,
  });
  const vault = vaultFor(opts);
  const timeLine = targetTimeLine(target);
  if (timeLine !== undefined) vault.reporter.info(timeLine);
  const r = await restoreBootstrap(vault, backup ?? 'auto', target, {
    datadir,
    scope: opts.scope,
    replace: truthy(opts.replace),
    asOriginal: opts.asOriginal,
  });
  const targetTime = targetTimeOf(target);
  emit(opts, { ok: true, ...r, ...(targetTime ? { targetTime } : {}) }, () =>
    [
      `data directory ${r.datadir} laid down from ${r.backupId} for recovery to ${r.target} (${formatDuration(r.durationMs)}); Patroni starts it, it replays the archived WAL, promotes, and becomes the new cluster's leader`,
      ...(timeLine !== undefined ? [`  ${timeLine}`] : []),
      `  base backup: ${r.choice}`,
      `  restore_command = '${r.restoreCommand}' (config ${r.configFile})`,
      r.copyOf === undefined
        ? `  --as-original: it archives and backs up under CLUSTER_NAME=${r.lineage}, as the original did`
        : `  marked as a copy of ${r.copyOf} (pgvault.copy_of): archive and back it up under a CLUSTER_NAME of its own (e.g. ${r.lineage}); ${r.copyOf} is refused`,
      ...(r.keyFileWritten
        ? [
            `  ${r.keyFile} holds the encryption key for restore_command: bootstrap.post_bootstrap 'pgvault restore bootstrap --finish' removes it once the cluster has promoted`,
          ]
        : []),
      ...(r.credentialsWritten
        ? [
            `  ${r.configFile} holds the cloud credentials of your config (0600): bootstrap.post_bootstrap 'pgvault restore bootstrap --finish' removes it once the cluster has promoted`,
          ]
        : []),
      ...r.warnings.map((w) => `  warning: ${w}`),
    ].join('\n'),
  );
  return r;
}
