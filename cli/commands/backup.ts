import { backupConfig } from '../../core/backup/config-backup';
import { backupFull } from '../../core/backup/full';
import { backupIndexes } from '../../core/backup/indexes';
import { initBackupTargets, type LifecycleOutcome, lifecycleRules } from '../../core/backup/init';
import { crontabDstNotes, installCrontab, renderCrontab } from '../../core/backup/schedule';
import { backupStats } from '../../core/backup/stats';
import type { ManifestBody } from '../../core/catalog/manifest';
import type { Schedule } from '../../core/catalog/naming';
import { SCHEDULES } from '../../core/catalog/naming';
import { UsageError } from '../../core/errors';
import {
  emit,
  formatBytes,
  formatDuration,
  type GlobalOptions,
  readConfig,
  table,
  vaultFor,
} from '../output';

function summary(m: ManifestBody): string {
  const ratio = m.rawSize > 0 ? ` (ratio ${(m.storedSize / m.rawSize).toFixed(3)})` : '';
  return [
    `backup ${m.id} complete: ${m.objects.length} object(s), ${formatBytes(m.rawSize)} dumped, ${formatBytes(m.storedSize)} stored${ratio}, ${formatDuration(m.durationMs)}`,
    ...m.objects.map(
      (o) =>
        `  ${o.key}  ${formatBytes(o.storedSize)}${o.tables ? `  ${o.tables.length} tables, ${o.tables.reduce((n, t) => n + t.rows, 0)} rows` : ''}`,
    ),
  ].join('\n');
}

export async function backupFullCommand(
  schedule: string | undefined,
  opts: GlobalOptions & { database?: string[] },
) {
  const s = (schedule ?? 'manual').toLowerCase();
  if (!(SCHEDULES as readonly string[]).includes(s)) {
    throw new UsageError(`schedule ${schedule} is not allowed; use one of ${SCHEDULES.join(', ')}`);
  }
  const m = await backupFull(vaultFor(opts), { schedule: s as Schedule, databases: opts.database ?? [] });
  emit(opts, { ok: true, manifest: m }, () => summary(m));
  return m;
}

export async function backupConfigCommand(opts: GlobalOptions) {
  const m = await backupConfig(vaultFor(opts));
  emit(opts, { ok: true, manifest: m }, () => summary(m));
  return m;
}

export async function backupIndexesCommand(opts: GlobalOptions) {
  const m = await backupIndexes(vaultFor(opts));
  emit(opts, { ok: true, manifest: m }, () => summary(m));
  return m;
}

export async function backupStatsCommand(opts: GlobalOptions) {
  const stats = await backupStats(vaultFor(opts));
  emit(opts, { ok: true, ...stats }, () =>
    [
      `cluster ${stats.cluster} in ${stats.targets.join(', ')}: ${stats.total.count} complete backup(s), ${formatBytes(stats.total.storedBytes)} stored`,
      ...(stats.recoverable ? [recoverableLine(stats.recoverable)] : []),
      '',
      table(
        ['type', 'count', 'dumped', 'stored', 'ratio', 'last success', 'age'],
        stats.byType.map((t) => [
          t.type,
          String(t.count),
          formatBytes(t.rawBytes),
          formatBytes(t.storedBytes),
          t.ratio.toFixed(3),
          t.lastId ?? '-',
          t.lastAgeHours === undefined ? '-' : `${t.lastAgeHours.toFixed(1)} h`,
        ]),
      ),
      ...stats.byType.flatMap((t) =>
        (t.incomplete ?? []).map(
          (b) =>
            `INCOMPLETE ${b.id} (${t.type}): missing objects: ${b.missing}; see \`pgvault verify all --quick\``,
        ),
      ),
    ].join('\n'),
  );
}

export async function backupInitCommand(opts: GlobalOptions & { printLifecycle?: boolean }) {
  const vault = vaultFor(opts);
  const checks = await initBackupTargets(vault, {
    configFile: opts.config ?? process.env.PGVAULT_CONFIG,
  });
  // Lifecycle rules: applied where the credentials may, else printed; never a failure of init.
  const lifecycle = await lifecycleRules(vault, { apply: opts.printLifecycle !== true });
  for (const l of lifecycle) if (l.warning !== undefined) vault.reporter.warn(l.warning);
  reportChecks(opts, checks, lifecycle);
}

/** The text of `backup init`'s lifecycle step: one line each, and the document and command to apply. */
function lifecycleText(l: LifecycleOutcome): string {
  const line = `${l.applied ? 'ok  ' : 'note'}  lifecycle rules ${l.repository !== undefined ? `repo${l.repository} ` : ''}${l.target}: ${l.detail}`;
  if (l.command === undefined) return line;
  return [
    line,
    `  save this as pgvault-lifecycle.json, then run: ${l.command}`,
    JSON.stringify(l.document, null, 2),
  ].join('\n');
}

export function reportChecks(
  opts: GlobalOptions,
  checks: ReadonlyArray<{ check: string; ok: boolean; detail: string }>,
  lifecycle?: readonly LifecycleOutcome[],
) {
  const ok = checks.every((c) => c.ok);
  emit(opts, { ok, checks, ...(lifecycle ? { lifecycle } : {}) }, () =>
    [
      ...checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'}  ${c.check}: ${c.detail}`),
      ...(lifecycle ?? []).map(lifecycleText),
    ].join('\n'),
  );
  if (!ok) process.exitCode = 1;
}

export async function backupScheduleCommand(opts: GlobalOptions & { install?: boolean; syslog?: boolean }) {
  const config = readConfig(opts);
  const block = renderCrontab(config, {
    pgvault: require.resolve('../../../bin/pgvault.js'),
    configFile: opts.config ?? process.env.PGVAULT_CONFIG,
    syslog: opts.syslog === true,
  });
  if (opts.install) installCrontab(block);
  emit(opts, { ok: true, installed: opts.install === true, crontab: block, dst: crontabDstNotes() }, () =>
    opts.install ? `${block}\ninstalled into the crontab of this user` : block.trimEnd(),
  );
}

export function recoverableLine(w: {
  from?: string;
  to?: string;
  rpoSeconds?: number;
  missingWal: number;
}): string {
  const window =
    w.from && w.to
      ? `PITR window ${w.from} → ${w.to}`
      : 'no PITR window yet (needs a base backup and its WAL)';
  const rpo = w.rpoSeconds === undefined ? '' : `, RPO ${Math.round(w.rpoSeconds)} s`;
  const gaps = w.missingWal > 0 ? `, ${w.missingWal} WAL file(s) MISSING (see verify wal)` : '';
  return `${window}${rpo}${gaps}`;
}
