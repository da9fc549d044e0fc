import { verifyBackupFile } from '../../core/verify/file';
import { emit, formatBytes, formatDuration, type GlobalOptions, vaultFor } from '../output';
import { restoreTestCommand } from './restore';

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
}

export async function verifyRestoreCommand(backup: string, opts: GlobalOptions & { from?: string }) {
  await restoreTestCommand(backup, opts);
}
