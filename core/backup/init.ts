import { mkdir, statfs } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeArchiveKeys, keyRing } from '../catalog/keys';
import { verifyManifest } from '../catalog/manifest';
import { SCHEDULES } from '../catalog/naming';
import type { Config } from '../config';
import { errorMessage } from '../errors';
import { type ArchiverState, archives, readArchiverState } from '../pg/archiving';
import { serverInfo } from '../pg/server';
import { findPgBinary, toolMajorVersion } from '../pg/tools';
import { copyNotice } from '../restore/copy';
import { repositoryOf } from '../storage';
import { AzureTarget } from '../storage/azure';
import { GcsTarget } from '../storage/gcs';
import {
  azureManagementPolicy,
  gcsLifecycleDocument,
  type LifecycleScope,
  lifecycleDays,
  mergeGcsRules,
  mergeS3Rules,
  ruleIdPrefix,
  s3LifecycleRules,
} from '../storage/lifecycle-rules';
import { S3Target } from '../storage/s3';
import type { StorageTarget } from '../storage/target';
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

/** What `backup init` did about one cloud repository's lifecycle rules. */
export interface LifecycleOutcome {
  /** The repository (REPO<n>), with several. */
  readonly repository?: number;
  readonly target: string;
  readonly provider: 's3' | 'gcs' | 'azure';
  /** true: the rules are in place now (put, or already there); false: printed for the user to apply. */
  readonly applied: boolean;
  /** One line: what was done, or why not. */
  readonly detail: string;
  /** The exact document: S3 lifecycle configuration, GCS lifecycle, Azure management policy. */
  readonly document: unknown;
  /** The command that applies `document` (saved as pgvault-lifecycle.json), when not applied. */
  readonly command?: string;
  /** A warning line, when an apply was tried and refused. */
  readonly warning?: string;
}

/**
 * `backup init`'s lifecycle step: for each cloud repository, the rules its provider needs
 * (core/storage/lifecycle-rules.ts), applied where the credentials may, else the exact JSON and the
 * command to apply it. S3: merged into the bucket's configuration and put (PutBucketLifecycle-
 * Configuration), unless S3_LIFECYCLE_TAGS says the bucket's own tag rules (the AWS deployment's)
 * manage it; refused (AccessDenied, or a store without lifecycle): printed, with a warning. GCS the
 * same way (the bucket's lifecycle merged and patched; 403: printed with the gcloud command). Azure:
 * printed (Azure's management policy is an ARM resource, which a data-plane credential cannot
 * write). Never fails the command.
 */
export async function lifecycleRules(
  vault: Vault,
  options: { readonly apply?: boolean } = {},
): Promise<LifecycleOutcome[]> {
  const apply = options.apply ?? true;
  const out: LifecycleOutcome[] = [];
  for (const target of vault.targets) {
    // With repositories each one's own retention (REPO<n>_RETENTION_*), classes and placement (REPO<n>_HOLDS).
    const repo = repositoryOf(target);
    const config = repo?.config ?? vault.config;
    const scope = scopeOf(target, vault.config.clusterName, repo?.holds);
    if (scope === undefined) continue;
    const days = lifecycleDays(config, repo?.holds);
    const named = repo ? { repository: repo.n } : {};
    if (target instanceof S3Target)
      out.push({ ...named, ...(await s3Lifecycle(config, target, scope, apply)) });
    else if (target instanceof AzureTarget) {
      const document = azureManagementPolicy(scope, days, config.cloud.accessTier);
      out.push({
        ...named,
        target: target.location,
        provider: 'azure',
        applied: false,
        detail: `printed, not applied: an Azure lifecycle management policy is set on the storage account through Azure Resource Manager, which a data-plane credential (key, SAS, blob data role) cannot do; apply it with the command below (it replaces the account's policy: merge with its existing rules first)`,
        document,
        command: `az storage account management-policy create --account-name ${target.account ?? '<account>'} --resource-group <resource-group> --policy @pgvault-lifecycle.json`,
      });
    } else if (target instanceof GcsTarget)
      out.push({ ...named, ...(await gcsLifecycle(target, scope, days, apply)) });
  }
  return out;
}

function scopeOf(
  target: StorageTarget,
  cluster: string,
  holds: readonly string[] | undefined,
): LifecycleScope | undefined {
  if (target.kind === 'file') return undefined;
  const { bucket, container, prefix } = target as { bucket?: string; container?: string; prefix?: string };
  const name = bucket ?? container;
  return name === undefined
    ? undefined
    : { bucket: name, prefix: prefix ?? '', cluster, ...(holds ? { holds } : {}) };
}

