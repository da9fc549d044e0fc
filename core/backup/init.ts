import { mkdir, statfs } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeArchiveKeys, keyRing } from '../catalog/keys';
import { verifyManifest } from '../catalog/manifest';
import { SCHEDULES } from '../catalog/naming';
import { errorMessage } from '../errors';
import { type ArchiverState, archives, readArchiverState } from '../pg/archiving';
import { serverInfo } from '../pg/server';
import { findPgBinary, toolMajorVersion } from '../pg/tools';
import { copyNotice } from '../restore/copy';
import { serverLabel } from '../topology';
import type { Vault } from '../vault';
import { checkArchiving } from '../wal/check';

export interface Check {
  readonly check: string;
  readonly ok: boolean;
  readonly detail: string;
}

async function attempt(check: string, fn: () => Promise<string>): Promise<Check> {
  try {
    return { check, ok: true, detail: await fn() };
  } catch (err) {
    return { check, ok: false, detail: errorMessage(err) };
  }
}

/**
 * `backup init`: lays out the local folders (0700), proves every target can be written, and when a
 * server answers, checks its WAL archiving end to end (pgvault check). Idempotent.
 */
export async function initBackupTargets(
  vault: Vault,
  options: { readonly configFile?: string } = {},
): Promise<Check[]> {
  const { config } = vault;
  const checks: Check[] = [];
  if (vault.targets.some((t) => t.kind === 'file')) {
    checks.push(
      await attempt('local layout', async () => {
        const root = join(config.backupDir, config.clusterName);
        const dirs = [
          ...SCHEDULES.map((s) => join(root, 'full', s)),
          join(root, 'config'),
          join(root, 'indexes'),
        ];
        for (const d of [config.backupDir, root, ...dirs]) await mkdir(d, { recursive: true, mode: 0o700 });
        return `${root} (full/{${SCHEDULES.join(',')}}, config, indexes)`;
      }),
    );
  }
  for (const t of vault.targets) {
    checks.push(
      await attempt(`write access ${t.location}`, async () => {
        await t.probe(config.clusterName);
        return 'writable';
      }),
    );
  }
  checks.push(await archivingCheck(vault, options.configFile));
  return checks;
}

/**
 * The archiving check of `backup init`: skipped (and said so) when no server answers; a server
 * that does not archive is fine here (logical backups need no WAL; PITR does, and the line says so).
 */
async function archivingCheck(vault: Vault, configFile: string | undefined): Promise<Check> {
  const check = 'WAL archiving';
  const { config } = vault;
  let state: ArchiverState;
  try {
    state = await readArchiverState(config.pg);
  } catch (err) {
    return {
      check,
      ok: true,
      detail: `skipped: no server reachable (${errorMessage(err)}); run pgvault check once it is`,
    };
  }
  const copy = copyNotice(config.clusterName, state);
  if (copy !== undefined) return { check, ok: false, detail: `${copy.summary}; ${copy.nextStep}` };
  if (!archives(state)) {
    return {
      check,
      ok: true,
      detail: `archive_mode is ${state.archiveMode}: no WAL is archived, so no point-in-time recovery (logical backups do not need it; pgvault check says how to turn it on)`,
    };
  }
  return attempt(check, async () => {
    const report = await checkArchiving(vault, { configFile });
    if (!report.ok) throw new Error(`${report.summary}; next step: ${report.nextStep}`);
    return report.summary;
  });
}

/**
 * `restore init`: what restores need, each checked and named: the server reachable with these
 * credentials, pg_restore not older than the server, temporary space, the key for encrypted backups.
 */
export async function checkRestorePrerequisites(vault: Vault): Promise<Check[]> {
  const { config } = vault;
  const checks: Check[] = [];
  let serverMajor: number | undefined;
  checks.push(
    await attempt('server connection', async () => {
      const s = await serverInfo(config.pg);
      serverMajor = s.major;
      return `PostgreSQL ${s.version} at ${serverLabel(config.pg)}`;
    }),
  );
  for (const tool of ['pg_restore', 'pg_dump', 'psql'] as const) {
    checks.push(
      await attempt(tool, async () => {
        const path = findPgBinary(tool, config.pgBinDir);
        const major = await toolMajorVersion(path);
        if (serverMajor !== undefined && major < serverMajor) {
          throw new Error(
            `${path} is version ${major}, older than the server (${serverMajor}); install postgresql-client-${serverMajor}`,
          );
        }
        return `${path} (${major})`;
      }),
    );
  }
  checks.push(
    await attempt('free port for sandboxes', async () => {
      const port = await new Promise<number>((resolve, reject) => {
        const srv = createServer();
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => {
          const { port: p } = srv.address() as AddressInfo;
          srv.close(() => resolve(p));
        });
      });
      return `127.0.0.1:${port} can be bound`;
    }),
  );
  checks.push(
    await attempt('temporary space', async () => {
      const s = await statfs(tmpdir());
      return `${((Number(s.bavail) * Number(s.bsize)) / 2 ** 30).toFixed(1)} GiB free in ${tmpdir()} (set TMPDIR to move it)`;
    }),
  );
  checks.push(
    await attempt('backups readable', async () => {
      const list = await vault.catalog.list();
      const encrypted = list.filter((e) => e.manifest.encryption).length;
      if (encrypted > 0 && config.encryption.passphrase === undefined) {
        throw new Error(
          `${encrypted} backup(s) are encrypted but no ENCRYPTION_KEY or ENCRYPTION_KEY_FILE is set`,
        );
      }
      return `${list.length} complete backup(s) in ${vault.targets.map((t) => t.location).join(', ')}`;
    }),
  );
  checks.push(
    await attempt('encryption keys', async () => {
      const list = await vault.catalog.list();
      const encrypted = list.filter((e) => e.manifest.encryption);
      const needed = encrypted.map((e) => e.manifest.encryption!.keyId).filter((id) => id !== undefined);
      const detail = await describeArchiveKeys(config, vault.targets, needed);
      // The newest encrypted backup opens with the ring: its key check (and HMAC) prove it.
      const newest = encrypted[0];
      if (newest !== undefined) await verifyManifest(newest.manifest, keyRing(config), newest.manifestKey);
      return detail;
    }),
  );
  return checks;
}
