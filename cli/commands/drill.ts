import { runDrill } from '../../core/drill/drill';
import { emit, formatDuration, type GlobalOptions, vaultFor } from '../output';

export async function drillCommand(opts: GlobalOptions & { pitr?: boolean; targetTime?: string }) {
  const r = await runDrill(vaultFor(opts), { pitr: opts.pitr, targetTime: opts.targetTime });
  emit(opts, { ok: true, ...r }, () =>
    [
      `${r.kind === 'pitr' ? 'PITR drill' : 'drill'} passed: ${r.backupId} ${r.kind === 'pitr' ? `recovered to ${r.restoredTo}` : 'restored'} and validated in ${formatDuration(r.rtoMs)} (RTO)${r.rpoMs !== undefined ? `; RPO ${formatDuration(r.rpoMs)}` : ''}`,
      ...(r.choice ? [`  base backup: ${r.choice}`] : []),
      ...r.databases.map((d) => `  ${d.database}: ${d.tables} tables, ${d.rows} rows`),
      ...r.warnings.map((w) => `  warning: ${w}`),
      `  recorded in drills/ (${r.record.startedAt}); everything restored was removed`,
    ].join('\n'),
  );
  return r;
}
