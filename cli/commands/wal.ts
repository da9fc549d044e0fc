import { PgVaultError } from '../../core/errors';
import type { GlobalOptions } from '../output';

// Placeholders until the WAL archiving work lands (issue 3); each says so in one line.
function notYet(what: string): never {
  throw new PgVaultError(`${what} is not built yet`);
}
export async function backupWalCommand(_path: string, _opts: GlobalOptions) {
  notYet('backup wal');
}
export async function restoreWalCommand(_name: string, _path: string, _opts: GlobalOptions) {
  notYet('restore wal');
}
export async function verifyWalCommand(_opts: GlobalOptions) {
  notYet('verify wal');
}
export async function walReceiveCommand(_opts: GlobalOptions) {
  notYet('wal receive');
}
export async function walPushAsyncCommand(_opts: GlobalOptions) {
  notYet('wal push-async');
}
