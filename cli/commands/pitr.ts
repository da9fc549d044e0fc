import { PgVaultError } from '../../core/errors';
import type { GlobalOptions } from '../output';

// Placeholders until base backups and PITR land (issue 3); each says so in one line.
function notYet(what: string): never {
  throw new PgVaultError(`${what} is not built yet`);
}
export async function backupBaseCommand(_schedule: string | undefined, _opts: GlobalOptions) {
  notYet('backup base');
}
export async function restorePitrCommand(
  _backup: string,
  _time: string | undefined,
  _db: string | undefined,
  _opts: GlobalOptions,
) {
  notYet('restore pitr');
}
