import { checkRestorePrerequisites } from '../../core/backup/init';
import { recoverableWindow } from '../../core/backup/stats';
import { UsageError } from '../../core/errors';
import { restoreFull } from '../../core/restore/full';
import { restoreGlobals } from '../../core/restore/globals';
import { restoreIndexes } from '../../core/restore/indexes';
import { restorePartial } from '../../core/restore/partial';
import { restoreTest } from '../../core/restore/test';
import { assertValid, validateDatabase } from '../../core/restore/validate';
import { emit, formatBytes, formatDuration, type GlobalOptions, table, vaultFor } from '../output';
import { recoverableLine, reportChecks } from './backup';

interface RestoreOpts extends GlobalOptions {
  readonly from?: string;
  readonly clean?: boolean;
  readonly owner?: boolean;
  readonly acl?: boolean;
}

export async function restoreInitCommand(opts: GlobalOptions) {
  reportChecks(opts, await checkRestorePrerequisites(vaultFor(opts)));
}

export async function restoreListCommand(opts: GlobalOptions & { type?: string }) {
  const vault = vaultFor(opts);
  const entries = await vault.catalog.list();
  const rows = entries.map((e) => ({
    id: e.manifest.id,
    type: e.manifest.type,
    schedule: e.manifest.schedule ?? null,
    time: e.manifest.startedAt,
    storedSize: e.manifest.storedSize,
    databases: e.manifest.objects.filter((o) => o.database).map((o) => o.database),
    encrypted: e.manifest.encryption !== null,
    compression: e.manifest.compression.algorithm,
    targets: e.targets.map((t) => t.location),
  }));
  const recoverable = await recoverableWindow(vault, entries);
  emit(
    opts,
    { ok: true, backups: rows, recoverable },
    () =>
      (recoverable ? `${recoverableLine(recoverable)}\n` : '') +
      (rows.length === 0
        ? 'no complete backups yet; take one with `pgvault backup full`'
        : table(
            ['id', 'type', 'schedule', 'time (UTC)', 'size', 'databases'],
            rows.map((r) => [
              r.id,
              r.type,
              r.schedule ?? '-',
              r.time.replace('T', ' ').slice(0, 19),
              formatBytes(r.storedSize),
              r.databases.join(','),
            ]),
          )),
  );
}

export async function restoreFullCommand(backup: string, database: string | undefined, opts: RestoreOpts) {
  const r = await restoreFull(vaultFor(opts), backup, {
    from: opts.from,
    database,
    clean: opts.clean,
    noOwner: opts.owner === false,
    noAcl: opts.acl === false,
  });
  emit(
    opts,
    { ok: r.validation.ok, ...r },
    () =>
      `restored ${r.source} from ${r.backupId} into "${r.database}" in ${formatDuration(r.durationMs)}; ${validationLine(r.validation)}`,
  );
  assertValid(r.validation);
  return r;
}

export async function restorePartialCommand(
  backup: string,
  kind: string,
  name: string,
  database: string | undefined,
  opts: RestoreOpts,
) {
  if (kind !== 'table' && kind !== 'schema')
    throw new UsageError(
      `${kind} is not allowed; use: restore partial <backup> table|schema <name> [database]`,
    );
  const r = await restorePartial(vaultFor(opts), backup, kind, name, {
    from: opts.from,
    database,
    clean: opts.clean,
    noOwner: opts.owner === false,
    noAcl: opts.acl === false,
  });
  emit(
    opts,
    { ok: r.validation.ok, ...r },
    () =>
      `restored ${kind} ${name} from ${r.backupId} into "${r.database}" (${r.entries} archive entries) in ${formatDuration(r.durationMs)}; ${validationLine(r.validation)}`,
  );
  assertValid(r.validation);
  return r;
}

export async function restoreIndexesCommand(
  database: string,
  opts: GlobalOptions & { reindex?: boolean; backup?: string },
) {
  const r = await restoreIndexes(vaultFor(opts), database, { reindex: opts.reindex, backup: opts.backup });
  emit(opts, { ok: r.failed.length === 0, ...r }, () =>
    [
      `indexes of "${database}" from ${r.backupId}: ${r.created.length} created, ${r.existing} already present${opts.reindex ? `, ${r.reindexed} reindexed` : ''}, ${r.failed.length} failed`,
      ...r.created.map((n) => `  created ${n}`),
      ...r.failed.map((f) => `  FAILED ${f.statement}: ${f.error}`),
    ].join('\n'),
  );
  if (r.failed.length > 0) process.exitCode = 1;
  return r;
}

export async function restoreValidateCommand(
  database: string,
  opts: GlobalOptions & { against?: string; from?: string },
) {
  const v = await validateDatabase(vaultFor(opts), database, { against: opts.against, from: opts.from });
  const ok = (v.report?.ok ?? true) && v.health.invalidIndexes.length === 0;
  emit(opts, { ok, ...v }, () =>
    [
      `"${database}" answers: PostgreSQL ${v.health.serverVersion}, ${formatBytes(v.health.sizeBytes)}, ${v.health.invalidIndexes.length === 0 ? 'all indexes valid' : `INVALID indexes: ${v.health.invalidIndexes.join(', ')}`}`,
      v.report
        ? `against ${v.against}: ${validationLine(v.report)}`
        : 'no full backup of a database by this name to compare with (use --against)',
    ].join('\n'),
  );
  if (v.report) assertValid(v.report);
  if (!ok) process.exitCode = 4;
  return { ok, ...v };
}

export async function restoreTestCommand(backup: string, opts: GlobalOptions & { from?: string }) {
  const r = await restoreTest(vaultFor(opts), backup, { from: opts.from });
  emit(
    opts,
    { ok: true, ...r },
    () =>
      `restore test of ${r.backupId} (${r.source}) passed: restored and validated in ${formatDuration(r.restoreMs)}; ${validationLine(r.validation)}; ${r.temporaryDatabase} dropped`,
  );
  return r;
}

function validationLine(v: {
  ok: boolean;
  tablesChecked: number;
  rowsChecked: number;
  mismatches: readonly unknown[];
  note?: string;
}): string {
  if (v.note) return v.note;
  return v.ok
    ? `${v.tablesChecked} tables, ${v.rowsChecked} rows match the backup`
    : `${v.mismatches.length} of ${v.tablesChecked} tables DIFFER from the backup`;
}

export async function restoreGlobalsCommand(backup: string, opts: GlobalOptions) {
  const r = await restoreGlobals(vaultFor(opts), backup);
  const other = r.errors.length - r.alreadyExisting;
  emit(opts, { ok: other === 0, ...r }, () =>
    [
      `roles and tablespaces from ${r.backupId} applied; ${r.alreadyExisting} already existed${other > 0 ? `, ${other} other statement(s) FAILED:` : ''}`,
      ...r.errors.filter((e) => !/already exists/.test(e)).map((e) => `  ${e}`),
    ].join('\n'),
  );
  if (other > 0) process.exitCode = 1;
  return r;
}
