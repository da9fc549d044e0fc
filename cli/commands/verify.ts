import { ValidationError } from '../../core/errors';
import { verifyBackupFile } from '../../core/verify/file';
import { describeWalServerHealth } from '../../core/verify/wal-health';
import { emit, failAfterReport, formatBytes, formatDuration, type GlobalOptions, vaultFor } from '../output';

export async function verifyFileCommand(backup: string, opts: GlobalOptions) {
  const r = await verifyBackupFile(vaultFor(opts), backup);
  emit(opts, { ok: true, ...r }, () =>
    [
      `backup ${r.backupId} in ${r.target} is intact (${formatDuration(r.durationMs)}):`,
      ...r.objects.map(
        (o) =>
          `  ok  ${o.key}  ${formatBytes(o.storedSize)} stored, ${formatBytes(o.rawSize)} raw${o.tablesMatched !== undefined ? `, ${o.tablesMatched} tables' rows recounted` : ''}${o.dataDirectoryVerified ? ', every file and the WAL checked by pg_verifybackup' : ''}`,
      ),
    ].join('\n'),
  );
  return r;
}

type VerifyAllReport = import('../../core/verify/all').VerifyAllReport;

function describeVerifyAll(r: VerifyAllReport): string {
  const lines = [
    `verify all of cluster ${r.cluster} (${r.mode === 'quick' ? 'quick: manifests and sizes only' : 'every object digested, the newest of each type read through'}), ${r.backups} backup(s), ${formatBytes(r.bytesRead)} read in ${formatDuration(r.durationMs)}`,
  ];
  for (const c of r.copies) {
    lines.push(
      `  ${c.ok ? 'ok   ' : 'FAULT'}  ${c.backup}  ${c.objects} object(s), ${c.checked}  ${c.target}${c.keyId ? `  key ${c.keyId}${c.keyInRing === false ? ' (NOT in the key ring)' : ''}` : ''}`,
    );
  }
  for (const t of r.readThrough) {
    const what = t.skipped
      ? `not read through: ${t.skipped}`
      : t.ok
        ? `read through in ${formatDuration(t.durationMs ?? 0)}${t.tablesMatched !== undefined ? `, ${t.tablesMatched} tables' rows recounted` : ''}${t.dataDirectoryVerified ? ', pg_verifybackup passed' : ''}`
        : 'read-through FAILED';
    lines.push(`  newest ${t.type}: ${t.backup} ${what}`);
  }
  if (r.wal) {
    lines.push(
      `  WAL: ${r.wal.segments} segment(s), ${r.wal.gaps.length === 0 ? 'continuous' : `${r.wal.gaps.length} gap(s)`}${r.wal.rpoSeconds !== undefined ? `, newest archived ${formatDuration(r.wal.rpoSeconds * 1000)} ago` : ''}`,
    );
  } else lines.push('  WAL: nothing archived and no base backup');
  lines.push(...describeWalServerHealth(r.server).map((l) => `  ${l}`));
  if (r.faults.length === 0) lines.push('all backups verified');
  else {
    lines.push(`${r.faults.length} fault(s):`);
    for (const f of r.faults) lines.push(`  - ${f.problem}\n    what to do: ${f.action}`);
  }
  return lines.join('\n');
}

export async function verifyAllCommand(opts: GlobalOptions & { quick?: boolean }) {
  const { verifyAll, verifyAllFailure } =
    require('../../core/verify/all') as typeof import('../../core/verify/all');
  const vault = vaultFor(opts);
  const r = await verifyAll(vault, { quick: opts.quick });
  emit(opts, r, () => describeVerifyAll(r));
  // The threshold alerts (capacity, backup age, WAL gap, RPO, RTO, failed drills): one line each on
  // stderr, and SNS when configured. A fault found above is also alerted, by the failure path below.
  const { evaluateThresholds } =
    require('../../core/alert/thresholds') as typeof import('../../core/alert/thresholds');
  const { sendAlerts } = require('../../core/alert/notify') as typeof import('../../core/alert/notify');
  const alerts = await evaluateThresholds(vault);
  await sendAlerts(vault.config, alerts);
  if (alerts.length > 0) process.exitCode = 1;
  // Exit 3 when something stored is wrong, 1 when only the server's archiving is (see verifyAllFailure).
  const failure = verifyAllFailure(r);
  if (failure !== undefined) await failAfterReport(failure, opts, 'verify all');
  return r;
}

export async function verifyRestoreCommand(
  backup: string,
  opts: GlobalOptions & { from?: string; onServer?: boolean },
) {
  const { verifyRestore } =
    require('../../core/verify/restore') as typeof import('../../core/verify/restore');
  const r = await verifyRestore(vaultFor(opts), backup, {
    from: opts.from,
    ...(opts.onServer ? { target: 'server' as const } : {}),
  });
  emit(opts, { ok: true, ...r }, () =>
    [
      `verify restore of ${r.backupId} passed: restored and validated in ${formatDuration(r.restoreMs)} (RTO sample stored)`,
      `  restored in ${r.restoredOn.description}`,
      ...r.databases.map(
        (d) =>
          `  ${d.database}: ${d.tables} tables, ${d.rows} rows${d.restoredAs === 'sandbox' ? ' in the recovered sandbox' : ` match the backup (in ${d.restoredAs}, dropped)`}${d.invalidIndexes && d.invalidIndexes.length > 0 ? `; invalid indexes: ${d.invalidIndexes.join(', ')}` : ''}`,
      ),
    ].join('\n'),
  );
  return r;
}

export async function verifyIndexesCommand(backup: string, opts: GlobalOptions & { onServer?: boolean }) {
  const { verifyIndexes } =
    require('../../core/verify/indexes') as typeof import('../../core/verify/indexes');
  const r = await verifyIndexes(vaultFor(opts), backup, {
    ...(opts.onServer ? { target: 'server' as const } : {}),
  });
  emit(opts, r, () =>
    [
      `index backup ${r.backupId}: ${r.ok ? 'every index rebuilt and valid' : 'FAILED'} (${formatDuration(r.durationMs)})`,
      ...(r.restoredOn ? [`  checked in ${r.restoredOn.description}`] : []),
      ...r.databases.flatMap((d) => [
        d.error
          ? `  ${d.database}: not checked: ${d.error}`
          : `  ${d.database}: ${d.created} of ${d.statements} index(es) built on the schema of ${d.schemaFrom}${d.invalid.length > 0 ? `; INVALID: ${d.invalid.join(', ')}` : ''}`,
        ...d.failed.map((f) => `    FAILED ${f.statement}: ${f.error}`),
      ]),
    ].join('\n'),
  );
  if (!r.ok) {
    const bad = r.databases.filter((d) => d.error || d.failed.length > 0 || d.invalid.length > 0);
    await failAfterReport(
      new ValidationError(
        `index backup ${r.backupId} does not rebuild cleanly in ${bad.map((d) => `"${d.database}"`).join(', ')}: ${[
          ...new Set(bad.map((d) => d.error ?? d.failed[0]?.error ?? `invalid ${d.invalid.join(', ')}`)),
        ].join('; ')}`,
      ),
      opts,
      'verify indexes',
    );
  }
  return r;
}
