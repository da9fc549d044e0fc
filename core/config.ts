import { readFileSync } from 'node:fs';
import { availableParallelism, hostname } from 'node:os';
import { isAbsolute, resolve } from 'node:path';
import { parseEnv } from 'node:util';
import { ConfigError } from './errors';
import { libpqWarnings } from './pg/libpq';

/**
 * The one config reader. Keys are the backup guide's (BACKUP_DIR, COMPRESSION, ...) plus libpq's
 * (PGHOST, ...). Sources, strongest first:
 *   1. the process environment,
 *   2. the file named by --config or PGVAULT_CONFIG (KEY=VALUE lines, the .env format),
 *   3. `.env` in the working directory.
 * Every value is validated here once; everything else receives a typed Config.
 */

export const COMPRESSIONS = ['gzip', 'bzip2', 'xz', 'zstd', 'lz4', 'none'] as const;
export type Compression = (typeof COMPRESSIONS)[number];
export const CLOUD_PROVIDERS = ['s3', 'gcs', 'azure', 'none'] as const;
export type CloudProvider = (typeof CLOUD_PROVIDERS)[number];
export const DEPLOYMENT_MODES = ['single-node', 'citus', 'patroni'] as const;
export type DeploymentMode = (typeof DEPLOYMENT_MODES)[number];

export interface PgConnection {
  readonly host?: string;
  readonly port?: number;
  readonly user?: string;
  readonly database?: string;
  /** Never logged, never put on a command line; handed to children as PGPASSWORD in their env. */
  readonly password?: string;
  /**
   * libpq's other settings (LIBPQ_KEYS: PGSSLMODE, PGSSLROOTCERT, PGAPPNAME, ...) from any source, the
   * environment winning: handed to children as they are (pgEnv) and mapped for node-postgres
   * (core/pg/libpq.ts). Paths and modes only; no secret.
   */
  readonly libpq?: Readonly<Record<string, string>>;
  /**
   * A private server of this process (the restore-test sandbox, core/restore/scratch.ts): its
   * clients get none of the environment's libpq settings (PGHOSTADDR, PGSSLMODE, PGPASSWORD, ...),
   * which name the configured server.
   */
  readonly isolated?: boolean;
  /**
   * DEPLOYMENT_MODE=patroni: connections go to the cluster's leader, found through the Patroni REST
   * API (core/topology), not to host/port. Set on config.pg; a connection to one chosen node has none.
   */
  readonly patroni?: PatroniConfig;
}

/** The Patroni REST API (DEPLOYMENT_MODE=patroni), read by core/topology. */
export interface PatroniConfig {
  /**
   * PATRONI_URL: every node's REST API, tried in turn; without the user:password of a URL (kept in
   * `auth`). Never logged with credentials.
   */
  readonly urls: readonly { readonly url: string; readonly auth?: string }[];
  /** PATRONI_USERNAME + PATRONI_PASSWORD as `user:password`, for URLs without their own. Never logged. */
  readonly auth?: string;
  /** PATRONI_CACERT: the CA file that signs the API's certificate (https://), read when first needed. */
  readonly caFile?: string;
  /** PATRONI_TIMEOUT: seconds one URL may take to answer before the next is tried. */
  readonly timeoutSeconds: number;
}

/** REPLICA_MAX_LAG: a replica further behind than this is not read from (bytes of WAL, or seconds). */
export type LagLimit = { readonly bytes: number } | { readonly seconds: number };

export interface EncryptionConfig {
  readonly enabled: boolean;
  /** The passphrase (ENCRYPTION_KEY or the contents of ENCRYPTION_KEY_FILE). Never logged. */
  readonly passphrase?: string;
  /** ENCRYPTION_KEY_FILE as an absolute path, when the key came from a file (restore_command reuses it). */
  readonly keyFile?: string;
  /** PBKDF2-SHA256 iterations for new objects; each object records its own. */
  readonly iterations: number;
  /** Retired keys (ENCRYPTION_KEYS_RETIRED_FILE, one per line): they read older objects, never write. */
  readonly retired?: readonly string[];
  /** ENCRYPTION_KEYS_RETIRED_FILE as an absolute path (restore_command reuses it). */
  readonly retiredFile?: string;
}

export interface CloudConfig {
  readonly provider: CloudProvider;
  readonly bucket?: string;
  /** Key prefix inside the bucket, no leading or trailing slash ('' for the bucket root). */
  readonly prefix: string;
  readonly s3Endpoint?: string;
  readonly region: string;
  /**
   * S3_LIFECYCLE_TAGS: tag each object with its lifecycle class (`pgvault-lifecycle`), which the AWS
   * deployment's bucket rules select on. Off by default: hand-made policies and some S3-compatible
   * stores do not allow tagging.
   */
  readonly lifecycleTags: boolean;
  /**
   * AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN) from any source (a --config file
   * too), handed to the S3 client. Never logged. Absent: the SDK's default chain.
   */
  readonly credentials?: {
    readonly accessKeyId: string;
    readonly secretAccessKey: string;
    readonly sessionToken?: string;
  };
  /** AWS_PROFILE from any source, handed to the S3 client (used when no keys are given). */
  readonly profile?: string;
  /**
   * S3_REQUEST_TIMEOUT: seconds a request may go without an answer (a single request: to its
   * answer; an upload: of silence on the connection) before it is cut and retried.
   */
  readonly requestTimeoutSeconds: number;
  /** S3_MAX_ATTEMPTS: attempts per request, the first included. */
  readonly maxAttempts: number;
  /**
   * OBJECT_LOCK_MODE (governance, compliance) with OBJECT_LOCK_RETAIN=gfs (the default once a mode is
   * set; S3_OBJECT_LOCK_* are the older names): each new object carries its own retain-until, its
   * planned GFS expiry (core/retention/lock.ts), never less than OBJECT_LOCK_MIN_DAYS from the write.
   * S3: Object Lock mode; Azure: immutability policy (governance Unlocked, compliance Locked). Absent:
   * no lock (a bucket's or container's default retention still applies).
   */
  readonly objectLock?: { readonly mode: 'GOVERNANCE' | 'COMPLIANCE'; readonly minDays: number };
  /** CLOUD_PROVIDER=azure: the account and how to authenticate (azureSettings). Never logged. */
  readonly azure?: AzureSettings;
  /**
   * S3_STORAGE_CLASS and S3_STORAGE_CLASS_<KIND> (placementSettings): the storage class each new S3
   * object is written in, by its lifecycle kind; absent: none sent (the bucket's STANDARD).
   */
  readonly storageClass?: PerLifecycleKind<S3StorageClass>;
  /** AZURE_ACCESS_TIER and AZURE_ACCESS_TIER_<KIND>: the access tier of each new blob, likewise. */
  readonly accessTier?: PerLifecycleKind<AzureAccessTier>;
  /** CLOUD_PROVIDER=gcs: endpoint, key file and storage classes (gcsSettings); the lock is objectLock. */
  readonly gcs?: GcsSettings;
}

export const GCS_STORAGE_CLASSES = ['STANDARD', 'NEARLINE', 'COLDLINE', 'ARCHIVE'] as const;
export type GcsStorageClass = (typeof GCS_STORAGE_CLASSES)[number];

/**
 * Google Cloud Storage settings. Credentials are Application Default Credentials (google-auth-library):
 * GOOGLE_APPLICATION_CREDENTIALS (a key file's path, never its contents), or workload identity / the
 * metadata server. STORAGE_EMULATOR_HOST: a local endpoint (the client's own variable).
 */
export interface GcsSettings {
  /** STORAGE_EMULATOR_HOST: http://host:port of a local JSON-API endpoint; requests are then unauthenticated. */
  readonly endpoint?: string;
  /** GOOGLE_APPLICATION_CREDENTIALS: path of a service account key file. */
  readonly keyFile?: string;
  /** GOOGLE_CLOUD_PROJECT: the project (only named in requests that need one; objects do not). */
  readonly projectId?: string;
  /** GCS_STORAGE_CLASS and GCS_STORAGE_CLASS_<KIND>: the storage class of each new object. */
  readonly storageClass?: PerLifecycleKind<GcsStorageClass>;
}

/**
 * A setting per lifecycle kind of an object (core/storage/s3.ts lifecycleTagFor: `archive` weekly and
 * monthly backups, `expire` daily backups, config, indexes and WAL, `report` reports and drill
 * records), with `default` for the kinds not named and for manifests and the small catalog objects.
 */
export interface PerLifecycleKind<T> {
  readonly default?: T;
  readonly archive?: T;
  readonly expire?: T;
  readonly report?: T;
}

export const S3_STORAGE_CLASSES = [
  'STANDARD',
  'INTELLIGENT_TIERING',
  'STANDARD_IA',
  'ONEZONE_IA',
  'GLACIER_IR',
  'GLACIER',
  'DEEP_ARCHIVE',
] as const;
export type S3StorageClass = (typeof S3_STORAGE_CLASSES)[number];
export const AZURE_ACCESS_TIERS = ['Hot', 'Cool', 'Cold', 'Archive'] as const;
export type AzureAccessTier = (typeof AZURE_ACCESS_TIERS)[number];

/**
 * Azure Blob settings: AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or
 * AZURE_STORAGE_CONNECTION_STRING alone; with none of the three secrets, Entra ID through
 * @azure/identity's DefaultAzureCredential (managed identity, workload identity, AZURE_CLIENT_* env).
 */
export interface AzureSettings {
  readonly account?: string;
  readonly connectionString?: string;
  readonly accountKey?: string;
  readonly sasToken?: string;
}

