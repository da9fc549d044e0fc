import { createHash } from 'node:crypto';
import { type Config, type PerLifecycleKind, type RepositoryKind, repositoryHolds } from '../config';
import { LIFECYCLE_FOLDERS } from './s3';

/**
 * The bucket lifecycle rules a repository needs, per provider, from pgvault's lifecycle kinds
 * (core/storage/s3.ts lifecycleTagFor: `archive` weekly and monthly backups, `expire` daily backups,
 * config, indexes and WAL, `report` reports and drill records; manual backups none) and the retention
 * settings. `backup init` (core/backup/init.ts) applies them where the credentials may (S3) and prints
 * the exact documents where they may not. Pure: documents only, no SDK.
 *
 * Rules are a safety net behind `backup retention`, the same as the AWS deployment's tag rules
 * (infra/constructs/vault-bucket.ts), with the same days:
 * - every managed folder expires after the longest retention hold + 60 days (infra/config.ts
 *   longestHoldDays: RETENTION_DAYS, _WEEKS x 7, _MONTHS x 31, _WAL_DAYS, the config and indexes
 *   counts as days), so retention, not the rule, deletes in the ordinary course;
 * - weekly and monthly backups move after 30 days (the guide: "Glacier after 30 days") to the
 *   cheaper class that is still read at once: S3 GLACIER_IR, GCS NEARLINE, Azure Cool (Archive and
 *   GLACIER need hours of rehydration before a restore, verify or drill can read them). Not when
 *   S3_STORAGE_CLASS_ARCHIVE / AZURE_ACCESS_TIER_ARCHIVE already writes them in their class;
 * - reports and drill records expire after 400 days (retention does not manage them);
 * - unfinished uploads and old versions go after 7 and 30 days.
 * Every rule is scoped to the repository's prefix and cluster: `<CLOUD_PREFIX>/<cluster>/<folder>/`.
 * WAL's rule is scoped to `<cluster>/wal/0`, the timeline folders (00000001 ...), so that
 * `wal/archive.json` (how the archive is encrypted; read forever) is never expired.
 */

/** Where the rules apply: the bucket (container), the repository's prefix and the cluster. */
export interface LifecycleScope {
  readonly bucket: string;
  readonly prefix: string;
  readonly cluster: string;
  /**
   * REPO<n>_HOLDS of the repository (several repositories): only the folders it holds get rules (a
   * repository without weekly and monthly backups has no archive rule). Absent: every folder.
   */
  readonly holds?: readonly string[];
}

/** The repository kind (and schedule) a lifecycle folder holds, for REPO<n>_HOLDS. */
function folderKind(folder: string): [RepositoryKind, string?] {
  const [top, schedule] = folder.split('/');
  if (top === 'full' || top === 'base') return [top, schedule];
  if (top === 'drills' || top === 'reports') return ['reports'];
  return [top as RepositoryKind];
}

function scopeHolds(scope: Pick<LifecycleScope, 'holds'>, folder: string): boolean {
  return scope.holds === undefined || repositoryHolds(scope.holds, ...folderKind(folder));
}

export interface LifecycleDays {
  /** Days after which weekly and monthly backups move to the colder class; undefined: no move. */
  readonly archiveAfterDays?: number;
  /** Days after which the managed folders expire (the safety net). */
  readonly expireAfterDays: number;
  /** Days after which reports and drill records expire. */
  readonly reportsExpireAfterDays: number;
  /** Days after which an unfinished multipart upload is aborted (S3). */
  readonly abortIncompleteDays: number;
  /** Days after which a version that is no longer current is deleted (versioned buckets). */
  readonly noncurrentVersionDays: number;
}

const ARCHIVE_AFTER_DAYS = 30;
const SAFETY_MARGIN_DAYS = 60;
const REPORTS_EXPIRE_DAYS = 400;

