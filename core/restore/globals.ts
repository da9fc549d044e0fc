import { pipeline } from 'node:stream/promises';
import { UsageError } from '../errors';
import { findPgBinary, pgEnv } from '../pg/tools';
import { startTool } from '../stream/process';
import { resolveConnection } from '../topology';
import type { Vault } from '../vault';
import { openBackup, readBackupObject } from './fetch';

export interface GlobalsRestoreResult {
  readonly backupId: string;
  /** Statements the server refused, most often "role ... already exists" on a server that has them. */
  readonly errors: readonly string[];
  readonly alreadyExisting: number;
}

/**
 * `restore globals <backup>`: roles and tablespaces from a full backup, run through psql. Run it
 * before `restore full` on a new server, so ownership and grants have their roles. Statements that
 * fail because the role exists are counted, not fatal: the rest of the script still applies.
 */
export async function restoreGlobals(vault: Vault, ref: string): Promise<GlobalsRestoreResult> {
  const entry = await vault.catalog.resolve(ref);
  const manifest = await openBackup(entry, vault.config);
  const object = manifest.objects.find((o) => o.kind === 'globals');
  if (!object) throw new UsageError(`backup ${manifest.id} holds no roles (it has no globals object)`);
  const raw = await readBackupObject(vault, entry, object);
  // DEPLOYMENT_MODE=patroni: the leader (core/topology); nothing has connected before psql here.
  const conn = await resolveConnection(vault.config.pg);
  const psql = startTool(
    findPgBinary('psql', vault.config.pgBinDir),
    ['-X', '-q', '-v', 'ON_ERROR_STOP=0', '-f', '-'],
    {
      env: pgEnv({ ...conn, database: vault.config.pg.database ?? 'postgres' }),
      label: 'psql (roles and tablespaces)',
      stdout: 'ignore',
    },
  );
  await pipeline(raw, psql.stdin);
  await psql.exited;
  const errors = psql
    .stderrTail()
    .split('\n')
    .filter((l) => /ERROR:/.test(l))
    .map((l) => l.replace(/^psql:[^:]*:\d+: /, ''));
  return {
    backupId: manifest.id,
    errors,
    alreadyExisting: errors.filter((e) => /already exists/.test(e)).length,
  };
}