/** Thresholds of the alerts (core/alert/thresholds.ts) and where they are sent. */
export interface AlertConfig {
  /** ALERT_CAPACITY_PERCENT: a target's disk (or STORAGE_QUOTA_GB) used at or above this alerts. */
  readonly capacityPercent: number;
  /** ALERT_BACKUP_AGE_HOURS: the newest full or base backup older than this alerts. */
  readonly backupAgeHours: number;
  /** ALERT_SHRINK_PERCENT: a backup this much smaller than the previous one of its database is suspect. */
  readonly shrinkPercent: number;
  /** RPO_TARGET_MINUTES: most data loss allowed (now minus the newest archived WAL, or newest backup). */
  readonly rpoTargetMinutes: number;
  /** RTO_TARGET_MINUTES: longest recovery allowed (measured by drills and restore tests). */
  readonly rtoTargetMinutes: number;
  /** STORAGE_QUOTA_GB in bytes (1 GB = 1024³ bytes): what cloud targets may hold. */
  readonly storageQuotaBytes?: number;
  /** SNS_TOPIC_ARN: alerts are published there when set. */
  readonly snsTopicArn?: string;
  /**
   * EMAIL_TO: who gets alert mail: the topic's email subscribers (the stack subscribes them) and,
   * with SMTP_URL, the recipients of the mail pgvault sends itself.
   */
  readonly emailTo: readonly string[];
  /** EMAIL_NOTIFICATIONS: false turns SMTP mail off; true needs SMTP_URL or SNS_TOPIC_ARN. */
  readonly emailNotifications?: boolean;
  /**
   * SMTP_URL (smtp:// or smtps://, user:password@ allowed) with EMAIL_TO: alerts are mailed there.
   * The URL may hold a password: never logged; messages name it by host and port only.
   */
  readonly smtp?: { readonly url: string; readonly from: string; readonly to: readonly string[] };
  /** ALERT_WEBHOOK_URL: each alert is POSTed there as JSON (core/alert/channels.ts). May hold a token. */
  readonly webhookUrl?: string;
  /** ALERT_COMMAND: run by /bin/sh for each alert, the alert in its environment and on stdin. */
  readonly command?: string;
}

export interface Config {
  readonly backupDir: string;
  readonly walArchiveDir: string;
  /**
   * GFS retention (core/retention): days/weeks/months for full and base backups, newest N config and
   * index backups, and the PITR window in days that WAL retention keeps recoverable.
   */
  readonly retention: {
    readonly days: number;
    readonly weeks: number;
    readonly months: number;
    readonly configCount: number;
    readonly indexesCount: number;
    readonly walDays: number;
  };
  readonly compression: Compression;
  /** Optional level for the compressor; each tool's default when absent. */
  readonly compressionLevel?: number;
  readonly parallelJobs: number;
  readonly encryption: EncryptionConfig;
  readonly cloud: CloudConfig;
  /** With a cloud target: also keep the local copy under BACKUP_DIR (the guide's "Local + Cloud"). */
  readonly localCopy: boolean;
  readonly deploymentMode: DeploymentMode;
  readonly clusterName: string;
  readonly pg: PgConnection;
  /** DEPLOYMENT_MODE=patroni: the REST API (also on pg.patroni); undefined otherwise. */
  readonly patroni?: PatroniConfig;
  /** BACKUP_FROM: where full backups read from (replica: a healthy one, else the leader with a warning). */
  readonly backupFrom: 'replica' | 'leader';
  /** REPLICA_MAX_LAG: the most a replica may lag to be read from. */
  readonly replicaMaxLag: LagLimit;
  /**
   * PATRONI_NAME: the Patroni member this host runs (Patroni's own variable for it), named in the
   * WAL conflict line, `pgvault topology` (`self`) and the manifests of single-node connections.
   */
  readonly patroniName?: string;
  /** Directory holding pg_dump, pg_restore, ...; found automatically when absent. */
  readonly pgBinDir?: string;
  /**
   * RESTORE_TEST_TARGET: where `restore test`, `verify restore` and `drill` restore a full backup
   * (`verify indexes` too, for the schema it rebuilds indexes on).
   * 'sandbox' (default): a throwaway server this process starts (core/restore/scratch.ts); 'server':
   * temporary databases on the configured server (needs CREATEDB; costs its disk, I/O and WAL).
   */
  readonly restoreTestTarget: 'sandbox' | 'server';
  /**
   * INDEX_BUILD_MAINTENANCE_WORK_MEM / INDEX_BUILD_PARALLEL_WORKERS: maintenance_work_mem and
   * max_parallel_maintenance_workers for the index builds of `restore indexes` and `verify indexes`
   * (an HNSW build is far faster when its graph fits in maintenance_work_mem). Unset: the server's.
   */
  readonly indexBuild: { readonly maintenanceWorkMem?: string; readonly parallelWorkers?: number };
  /**
   * BASE_INCREMENTAL: scheduled `backup base` runs take incremental base backups (PostgreSQL 17+,
   * summarize_wal = on); on an older server they take a full one and say so.
   */
  readonly baseIncremental: boolean;
  /** INCREMENTAL_CHAIN_MAX: after this many incrementals in a chain the next base backup is a full. */
  readonly incrementalChainMax: number;
  /**
   * ARCHIVE_ASYNC: `backup wal` only confirms what a long-lived uploader (`wal push-async`) already
   * stored ahead of time, in parallel (pgBackRest's archive-async). Off: each call stores its file.
   */
  readonly archiveAsync: boolean;
  /**
   * SPOOL_DIR: where the uploader leaves its `<wal file>.ok` / `.error` markers and the archive
   * identity cache; relative paths are taken from the data directory. Default `pg_wal/pgvault-spool`.
   */
  readonly spoolDir?: string;
  /** ARCHIVE_TIMEOUT: seconds `backup wal` waits for the uploader before failing (PostgreSQL retries). */
  readonly archiveTimeoutSeconds: number;
  /** WAL_PREFETCH: segments `restore wal` fetches ahead of recovery; 0 turns prefetching off. */
  readonly walPrefetch: number;
  /** WAL_RECEIVE_DIR: staging directory of `wal receive` (pg_receivewal -D). */
  readonly walReceiveDir: string;
  /** Alert thresholds, RPO/RTO targets and where alerts go (core/alert). */
  readonly alerts: AlertConfig;
  /** EVENT_BUS_NAME: lifecycle events (core/events.ts) are put on this EventBridge bus (name or ARN). */
  readonly eventBusName?: string;
  /**
   * PGVAULT_METRICS: 'emf' writes CloudWatch embedded-metric-format lines (core/events.ts), 'off'
   * none. The default (auto) is emf inside Lambda or ECS (AWS_EXECUTION_ENV, ECS_CONTAINER_METADATA_URI_V4).
   */
  readonly metrics: 'emf' | 'off';
  /** Where the values came from, for `pgvault config` style messages. */
  readonly sources: readonly string[];
  /**
   * Settings that work but should be changed (a placeholder or short ENCRYPTION_KEY, a
   * DEPLOYMENT_MODE not built yet): one line each, printed by the CLI once per command. No secret.
   */
  readonly warnings: readonly string[];
  /**
   * REPO<n>_* (repositoryConfigs): the repositories, in read order, each with its own placement and
   * its own Config (its target and retention). Absent with the single-target keys (CLOUD_PROVIDER,
   * LOCAL_COPY), which keep meaning repo1=file (unless LOCAL_COPY=false) and repo2=cloud.
   */
  readonly repositories?: readonly RepositoryConfig[];
}

export interface LoadConfigOptions {
  /** Explicit config file (--config); wins over PGVAULT_CONFIG. */
  readonly configFile?: string;
  /** Environment to read (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
  /** Directory whose .env is read (default process.cwd()). */
  readonly cwd?: string;
  /**
   * The alert section (thresholds and channels: SNS_TOPIC_ARN, EMAIL_*, SMTP_URL, ALERT_WEBHOOK_URL,
   * ...) is validated when `alerts` is first read instead of at load. For the per-segment commands
   * (backup wal, restore wal, wal push-async), which send no alert: a mistake there must not stop
   * archive_command or restore_command (pg_wal would fill up); every other command still stops on it.
   */
  readonly lazyAlerts?: boolean;
}

export const DEFAULT_ENCRYPTION_ITERATIONS = 100_000;

type Raw = Record<string, string | undefined>;

function readKeyValueFile(path: string, what: string): Raw {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(
      `${what} ${path} cannot be read (${code ?? err}); check the path and its permissions`,
    );
  }
  return parseEnv(text) as Raw;
}

/** Merges the sources, strongest last wins order reversed: env > config file > .env. */
export function collectRawConfig(options: LoadConfigOptions = {}): {
  raw: Raw;
  sources: string[];
  /** The keys each file held (the .env, the config file), for unknownKeyWarnings. */
  files: { path: string; keys: string[] }[];
} {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const sources: string[] = [];
  const files: { path: string; keys: string[] }[] = [];
  let merged: Raw = {};
  const dotEnv = resolve(cwd, '.env');
  try {
    const values = parseEnv(readFileSync(dotEnv, 'utf8')) as Raw;
    merged = { ...values };
    sources.push(dotEnv);
    files.push({ path: dotEnv, keys: Object.keys(values) });
  } catch {
    // No .env in the working directory is the common case.
  }
  const file = options.configFile ?? env.PGVAULT_CONFIG;
  if (file) {
    const path = resolve(cwd, file);
    const values = readKeyValueFile(path, 'config file');
    merged = { ...merged, ...values };
    sources.push(path);
    files.push({ path, keys: Object.keys(values) });
  }
  const fromEnv: Raw = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) fromEnv[k] = v;
  sources.push('environment');
  return { raw: { ...merged, ...fromEnv }, sources, files };
}

