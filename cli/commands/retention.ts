import type { RetentionResult } from '../../core/retention/apply';
import { deleteBackupByHand, runRetention } from '../../core/retention/apply';
import { emit, formatBytes, type GlobalOptions, table, vaultFor } from '../output';

/** `pgvault backup retention [--dry-run]`: the GFS plan, then (without --dry-run) carried out. */
export async function backupRetentionCommand(opts: GlobalOptions & { dryRun?: boolean }) {
  const result = await runRetention(vaultFor(opts), { dryRun: opts.dryRun === true });
  const ok = result.failed.length === 0;
  emit(opts, { ok, ...result }, () => renderRetention(result));
  if (!ok) {
    const first = result.failed[0]!;
    process.stderr.write(
      `pgvault: ${result.failed.length} object(s) could not be deleted (first: ${first.key} in ${first.target}: ${first.error}); run backup retention again once fixed\n`,
    );
    process.exitCode = 1;
  }
  return result;
}

/** `pgvault backup delete <backup> --yes`. */
export async function backupDeleteCommand(ref: string, opts: GlobalOptions & { yes?: boolean }) {
  const r = await deleteBackupByHand(vaultFor(opts), ref, { yes: opts.yes === true });
  const ok = r.failed.length === 0;
  emit(opts, { ok, ...r }, () =>
    [
      r.locked.length === 0 && ok
        ? `deleted ${r.id}: ${r.objects} object(s), ${formatBytes(r.storedSize)}`
        : `${r.id} not fully deleted`,
      ...r.locked.map((l) => `  ${l.key} in ${l.target}: ${l.detail}`),
    ].join('\n'),
  );
  if (!ok) {
    const first = r.failed[0]!;
    process.stderr.write(`pgvault: cannot delete ${first.key} in ${first.target}: ${first.error}\n`);
    process.exitCode = 1;
  }
}

export function renderRetention(result: RetentionResult): string {
  if (result.repositories !== undefined) {
    // Several repositories: each one's own plan, under its name.
    return result.repositories
      .map(
        (r) => `repo${r.repository} (${r.location}):\n${renderRetention({ ...r, repositories: undefined })}`,
      )
      .join('\n\n');
  }
  const { plan } = result;
  const p = plan.policy;
  const lines = [
    `${result.dryRun ? 'retention plan (dry run, nothing deleted)' : 'retention'} at ${plan.now}: keep ${p.daily} daily, ${p.weekly} weekly, ${p.monthly} monthly (full and base), ${p.configCount} config, ${p.indexesCount} indexes, WAL ${p.walDays} days`,
    '',
    table(
      ['backup', 'action', 'rule'],
      plan.backups.map((b) => [b.id, b.action, b.rules.join('; ')]),
    ),
  ];
  if (plan.backups.length === 0) lines.push('(no backups)');
  for (const l of plan.leftovers) {
    lines.push(
      `${l.action === 'delete' ? 'delete' : 'keep  '} ${l.id} (${l.keys.length} object(s) without a manifest): ${l.rule}`,
    );
  }
  const w = plan.wal;
  lines.push('', `WAL: ${w.reason}`);
  if (w.keepFrom !== undefined) {
    lines.push(
      `  keep from ${w.keepFrom}; ${plan.summary.walSegmentsToDelete} segment(s) in ${w.folders.length} folder(s) to delete (${w.folders.filter((f) => f.whole).length} whole)`,
    );
    for (const r of w.protected) lines.push(`  keep ${r.from}..${r.to} for ${r.id} (consistency)`);
  }
  lines.push(
    '',
    `${result.dryRun ? 'would delete' : 'deleting'}: ${plan.summary.delete} backup(s), ${plan.summary.leftoversToDelete} leftover(s), ${formatBytes(plan.summary.deleteBytes)}; keeping ${plan.summary.keep} backup(s)`,
  );
  if (!result.dryRun) {
    lines.push(
      `deleted: ${result.deleted.backups.length} backup(s), ${result.deleted.leftoverObjects} leftover object(s), ${result.deleted.walObjects} WAL object(s)`,
    );
  }
  if (result.locked.length > 0) {
    lines.push(`${result.locked.length} object(s) still locked, left for a later run:`);
    for (const l of result.locked) lines.push(`  ${l.key} in ${l.target}: ${l.detail}`);
  }
  return lines.join('\n');
}
