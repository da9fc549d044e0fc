import { readPatroniRecord } from '../../core/backup/config-backup';
import { checkRestorePrerequisites } from '../../core/backup/init';
import { recoverableWindow } from '../../core/backup/stats';
import { UsageError } from '../../core/errors';
import { restoreFull } from '../../core/restore/full';
import { restoreGlobals } from '../../core/restore/globals';
import { restoreIndexes } from '../../core/restore/indexes';
import { restorePartial } from '../../core/restore/partial';
import { assertValid, validateDatabase } from '../../core/restore/validate';
import { restoreAndValidate } from '../../core/verify/restore';
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

export async function restoreListCommand(
  backup: string | undefined,
  opts: GlobalOptions & { type?: string },
) {
  const vault = vaultFor(opts);
  if (backup !== undefined) return backupContentsCommand(vault, backup, opts);
  const entries = await vault.catalog.list();
  // Every listed backup's objects stat'ed (8 backups at a time): one whose data is gone is marked.
  const missing = await vault.catalog.missingObjectsOf(entries);
  const rows = entries.map((e, i) => ({
    id: e.manifest.id,
    state: missing[i] === undefined ? ('complete' as const) : ('incomplete' as const),
    ...(missing[i] !== undefined ? { missing: missing[i] } : {}),
    type: e.manifest.type,
    ...(e.manifest.incrementalOf !== undefined ? { incrementalOf: e.manifest.incrementalOf } : {}),
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
            ['id', 'type', 'schedule', 'time (UTC)', 'size', 'databases', 'state'],
            rows.map((r) => [
              r.id,
              r.type,
              r.schedule ?? '-',
              r.time.replace('T', ' ').slice(0, 19),
              formatBytes(r.storedSize),
              r.databases.join(','),
              r.state === 'complete' ? 'ok' : 'INCOMPLETE',
            ]),
          ) +
          rows
            .filter((r) => r.missing !== undefined)
            .map(
              (r) =>
                `\n${r.id} is incomplete (missing objects): ${r.missing}; it is never used as latest, see \`pgvault verify all --quick\``,
            )
            .join('')),
  );
}

/** `restore list <backup>`: what one backup holds, each database with its tables and row counts. */
async function backupContentsCommand(
  vault: ReturnType<typeof vaultFor>,
  backup: string,
  opts: GlobalOptions,
) {
  const entry = await vault.catalog.resolve(backup);
  const m = entry.manifest;
  const objects = m.objects.map((o) => ({
    key: o.key,
    kind: o.kind,
    ...(o.database !== undefined ? { database: o.database } : {}),
    storedSize: o.storedSize,
    ...(o.tables !== undefined ? { tables: o.tables } : {}),
  }));
  // A config backup of a Patroni cluster: its dynamic configuration and members, read back.
  const patroni = await readPatroniRecord(vault, entry);
  emit(
    opts,
    { ok: true, id: m.id, type: m.type, time: m.startedAt, objects, ...(patroni ? { patroni } : {}) },
    () =>
      [
        `${m.id} (${m.type}, ${m.startedAt.replace('T', ' ').slice(0, 19)} UTC)`,
        ...objects.flatMap((o) => [
          `${o.database !== undefined ? `database ${o.database}` : o.kind}: ${o.key} (${formatBytes(o.storedSize)})`,
          ...(o.tables === undefined
            ? o.kind === 'database'
              ? ['  (no table list recorded)']
              : []
            : o.tables.length === 0
              ? ['  no tables']
              : o.tables.map((t) => `  ${t.schema}.${t.table}  ${t.rows} rows`)),
        ]),
        ...(patroni?.members
          ? [
              `Patroni cluster ${patroni.members.scope ?? '(scope unknown)'} members:`,
              ...patroni.members.members.map(
                (n) =>
                  `  ${n.name}  ${n.role}  ${n.state}  ${n.host}:${n.port}${n.timeline !== undefined ? `  timeline ${n.timeline}` : ''}`,
              ),
            ]
          : []),
        ...(patroni?.config !== undefined
          ? [`Patroni dynamic configuration: ${JSON.stringify(patroni.config)}`]
          : []),
      ].join('\n'),
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
      ...r.builds.map((b) => `  ${b.kind} ${b.index} in ${b.seconds.toFixed(3)} s`),
      ...(r.builds.length > 0
        ? [
            `  rebuild time: ${r.totalSeconds.toFixed(3)} s in total (maintenance_work_mem ${r.settings.maintenanceWorkMem}, max_parallel_maintenance_workers ${r.settings.parallelWorkers})`,
          ]
        : []),
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

/**
 * `restore test <backup>`: every database of the backup (or the one a path or --from names), as
 * `verify restore` does, each into a temporary database of a sandbox server (or, --on-server, of the
 * configured server), validated and dropped.
 */
export async function restoreTestCommand(
  backup: string,
  opts: GlobalOptions & { from?: string; onServer?: boolean },
) {
  const vault = vaultFor(opts);
  const entry = await vault.catalog.resolve(backup);
  const r = await restoreAndValidate(vault, backup, entry, {
    from: opts.from,
    ...(opts.onServer ? { target: 'server' as const } : {}),
  });
  emit(opts, { ok: true, ...r }, () =>
    [
      `restore test of ${r.backupId} passed: ${r.databases.length} database(s) restored and validated in ${formatDuration(r.restoreMs)}; ${r.tables} tables, ${r.rows} rows match the backup`,
      `  restored in ${r.restoredOn.description}${r.restoredOn.kind === 'sandbox' ? ' (removed)' : ''}`,
      ...r.databases.map(
        (d) =>
          `  ${d.database}: ${d.note ?? `${d.tables} tables, ${d.rows} rows`}${d.restoredAs === 'sandbox' ? ' (sandbox)' : `; ${d.restoredAs} dropped`}`,
      ),
    ].join('\n'),
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