/**
 * libpq's environment settings besides PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSWORD (config.pg's
 * own fields): from a config file too, they reach every connection as if exported (config.pg.libpq).
 */
export const LIBPQ_KEYS: readonly string[] = [
  'PGHOSTADDR',
  'PGPASSFILE',
  'PGSERVICE',
  'PGSERVICEFILE',
  'PGOPTIONS',
  'PGAPPNAME',
  'PGCONNECT_TIMEOUT',
  'PGCLIENTENCODING',
  'PGDATESTYLE',
  'PGTZ',
  'PGSSLMODE',
  'PGREQUIRESSL',
  'PGSSLCERT',
  'PGSSLKEY',
  'PGSSLROOTCERT',
  'PGSSLCRL',
  'PGSSLCRLDIR',
  'PGSSLSNI',
  'PGSSLCERTMODE',
  'PGSSLNEGOTIATION',
  'PGSSLMINPROTOCOLVERSION',
  'PGSSLMAXPROTOCOLVERSION',
  'PGREQUIREPEER',
  'PGREQUIREAUTH',
  'PGCHANNELBINDING',
  'PGGSSENCMODE',
  'PGGSSLIB',
  'PGGSSDELEGATION',
  'PGKRBSRVNAME',
  'PGTARGETSESSIONATTRS',
  'PGLOADBALANCEHOSTS',
  'PGSYSCONFDIR',
  'PGLOCALEDIR',
];

/** The LIBPQ_KEYS set in raw (any source), for config.pg.libpq. */
function libpqSettings(raw: Raw): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of LIBPQ_KEYS) {
    const v = raw[k];
    if (v !== undefined && v !== '') out[k] = v;
  }
  return out;
}

/**
 * Every key a config file (--config, PGVAULT_CONFIG, .env) may hold without a warning: the one list.
 * test/unit/config-known-keys.test.ts checks that it holds every key this file reads, every key of
 * README's configuration table, functions/env.ts's and bin/pgvault's. An entry ending in `*` is a prefix.
 */
export const KNOWN_KEYS: readonly string[] = [
  // Read by this file.
  'BACKUP_DIR',
  'WAL_ARCHIVE_DIR',
  'ARCHIVE_ASYNC',
  'SPOOL_DIR',
  'ARCHIVE_TIMEOUT',
  'WAL_PREFETCH',
  'WAL_RECEIVE_DIR',
  'RETENTION_DAYS',
  'RETENTION_WEEKS',
  'RETENTION_MONTHS',
  'RETENTION_CONFIG_COUNT',
  'RETENTION_INDEXES_COUNT',
  'RETENTION_WAL_DAYS',
  'COMPRESSION',
  'COMPRESSION_LEVEL',
  'PARALLEL_JOBS',
  'ENCRYPTION',
  'ENCRYPTION_KEY',
  'ENCRYPTION_KEY_FILE',
  'ENCRYPTION_KEYS_RETIRED_FILE',
  'ENCRYPTION_ITERATIONS',
  'CLOUD_PROVIDER',
  'CLOUD_BUCKET',
  'CLOUD_PREFIX',
  'S3_ENDPOINT',
  'S3_LIFECYCLE_TAGS',
  'S3_REQUEST_TIMEOUT',
  'S3_MAX_ATTEMPTS',
  'S3_OBJECT_LOCK_MODE',
  'S3_OBJECT_LOCK_RETAIN',
  'S3_OBJECT_LOCK_MIN_DAYS',
  'OBJECT_LOCK_MODE',
  'OBJECT_LOCK_RETAIN',
  'OBJECT_LOCK_MIN_DAYS',
  'S3_STORAGE_CLASS',
  'S3_STORAGE_CLASS_ARCHIVE',
  'S3_STORAGE_CLASS_EXPIRE',
  'S3_STORAGE_CLASS_REPORT',
  'AZURE_ACCESS_TIER',
  'AZURE_ACCESS_TIER_ARCHIVE',
  'AZURE_ACCESS_TIER_EXPIRE',
  'AZURE_ACCESS_TIER_REPORT',
  'GCS_STORAGE_CLASS',
  'GCS_STORAGE_CLASS_ARCHIVE',
  'GCS_STORAGE_CLASS_EXPIRE',
  'GCS_STORAGE_CLASS_REPORT',
  // Read by @google-cloud/storage and google-auth-library (CLOUD_PROVIDER=gcs).
  'STORAGE_EMULATOR_HOST',
  'GOOGLE_APPLICATION_CREDENTIALS',
  'GOOGLE_CLOUD_PROJECT',
  'AZURE_STORAGE_ACCOUNT',
  'AZURE_STORAGE_KEY',
  'AZURE_STORAGE_SAS_TOKEN',
  'AZURE_STORAGE_CONNECTION_STRING',
  // Read by @azure/identity's DefaultAzureCredential from the environment (CLOUD_PROVIDER=azure).
  'AZURE_CLIENT_ID',
  'AZURE_TENANT_ID',
  'AZURE_CLIENT_SECRET',
  'AZURE_CLIENT_CERTIFICATE_PATH',
  'AZURE_FEDERATED_TOKEN_FILE',
  'AZURE_AUTHORITY_HOST',
  'AWS_DEFAULT_REGION',
  'AWS_REGION',
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_PROFILE',
  'AWS_EXECUTION_ENV',
  'ECS_CONTAINER_METADATA_URI_V4',
  'LOCAL_COPY',
  'DEPLOYMENT_MODE',
  'CLUSTER_NAME',
  'PATRONI_USERNAME',
  'PATRONI_PASSWORD',
  'PATRONI_CACERT',
  'PATRONI_TIMEOUT',
  'PATRONI_NAME',
  'BACKUP_FROM',
  'REPLICA_MAX_LAG',
  'PGHOST',
  'PGPORT',
  'PGUSER',
  'PGDATABASE',
  'PGPASSWORD',
  'PG_BIN_DIR',
  'RESTORE_TEST_TARGET',
  'INDEX_BUILD_MAINTENANCE_WORK_MEM',
  'INDEX_BUILD_PARALLEL_WORKERS',
  'BASE_INCREMENTAL',
  'INCREMENTAL_CHAIN_MAX',
  'ALERT_CAPACITY_PERCENT',
  'ALERT_BACKUP_AGE_HOURS',
  'ALERT_SHRINK_PERCENT',
  'RPO_TARGET_MINUTES',
  'RTO_TARGET_MINUTES',
  'STORAGE_QUOTA_GB',
  'SNS_TOPIC_ARN',
  'EMAIL_TO',
  'EMAIL_NOTIFICATIONS',
  'SMTP_URL',
  'EMAIL_FROM',
  'ALERT_WEBHOOK_URL',
  'ALERT_COMMAND',
  'EVENT_BUS_NAME',
  'PGVAULT_METRICS',
  // Several repositories (repositoryConfigs): REPO<n>_TYPE, _PATH, _BUCKET, _PREFIX, _HOLDS and any
  // per-target key above as REPO<n>_<KEY>; the parser refuses the ones it does not know.
  ...Array.from({ length: 9 }, (_, i) => `REPO${i + 1}_*`),
  // The CLI and its launcher (bin/pgvault, bin/pgvault.js), and the process (restores stage in TMPDIR,
  // `restore pitr` reads times in TZ).
  'PGVAULT_CONFIG',
  'PGVAULT_NODE',
  'PGVAULT_DEBUG',
  'GLIBC_TUNABLES',
  'TZ',
  'TMPDIR',
  // libpq (pg_dump, pg_restore, psql) and node-postgres: config.pg.libpq.
  ...LIBPQ_KEYS,
  'PGDATA',
  // The AWS SDK, from the environment.
  'AWS_CONFIG_FILE',
  'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_CA_BUNDLE',
  'AWS_ROLE_ARN',
  'AWS_ROLE_SESSION_NAME',
  'AWS_WEB_IDENTITY_TOKEN_FILE',
  'AWS_STS_REGIONAL_ENDPOINTS',
  'AWS_MAX_ATTEMPTS',
  'AWS_RETRY_MODE',
  'AWS_USE_FIPS_ENDPOINT',
  'AWS_USE_DUALSTACK_ENDPOINT',
  'AWS_EC2_METADATA_DISABLED',
  'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED',
  'AWS_ENDPOINT_URL',
  'AWS_ENDPOINT_URL_*',
  'AWS_CONTAINER_*',
  'AWS_LAMBDA_*',
  // The AWS deployment's functions (functions/env.ts) and tasks (infra/, tasks/).
  'PGVAULT_CLUSTERS',
  'PGVAULT_CLUSTERS_FILE',
  'PGVAULT_BIN',
  'ENCRYPTION_KEY_SECRET_ARN',
  // Database credentials from Secrets Manager, read at start (core/pg/credentials-secret.ts).
  'PGVAULT_PG_SECRET_ARN',
  // The Patroni REST API's secret, read at start (core/pg/startup-secrets.ts).
  'PATRONI_SECRET_ARN',
  'ECS_CLUSTER_ARN',
  'TASK_DEFINITION_ARN',
  'RESTORE_TASK_DEFINITION_ARN',
  'TASK_CONTAINER_NAME',
  'SUBNET_IDS',
  'SECURITY_GROUP_IDS',
  'ASSIGN_PUBLIC_IP',
  'PATRONI_URL',
  'CITUS_COORDINATOR',
  'NODE_OPTIONS',
  'NODE_ENV',
];