async function s3Lifecycle(
  config: Config,
  target: S3Target,
  scope: LifecycleScope,
  apply: boolean,
): Promise<LifecycleOutcome> {
  const ours = s3LifecycleRules(scope, lifecycleDays(config, scope.holds), config.cloud.storageClass);
  const base = { target: target.location, provider: 's3' as const };
  const command = `aws s3api put-bucket-lifecycle-configuration --bucket ${scope.bucket} --lifecycle-configuration file://pgvault-lifecycle.json`;
  if (target.lifecycleTags) {
    return {
      ...base,
      applied: false,
      detail:
        "not changed: with S3_LIFECYCLE_TAGS=true the bucket's own rules select objects by their pgvault-lifecycle tag (the AWS deployment's); these prefix rules are for a bucket without them",
      document: { Rules: ours },
    };
  }
  if (!apply) {
    return {
      ...base,
      applied: false,
      detail:
        "printed, not applied (--print-lifecycle); apply it with the command below (it replaces the bucket's lifecycle rules: merge with its existing ones first)",
      document: { Rules: ours },
      command,
    };
  }
  let existing: Awaited<ReturnType<S3Target['lifecycleRules']>>;
  try {
    existing = await target.lifecycleRules();
  } catch (err) {
    return printedS3(base, { Rules: ours }, command, err, false);
  }
  const merged = mergeS3Rules(existing, ours, scope);
  const kept = merged.kept > 0 ? `; the bucket's ${merged.kept} other rule(s) kept` : '';
  if (!merged.changed) {
    return {
      ...base,
      applied: true,
      detail: `already in place: ${ours.length} rules for ${ruleIdPrefix(scope).slice('pgvault:'.length)}${kept}`,
      document: { Rules: merged.rules },
    };
  }
  try {
    await target.putLifecycleRules(merged.rules);
  } catch (err) {
    return printedS3(base, { Rules: merged.rules }, command, err, true);
  }
  return {
    ...base,
    applied: true,
    detail: `applied: ${ours.length} rules for ${ruleIdPrefix(scope).slice('pgvault:'.length)}${kept}`,
    document: { Rules: merged.rules },
  };
}

/**
 * GCS: the bucket's lifecycle read, this cluster's rules put in place beside the others
 * (mergeGcsRules) and written only on change; refused (403: no storage.buckets.update, or a failed
 * read): printed with the gcloud command and a warning. Never fails the command.
 */
async function gcsLifecycle(
  target: GcsTarget,
  scope: LifecycleScope,
  days: ReturnType<typeof lifecycleDays>,
  apply: boolean,
): Promise<LifecycleOutcome> {
  const ours = gcsLifecycleDocument(scope, days).lifecycle.rule;
  const base = { target: target.location, provider: 'gcs' as const };
  const command = `gcloud storage buckets update gs://${scope.bucket} --lifecycle-file=pgvault-lifecycle.json`;
  const scopeName = ruleIdPrefix(scope).slice('pgvault:'.length);
  const printed = (rule: readonly object[], why: string, merged: boolean): LifecycleOutcome => ({
    ...base,
    applied: false,
    detail: `printed, not applied (${why}); apply it with the command below (${
      merged
        ? "the bucket's whole lifecycle, its other rules included"
        : "it replaces the bucket's lifecycle rules: merge with its existing ones first"
    })`,
    document: { lifecycle: { rule } },
    command,
    ...(why === '--print-lifecycle'
      ? {}
      : {
          warning: `lifecycle rules of ${base.target} not applied (${why}); the JSON to apply and the command are printed`,
        }),
  });
  if (!apply) return printed(ours, '--print-lifecycle', false);
  let existing: Array<Record<string, unknown>>;
  try {
    existing = await target.lifecycleRules();
  } catch (err) {
    return printed(ours, errorMessage(err).split('\n')[0]!, false);
  }
  const merged = mergeGcsRules(existing, ours, scope);
  const kept = merged.kept > 0 ? `; the bucket's ${merged.kept} other rule(s) kept` : '';
  if (!merged.changed) {
    return {
      ...base,
      applied: true,
      detail: `already in place: ${ours.length} rules for ${scopeName}${kept}`,
      document: { lifecycle: { rule: merged.rules } },
    };
  }
  try {
    await target.putLifecycleRules(merged.rules);
  } catch (err) {
    return printed(merged.rules, errorMessage(err).split('\n')[0]!, true);
  }
  return {
    ...base,
    applied: true,
    detail: `applied: ${ours.length} rules for ${scopeName}${kept}`,
    document: { lifecycle: { rule: merged.rules } },
  };
}

function printedS3(
  base: { target: string; provider: 's3' },
  document: { Rules: unknown[] },
  command: string,
  err: unknown,
  merged: boolean,
): LifecycleOutcome {
  const why = errorMessage(err).split('\n')[0];
  const whole = merged
    ? "the bucket's whole configuration, its other rules included"
    : "it replaces the bucket's lifecycle rules: merge with its existing ones first";
  return {
    ...base,
    applied: false,
    detail: `printed, not applied (${why}); apply it with the command below (${whole})`,
    document,
    command,
    warning: `lifecycle rules of ${base.target} not applied (${why}); the JSON to apply and the command are printed`,
  };
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