/** The days of the rules from the retention settings (same formula as infra/config.ts expirationDays). */
export function lifecycleDays(
  config: Pick<Config, 'retention'>,
  /** A repository's REPO<n>_HOLDS: only the holds of what it keeps count. */
  holds?: readonly string[],
): LifecycleDays {
  const r = config.retention;
  const held = (folders: string[]) => holds === undefined || folders.some((f) => scopeHolds({ holds }, f));
  const hold = Math.max(
    held(['full/daily/', 'base/daily/']) ? r.days : 0,
    held(['full/weekly/', 'base/weekly/']) ? r.weeks * 7 : 0,
    held(['full/monthly/', 'base/monthly/']) ? r.months * 31 : 0,
    held(['wal/']) ? r.walDays : 0,
    held(['config/']) ? r.configCount : 0,
    held(['indexes/']) ? r.indexesCount : 0,
  );
  const expireAfterDays = hold + SAFETY_MARGIN_DAYS;
  return {
    ...(ARCHIVE_AFTER_DAYS < expireAfterDays ? { archiveAfterDays: ARCHIVE_AFTER_DAYS } : {}),
    expireAfterDays,
    reportsExpireAfterDays: REPORTS_EXPIRE_DAYS,
    abortIncompleteDays: 7,
    noncurrentVersionDays: 30,
  };
}

type Kind = 'archive' | 'expire' | 'report';

/** The key prefixes (relative to the bucket) of one lifecycle kind of a cluster in a repository. */
export function kindPrefixes(scope: LifecycleScope, kind: Kind): string[] {
  const base = clusterPrefix(scope);
  return LIFECYCLE_FOLDERS.filter(([folder, k]) => k === kind && scopeHolds(scope, folder)).map(([folder]) =>
    // The timeline folders only: wal/archive.json is kept forever.
    folder === 'wal/' ? `${base}wal/0` : `${base}${folder}`,
  );
}

function clusterPrefix(scope: LifecycleScope): string {
  return `${scope.prefix === '' ? '' : `${scope.prefix}/`}${scope.cluster}/`;
}

/** What names pgvault's own rules of this scope (the rules of other clusters and tools are kept). */
export function ruleIdPrefix(scope: LifecycleScope): string {
  return `pgvault:${clusterPrefix(scope)}`;
}

// ---------------------------------------------------------------------------------------------- S3

/** One rule of a PutBucketLifecycleConfiguration (the SDK's and `aws s3api`'s JSON shape). */
export interface S3LifecycleRule {
  readonly ID: string;
  readonly Status: 'Enabled';
  readonly Filter:
    | { readonly Prefix: string }
    | { readonly And: { readonly Prefix: string; readonly ObjectSizeGreaterThan: number } };
  readonly Expiration?: { readonly Days: number };
  readonly Transitions?: ReadonlyArray<{ readonly Days: number; readonly StorageClass: string }>;
  readonly AbortIncompleteMultipartUpload?: { readonly DaysAfterInitiation: number };
  readonly NoncurrentVersionExpiration?: { readonly NoncurrentDays: number };
}

/** Manifests (small JSON, read by every listing) stay in STANDARD: GLACIER_IR bills 128 KiB at least. */
const ARCHIVE_MIN_OBJECT_BYTES = 128 * 1024;

/** pgvault's S3 rules for one cluster: one per folder and action (S3 filters take one prefix). */
export function s3LifecycleRules(
  scope: LifecycleScope,
  days: LifecycleDays,
  storageClass?: PerLifecycleKind<string>,
): S3LifecycleRule[] {
  const id = ruleIdPrefix(scope);
  const rules: S3LifecycleRule[] = [];
  const moves = days.archiveAfterDays !== undefined && storageClass?.archive === undefined;
  for (const prefix of kindPrefixes(scope, 'archive')) {
    const folder = prefix.slice(clusterPrefix(scope).length);
    if (moves) {
      rules.push({
        ID: `${id}${folder}archive`,
        Status: 'Enabled',
        Filter: { And: { Prefix: prefix, ObjectSizeGreaterThan: ARCHIVE_MIN_OBJECT_BYTES } },
        Transitions: [{ Days: days.archiveAfterDays!, StorageClass: 'GLACIER_IR' }],
      });
    }
    rules.push({
      ID: `${id}${folder}expire`,
      Status: 'Enabled',
      Filter: { Prefix: prefix },
      Expiration: { Days: days.expireAfterDays },
    });
  }
  for (const [kind, after] of [
    ['expire', days.expireAfterDays],
    ['report', days.reportsExpireAfterDays],
  ] as const) {
    for (const prefix of kindPrefixes(scope, kind)) {
      const folder = prefix.slice(clusterPrefix(scope).length);
      rules.push({
        ID: `${id}${folder}expire`,
        Status: 'Enabled',
        Filter: { Prefix: prefix },
        Expiration: { Days: after },
      });
    }
  }
  rules.push({
    ID: `${id}uploads-versions`,
    Status: 'Enabled',
    Filter: { Prefix: clusterPrefix(scope) },
    AbortIncompleteMultipartUpload: { DaysAfterInitiation: days.abortIncompleteDays },
    NoncurrentVersionExpiration: { NoncurrentDays: days.noncurrentVersionDays },
  });
  return rules;
}