export function isKnownKey(key: string): boolean {
  return KNOWN_KEYS.some((k) => (k.endsWith('*') ? key.startsWith(k.slice(0, -1)) : key === k));
}

/** Levenshtein distance, for "did you mean". */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j]! + 1,
        current[j - 1]! + 1,
        previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** The known key a misspelt one probably meant (edit distance 2 or less, case aside), if any. */
export function closestKnownKey(key: string): string | undefined {
  let best: { key: string; distance: number } | undefined;
  for (const k of KNOWN_KEYS) {
    if (k.endsWith('*')) continue;
    const distance = editDistance(key.toUpperCase(), k);
    if (distance <= 2 && (best === undefined || distance < best.distance)) best = { key: k, distance };
  }
  return best?.key;
}

/**
 * One warning per key of a config file that pgvault does not know (`ENCRYPTON=true` would otherwise
 * leave backups unencrypted without a word). Keys of the process environment are not judged: it holds
 * everything else on the machine.
 */
export function unknownKeyWarnings(files: readonly { path: string; keys: readonly string[] }[]): string[] {
  const warnings: string[] = [];
  for (const { path, keys } of files) {
    for (const key of keys) {
      if (isKnownKey(key)) continue;
      const near = closestKnownKey(key);
      warnings.push(
        `${path}: unknown setting ${key}${near === undefined ? '' : ` (did you mean ${near}?)`}; it is ignored`,
      );
    }
  }
  return warnings;
}

/**
 * S3_STORAGE_CLASS[_ARCHIVE|_EXPIRE|_REPORT] or AZURE_ACCESS_TIER[_...] (CloudConfig.storageClass,
 * accessTier), each one of `allowed` (case-insensitive). A class that cannot be read at once (`cold`:
 * GLACIER, DEEP_ARCHIVE, Archive) only for the archive kind: the default covers manifests and catalog
 * objects every command reads, and the expire kind holds the WAL that restore_command must read now.
 */
function perKindSetting<T extends string>(
  raw: Raw,
  base: string,
  allowed: readonly T[],
  cold: readonly T[],
): PerLifecycleKind<T> | undefined {
  const result: { -readonly [K in keyof PerLifecycleKind<T>]: T } = {};
  for (const kind of ['default', 'archive', 'expire', 'report'] as const) {
    const key = kind === 'default' ? base : `${base}_${kind.toUpperCase()}`;
    const v = text(raw, key);
    if (v === undefined) continue;
    const value = allowed.find((a) => a.toLowerCase() === v.toLowerCase());
    if (value === undefined) {
      throw new ConfigError(`${key}=${v} is not allowed; use one of ${allowed.join(', ')}`);
    }
    if (kind !== 'archive' && cold.includes(value)) {
      const what =
        kind === 'default'
          ? 'manifests and catalog objects, which every command reads'
          : kind === 'expire'
            ? 'WAL segments, which restore_command must read at once'
            : 'reports, which verify and capacity read';
      throw new ConfigError(
        `${key}=${value} is not allowed: it covers ${what}, and ${value} cannot be read without rehydrating; use one of ${allowed.filter((a) => !cold.includes(a)).join(', ')} (only ${base}_ARCHIVE may be ${cold.join(' or ')})`,
      );
    }
    result[kind] = value;
  }
  return Object.keys(result).length === 0 ? undefined : result;
}

/** CloudConfig.storageClass and accessTier; only the keys set. */
function placementSettings(raw: Raw): Pick<CloudConfig, 'storageClass' | 'accessTier'> {
  const storageClass = perKindSetting(raw, 'S3_STORAGE_CLASS', S3_STORAGE_CLASSES, [
    'GLACIER',
    'DEEP_ARCHIVE',
  ]);
  const accessTier = perKindSetting(raw, 'AZURE_ACCESS_TIER', AZURE_ACCESS_TIERS, ['Archive']);
  return { ...(storageClass ? { storageClass } : {}), ...(accessTier ? { accessTier } : {}) };
}

/**
 * OBJECT_LOCK_MODE / _RETAIN / _MIN_DAYS (CloudConfig.objectLock), for every provider: S3 Object Lock,
 * Azure version-level immutability policies (governance: Unlocked, compliance: Locked), GCS object
 * retention. The S3_OBJECT_LOCK_* names (the first, S3-only ones) are read as aliases of the same
 * settings: either name works, both set to different values is refused.
 */
function objectLockSetting(raw: Raw): Pick<CloudConfig, 'objectLock'> {
  const modeKey = lockKey(raw, 'OBJECT_LOCK_MODE');
  const retainKey = lockKey(raw, 'OBJECT_LOCK_RETAIN');
  const mode = oneOf(raw, modeKey, ['off', 'governance', 'compliance'] as const, 'off');
  const retain = oneOf(raw, retainKey, ['gfs', 'bucket'] as const, 'gfs');
  const minDays = integer(raw, lockKey(raw, 'OBJECT_LOCK_MIN_DAYS'), 0, 0, 36_500);
  if (mode === 'off') {
    if (text(raw, retainKey) === 'gfs') {
      throw new ConfigError(
        `${retainKey}=gfs needs ${retainKey.replace('RETAIN', 'MODE')} (governance or compliance); set the mode the bucket allows`,
      );
    }
    return {};
  }
  if (retain === 'bucket') return {};
  return { objectLock: { mode: mode === 'compliance' ? 'COMPLIANCE' : 'GOVERNANCE', minDays } };
}

/**
 * The key an object lock setting is read from: `key`, or its older alias S3_<key> when only that
 * is set; both set to different values is a ConfigError.
 */
function lockKey(raw: Raw, key: 'OBJECT_LOCK_MODE' | 'OBJECT_LOCK_RETAIN' | 'OBJECT_LOCK_MIN_DAYS'): string {
  const alias = `S3_${key}`;
  const value = text(raw, key);
  const aliased = text(raw, alias);
  if (value !== undefined && aliased !== undefined && value.toLowerCase() !== aliased.toLowerCase()) {
    throw new ConfigError(
      `${key}=${value} and ${alias}=${aliased} disagree; ${alias} is the older name of ${key}: keep one`,
    );
  }
  return value === undefined && aliased !== undefined ? alias : key;
}

function indexBuildSettings(raw: Raw): Config['indexBuild'] {
  const mem = text(raw, 'INDEX_BUILD_MAINTENANCE_WORK_MEM');
  if (mem !== undefined && !/^\d+(kB|MB|GB|TB)$/.test(mem)) {
    throw new ConfigError(
      `INDEX_BUILD_MAINTENANCE_WORK_MEM=${mem} is not a PostgreSQL memory size; write it as a number and kB, MB, GB or TB (e.g. 2GB)`,
    );
  }
  const workers = optionalInteger(raw, 'INDEX_BUILD_PARALLEL_WORKERS', 0, 1024);
  return {
    ...(mem !== undefined ? { maintenanceWorkMem: mem } : {}),
    ...(workers !== undefined ? { parallelWorkers: workers } : {}),
  };
}

function text(raw: Raw, key: string): string | undefined {
  const v = raw[key]?.trim();
  return v === undefined || v === '' ? undefined : v;
}

function oneOf<T extends string>(raw: Raw, key: string, allowed: readonly T[], fallback: T): T {
  const v = text(raw, key);
  if (v === undefined) return fallback;
  const lower = v.toLowerCase() as T;
  if (!allowed.includes(lower)) {
    throw new ConfigError(`${key}=${v} is not allowed; use one of ${allowed.join(', ')}`);
  }
  return lower;
}

function integer(
  raw: Raw,
  key: string,
  fallback: number,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const v = text(raw, key);
  if (v === undefined) return fallback;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `${min} or more` : `${min} to ${max}`;
    throw new ConfigError(`${key}=${v} is not allowed; use a whole number, ${range}`);
  }
  return Number(v);
}

function optionalInteger(raw: Raw, key: string, min: number, max: number): number | undefined {
  return text(raw, key) === undefined ? undefined : integer(raw, key, 0, min, max);
}

function boolean(raw: Raw, key: string, fallback: boolean): boolean {
  const v = text(raw, key);
  if (v === undefined) return fallback;
  const lower = v.toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(lower)) return true;
  if (['false', '0', 'no', 'off'].includes(lower)) return false;
  throw new ConfigError(`${key}=${v} is not allowed; use true or false`);
}

function absolutePath(raw: Raw, key: string, fallback: string, cwd: string): string {
  const v = text(raw, key) ?? fallback;
  return isAbsolute(v) ? v : resolve(cwd, v);
}

/**
 * A path setting that must be absolute: archive_command and restore_command run in the data
 * directory, so a relative path would name another place there than in the shell that tested it.
 */
function absoluteOnly(raw: Raw, key: string): string | undefined {
  const v = text(raw, key);
  if (v !== undefined && !isAbsolute(v)) {
    throw new ConfigError(
      `${key}=${v} is a relative path; use an absolute path (archive_command runs in the data directory, where ${v} names another place)`,
    );
  }
  return v === undefined ? undefined : resolve(v);
}

/** The guide's example key, and the shortest key that is not warned about. */
export const PLACEHOLDER_KEY = 'your-secret-key-here';
export const MIN_KEY_LENGTH = 16;

