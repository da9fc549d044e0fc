import { Command } from 'commander';
import { hasCleanStop, pendingUndoSteps, runCleanStop, runUndoSteps } from '../core/cleanup';
import { applyDatabaseSecret } from '../core/pg/credentials-secret';
import { applyStartupSecrets } from '../core/pg/startup-secrets';
import { fail, failWithAlert, type GlobalOptions, printConfigWarnings, recordCommandOutcome } from './output';

/**
 * The pgvault command. Command modules load when their command runs, so that a call like the WAL
 * archive_command (run once per segment) pays only for what it uses.
 */
const program = new Command('pgvault')
  .description('Backup and disaster recovery for self-managed PostgreSQL')
  .version(require('../../package.json').version)
  .option('--config <file>', 'configuration file (KEY=VALUE lines; also PGVAULT_CONFIG)')
  .option('--json', 'machine-readable output on stdout')
  .option('-q, --quiet', 'no progress or info lines')
  .showHelpAfterError('(run with --help for usage)');

/**
 * A command's handler. Backup, restore, verify, drill and retention handlers return their result
 * (a manifest, a restore or drill result, a report): run() records it as the lifecycle event and
 * metrics (core/events.ts) in one place, and the error path records failures.
 */
type Handler = (...args: never[]) => Promise<unknown>;

/** Wraps an action: the global options are merged in, and any failure becomes one clear line. */
function run<T extends Handler>(load: () => Promise<Record<string, unknown>>, name: string) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.optsWithGlobals() as GlobalOptions;
    const positional = args.slice(0, -2);
    const command = { path: commandPath(cmd), args: givenArguments(cmd, positional), startedAt: new Date() };
    let result: unknown;
    // Once per command, on stderr. Not for the commands PostgreSQL runs once per WAL segment: the
    // server log would carry the same line thousands of times a day; every other command says it.
    if (!PER_SEGMENT_COMMANDS.has(command.path)) printConfigWarnings(opts);
    try {
      // PGVAULT_PG_SECRET_ARN: the database credentials from Secrets Manager (a restore into another server).
      if (!PER_SEGMENT_COMMANDS.has(command.path)) await applyDatabaseSecret({ configFile: opts.config });
      // PATRONI_SECRET_ARN, REPO<n>_SECRET_ARN: the Patroni API's and the repositories' credentials (AWS tasks).
      if (!PER_SEGMENT_COMMANDS.has(command.path)) await applyStartupSecrets({ configFile: opts.config });
      const mod = await load();
      result = await (mod[name] as T)(...([...positional, opts] as never[]));
    } catch (err) {
      // The one error path: backup, restore, verify and drill failures also send their alert here.
      await failWithAlert(err, opts, command);
    }
    await recordCommandOutcome(opts, command, { result });
  };
}

/** archive_command, restore_command and the uploader they start: run per WAL segment. */
const PER_SEGMENT_COMMANDS = new Set(['backup wal', 'restore wal', 'wal push-async']);

/** The operands and the options given on the command line (not defaults), as words. */
function givenArguments(cmd: Command, positional: readonly unknown[]): string[] {
  const words = positional.filter((p): p is string => typeof p === 'string');
  for (const option of cmd.options) {
    const key = option.attributeName();
    if (cmd.getOptionValueSource(key) !== 'cli' || option.long === undefined) continue;
    const value = cmd.getOptionValue(key) as unknown;
    if (option.negate || value === true) words.push(option.long);
    else if (Array.isArray(value)) for (const v of value) words.push(option.long, String(v));
    else if (typeof value === 'string') words.push(option.long, value);
  }
  return words;
}

/** `backup full`, `verify report`: the command's names below the program. */
function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

const backupCmds = async () => require('./commands/backup') as Record<string, unknown>;
const restoreCmds = async () => require('./commands/restore') as Record<string, unknown>;
const verifyCmds = async () => require('./commands/verify') as Record<string, unknown>;
// WAL commands run once per segment under PostgreSQL: their module loads only what they need.
const walCmds = async () => require('./commands/wal') as Record<string, unknown>;
const pitrCmds = async () => require('./commands/pitr') as Record<string, unknown>;
const patroniCmds = async () => require('./commands/patroni') as Record<string, unknown>;
const reportCmds = async () => require('./commands/report') as Record<string, unknown>;
const retentionCmds = async () => require('./commands/retention') as Record<string, unknown>;
const drillCmds = async () => require('./commands/drill') as Record<string, unknown>;

const backup = program.command('backup').description("take backups (the guide's backup-manager)");
backup
  .command('full [schedule]')
  .description(
    'full logical backup of every database (or --database), plus roles: daily|weekly|monthly|manual',
  )
  .option('-d, --database <name>', 'only this database (repeatable)', (v: string, acc: string[] = []) => [
    ...acc,
    v,
  ])
  .action(run(backupCmds, 'backupFullCommand'));
