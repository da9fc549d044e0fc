import { PgVaultError, UsageError } from '../../core/errors';
import { checkArchiving } from '../../core/wal/check';
import { emit, failAfterReport, type GlobalOptions, vaultFor } from '../output';

/** `pgvault check`: is WAL archiving fine, slow or broken, and what to do (core/wal/check.ts). */
export async function checkCommand(opts: GlobalOptions & { readonly timeout?: string }) {
  const timeoutSeconds = opts.timeout === undefined ? undefined : Number(opts.timeout);
  if (timeoutSeconds !== undefined && !(Number.isInteger(timeoutSeconds) && timeoutSeconds > 0)) {
    throw new UsageError(`--timeout must be a whole number of seconds, at least 1 (got ${opts.timeout})`);
  }
  const report = await checkArchiving(vaultFor(opts), {
    timeoutSeconds,
    configFile: opts.config ?? process.env.PGVAULT_CONFIG,
  });
  emit(opts, report, () =>
    [
      `WAL archiving of ${report.server}:`,
      ...report.checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'}  ${c.check}: ${c.detail}`),
      report.summary,
      ...(report.nextStep ? [`next step: ${report.nextStep}`] : []),
    ].join('\n'),
  );
  if (!report.ok) await failAfterReport(new PgVaultError(report.summary), opts, 'check');
  return report;
}