/**
 * The bucket's whole configuration with pgvault's rules of this scope in place: PutBucketLifecycle-
 * Configuration replaces every rule of the bucket, so the rules of other clusters and tools are kept
 * as they are, and this scope's former pgvault rules are replaced. `changed` false: nothing to put.
 */
export function mergeS3Rules<R extends { ID?: string }>(
  existing: readonly R[],
  ours: readonly S3LifecycleRule[],
  scope: LifecycleScope,
): { rules: Array<R | S3LifecycleRule>; kept: number; changed: boolean } {
  const idPrefix = ruleIdPrefix(scope);
  const others = existing.filter((r) => !(r.ID ?? '').startsWith(idPrefix));
  const former = existing.filter((r) => (r.ID ?? '').startsWith(idPrefix));
  const changed = canonical(former) !== canonical(ours);
  return { rules: [...others, ...ours], kept: others.length, changed };
}

/** A rule list as comparable text (the SDK gives rules back with extra empty fields and in any key order). */
function canonical(rules: readonly object[]): string {
  const clean = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(clean);
    if (v instanceof Date) return v.toISOString();
    if (v !== null && typeof v === 'object') {
      const entries = Object.entries(v)
        .filter(([, x]) => x !== undefined && !(Array.isArray(x) && x.length === 0))
        .sort(([a], [b]) => a.localeCompare(b));
      return Object.fromEntries(entries.map(([k, x]) => [k, clean(x)]));
    }
    return v;
  };
  return JSON.stringify(
    [...rules].map(clean).sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))),
  );
}

// --------------------------------------------------------------------------------------------- GCS

/** One GCS Object Lifecycle Management rule (the JSON API's bucket `lifecycle.rule[]`). */
export interface GcsLifecycleRule {
  readonly action: { readonly type: 'Delete' | 'SetStorageClass'; readonly storageClass?: string };
  readonly condition: {
    readonly age?: number;
    readonly matchesPrefix?: readonly string[];
    readonly matchesStorageClass?: readonly string[];
    readonly isLive?: boolean;
    readonly daysSinceNoncurrentTime?: number;
  };
}

/**
 * The GCS lifecycle document, as `gcloud storage buckets update gs://BUCKET --lifecycle-file=FILE`
 * takes it (`gsutil lifecycle set` takes the inner `{"rule": [...]}` too): matchesPrefix takes a list,
 * so one rule per kind and action. It replaces the bucket's rules: merge with the bucket's own first.
 */
export function gcsLifecycleDocument(
  scope: LifecycleScope,
  days: LifecycleDays,
  storageClass?: PerLifecycleKind<string>,
): { lifecycle: { rule: GcsLifecycleRule[] } } {
  const rule: GcsLifecycleRule[] = [];
  const archive = kindPrefixes(scope, 'archive');
  if (days.archiveAfterDays !== undefined && storageClass?.archive === undefined && archive.length > 0) {
    rule.push({
      action: { type: 'SetStorageClass', storageClass: 'NEARLINE' },
      condition: { age: days.archiveAfterDays, matchesPrefix: archive, matchesStorageClass: ['STANDARD'] },
    });
  }
  rule.push(
    {
      action: { type: 'Delete' },
      condition: { age: days.expireAfterDays, matchesPrefix: [...archive, ...kindPrefixes(scope, 'expire')] },
    },
    {
      action: { type: 'Delete' },
      condition: { age: days.reportsExpireAfterDays, matchesPrefix: kindPrefixes(scope, 'report') },
    },
    {
      action: { type: 'Delete' },
      condition: {
        isLive: false,
        daysSinceNoncurrentTime: days.noncurrentVersionDays,
        matchesPrefix: [clusterPrefix(scope)],
      },
    },
  );
  // A condition without matchesPrefix would reach the whole bucket: a kind this repository does not hold has no rule.
  return { lifecycle: { rule: rule.filter((r) => r.condition.matchesPrefix?.length !== 0) } };
}