backup
  .command('base [schedule]')
  .description('physical base backup (pg_basebackup) for point-in-time recovery: daily|weekly|monthly|manual')
  .option('--incremental', 'incremental to the newest base backup (PostgreSQL 17+, summarize_wal = on)')
  .action(run(pitrCmds, 'backupBaseCommand'));
backup
  .command('wal <path>')
  .description("archive one WAL file: PostgreSQL's archive_command = 'pgvault backup wal %p'")
  .action(run(walCmds, 'backupWalCommand'));
backup
  .command('config')
  .description('server settings, pg_hba, roles and extensions as one archive')
  .action(run(backupCmds, 'backupConfigCommand'));
backup
  .command('indexes')
  .description('every index definition, to rebuild them')
  .action(run(backupCmds, 'backupIndexesCommand'));
backup
  .command('stats')
  .description('counts, sizes, compression ratio and last success per type')
  .action(run(backupCmds, 'backupStatsCommand'));
backup
  .command('init')
  .description('create the target layout and check write access')
  .option('--print-lifecycle', "print the buckets' lifecycle rules instead of applying them")
  .action(run(backupCmds, 'backupInitCommand'));
backup
  .command('schedule')
  .description("print the guide's crontab for this host (or --install it)")
  .option('--install', "install it into this user's crontab")
  .option('--syslog', "send the jobs' output to syslog (logger -t pgvault) instead of a rotated pgvault.log")
  .action(run(backupCmds, 'backupScheduleCommand'));
backup
  .command('retention')
  .description(
    'GFS retention: keep daily/weekly/monthly, config, index backups and the PITR window; delete the rest',
  )
  .option('--dry-run', 'print the plan (every backup, keep or delete, and the rule) and delete nothing')
  .action(run(retentionCmds, 'backupRetentionCommand'));
backup
  .command('delete <backup>')
  .description('delete one backup by hand (the only way manual backups go); needs --yes')
  .option('--yes', 'really delete it')
  .action(run(retentionCmds, 'backupDeleteCommand'));

const restore = program.command('restore').description("restore backups (the guide's restore-manager)");
restore
  .command('init')
  .description('check what restores need')
  .action(run(restoreCmds, 'restoreInitCommand'));
restore
  .command('list [backup]')
  .description('complete backups, newest first; with a backup: its databases and their tables')
  .action(run(restoreCmds, 'restoreListCommand'));
restore
  .command('full <backup> [database]')
  .description('restore a database (default: its original name); creates it when missing')
  .option('--from <name>', 'database inside the backup, when it holds several')
  .option('--clean', 'replace the contents of a database that is not empty')
  .option('--no-owner', 'do not restore object ownership')
  .option('--no-acl', 'do not restore grants (GRANT/REVOKE)')
  .action(run(restoreCmds, 'restoreFullCommand'));
restore
  .command('globals <backup>')
  .description('roles and tablespaces from a full backup (run before restore full on a new server)')
  .action(run(restoreCmds, 'restoreGlobalsCommand'));
restore
  .command('partial <backup> <kind> <name> [database]')
  .description('restore one table or one schema: partial <backup> table|schema <name> [database]')
  .option('--from <name>', 'database inside the backup, when it holds several')
  .option('--clean', 'replace the table or schema if it exists')
  .option('--no-owner', 'do not restore object ownership')
  .option('--no-acl', 'do not restore grants (GRANT/REVOKE)')
  .action(run(restoreCmds, 'restorePartialCommand'));
restore
  .command('pitr <backup> [time] [database]')
  .description('point-in-time recovery from a base backup (or latest|auto) and the WAL archive')
  .option(
    '--target-time <time>',
    'recover to this time (also the second argument); without a zone: local time (TZ)',
  )
  .option('--target-lsn <lsn>', 'recover to this LSN')
  .option('--target-xid <xid>', 'recover to this transaction id')
  .option('--target-name <name>', 'recover to this restore point')
  .option('--immediate', 'stop as soon as the backup is consistent')
  .option('--pgdata <dir>', 'lay down a data directory ready to start, instead of copying a database')
  .option('--force', 'with --pgdata: use a directory that is not empty')
  .option('--archive', "with --pgdata: keep archiving, into the copy's own CLUSTER_NAME (off by default)")
  .option(
    '--as-original',
    'with --pgdata: the copy replaces the original server (gone for good): keep its port, archiving and CLUSTER_NAME',
  )
  .option(
    '--from <name>',
    'database in the recovered cluster to copy (default: the one named <database>, else its one user database)',
  )
  .action(run(pitrCmds, 'restorePitrCommand'));
