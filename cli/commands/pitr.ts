import { backupBase } from '../../core/backup/base';
import type { ManifestBody } from '../../core/catalog/manifest';
import { SCHEDULES, type Schedule } from '../../core/catalog/naming';
import { UsageError } from '../../core/errors';
import { emit, formatBytes, formatDuration, type GlobalOptions, vaultFor } from '../output';

function baseSummary(m: ManifestBody): string {
  const o = m.objects[0]!;
  const p = m.physical;
  return [
    `backup ${m.id} complete: ${formatBytes(m.rawSize)} read, ${formatBytes(m.storedSize)} stored, ${formatDuration(m.durationMs)}`,
    `  ${o.key}`,
    ...(p
      ? [
          `  timeline ${p.timeline}, WAL ${p.startLsn} to ${p.stopLsn} (${p.startWal} to ${p.stopWal}${p.walIncluded ? ', inside the backup' : ''})`,
        ]
      : []),
  ].join('\n');
}

export async function backupBaseCommand(schedule: string | undefined, opts: GlobalOptions) {
  const s = (schedule ?? 'manual').toLowerCase();
  if (!(SCHEDULES as readonly string[]).includes(s)) {
    throw new UsageError(`schedule ${schedule} is not allowed; use one of ${SCHEDULES.join(', ')}`);
  }
  const m = await backupBase(vaultFor(opts), { schedule: s as Schedule });
  emit(opts, { ok: true, manifest: m }, () => baseSummary(m));
}

export async function restorePitrCommand(
  _backup: string,
  _time: string | undefined,
  _db: string | undefined,
  _opts: GlobalOptions,
) {
  throw new UsageError('restore pitr is not built yet');
}