/**
 * The bucket's whole lifecycle with pgvault's rules of this scope in place (a bucket PATCH of
 * `lifecycle` replaces every rule). GCS rules have no ids: this scope's rules are those whose every
 * `matchesPrefix` is under the cluster's prefix (`<prefix>/<cluster>/`); every other rule (other
 * clusters', other tools', rules without a prefix) is kept as it is. `changed` false: nothing to write.
 */
export function mergeGcsRules<R extends { condition?: { matchesPrefix?: readonly string[] } }>(
  existing: readonly R[],
  ours: readonly GcsLifecycleRule[],
  scope: LifecycleScope,
): { rules: Array<R | GcsLifecycleRule>; kept: number; changed: boolean } {
  const base = clusterPrefix(scope);
  const isOurs = (r: R) => {
    const prefixes = r.condition?.matchesPrefix ?? [];
    return prefixes.length > 0 && prefixes.every((p) => p.startsWith(base));
  };
  const others = existing.filter((r) => !isOurs(r));
  const former = existing.filter(isOurs);
  const changed = canonical(former) !== canonical(ours);
  return { rules: [...others, ...ours], kept: others.length, changed };
}

// ------------------------------------------------------------------------------------------- Azure

interface AzureDaysAfter {
  readonly daysAfterModificationGreaterThan: number;
}

/** One rule of an Azure Storage lifecycle management policy (the ARM `policy.rules[]` schema). */
export interface AzureManagementRule {
  readonly enabled: true;
  readonly name: string;
  readonly type: 'Lifecycle';
  readonly definition: {
    readonly actions: {
      readonly baseBlob: {
        readonly tierToCool?: AzureDaysAfter;
        readonly tierToArchive?: AzureDaysAfter;
        readonly delete?: AzureDaysAfter;
      };
      readonly version?: { readonly delete: { readonly daysAfterCreationGreaterThan: number } };
    };
    readonly filters: { readonly blobTypes: readonly ['blockBlob']; readonly prefixMatch: readonly string[] };
  };
}

/**
 * The Azure management policy document, as `az storage account management-policy create --policy
 * @FILE` takes it. prefixMatch starts with the container's name (at most 10 per rule: one rule per
 * kind). A storage account has one policy: merge with its existing rules first. Rule names: letters
 * and digits only, unique per account (the scope's hash keeps two clusters' rules apart).
 */
export function azureManagementPolicy(
  scope: LifecycleScope,
  days: LifecycleDays,
  accessTier?: PerLifecycleKind<string>,
): { rules: AzureManagementRule[] } {
  const hash = createHash('sha256').update(clusterPrefix(scope)).digest('hex').slice(0, 8);
  const readable = clusterPrefix(scope)
    .replace(/[^A-Za-z0-9]/g, '')
    .slice(0, 200);
  const name = (kind: string) => `pgvault${readable}${hash}${kind}`;
  const inContainer = (prefixes: string[]) => prefixes.map((p) => `${scope.bucket}/${p}`);
  const version = { delete: { daysAfterCreationGreaterThan: days.noncurrentVersionDays } };
  const rule = (
    kind: string,
    prefixes: string[],
    baseBlob: AzureManagementRule['definition']['actions']['baseBlob'],
  ): AzureManagementRule => ({
    enabled: true,
    name: name(kind),
    type: 'Lifecycle',
    definition: {
      actions: { baseBlob, version },
      filters: { blobTypes: ['blockBlob'], prefixMatch: inContainer(prefixes) },
    },
  });
  const moves = days.archiveAfterDays !== undefined && accessTier?.archive === undefined;
  const rules = [
    rule('archive', kindPrefixes(scope, 'archive'), {
      ...(moves ? { tierToCool: { daysAfterModificationGreaterThan: days.archiveAfterDays! } } : {}),
      delete: { daysAfterModificationGreaterThan: days.expireAfterDays },
    }),
    rule('expire', kindPrefixes(scope, 'expire'), {
      delete: { daysAfterModificationGreaterThan: days.expireAfterDays },
    }),
    rule('report', kindPrefixes(scope, 'report'), {
      delete: { daysAfterModificationGreaterThan: days.reportsExpireAfterDays },
    }),
  ];
  // An empty prefixMatch would reach the whole account: a kind this repository does not hold has no rule.
  return { rules: rules.filter((r) => r.definition.filters.prefixMatch.length > 0) };
}