// Patroni's hooks (create_replica_methods, bootstrap.method): Patroni appends --scope, --datadir
// (a replica also --role, --connstring) and each key of the method's YAML section as --key=value.
restore
  .command('replica')
  .description(
    "build a Patroni replica's data directory from the newest base backup (create_replica_methods)",
  )
  .option('--datadir <dir>', "the new member's data directory (Patroni passes it)")
  .option('--scope <scope>', 'the Patroni cluster (Patroni passes it)')
  .option('--role <role>', 'replica (Patroni passes it)')
  .option(
    '--connstring <dsn>',
    "the member to clone from (Patroni passes it): its system identifier must be the backup's",
  )
  .option('--backup <backup>', 'a base backup id (default: the newest complete one)')
  .option('--replace [yes]', 'replace a data directory that is not empty (YAML: replace: true)')
  .option('--keep_data [value]', "Patroni's keep_data (it did not empty --datadir)")
  .option('--no_leader [value]', "Patroni's no_leader (works without a leader)")
  .option('--no_master [value]', "Patroni's older name of no_leader")
  .option('--no_params [value]', "Patroni's no_params")
  .action(run(patroniCmds, 'restoreReplicaCommand'));
restore
  .command('bootstrap [backup]')
  .description('lay down a new Patroni cluster from a base backup (or auto) to a target (bootstrap.method)')
  .option('--datadir <dir>', "the new cluster's data directory (Patroni passes it)")
  .option('--scope <scope>', 'the new Patroni cluster (Patroni passes it)')
  .option('--target-time <time>', 'recover to this time; without a zone: local time (TZ)')
  .option('--target-lsn <lsn>', 'recover to this LSN')
  .option('--target-xid <xid>', 'recover to this transaction id')
  .option('--target-name <name>', 'recover to this restore point')
  .option('--immediate', 'stop as soon as the backup is consistent')
  .option('--as-original', 'the new cluster replaces the original (gone for good): not marked as a copy')
  .option('--replace [yes]', 'replace a data directory that is not empty')
  .option(
    '--finish',
    "after promotion (Patroni's post_bootstrap, which appends a connection string): remove the restore_command files beside the data directory",
  )
  .action(run(patroniCmds, 'restoreBootstrapCommand'));
restore
  .command('wal <name> <path>')
  .description("fetch one WAL file: restore_command = 'pgvault restore wal %f %p'")
  .action(run(walCmds, 'restoreWalCommand'));
restore
  .command('indexes <database>')
  .description('rebuild missing indexes from the newest index backup')
  .option('--reindex', 'also REINDEX the indexes that exist')
  .option('--backup <backup>', 'index backup to use (default latest)')
  .action(run(restoreCmds, 'restoreIndexesCommand'));
restore
  .command('validate <database>')
  .description('connectivity, health and row counts against a backup')
  .option('--against <backup>', 'backup to compare with (default: newest holding this database)')
  .option('--from <name>', 'database inside that backup')
  .action(run(restoreCmds, 'restoreValidateCommand'));
restore
  .command('test <backup>')
  .description(
    'restore every database of the backup into temporary databases of a sandbox server, validate, remove, report the time',
  )
  .option('--from <name>', 'test only this database of the backup')
  .option(
    '--on-server',
    'restore into temporary databases on the configured server instead of a sandbox server (needs CREATEDB)',
  )
  .action(run(restoreCmds, 'restoreTestCommand'));

const verify = program.command('verify').description("check backups (the guide's verify-backups)");
verify
  .command('file <backup>')
  .description('sha256, HMAC, decrypt, decompress and read the archive through')
  .action(run(verifyCmds, 'verifyFileCommand'));
verify
  .command('wal')
  .description('WAL archive continuity per timeline, gaps, recoverable windows and current RPO')
  .action(run(walCmds, 'verifyWalCommand'));
verify
  .command('restore <backup>')
  .description(
    'restore into a sandbox server (full: temporary databases; base: recovery), validate, remove, record the RTO sample',
  )
  .option('--from <name>', 'only this database of a full backup')
  .option(
    '--on-server',
    'restore into temporary databases on the configured server instead of a sandbox server (needs CREATEDB)',
  )
  .action(run(verifyCmds, 'verifyRestoreCommand'));
verify
  .command('all')
  .description(
    "every backup's objects (size, sha256, HMAC), the newest of each type read through, WAL continuity",
  )
  .option('--quick', 'manifests and sizes only: no object is read (fits a Lambda)')
  .action(run(verifyCmds, 'verifyAllCommand'));
verify
  .command('indexes <backup>')
  .description(
    "rebuild an index backup on the newest full backup's schema in a temporary database of a sandbox server; every index valid",
  )
  .option(
    '--on-server',
    'use temporary databases on the configured server instead of a sandbox server (needs CREATEDB)',
  )
  .action(run(verifyCmds, 'verifyIndexesCommand'));