function configWarnings(key: string | undefined, mode: DeploymentMode, raw: Raw): string[] {
  const warnings: string[] = [];
  const from =
    text(raw, 'ENCRYPTION_KEY_FILE') === undefined ? 'ENCRYPTION_KEY' : 'the key in ENCRYPTION_KEY_FILE';
  if (key === PLACEHOLDER_KEY) {
    warnings.push(
      `${from} is the guide's placeholder, which anyone can read; create a key with \`openssl rand -base64 32 > /secure/path/encryption-key\` and set ENCRYPTION_KEY_FILE (existing backups still need the old key)`,
    );
  } else if (key !== undefined && key.length < MIN_KEY_LENGTH) {
    warnings.push(
      `${from} is shorter than ${MIN_KEY_LENGTH} characters and easy to guess; create a key with \`openssl rand -base64 32 > /secure/path/encryption-key\` and set ENCRYPTION_KEY_FILE (existing backups still need the old key)`,
    );
  }
  // A storage class or access tier for the other provider would be silently ignored.
  const provider = text(raw, 'CLOUD_PROVIDER')?.toLowerCase() ?? 'none';
  for (const [base, wanted] of [
    ['S3_STORAGE_CLASS', 's3'],
    ['AZURE_ACCESS_TIER', 'azure'],
    ['GCS_STORAGE_CLASS', 'gcs'],
  ] as const) {
    const set = ['', '_ARCHIVE', '_EXPIRE', '_REPORT']
      .map((kind) => `${base}${kind}`)
      .filter((k) => text(raw, k) !== undefined);
    if (set.length > 0 && provider !== wanted) {
      warnings.push(
        `${set.join(', ')} ${set.length === 1 ? 'applies' : 'apply'} only to CLOUD_PROVIDER=${wanted} and ${set.length === 1 ? 'has' : 'have'} no effect with CLOUD_PROVIDER=${provider}; remove ${set.length === 1 ? 'it' : 'them'}${PLACEMENT_KEY[provider] ? ` or set ${PLACEMENT_KEY[provider]} instead` : ''}`,
      );
    }
  }
  if (mode === 'citus') {
    warnings.push(
      `DEPLOYMENT_MODE=${mode} is not built yet; pgvault acts as single-node on PGHOST (${text(raw, 'PGHOST') ?? 'the libpq default'})`,
    );
  }
  return warnings;
}

/**
 * WAL_ARCHIVE_DIR: WAL is archived into the backup targets under {cluster}/wal (retention, verify wal,
 * report and PITR read it there). The guide's value ($BACKUP_DIR/wal) and that place are accepted;
 * any other directory is refused rather than ignored.
 */
function walArchiveDir(raw: Raw, backupDir: string, cluster: string): string {
  const where = resolve(backupDir, cluster, 'wal');
  const v = text(raw, 'WAL_ARCHIVE_DIR');
  if (v === undefined) return where;
  if (!isAbsolute(v)) {
    throw new ConfigError(
      `WAL_ARCHIVE_DIR=${v} is a relative path; remove it (WAL is archived under ${where})`,
    );
  }
  if (resolve(v) !== resolve(backupDir, 'wal') && resolve(v) !== where) {
    throw new ConfigError(
      `WAL_ARCHIVE_DIR=${v} is not supported; WAL is archived into the backup targets under BACKUP_DIR/CLUSTER_NAME/wal (${where}): remove WAL_ARCHIVE_DIR`,
    );
  }
  return where;
}

function awsCredentials(raw: Raw): CloudConfig['credentials'] {
  const accessKeyId = text(raw, 'AWS_ACCESS_KEY_ID');
  const secretAccessKey = raw.AWS_SECRET_ACCESS_KEY?.trim() || undefined;
  if (accessKeyId === undefined && secretAccessKey === undefined) return undefined;
  if (accessKeyId === undefined || secretAccessKey === undefined) {
    throw new ConfigError(
      `${accessKeyId === undefined ? 'AWS_SECRET_ACCESS_KEY is set without AWS_ACCESS_KEY_ID' : 'AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY'}; set both, or neither (AWS_PROFILE or an IAM role)`,
    );
  }
  const sessionToken = raw.AWS_SESSION_TOKEN?.trim() || undefined;
  return { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) };
}

/** The per-kind placement setting of each provider (configWarnings). */
const PLACEMENT_KEY: Readonly<Record<string, string>> = {
  s3: 'S3_STORAGE_CLASS',
  azure: 'AZURE_ACCESS_TIER',
  gcs: 'GCS_STORAGE_CLASS',
};

/**
 * CLOUD_PROVIDER=gcs's settings (CloudConfig.gcs). Every storage class of GCS is read at once (ARCHIVE
 * too: no restore step, only retrieval fees and a 365-day minimum), so any class may go to any kind.
 */
function gcsSettings(raw: Raw): GcsSettings {
  const endpoint = text(raw, 'STORAGE_EMULATOR_HOST');
  if (endpoint !== undefined && !/^(https?:\/\/)?[^\s/]+(\/|$)/.test(endpoint)) {
    throw new ConfigError(
      `STORAGE_EMULATOR_HOST=${endpoint} is not allowed; use a URL such as http://127.0.0.1:4443`,
    );
  }
  const keyFile = text(raw, 'GOOGLE_APPLICATION_CREDENTIALS');
  if (keyFile !== undefined && !isAbsolute(keyFile)) {
    throw new ConfigError(
      `GOOGLE_APPLICATION_CREDENTIALS=${keyFile} is a relative path; use the key file's absolute path (archive_command runs in the data directory)`,
    );
  }
  const storageClass = perKindSetting(raw, 'GCS_STORAGE_CLASS', GCS_STORAGE_CLASSES, []);
  const projectId = text(raw, 'GOOGLE_CLOUD_PROJECT');
  return {
    ...(endpoint ? { endpoint } : {}),
    ...(keyFile ? { keyFile } : {}),
    ...(projectId ? { projectId } : {}),
    ...(storageClass ? { storageClass } : {}),
  };
}

/** CLOUD_PROVIDER=azure's settings (CloudConfig.azure); one line naming what is missing. */
function azureSettings(raw: Raw): AzureSettings {
  const account = text(raw, 'AZURE_STORAGE_ACCOUNT');
  const connectionString = raw.AZURE_STORAGE_CONNECTION_STRING?.trim() || undefined;
  const accountKey = raw.AZURE_STORAGE_KEY?.trim() || undefined;
  const sasToken = raw.AZURE_STORAGE_SAS_TOKEN?.trim() || undefined;
  const given = [
    connectionString && 'AZURE_STORAGE_CONNECTION_STRING',
    accountKey && 'AZURE_STORAGE_KEY',
    sasToken && 'AZURE_STORAGE_SAS_TOKEN',
  ].filter((name): name is string => typeof name === 'string');
  if (given.length > 1) {
    throw new ConfigError(
      `${given.join(' and ')} are both set; set one way to authenticate to Azure (or none, for a managed identity)`,
    );
  }
  if (connectionString === undefined && account === undefined) {
    throw new ConfigError(
      'CLOUD_PROVIDER=azure needs AZURE_STORAGE_ACCOUNT (or AZURE_STORAGE_CONNECTION_STRING); set it to the storage account name',
    );
  }
  if (account !== undefined && !/^[a-z0-9]{3,24}$/.test(account)) {
    throw new ConfigError(
      `AZURE_STORAGE_ACCOUNT=${account} is not a storage account name; use its 3-24 lowercase letters and digits`,
    );
  }
  return { account, connectionString, accountKey, sasToken };
}

/**
 * The credentials part of an AWS SDK client's settings (S3, SNS, EventBridge): the keys or the profile
 * from any source (a --config file too, which the SDK's default chain never reads); neither: the
 * chain. A copy: the SDK marks the object it is given.
 */
export function awsClientCredentials(cloud: Pick<CloudConfig, 'credentials' | 'profile'> | undefined): {
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  profile?: string;
} {
  return {
    ...(cloud?.credentials ? { credentials: { ...cloud.credentials } } : {}),
    ...(cloud?.profile ? { profile: cloud.profile } : {}),
  };
}

function passphrase(raw: Raw): string | undefined {
  const inline = raw.ENCRYPTION_KEY;
  const file = text(raw, 'ENCRYPTION_KEY_FILE');
  if (inline && file) {
    throw new ConfigError('ENCRYPTION_KEY and ENCRYPTION_KEY_FILE are both set; keep only one of them');
  }
  if (file) {
    const path = absoluteOnly(raw, 'ENCRYPTION_KEY_FILE') ?? file;
    let contents: string;
    try {
      contents = readFileSync(path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      throw new ConfigError(
        `ENCRYPTION_KEY_FILE=${file} cannot be read (${code}); check the path and its permissions`,
      );
    }
    // A key file written by `openssl rand -base64 32 > file` ends with a newline that is not part of it.
    const key = contents.replace(/\r?\n$/, '');
    if (key.length === 0)
      throw new ConfigError(`ENCRYPTION_KEY_FILE=${file} is empty; write the key into it`);
    return key;
  }
  return inline === undefined || inline === '' ? undefined : inline;
}

/** ENCRYPTION_KEYS_RETIRED_FILE: the keys of the ring that only read, one per line (blank lines skipped). */
function retiredKeys(raw: Raw): { retired: string[]; retiredFile?: string } {
  const path = absoluteOnly(raw, 'ENCRYPTION_KEYS_RETIRED_FILE');
  if (path === undefined) return { retired: [] };
  let contents: string;
  try {
    contents = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError(
      `ENCRYPTION_KEYS_RETIRED_FILE=${path} cannot be read (${code}); check the path and its permissions`,
    );
  }
  const retired = contents.split(/\r?\n/).filter((line) => line.length > 0);
  return { retired, retiredFile: path };
}

function keyFilePath(raw: Raw): string | undefined {
  return absoluteOnly(raw, 'ENCRYPTION_KEY_FILE');
}

function clusterName(raw: Raw): string {
  const v = text(raw, 'CLUSTER_NAME') ?? 'default';
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(v)) {
    throw new ConfigError(
      `CLUSTER_NAME=${v} is not allowed; use letters, digits, '.', '_' or '-' (up to 63, starting with a letter or digit)`,
    );
  }
  return v;
}

