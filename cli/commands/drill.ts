import { runDrill } from '../../core/drill/drill';
import { emit, formatDuration, type GlobalOptions, vaultFor } from '../output';

export async function drillCommand(
  opts: GlobalOptions & { pitr?: boolean; targetTime?: string; onServer?: boolean },
) {
  const r = await runDrill(vaultFor(opts), {
    pitr: opts.pitr,
    targetTime: opts.targetTime,
    ...(opts.onServer ? { target: 'server' as const } : {}),
  });
  emit(opts, { ok: true, ...r }, () =>
    [
      `${r.kind === 'pitr' ? 'PITR drill' : 'drill'} passed: ${r.backupId} ${r.kind === 'pitr' ? `recovered to ${r.restoredTo}` : 'restored'} and validated in ${formatDuration(r.rtoMs)} (RTO)${r.rpoMs !== undefined ? `; RPO ${formatDuration(r.rpoMs)}` : ''}`,
      ...(r.choice ? [`  base backup: ${r.choice}`] : []),
      `  restored in ${r.restoredOn.description}`,
      ...r.databases.map((d) => `  ${d.database}: ${d.tables} tables, ${d.rows} rows`),
      ...r.warnings.map((w) => `  warning: ${w}`),
      `  recorded in drills/ (${r.record.startedAt}); everything restored was removed`,
    ].join('\n'),
  );
  return r;
}