program
  .command('drill')
  .description(
    'DR drill: restore the newest full backup (or --pitr: recover to one hour ago), validate, record RTO and RPO, clean up',
  )
  .option('--pitr', 'point-in-time recovery from a base backup and the WAL archive, in a sandbox')
  .option('--target-time <time>', 'with --pitr: the point to recover to (default: one hour ago)')
  .option(
    '--on-server',
    'restore into temporary databases on the configured server instead of a sandbox server (needs CREATEDB)',
  )
  .action(run(drillCmds, 'drillCommand'));

verify
  .command('sizes')
  .description('backup sizes over time per database and type, trend, sudden shrinks flagged')
  .action(run(reportCmds, 'verifySizesCommand'));
verify
  .command('capacity')
  .description('space used per target (disk, or STORAGE_QUOTA_GB for cloud), growth per day, days until full')
  .action(run(reportCmds, 'verifyCapacityCommand'));
verify
  .command('report')
  .description(
    'HTML, Markdown and JSON report into {cluster}/reports/ of the targets; sends threshold alerts',
  )
  .action(run(reportCmds, 'verifyReportCommand'));

program
  .command('check')
  .description(
    'WAL archiving end to end: settings, a forced WAL switch and its segment in the archive; fine, slow or broken, and what to do',
  )
  .option('--timeout <seconds>', 'how long to wait for the segment (default ARCHIVE_TIMEOUT)')
  .action(run(async () => require('./commands/check') as Record<string, unknown>, 'checkCommand'));

program
  .command('topology')
  .description(
    "the cluster's nodes (Patroni: role, state, lag, timeline) and what pgvault does with each: connects, full backups, WAL archiving",
  )
  .action(run(async () => require('./commands/topology') as Record<string, unknown>, 'topologyCommand'));

const wal = program.command('wal').description('continuous WAL archiving');
wal
  .command('receive')
  .description('stream WAL over replication (pg_receivewal with a slot) into the targets; runs until stopped')
  .option('--slot <name>', 'replication slot', 'pgvault')
  .option('--heartbeat <file>', 'rewrite this file every 10 s while streaming (for a container health check)')
  .action(run(walCmds, 'walReceiveCommand'));
wal
  .command('backfill')
  .description(
    "after a failover: push the old timeline's segments its leader never archived from this node's pg_wal (run in the data directory; backup wal does it when it archives a .history file)",
  )
  .option('--pg-wal <dir>', "the server's pg_wal directory", 'pg_wal')
  .action(run(walCmds, 'walBackfillCommand'));
wal
  .command('push-async', { hidden: true })
  .description('background uploader started by backup wal when ARCHIVE_ASYNC=true')
  .option('--pg-wal <dir>', "the server's pg_wal directory", 'pg_wal')
  .action(run(walCmds, 'walPushAsyncCommand'));

// Several repositories (REPO<n>_*): what each holds, and copying what one lacks from another.
const repoCmds = async () => require('./commands/repo') as Record<string, unknown>;
const repo = program.command('repo').description('the repositories (REPO<n>_*): list them, sync them');
repo
  .command('list')
  .description('every repository: type, location, what it holds, its retention')
  .action(run(repoCmds, 'repoListCommand'));
repo
  .command('sync')
  .description('copy what a repository should hold but lacks (a repository that was down catches up)')
  .option('--from <n>', 'copy only from repository n')
  .option('--to <n>', 'copy only into repository n')
  .option('--dry-run', 'say what would be copied, copy nothing')
  .action(run(repoCmds, 'repoSyncCommand'));

// Ctrl-C or a stop from cron/systemd: exit through 'exit' handlers so temp files and staging
// folders are removed; no manifest was written, so nothing half-done looks complete.
for (const [signal, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
] as const) {
  process.once(signal, () => {
    // A command that runs until stopped (wal receive) stops cleanly and exits 0; the Fargate stop
    // timeout (120 s, infra/constructs/tasks.ts) is longer than this.
    if (hasCleanStop()) {
      process.stderr.write(`\npgvault: ${signal}: stopping cleanly\n`);
      void runCleanStop(100_000).then((ok) => process.exit(ok ? 0 : code));
      return;
    }
    const undoing = pendingUndoSteps() > 0;
    process.stderr.write(
      `\npgvault: interrupted by ${signal}${undoing ? '; removing what this run stored' : ''}\n`,
    );
    void runUndoSteps(15_000).finally(() => process.exit(code));
  });
}

program.parseAsync(process.argv).catch((err: unknown) => fail(err, program.opts() as GlobalOptions));