function alertConfig(raw: Raw): AlertConfig {
  const quota = text(raw, 'STORAGE_QUOTA_GB');
  if (quota !== undefined && !(/^\d+(\.\d+)?$/.test(quota) && Number(quota) > 0)) {
    throw new ConfigError(
      `STORAGE_QUOTA_GB=${quota} is not allowed; use a number of GB above 0, like 500 or 0.5`,
    );
  }
  const arn = text(raw, 'SNS_TOPIC_ARN');
  if (
    arn !== undefined &&
    !/^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$/.test(arn)
  ) {
    throw new ConfigError(
      `SNS_TOPIC_ARN=${arn} is not allowed; use a topic ARN like arn:aws:sns:us-east-1:123456789012:pgvault-alerts`,
    );
  }
  const emailTo = (text(raw, 'EMAIL_TO') ?? '')
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '');
  for (const e of emailTo) {
    if (!/^[^\s@]+@[^\s@]+$/.test(e))
      throw new ConfigError(`EMAIL_TO=${e} is not allowed; use addresses separated by commas`);
  }
  const emailNotifications =
    text(raw, 'EMAIL_NOTIFICATIONS') === undefined ? undefined : boolean(raw, 'EMAIL_NOTIFICATIONS', false);
  const smtpUrl = text(raw, 'SMTP_URL');
  if (smtpUrl !== undefined && !validUrl(smtpUrl, ['smtp:', 'smtps:'])) {
    throw new ConfigError(
      'SMTP_URL is not a valid smtp:// or smtps:// URL; use smtp://user:password@mail.example.com:587 (or smtps:// for port 465)',
    );
  }
  if (emailNotifications === true && smtpUrl === undefined && arn === undefined) {
    throw new ConfigError(
      'EMAIL_NOTIFICATIONS=true but there is no way to send mail; set SMTP_URL (smtp://user:password@host:587) or SNS_TOPIC_ARN, or set EMAIL_NOTIFICATIONS=false',
    );
  }
  const mailing = smtpUrl !== undefined && emailNotifications !== false;
  if (mailing && emailTo.length === 0) {
    throw new ConfigError(
      'SMTP_URL is set but EMAIL_TO is empty; set EMAIL_TO to the addresses that get alerts',
    );
  }
  const from = text(raw, 'EMAIL_FROM') ?? `pgvault@${hostname() || 'localhost'}`;
  if (
    text(raw, 'EMAIL_FROM') !== undefined &&
    !/^([^<>\r\n]*<[^\s@<>]+@[^\s@<>]+>|[^\s@<>]+@[^\s@<>]+)$/.test(from)
  ) {
    throw new ConfigError(
      `EMAIL_FROM=${from} is not allowed; use an address like pgvault@db1.example.com or "pgvault <pgvault@db1.example.com>"`,
    );
  }
  const webhookUrl = text(raw, 'ALERT_WEBHOOK_URL');
  if (webhookUrl !== undefined && !validUrl(webhookUrl, ['http:', 'https:'])) {
    throw new ConfigError(
      'ALERT_WEBHOOK_URL is not a valid http:// or https:// URL; use the URL your chat or paging service gave you',
    );
  }
  return {
    capacityPercent: integer(raw, 'ALERT_CAPACITY_PERCENT', 80, 1, 100),
    backupAgeHours: integer(raw, 'ALERT_BACKUP_AGE_HOURS', 48, 1),
    shrinkPercent: integer(raw, 'ALERT_SHRINK_PERCENT', 50, 1, 99),
    rpoTargetMinutes: integer(raw, 'RPO_TARGET_MINUTES', 1440, 1),
    rtoTargetMinutes: integer(raw, 'RTO_TARGET_MINUTES', 240, 1),
    storageQuotaBytes: quota === undefined ? undefined : Math.round(Number(quota) * 1024 ** 3),
    snsTopicArn: arn,
    emailTo,
    emailNotifications,
    smtp: mailing ? { url: smtpUrl, from, to: emailTo } : undefined,
    webhookUrl,
    command: text(raw, 'ALERT_COMMAND'),
  };
}

/** Whether text parses as a URL with one of the protocols (the value is not echoed: it may hold a password). */
function validUrl(value: string, protocols: readonly string[]): boolean {
  try {
    const url = new URL(value);
    return protocols.includes(url.protocol) && url.hostname !== '';
  } catch {
    return false;
  }
}

function eventBusName(raw: Raw): string | undefined {
  const v = text(raw, 'EVENT_BUS_NAME');
  if (
    v !== undefined &&
    !/^([A-Za-z0-9._/-]{1,256}|arn:aws[a-z-]*:events:[a-z0-9-]+:\d{12}:event-bus\/[A-Za-z0-9._/-]{1,256})$/.test(
      v,
    )
  ) {
    throw new ConfigError(
      `EVENT_BUS_NAME=${v} is not allowed; use a bus name like pgvault-events or its ARN (arn:aws:events:us-east-1:123456789012:event-bus/pgvault-events)`,
    );
  }
  return v;
}

function metricsMode(raw: Raw): 'emf' | 'off' {
  const mode = oneOf(raw, 'PGVAULT_METRICS', ['auto', 'emf', 'off'] as const, 'auto');
  if (mode !== 'auto') return mode;
  return text(raw, 'AWS_EXECUTION_ENV') !== undefined ||
    text(raw, 'ECS_CONTAINER_METADATA_URI_V4') !== undefined
    ? 'emf'
    : 'off';
}

/**
 * PATRONI_URL (comma-separated http(s) URLs of the nodes' REST APIs, `user:password@` allowed) and
 * its credentials, CA file and timeout. A value that may hold a password is never echoed.
 */
function patroniConfig(raw: Raw, cwd: string): PatroniConfig {
  const list = text(raw, 'PATRONI_URL');
  if (list === undefined) {
    throw new ConfigError(
      'DEPLOYMENT_MODE=patroni needs PATRONI_URL; set it to the REST API of every Patroni node, comma-separated (like http://10.0.0.1:8008,http://10.0.0.2:8008)',
    );
  }
  const entries = list
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '');
  const urls = entries.map((entry, i) => {
    let url: URL;
    try {
      url = new URL(entry);
    } catch {
      url = new URL('invalid:');
    }
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.hostname === '') {
      throw new ConfigError(
        `PATRONI_URL entry ${i + 1} of ${entries.length} is not an http:// or https:// URL; use the REST API of every Patroni node, comma-separated (like http://10.0.0.1:8008,http://10.0.0.2:8008)`,
      );
    }
    const auth =
      url.username === '' && url.password === ''
        ? undefined
        : `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
    url.username = '';
    url.password = '';
    return { url: url.toString().replace(/\/+$/, ''), ...(auth ? { auth } : {}) };
  });
  const user = text(raw, 'PATRONI_USERNAME');
  const password = raw.PATRONI_PASSWORD === '' ? undefined : raw.PATRONI_PASSWORD;
  if ((user === undefined) !== (password === undefined)) {
    throw new ConfigError(
      `${user === undefined ? 'PATRONI_PASSWORD is set without PATRONI_USERNAME' : 'PATRONI_USERNAME is set without PATRONI_PASSWORD'}; set both (the REST API's restapi.authentication), or neither`,
    );
  }
  const caFile = text(raw, 'PATRONI_CACERT');
  return {
    urls,
    auth: user === undefined ? undefined : `${user}:${password}`,
    caFile: caFile === undefined ? undefined : absolutePath(raw, 'PATRONI_CACERT', '', cwd),
    timeoutSeconds: integer(raw, 'PATRONI_TIMEOUT', 5, 1, 300),
  };
}

/** PATRONI_NAME: a member name as Patroni's `name` (one line of printable characters). */
function patroniName(raw: Raw): { patroniName?: string } {
  const name = text(raw, 'PATRONI_NAME');
  if (name === undefined) return {};
  if (/\p{Cc}/u.test(name)) {
    throw new ConfigError(
      'PATRONI_NAME holds a control character; set it to the Patroni member name of this node (its patroni.yml `name`)',
    );
  }
  return { patroniName: name };
}

/** The passwords of PATRONI_URL and PATRONI_PASSWORD, for the lists of values never sent in a message. */
export function patroniSecrets(patroni: PatroniConfig | undefined): string[] {
  if (patroni === undefined) return [];
  return [patroni.auth, ...patroni.urls.map((u) => u.auth)]
    .filter((a): a is string => a !== undefined)
    .map((a) => a.slice(a.indexOf(':') + 1))
    .filter((p) => p !== '');
}

/** REPLICA_MAX_LAG: `16MB` (B, kB, MB, GB, TB; 1024-based like PostgreSQL's units) or `30s` (s, min, h). */
function lagLimit(raw: Raw): LagLimit {
  const v = text(raw, 'REPLICA_MAX_LAG') ?? '16MB';
  const m = /^(\d+)\s*(b|kb|mb|gb|tb|s|min|h)?$/i.exec(v);
  if (!m) {
    throw new ConfigError(
      `REPLICA_MAX_LAG=${v} is not allowed; use an amount of WAL like 16MB (B, kB, MB, GB) or a time like 30s (s, min, h)`,
    );
  }
  const n = Number(m[1]);
  const unit = (m[2] ?? 'b').toLowerCase();
  const seconds: Record<string, number> = { s: 1, min: 60, h: 3600 };
  if (unit in seconds) return { seconds: n * seconds[unit]! };
  const power = ['b', 'kb', 'mb', 'gb', 'tb'].indexOf(unit);
  return { bytes: n * 1024 ** power };
}

/**
 * What one parseConfig has parsed, by part: each part's value with the keys it read and their values.
 * A repository's view (repositoryConfigs) is the shared keys with a few of its own, so a part whose
 * keys the view leaves as they were is taken from here rather than parsed (and its files read) again:
 * the shared settings are parsed once, whatever the number of repositories.
 */
type ParsedParts = Map<
  string,
  Array<{ readonly reads: ReadonlyMap<string, string | undefined>; value: unknown }>
>;

/**
 * `compute(raw)`, or what it gave before for a raw that has the same values for every key it read
 * then. `compute` must depend on raw alone (and the parse's cwd); a part that lists raw's keys is
 * not kept (it may depend on any of them), nor one that throws.
 */
function part<T>(parts: ParsedParts, name: string, raw: Raw, compute: (raw: Raw) => T): T {
  const earlier = parts.get(name) ?? [];
  for (const e of earlier) {
    let same = true;
    for (const [key, value] of e.reads) {
      if (raw[key] !== value) {
        same = false;
        break;
      }
    }
    if (same) return e.value as T;
  }
  const reads = new Map<string, string | undefined>();
  let listed = false;
  const tracked = new Proxy(raw, {
    get(target, key) {
      if (typeof key === 'string') reads.set(key, target[key]);
      return Reflect.get(target, key);
    },
    has(target, key) {
      if (typeof key === 'string') reads.set(key, target[key]);
      return Reflect.has(target, key);
    },
    getOwnPropertyDescriptor(target, key) {
      if (typeof key === 'string') reads.set(key, target[key]);
      return Reflect.getOwnPropertyDescriptor(target, key);
    },
    ownKeys(target) {
      listed = true;
      return Reflect.ownKeys(target);
    },
  });
  const value = compute(tracked);
  if (!listed) parts.set(name, [...earlier, { reads, value }]);
  return value;
}

/** Validates merged raw values into a Config. Throws ConfigError naming the key, the value and what is allowed. */
export function parseConfig(
  raw: Raw,
  sources: string[] = [],
  cwd = process.cwd(),
  options: Pick<LoadConfigOptions, 'lazyAlerts'> = {},
): Config {
  return parseWithParts(raw, sources, cwd, options, new Map());
}

/** parseConfig, taking every part that `parts` holds for the same values (a repository's view: see ParsedParts). */
function parseWithParts(
  raw: Raw,
  sources: string[],
  cwd: string,
  options: Pick<LoadConfigOptions, 'lazyAlerts'>,
  parts: ParsedParts,
): Config {
  const p = <T>(name: string, compute: (raw: Raw) => T): T => part(parts, name, raw, compute);
  const repositories = repositoryConfigs(raw, sources, cwd, parts);
  const backupDir =
    absoluteOnly(raw, 'BACKUP_DIR') ??
    repositories?.find((r) => r.type === 'file')?.config.backupDir ??
    '/var/backups/postgresql';
  const { encryptionEnabled, key } = p('encryption', (r) => {
    const enabled = boolean(r, 'ENCRYPTION', false);
    const k = passphrase(r);
    if (enabled && k === undefined) {
      throw new ConfigError(
        'ENCRYPTION=true needs ENCRYPTION_KEY or ENCRYPTION_KEY_FILE; create one with `openssl rand -base64 32 > /secure/path/encryption-key` and set ENCRYPTION_KEY_FILE to it',
      );
    }
    return { encryptionEnabled: enabled, key: k };
  });
  const provider = oneOf(raw, 'CLOUD_PROVIDER', CLOUD_PROVIDERS, 'none');
  const bucket = text(raw, 'CLOUD_BUCKET');
  if (provider !== 'none' && bucket === undefined) {
    throw new ConfigError(
      `CLOUD_PROVIDER=${provider} needs CLOUD_BUCKET; set it to the bucket (or container) name`,
    );
  }
  const s3Endpoint = text(raw, 'S3_ENDPOINT');
  if (s3Endpoint !== undefined && !/^https?:\/\/[^\s/]+/.test(s3Endpoint)) {
    throw new ConfigError(
      `S3_ENDPOINT=${s3Endpoint} is not allowed; use a URL such as https://s3.example.com:9000`,
    );
  }
  const compression = oneOf(raw, 'COMPRESSION', COMPRESSIONS, 'zstd');
  const port = optionalInteger(raw, 'PGPORT', 1, 65535);
  const parallelJobs = integer(raw, 'PARALLEL_JOBS', Math.max(1, availableParallelism()), 1, 256);
  const deploymentMode = oneOf(raw, 'DEPLOYMENT_MODE', DEPLOYMENT_MODES, 'single-node');
  const patroni = p('patroni', (r) =>
    oneOf(r, 'DEPLOYMENT_MODE', DEPLOYMENT_MODES, 'single-node') === 'patroni'
      ? patroniConfig(r, cwd)
      : undefined,
  );
  const libpq = p('libpq', libpqSettings);
  const config: Config = {
    backupDir,
    walArchiveDir: walArchiveDir(raw, backupDir, clusterName(raw)),
    retention: {
      days: integer(raw, 'RETENTION_DAYS', 7, 0),
      weeks: integer(raw, 'RETENTION_WEEKS', 4, 0),
      months: integer(raw, 'RETENTION_MONTHS', 6, 0),
      configCount: integer(raw, 'RETENTION_CONFIG_COUNT', 10, 0),
      indexesCount: integer(raw, 'RETENTION_INDEXES_COUNT', 5, 0),
      walDays: integer(raw, 'RETENTION_WAL_DAYS', 7, 0, 36_500),
    },
    compression,
    compressionLevel: optionalInteger(raw, 'COMPRESSION_LEVEL', 1, 22),
    parallelJobs,
    encryption: {
      enabled: encryptionEnabled,
      passphrase: key,
      keyFile: keyFilePath(raw),
      iterations: integer(raw, 'ENCRYPTION_ITERATIONS', DEFAULT_ENCRYPTION_ITERATIONS, 1000, 10_000_000),
      ...p('retiredKeys', retiredKeys),
    },
    cloud: {
      provider,
      bucket,
      prefix: (text(raw, 'CLOUD_PREFIX') ?? '').replace(/^\/+|\/+$/g, ''),
      s3Endpoint,
      region: text(raw, 'AWS_DEFAULT_REGION') ?? text(raw, 'AWS_REGION') ?? 'us-east-1',
      lifecycleTags: boolean(raw, 'S3_LIFECYCLE_TAGS', false),
      credentials: p('awsCredentials', awsCredentials),
      profile: text(raw, 'AWS_PROFILE'),
      requestTimeoutSeconds: integer(raw, 'S3_REQUEST_TIMEOUT', 60, 1, 3600),
      maxAttempts: integer(raw, 'S3_MAX_ATTEMPTS', 3, 1, 20),
      ...p('objectLock', objectLockSetting),
      ...(provider === 'azure' ? { azure: p('azure', azureSettings) } : {}),
      ...(provider === 'gcs' ? { gcs: p('gcs', gcsSettings) } : {}),
      ...p('placement', placementSettings),
    },
    localCopy: boolean(raw, 'LOCAL_COPY', true),
    deploymentMode,
    clusterName: clusterName(raw),
    pg: {
      host: text(raw, 'PGHOST'),
      port,
      user: text(raw, 'PGUSER'),
      database: text(raw, 'PGDATABASE'),
      password: raw.PGPASSWORD === '' ? undefined : raw.PGPASSWORD,
      libpq,
      ...(patroni ? { patroni } : {}),
    },
    patroni,
    backupFrom: oneOf(raw, 'BACKUP_FROM', ['replica', 'leader'] as const, patroni ? 'replica' : 'leader'),
    replicaMaxLag: lagLimit(raw),
    ...patroniName(raw),
    pgBinDir: absoluteOnly(raw, 'PG_BIN_DIR'),
    restoreTestTarget: oneOf(raw, 'RESTORE_TEST_TARGET', ['sandbox', 'server'] as const, 'sandbox'),
    indexBuild: p('indexBuild', indexBuildSettings),
    baseIncremental: boolean(raw, 'BASE_INCREMENTAL', false),
    incrementalChainMax: integer(raw, 'INCREMENTAL_CHAIN_MAX', 6, 1, 1000),
    archiveAsync: boolean(raw, 'ARCHIVE_ASYNC', false),
    spoolDir: text(raw, 'SPOOL_DIR') === undefined ? undefined : absolutePath(raw, 'SPOOL_DIR', '', cwd),
    archiveTimeoutSeconds: integer(raw, 'ARCHIVE_TIMEOUT', 60, 1, 86_400),
    walPrefetch: integer(raw, 'WAL_PREFETCH', parallelJobs * 2, 0, 1024),
    walReceiveDir:
      absoluteOnly(raw, 'WAL_RECEIVE_DIR') ?? `${backupDir}/.pgvault-receive/${clusterName(raw)}`,
    alerts: options.lazyAlerts ? (undefined as unknown as AlertConfig) : p('alerts', alertConfig),
    eventBusName: eventBusName(raw),
    metrics: metricsMode(raw),
    sources,
    warnings: [...configWarnings(key, deploymentMode, raw), ...libpqWarnings(libpq)],
    ...(repositories ? { repositories } : {}),
  };
  if (options.lazyAlerts) {
    // Validated (and a mistake thrown) by whatever reads it first; the per-segment commands never do.
    let alerts: AlertConfig | undefined;
    Object.defineProperty(config, 'alerts', {
      enumerable: true,
      get: () => {
        alerts ??= p('alerts', alertConfig);
        return alerts;
      },
    });
  }
  return config;
}

export function loadConfig(options: LoadConfigOptions = {}): Config {
  const { raw, sources, files } = collectRawConfig(options);
  const config = parseConfig(raw, sources, options.cwd ?? process.cwd(), options);
  // Set in place, not spread into a copy: a lazy `alerts` would be read (and validated) by a spread.
  (config as { warnings: readonly string[] }).warnings = [...config.warnings, ...unknownKeyWarnings(files)];
  return config;
}

/** What a repository may hold (REPO<n>_HOLDS): backup types, WAL, and reports (drill records, state). */
export const REPOSITORY_KINDS = ['full', 'base', 'wal', 'config', 'indexes', 'reports'] as const;
export type RepositoryKind = (typeof REPOSITORY_KINDS)[number];
export const REPOSITORY_TYPES = ['file', 's3', 'azure', 'gcs'] as const;
/** Schedules a `kind:schedule` entry may name (core/catalog/naming.ts SCHEDULES). */
const REPOSITORY_SCHEDULES = ['daily', 'weekly', 'monthly', 'manual'] as const;

/** One repository (REPO<n>_*): where it is, what it holds, and its own Config (target and retention). */
export interface RepositoryConfig {
  /** n of REPO<n>_; the list is in ascending n, the read preference. */
  readonly n: number;
  readonly type: (typeof REPOSITORY_TYPES)[number];
  /**
   * REPO<n>_HOLDS as given: `full` (every schedule), `full:daily`, `base:weekly`, `wal`, `config`,
   * `indexes`, `reports`. Default: everything.
   */
  readonly holds: readonly string[];
  /**
   * The single-target reading of the repository: CLOUD_PROVIDER=REPO<n>_TYPE (none for file),
   * CLOUD_BUCKET=REPO<n>_BUCKET, BACKUP_DIR=REPO<n>_PATH, CLOUD_PREFIX=REPO<n>_PREFIX, LOCAL_COPY=false,
   * and every other key K = REPO<n>_K when set, else K (credentials and defaults shared).
   */
  readonly config: Config;
}

/** Keys of REPO<n>_ that are the repository's own, not a per-target copy of a single-target key. */
const REPOSITORY_OWN_KEYS: Record<string, string | undefined> = {
  TYPE: 'CLOUD_PROVIDER',
  BUCKET: 'CLOUD_BUCKET',
  PATH: 'BACKUP_DIR',
  PREFIX: 'CLOUD_PREFIX',
  // The bucket's region (the AWS deployment's REPO2_REGION); AWS_DEFAULT_REGION is the shared one.
  REGION: 'AWS_DEFAULT_REGION',
  HOLDS: undefined,
  // Repository n's credentials in Secrets Manager (the AWS deployment): read at start by
  // core/pg/startup-secrets.ts, which sets REPO<n>_AZURE_* / REPO<n>_GOOGLE_APPLICATION_CREDENTIALS.
  SECRET_ARN: undefined,
  // The GCS client's own settings, per repository (the GCS target reads them).
  GOOGLE_APPLICATION_CREDENTIALS: 'GOOGLE_APPLICATION_CREDENTIALS',
  STORAGE_EMULATOR_HOST: 'STORAGE_EMULATOR_HOST',
};

/** Single-target keys that only say which targets there are: meaningless per repository. */
const NOT_PER_REPOSITORY = new Set([
  'CLOUD_PROVIDER',
  'CLOUD_BUCKET',
  'CLOUD_PREFIX',
  'BACKUP_DIR',
  'LOCAL_COPY',
]);

/** Whether a repository holds a kind (with a schedule for full and base backups). */
export function repositoryHolds(holds: readonly string[], kind: RepositoryKind, schedule?: string): boolean {
  return holds.some((h) => h === kind || (schedule !== undefined && h === `${kind}:${schedule}`));
}

/**
 * REPO<n>_* keys into repositories, or undefined when none is set (the single-target keys then say
 * what there is). One ConfigError per mistake, naming the key and what to do.
 */
function repositoryConfigs(
  raw: Raw,
  sources: string[],
  cwd: string,
  parts: ParsedParts,
): RepositoryConfig[] | undefined {
  const byN = new Map<number, Record<string, string>>();
  for (const [key, value] of Object.entries(raw)) {
    const m = /^REPO(\d+)_([A-Z0-9_]+)$/.exec(key);
    if (!m || value === undefined) continue;
    const n = Number(m[1]);
    const rest = m[2]!;
    if (n < 1 || n > 9 || String(n) !== m[1]) {
      throw new ConfigError(
        `${key}: repositories are numbered 1 to 9 (REPO1_TYPE ... REPO9_TYPE); rename it`,
      );
    }
    if (
      !(rest in REPOSITORY_OWN_KEYS) &&
      (NOT_PER_REPOSITORY.has(rest) || !isKnownKey(rest) || rest.startsWith('REPO'))
    ) {
      throw new ConfigError(
        `${key} is not a repository setting; use REPO${n}_TYPE, REPO${n}_PATH, REPO${n}_BUCKET, REPO${n}_PREFIX, REPO${n}_REGION, REPO${n}_HOLDS or REPO${n}_<KEY> for a per-target key such as REPO${n}_REGION or REPO${n}_RETENTION_DAYS`,
      );
    }
    if (!byN.has(n)) byN.set(n, {});
    byN.get(n)![rest] = value;
  }
  if (byN.size === 0) return undefined;
  for (const legacy of ['CLOUD_PROVIDER', 'LOCAL_COPY', 'CLOUD_BUCKET'] as const) {
    if (text(raw, legacy) !== undefined) {
      throw new ConfigError(
        `${legacy} is set beside REPO<n>_* keys; use one form: remove ${legacy} and describe every target as a repository (REPO1_TYPE=file, REPO1_PATH=..., REPO2_TYPE=s3, REPO2_BUCKET=...)`,
      );
    }
  }
  const shared: Raw = {};
  for (const [key, value] of Object.entries(raw)) if (!/^REPO\d+_/.test(key)) shared[key] = value;
  const repositories: RepositoryConfig[] = [];
  for (const n of [...byN.keys()].sort((a, b) => a - b)) {
    const own = byN.get(n)!;
    const type = own.TYPE?.trim().toLowerCase();
    if (type === undefined || type === '') {
      throw new ConfigError(
        `REPO${n}_TYPE is missing (REPO${n}_${Object.keys(own)[0]} is set); set REPO${n}_TYPE to file, s3, azure or gcs`,
      );
    }
    if (!(REPOSITORY_TYPES as readonly string[]).includes(type)) {
      throw new ConfigError(`REPO${n}_TYPE=${own.TYPE} is not allowed; use file, s3, azure or gcs`);
    }
    if (type === 'file' && own.PATH === undefined) {
      throw new ConfigError(
        `REPO${n}_TYPE=file needs REPO${n}_PATH; set it to the folder (like /var/backups/postgresql)`,
      );
    }
    if (type !== 'file' && own.BUCKET === undefined) {
      throw new ConfigError(
        `REPO${n}_TYPE=${type} needs REPO${n}_BUCKET; set it to the ${type === 'azure' ? 'container' : 'bucket'} name`,
      );
    }
    if (type !== 'file' && own.PATH !== undefined) {
      throw new ConfigError(
        `REPO${n}_PATH is for REPO${n}_TYPE=file; use REPO${n}_PREFIX for a folder in the ${type} bucket`,
      );
    }
    if (type === 'file' && (own.BUCKET !== undefined || own.PREFIX !== undefined)) {
      throw new ConfigError(
        `REPO${n}_${own.BUCKET !== undefined ? 'BUCKET' : 'PREFIX'} is for a cloud repository; REPO${n}_TYPE=file keeps everything in REPO${n}_PATH`,
      );
    }
    const holds = (own.HOLDS ?? REPOSITORY_KINDS.join(','))
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter((h) => h !== '');
    for (const h of holds) {
      const [kind, schedule, extra] = h.split(':');
      const scheduled = kind === 'full' || kind === 'base';
      if (
        !(REPOSITORY_KINDS as readonly string[]).includes(kind!) ||
        extra !== undefined ||
        (schedule !== undefined &&
          (!scheduled || !(REPOSITORY_SCHEDULES as readonly string[]).includes(schedule)))
      ) {
        throw new ConfigError(
          `REPO${n}_HOLDS: ${h} is not a kind; use a comma list of full, base, wal, config, indexes, reports, or full:daily, full:weekly, full:monthly, full:manual (base likewise)`,
        );
      }
    }
    if (holds.length === 0) {
      throw new ConfigError(
        `REPO${n}_HOLDS is empty; list what it holds (like full,wal,config) or remove the key`,
      );
    }
    const view: Raw = { ...shared };
    for (const [rest, value] of Object.entries(own)) {
      if (rest in REPOSITORY_OWN_KEYS) {
        const target = REPOSITORY_OWN_KEYS[rest];
        if (target !== undefined) view[target] = value;
      } else view[rest] = value;
    }
    view.CLOUD_PROVIDER = type === 'file' ? 'none' : type;
    view.LOCAL_COPY = 'false';
    let config: Config;
    try {
      // The parts the views share (all but what REPO<n>_* sets) are parsed once, for the first.
      config = parseWithParts(view, sources, cwd, { lazyAlerts: true }, parts);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      // The single-target reader names the single-target key: say which repository's it is.
      throw new ConfigError(`repository ${n} (REPO${n}_*): ${err.message}`);
    }
    repositories.push({ n, type: type as RepositoryConfig['type'], holds, config });
  }
  return repositories;
}
