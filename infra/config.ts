import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { z } from 'zod';
import { repoRoot } from './paths';

/**
 * The deployment configuration: one JSON file, validated here once. The stack receives a typed
 * `DeployConfig` with every default filled in; nothing else in infra/ reads files or the environment.
 *
 * Which file: `-c config=PATH` (CDK context), else `PGVAULT_DEPLOY_CONFIG`, else the documented
 * example `infra/pgvault.example.json` (so `npx cdk synth` works on a fresh checkout).
 */

export const EXAMPLE_CONFIG_PATH = resolve(repoRoot(), 'infra', 'pgvault.example.json');

/** A bad configuration: one line naming the file, the field and what is allowed. */
export class DeployConfigError extends Error {
  override readonly name = 'DeployConfigError';
}

/** Crontab (5 fields, the guide's form) of each scheduled job; `null` turns a job off. */
export const DEFAULT_SCHEDULES = {
  /** pgvault backup full daily (guide: `0 2 * * *`) */
  fullDaily: '0 2 * * *',
  /** pgvault backup full weekly (guide: `0 3 * * 0`) */
  fullWeekly: '0 3 * * 0',
  /** pgvault backup full monthly (guide: `0 4 1 * *`) */
  fullMonthly: '0 4 1 * *',
  /** pgvault backup config (guide: `0 1 * * *`) */
  config: '0 1 * * *',
  /** pgvault backup indexes (guide: `30 1 * * *`) */
  indexes: '30 1 * * *',
  /** pgvault backup base weekly, only with `physicalBackups: true` (not in the guide; after the weekly dump) */
  baseWeekly: '30 3 * * 0',
  /** retention Lambda (guide: `0 5 * * *`) */
  retention: '0 5 * * *',
  /** verify Lambda, deep verification task (guide: `0 6 * * *`, verify-backups.sh all) */
  verify: '0 6 * * *',
  /** report Lambda (not in the guide; after verification) */
  report: '0 7 * * *',
} as const;
export type ScheduleName = keyof typeof DEFAULT_SCHEDULES;

const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/;
/** Highest fleet stack number (`clusters[].shard`, `fleet.shards`): 100 stacks of 12 hold the 500 clusters with room. */
export const MAX_FLEET_STACKS = 100;
const SECRET_ARN =
  /^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$/;
const KMS_KEY_ARN = /^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key\/[A-Za-z0-9-]+$/;
const ROLE_ARN = /^arn:aws[a-z-]*:iam::\d{12}:role\/[A-Za-z0-9+=,.@_/-]{1,512}$/;
const S3_BUCKET_ARN = /^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const EMAIL = /^[^\s@,]+@[^\s@,]+\.[^\s@,]+$/;

const cronField = z.string().refine((v) => cronToScheduler(v) !== undefined, {
  message:
    "expected a 5-field crontab ('0 2 * * *'), an EventBridge Scheduler expression ('cron(0 2 * * ? *)', 'rate(1 day)') or null",
});

const taskSize = z.strictObject({
  /** Fargate CPU units. @default 1024 */
  cpu: z
    .union([z.literal(256), z.literal(512), z.literal(1024), z.literal(2048), z.literal(4096)])
    .default(1024),
  /** Memory in MiB (Fargate's combinations for the CPU). @default 4096 */
  memoryMiB: z.number().int().min(512).max(30720).default(4096),
  /** Ephemeral storage in GiB (21–200): restores stage a whole dump in TMPDIR. @default 50 */
  ephemeralStorageGiB: z.number().int().min(21).max(200).default(50),
});

/** Cluster keys that mean something only with Patroni (patroniUrl elsewhere stays accepted, as before). */
const PATRONI_ONLY = [
  'backupFrom',
  'replicaMaxLag',
  'patroniCredentialsSecretArn',
  'patroniCredentialsKmsKeyArn',
] as const;

/** The URLs of a comma-separated `patroniUrl` (PATRONI_URL), trimmed, empty entries dropped. */
export function patroniUrls(list: string): URL[] {
  return list
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '')
    .map((e) => new URL(e));
}

/** Why a `patroniUrl` list is not allowed (undefined: it is). Never echoes a URL (it may hold a password). */
export function patroniUrlProblem(list: string): string | undefined {
  const entries = list
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '');
  const how =
    'the REST API of every Patroni node, comma-separated (like https://10.0.0.1:8008,https://10.0.0.2:8008)';
  if (entries.length === 0) return `empty; list ${how}`;
  for (const [i, entry] of entries.entries()) {
    let url: URL | undefined;
    try {
      url = new URL(entry);
    } catch {}
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.hostname === '')
      return `entry ${i + 1} of ${entries.length} is not an http:// or https:// URL; list ${how}`;
    if (url.username !== '' || url.password !== '')
      return `entry ${i + 1} of ${entries.length} holds a user or password, which would be in the template; put them in patroniCredentialsSecretArn`;
  }
  return undefined;
}

const clusterSchema = z
  .strictObject({
    name: z.string().regex(NAME, "letters, digits, '_' or '-', up to 32, starting with a letter or digit"),
    mode: z.enum(['single-node', 'patroni', 'citus']).default('single-node'),
    host: z.string().min(1).max(253),
    port: z.number().int().min(1).max(65535).default(5432),
    database: z.string().min(1).max(63).default('postgres'),
    /** Secrets Manager secret (JSON with `username` and `password`), the complete ARN with its 6-character suffix. */
    credentialsSecretArn: z.string().regex(SECRET_ARN, 'the complete secret ARN (ending in -XXXXXX)'),
    /** The customer-managed KMS key of that secret, when it is not encrypted with aws/secretsmanager. */
    credentialsKmsKeyArn: z.string().regex(KMS_KEY_ARN, 'a KMS key ARN').optional(),
    /** Every node's Patroni REST API, comma-separated (PATRONI_URL): one API down is not an outage. */
    patroniUrl: z
      .string()
      .superRefine((v, ctx) => {
        const problem = patroniUrlProblem(v);
        if (problem) ctx.addIssue({ code: 'custom', message: problem });
      })
      .optional(),
    // ---- Patroni (issue 13; infra/README.md "Patroni clusters") ----
    /** BACKUP_FROM: where full and index backups read from. @default the core's (replica with Patroni) */
    backupFrom: z.enum(['replica', 'leader']).optional(),
    /** REPLICA_MAX_LAG: `16MB` (B, kB, MB, GB, TB) or `30s` (s, min, h). @default the core's (16MB) */
    replicaMaxLag: z
      .string()
      .regex(/^\d+\s*(b|kb|mb|gb|tb|s|min|h)?$/i, 'an amount of WAL like 16MB or a time like 30s')
      .optional(),
    /**
     * Secrets Manager secret of the REST API (JSON `username` and `password`, and/or `cacert`: the PEM of
     * the CA that signs an https API): the task reads it when it starts (PATRONI_SECRET_ARN).
     */
    patroniCredentialsSecretArn: z
      .string()
      .regex(SECRET_ARN, 'the complete secret ARN (ending in -XXXXXX)')
      .optional(),
    /** The customer-managed KMS key of patroniCredentialsSecretArn, when it has one. */
    patroniCredentialsKmsKeyArn: z.string().regex(KMS_KEY_ARN, 'a KMS key ARN').optional(),
    // ---- end: Patroni ----
    citusCoordinator: z.string().min(1).optional(),
    /** Overrides `walReceive.enabled` for this cluster. */
    walReceive: z.boolean().optional(),
    // ---- incremental base backups (issue 15; infra/README.md "Incremental base backups") ----
    /** The cluster's PostgreSQL server major: required by baseIncremental (17 or newer). */
    postgresMajor: z.number().int().min(13).max(18).optional(),
    /**
     * BASE_INCREMENTAL: the scheduled base backups (physicalBackups) are incremental to the newest one,
     * a full every incrementalChainMax. Needs postgresMajor 17+ and summarize_wal = on. @default false
     */
    baseIncremental: z.boolean().optional(),
    /** INCREMENTAL_CHAIN_MAX: incrementals after a full before the next full. @default the core's (6) */
    incrementalChainMax: z.number().int().min(1).max(1000).optional(),
    // ---- end: incremental base backups ----
    /**
     * The restore task's own credentials (JSON with `username` and `password`), separate from the
     * backup's so the backup user needs no write rights. Unset: the restore task uses
     * credentialsSecretArn, and synth warns.
     */
    restoreCredentialsSecretArn: z
      .string()
      .regex(SECRET_ARN, 'the complete secret ARN (ending in -XXXXXX)')
      .optional(),
    /** The customer-managed KMS key of restoreCredentialsSecretArn, when it has one. */
    restoreCredentialsKmsKeyArn: z.string().regex(KMS_KEY_ARN, 'a KMS key ARN').optional(),
    /**
     * The servers' credentials a restore may name as its target (`target.credentialsSecretArn` of the
     * restore function): the restore task role may read these secrets and no other. @default []
     */
    restoreTargets: z
      .array(
        z.strictObject({
          credentialsSecretArn: z.string().regex(SECRET_ARN, 'the complete secret ARN (ending in -XXXXXX)'),
          credentialsKmsKeyArn: z.string().regex(KMS_KEY_ARN, 'a KMS key ARN').optional(),
        }),
      )
      .max(20)
      .default([]),
    /**
     * The fleet stack of this cluster (`<stackName>-Fleet<shard>`), fixed whatever the list around it;
     * without it, `fleet.layout` decides (infra/fleet.ts).
     */
    shard: z.number().int().min(1).max(MAX_FLEET_STACKS).optional(),
  })
  .superRefine((c, ctx) => {
    if (c.mode === 'patroni' && !c.patroniUrl) {
      ctx.addIssue({ code: 'custom', path: ['patroniUrl'], message: 'required when mode is patroni' });
    }
    for (const key of PATRONI_ONLY) {
      if (c.mode !== 'patroni' && c[key] !== undefined)
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `applies only to mode patroni (this cluster is ${c.mode}); remove it`,
        });
    }
    if (c.patroniCredentialsKmsKeyArn && !c.patroniCredentialsSecretArn) {
      ctx.addIssue({
        code: 'custom',
        path: ['patroniCredentialsKmsKeyArn'],
        message: "set patroniCredentialsSecretArn too (the key is that secret's)",
      });
    }
    if (c.restoreCredentialsKmsKeyArn && !c.restoreCredentialsSecretArn) {
      ctx.addIssue({
        code: 'custom',
        path: ['restoreCredentialsKmsKeyArn'],
        message: "set restoreCredentialsSecretArn too (the key is that secret's)",
      });
    }
    const seen = new Set<string>();
    c.restoreTargets.forEach((t, i) => {
      if (seen.has(t.credentialsSecretArn))
        ctx.addIssue({
          code: 'custom',
          path: ['restoreTargets', i, 'credentialsSecretArn'],
          message: `${t.credentialsSecretArn} is listed twice`,
        });
      seen.add(t.credentialsSecretArn);
    });
  });

export const deployConfigSchema = z
  .strictObject({
    $schema: z.string().optional(),
    /** Free text kept in the example file; ignored. */
    comment: z.string().optional(),
    /** CloudFormation stack name. @default 'Pgvault' */
    stackName: z
      .string()
      .regex(/^[A-Za-z][A-Za-z0-9-]{0,63}$/, 'letters, digits and -, starting with a letter')
      .default('Pgvault'),
    /** Account and region; default: the CLI's (CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION), environment-agnostic offline. */
    account: z
      .string()
      .regex(/^\d{12}$/, '12 digits')
      .optional(),
    region: z
      .string()
      .regex(/^[a-z]{2}(-[a-z]+)+-\d$/, 'a region such as eu-west-1')
      .optional(),
    // The deployment splits into a shared stack and fleet stacks of 12 clusters (stack.ts): 500 clusters are 42
    // fleet stacks, each well under CloudFormation's 500 resources (the stacks check their real count).
    clusters: z.array(clusterSchema).min(1).max(500),
    /** Which fleet stack each cluster without an explicit `shard` goes to (infra/fleet.ts, infra/README.md "Fleet stacks"). */
    fleet: z
      .strictObject({
        /**
         * 'name': by a hash of the cluster's name over `shards` stacks, so adding, removing or reordering
         * clusters never moves another one. 'position': the layout of earlier builds (the i-th cluster in
         * stack i/12 + 1), for deployments made with it. @default 'name'
         */
        layout: z.enum(['name', 'position']).default('name'),
        /** Stacks the name hash spreads clusters over; set it before the first deployment (changing it moves clusters). @default 1 */
        shards: z.number().int().min(1).max(MAX_FLEET_STACKS).default(1),
      })
      .prefault({}),
    network: z.strictObject({
      vpcId: z.string().regex(/^vpc-[0-9a-f]{8,17}$/, 'a VPC id such as vpc-0123456789abcdef0'),
      subnetIds: z
        .array(z.string().regex(/^subnet-[0-9a-f]{8,17}$/, 'a subnet id such as subnet-0123456789abcdef0'))
        .min(1)
        .max(16),
      /**
       * Your own security groups for the tasks, used as they are (the stack cannot manage their rules; synth
       * warns). Default: the stack creates the task security group with only the egress the tasks need
       * (infra/constructs/network.ts).
       */
      securityGroupIds: z
        .array(z.string().regex(/^sg-[0-9a-f]{8,17}$/, 'a security group id such as sg-0123456789abcdef0'))
        .min(1)
        .max(5)
        .optional(),
      /**
       * The availability zone of each subnet (same order as subnetIds). With it, the WAL staging file
       * system gets one mount target per zone (EFS allows only one per zone); without it, one per subnet.
       */
      subnetAvailabilityZones: z
        .array(z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d[a-z]$/, 'a zone such as eu-west-1a'))
        .max(16)
        .optional(),
      /** Public IP for tasks in public subnets without NAT (they must reach S3, ECR, Secrets Manager). @default false */
      assignPublicIp: z.boolean().default(false),
      /**
       * VPC endpoints for what the tasks reach: `create` (S3 gateway plus interface endpoints for ECR api and
       * dkr, CloudWatch Logs, Secrets Manager, SNS and EventBridge), `s3` (the gateway only: free, and it
       * carries every dump and WAL byte), `check` (look them up at synth and warn about the missing ones),
       * `none`. @default 'check'
       */
      endpoints: z.enum(['create', 's3', 'check', 'none']).default('check'),
      /** Route tables of subnetIds: the S3 gateway endpoint's routes go there (required for `create` and `s3`). */
      routeTableIds: z
        .array(z.string().regex(/^rtb-[0-9a-f]{8,17}$/, 'a route table id such as rtb-0123456789abcdef0'))
        .min(1)
        .max(16)
        .optional(),
      /** Where the databases are (their ports and Patroni's REST port): the task security group's egress. */
      databaseCidrs: z
        .array(z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/, 'an IPv4 CIDR such as 10.0.0.0/16'))
        .max(20)
        .default([]),
      /**
       * More ports the tasks may open to the databases besides each cluster's port and its Patroni REST port
       * (a restore target on another port, Citus workers on theirs).
       */
      databasePorts: z.array(z.number().int().min(1).max(65535)).max(10).default([]),
      /** Or the databases' security groups (they must accept the task security group on their port). */
      databaseSecurityGroupIds: z
        .array(z.string().regex(/^sg-[0-9a-f]{8,17}$/, 'a security group id such as sg-0123456789abcdef0'))
        .max(5)
        .default([]),
    }),
    /** IANA time zone of every schedule. @default 'UTC' */
    timeZone: z.string().refine(isTimeZone, 'an IANA time zone such as Europe/Berlin').default('UTC'),
    schedules: z
      .strictObject(
        Object.fromEntries(
          Object.entries(DEFAULT_SCHEDULES).map(([k, v]) => [k, cronField.nullable().default(v)]),
        ) as { [K in ScheduleName]: z.ZodDefault<z.ZodNullable<typeof cronField>> },
      )
      .prefault({}),
    /**
     * Scheduler's flexible time window: each run starts at a random moment within this many minutes after
     * its scheduled time, so a fleet's schedules do not all fire in the same minute (500 clusters: 500
     * RunTasks at 02:00). 0: exactly on time (window OFF). @default 15
     */
    scheduleWindowMinutes: z.number().int().min(0).max(1440).default(15),
    /** EventBridge Scheduler retries before a run goes to the dead-letter queue. */
    scheduleRetry: z
      .strictObject({
        attempts: z.number().int().min(0).max(185).default(3),
        maxEventAgeMinutes: z.number().int().min(1).max(1440).default(60),
      })
      .prefault({}),
    retention: z
      .strictObject({
        days: z.number().int().min(0).max(3650).default(7),
        weeks: z.number().int().min(0).max(520).default(4),
        months: z.number().int().min(0).max(120).default(6),
        configCount: z.number().int().min(0).max(1000).default(10),
        indexesCount: z.number().int().min(0).max(1000).default(5),
        walDays: z.number().int().min(0).max(36500).default(7),
      })
      .prefault({}),
    compression: z.enum(['gzip', 'bzip2', 'xz', 'zstd', 'lz4', 'none']).default('zstd'),
    bucket: z
      .strictObject({
        /** Key prefix inside the vault bucket (CLOUD_PREFIX). @default 'pgvault' */
        prefix: z
          .string()
          .regex(/^([A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*)?$/, "path segments without leading or trailing '/'")
          .default('pgvault'),
        /**
         * Weekly and monthly backups move to this class after archiveAfterDays (the guide: Glacier after
         * 30 days). GLACIER_IR (Glacier Instant Retrieval) reads with a plain GetObject, so restoring an
         * old monthly backup needs no `restore-object` and no hours of waiting; GLACIER (Flexible
         * Retrieval) and DEEP_ARCHIVE cost less per GB but must be restored before pgvault can read them.
         * @default 'GLACIER_IR'
         */
        archiveStorageClass: z.enum(['GLACIER', 'GLACIER_IR', 'DEEP_ARCHIVE']).default('GLACIER_IR'),
        archiveAfterDays: z.number().int().min(1).max(3650).default(30),
        /** Objects smaller than this stay in STANDARD: manifests must stay readable by list, retention and restore. */
        archiveMinObjectBytes: z
          .number()
          .int()
          .min(131072)
          .default(4 * 1024 * 1024),
        /** Safety-net expiration behind the retention function; default: the longest GFS hold + 60 days. */
        expireAfterDays: z.number().int().min(1).max(36500).optional(),
        /** Reports and drill records are not retention-managed. @default 400 */
        reportsExpireAfterDays: z.number().int().min(1).max(36500).default(400),
        noncurrentVersionExpireDays: z.number().int().min(1).max(3650).default(30),
        accessLogExpireDays: z.number().int().min(1).max(3650).default(365),
        /**
         * Days after which S3 aborts an unfinished multipart upload (and frees its parts). Longer than the
         * longest backup upload: a dump streamed for more than a day must not have its parts removed
         * under it. @default 7
         */
        abortIncompleteMultipartUploadDays: z.number().int().min(1).max(365).default(7),
        /** S3 Object Lock default retention (mode and days); objects get their own retain-until from their GFS expiry. */
        objectLock: z
          .strictObject({
            mode: z.enum(['governance', 'compliance']),
            days: z.number().int().min(1).max(36500),
            /**
             * `gfs`: the writer puts each backup and WAL object with its own retain-until, its planned GFS
             * expiry (S3_OBJECT_LOCK_RETAIN=gfs), never less than `days`; `bucket`: the default retention only.
             * @default 'gfs'
             */
            retain: z.enum(['gfs', 'bucket']).default('gfs'),
          })
          .nullable()
          .default(null),
        // ---- Backups that survive a compromised account (infra/README.md "Threat model") ----
        /**
         * A role (ARN) that alone may schedule the vault key's deletion or disable it: the key policy
         * denies kms:ScheduleKeyDeletion and kms:DisableKey to every other principal, root included.
         */
        breakGlassRoleArn: z
          .string()
          .regex(ROLE_ARN, 'an IAM role ARN such as arn:aws:iam::123456789012:role/break-glass')
          .optional(),
        /**
         * Also deny kms:PutKeyPolicy to all but the break-glass role. The stack must then be deployed as that
         * role (cdk deploy --role-arn): nobody else can change the key policy, CloudFormation included.
         * @default false
         */
        protectKeyPolicy: z.boolean().default(false),
        /** S3 replication of every backup and WAL object into a bucket of another account, under its own key. */
        replication: z
          .strictObject({
            /** arn:aws:s3:::bucket of the destination (versioned; Object Lock on to keep the locks). */
            destinationBucketArn: z
              .string()
              .regex(S3_BUCKET_ARN, 'an S3 bucket ARN such as arn:aws:s3:::pgvault-copy'),
            /** The destination bucket's account: replicas are owned by it (AccessControlTranslation). */
            destinationAccount: z.string().regex(/^\d{12}$/, '12 digits'),
            /** The destination account's KMS key (its region is the bucket's) that encrypts the replicas. */
            replicaKmsKeyArn: z
              .string()
              .regex(
                KMS_KEY_ARN,
                'a KMS key ARN such as arn:aws:kms:eu-central-1:210987654321:key/1234abcd-...',
              ),
            /** S3 Replication Time Control: 99.99% of objects within 15 minutes, with its metrics (extra cost). @default false */
            replicationTimeControl: z.boolean().default(false),
            /** Storage class of the replicas. @default the source object's */
            storageClass: z
              .enum(['STANDARD', 'STANDARD_IA', 'GLACIER_IR', 'GLACIER', 'DEEP_ARCHIVE'])
              .optional(),
          })
          .nullable()
          .default(null),
        /** Where the copy's owner can read the passphrase (without it the copy cannot be decrypted). */
        passphraseCopy: z
          .strictObject({
            /** Secrets Manager replicas of the passphrase in these regions (their own key, else aws/secretsmanager). */
            replicaRegions: z
              .array(
                z.strictObject({
                  region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d$/, 'a region such as eu-central-1'),
                  kmsKeyArn: z.string().regex(KMS_KEY_ARN, 'a KMS key ARN in that region').optional(),
                }),
              )
              .max(5)
              .default([]),
            /** A role (of the copy's account) granted GetSecretValue on the passphrase and Decrypt on its key. */
            readerRoleArn: z
              .string()
              .regex(ROLE_ARN, 'an IAM role ARN such as arn:aws:iam::210987654321:role/pgvault-restore')
              .optional(),
          })
          .nullable()
          .default(null),
        // ---- end: compromised account ----
      })
      .prefault({}),
    alerts: z
      .strictObject({
        emails: z.array(z.string().regex(EMAIL, 'an e-mail address')).max(50).default([]),
        backupAgeHours: z.number().int().min(1).default(48),
        rpoTargetMinutes: z.number().int().min(1).default(1440),
        rtoTargetMinutes: z.number().int().min(1).default(240),
        maxBackupDurationMinutes: z.number().int().min(1).default(240),
        /** Storage alarm at this share of storageQuotaGb. @default 80 */
        capacityPercent: z.number().int().min(1).max(100).default(80),
      })
      .prefault({}),
    storageQuotaGb: z.number().positive().optional(),
    /** Continuous WAL receiving (`pgvault wal receive`, a Fargate service per cluster). */
    walReceive: z
      .strictObject({
        enabled: z.boolean().default(false),
        cpu: z.union([z.literal(256), z.literal(512), z.literal(1024), z.literal(2048)]).default(512),
        memoryMiB: z.number().int().min(512).max(16384).default(1024),
      })
      .prefault({}),
    // ---- A second repository outside AWS (issue 14; infra/README.md "Second repository") ----
    /**
     * A copy of every backup and WAL segment in Google Cloud Storage or Azure Blob, written by the same
     * tasks (REPO2_*): losing or compromising this AWS account does not lose it. Its credentials are a
     * Secrets Manager secret the tasks and functions read when they start (REPO2_SECRET_ARN), never in
     * the template. @default null
     */
    secondRepository: z
      .strictObject({
        type: z.enum(['gcs', 'azure']),
        /** The GCS bucket or the Azure container (REPO2_BUCKET). */
        bucket: z
          .string()
          .regex(/^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/, '3-63 lowercase letters, digits, ".", "_" or "-"'),
        /** Key prefix inside it (REPO2_PREFIX). @default bucket.prefix */
        prefix: z
          .string()
          .regex(/^([A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*)?$/, "path segments without leading or trailing '/'")
          .optional(),
        /** JSON with AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN; or GOOGLE_APPLICATION_CREDENTIALS_JSON. */
        credentialsSecretArn: z.string().regex(SECRET_ARN, 'the complete secret ARN (ending in -XXXXXX)'),
        /** The customer-managed KMS key of that secret, when it has one. */
        credentialsKmsKeyArn: z.string().regex(KMS_KEY_ARN, 'a KMS key ARN').optional(),
        /** What it holds (REPO2_HOLDS, the core's placement words: full, base, wal, ...). @default everything */
        holds: z
          .array(z.string().regex(/^[a-z]+(:[a-z]+)?$/, 'a placement word such as full, wal or full:weekly'))
          .min(1)
          .max(20)
          .optional(),
      })
      .superRefine((r, ctx) => {
        if (r.type === 'azure' && (!/^[a-z0-9-]+$/.test(r.bucket) || r.bucket.includes('--')))
          ctx.addIssue({
            code: 'custom',
            path: ['bucket'],
            message: `${r.bucket} is not an Azure container name; use 3-63 lowercase letters, digits and single '-'`,
          });
      })
      .nullable()
      .default(null),
    // ---- end: second repository ----
    /** Weekly physical base backups (`pgvault backup base weekly`), for PITR. @default false */
    physicalBackups: z.boolean().default(false),
    /** Backup and verification tasks. */
    task: taskSize.prefault({}),
    /** Restore tasks; restores stage whole dumps, so they get more disk by default. */
    restoreTask: taskSize
      .extend({ ephemeralStorageGiB: z.number().int().min(21).max(200).default(100) })
      .prefault({}),
    /** PostgreSQL server majors installed in the image for PITR sandboxes and base-backup drills. @default [17] */
    postgresServerVersions: z.array(z.number().int().min(13).max(18)).max(5).default([17]),
    /**
     * Major of the image's client tools (pg_dump, pg_restore, pg_basebackup, psql): pg_dump refuses a server
     * newer than itself. @default the newest of postgresServerVersions (postgresClientVersion())
     */
    postgresClientVersion: z.number().int().min(13).max(18).optional(),
    /** CPU architecture of the Fargate tasks (the image is built for it). @default 'arm64' */
    taskArchitecture: z.enum(['arm64', 'x86_64']).default('arm64'),
    logRetentionDays: z
      .union(
        [
          1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288,
          3653,
        ].map((n) => z.literal(n)) as unknown as [z.ZodLiteral<number>, ...z.ZodLiteral<number>[]],
      )
      .default(90),
    /** Keep the bucket, its key and the passphrase when the stack is deleted. @default true */
    retainData: z.boolean().default(true),
  })
  .superRefine((c, ctx) => {
    incrementalProblems(c).forEach(({ path, message }) => {
      ctx.addIssue({ code: 'custom', path, message });
    });
    const seen = new Set<string>();
    c.clusters.forEach((cl, i) => {
      const key = cl.name.toLowerCase();
      if (seen.has(key))
        ctx.addIssue({
          code: 'custom',
          path: ['clusters', i, 'name'],
          message: `duplicate cluster name ${cl.name}`,
        });
      seen.add(key);
    });
    const zones = c.network.subnetAvailabilityZones;
    if (zones && zones.length !== c.network.subnetIds.length) {
      ctx.addIssue({
        code: 'custom',
        path: ['network', 'subnetAvailabilityZones'],
        message: `${zones.length} zone(s) for ${c.network.subnetIds.length} subnet(s); give one zone per subnet, in the order of subnetIds`,
      });
    }
    if ((c.network.endpoints === 'create' || c.network.endpoints === 's3') && !c.network.routeTableIds) {
      ctx.addIssue({
        code: 'custom',
        path: ['network', 'routeTableIds'],
        message: `required when network.endpoints is ${c.network.endpoints}: the route tables of subnetIds, which the S3 gateway endpoint adds its routes to`,
      });
    }
    const lock = c.bucket.objectLock;
    const shortest = Math.min(
      c.retention.days || Number.POSITIVE_INFINITY,
      c.retention.walDays || Number.POSITIVE_INFINITY,
    );
    if (lock && Number.isFinite(shortest) && lock.days > shortest) {
      ctx.addIssue({
        code: 'custom',
        path: ['bucket', 'objectLock', 'days'],
        message: `${lock.days} is longer than the shortest retention (${shortest} days: retention.days / retention.walDays); the retention function would fight the lock`,
      });
    }
    const hold = longestHoldDays(c.retention);
    if (c.bucket.expireAfterDays !== undefined && c.bucket.expireAfterDays <= hold) {
      ctx.addIssue({
        code: 'custom',
        path: ['bucket', 'expireAfterDays'],
        message: `${c.bucket.expireAfterDays} must be longer than the longest retention hold (${hold} days) to stay a safety net`,
      });
    }
    const expire = c.bucket.expireAfterDays ?? hold + 60;
    if (expire <= c.bucket.archiveAfterDays) {
      ctx.addIssue({
        code: 'custom',
        path: ['bucket', 'archiveAfterDays'],
        message: `${c.bucket.archiveAfterDays} must be shorter than the expiration (${expire} days)`,
      });
    }
    if (lock && c.bucket.noncurrentVersionExpireDays < lock.days) {
      ctx.addIssue({
        code: 'custom',
        path: ['bucket', 'noncurrentVersionExpireDays'],
        message: `${c.bucket.noncurrentVersionExpireDays} is shorter than the Object Lock days (${lock.days})`,
      });
    }
    compromiseIssues(c, ctx);
    const newestServer = Math.max(...c.postgresServerVersions);
    if (c.postgresClientVersion !== undefined && c.postgresClientVersion < newestServer) {
      ctx.addIssue({
        code: 'custom',
        path: ['postgresClientVersion'],
        message: `${c.postgresClientVersion} is older than the newest of postgresServerVersions (${newestServer}); pg_dump refuses a newer server: use ${newestServer} or later, or leave it out`,
      });
    }
    for (const [name, t] of [
      ['task', c.task],
      ['restoreTask', c.restoreTask],
      ['walReceive', c.walReceive],
    ] as const) {
      const why = fargateSizeProblem(t.cpu, t.memoryMiB);
      if (why) ctx.addIssue({ code: 'custom', path: [name, 'memoryMiB'], message: why });
    }
  });

/** Checks across the "compromised account" options (bucket.breakGlassRoleArn, replication, passphraseCopy). */
function compromiseIssues(
  c: Pick<DeployConfig, 'bucket' | 'account' | 'region' | 'retainData'>,
  ctx: z.RefinementCtx,
): void {
  const b = c.bucket;
  const issue = (path: (string | number)[], message: string) =>
    ctx.addIssue({ code: 'custom', path: ['bucket', ...path], message });
  if (b.breakGlassRoleArn && !c.retainData) {
    issue(
      ['breakGlassRoleArn'],
      'needs retainData: true (the key policy denies the key deletion a stack deletion would schedule)',
    );
  }
  if (b.protectKeyPolicy && !b.breakGlassRoleArn) {
    issue(
      ['protectKeyPolicy'],
      'needs bucket.breakGlassRoleArn (the one role left able to change the key policy)',
    );
  }
  const r = b.replication;
  if (r) {
    if (c.account !== undefined && r.destinationAccount === c.account) {
      issue(
        ['replication', 'destinationAccount'],
        `${r.destinationAccount} is this deployment's account; the copy must live in another account`,
      );
    }
    const keyAccount = r.replicaKmsKeyArn.split(':')[4];
    if (keyAccount !== r.destinationAccount) {
      issue(
        ['replication', 'replicaKmsKeyArn'],
        `belongs to account ${keyAccount}, not the destination account ${r.destinationAccount}; use a key of the destination account`,
      );
    }
  }
  const p = b.passphraseCopy;
  if (p) {
    const seen = new Set<string>();
    p.replicaRegions.forEach((rr, i) => {
      if (rr.region === c.region || seen.has(rr.region)) {
        issue(
          ['passphraseCopy', 'replicaRegions', i, 'region'],
          `${rr.region} is ${seen.has(rr.region) ? 'listed twice' : "the deployment's own region"}; name another region`,
        );
      }
      seen.add(rr.region);
      if (rr.kmsKeyArn && rr.kmsKeyArn.split(':')[3] !== rr.region) {
        issue(
          ['passphraseCopy', 'replicaRegions', i, 'kmsKeyArn'],
          `is in ${rr.kmsKeyArn.split(':')[3]}, not ${rr.region}; a replica's key must be in its region`,
        );
      }
    });
    if (p.replicaRegions.length === 0 && !p.readerRoleArn) {
      issue(['passphraseCopy'], 'names neither replicaRegions nor readerRoleArn; set one, or null');
    }
  }
}

export type DeployConfigInput = z.input<typeof deployConfigSchema>;
export type DeployConfig = z.output<typeof deployConfigSchema>;
export type ClusterConfig = DeployConfig['clusters'][number];

/** PostgreSQL's first major with incremental base backups (core/backup/base.ts MIN_INCREMENTAL_MAJOR). */
export const MIN_INCREMENTAL_MAJOR = 17;

/**
 * What is wrong with the clusters' incremental base backup settings, one problem per key: an
 * incremental needs scheduled base backups (physicalBackups), a server of 17 or newer (postgresMajor,
 * required so synth can tell) and the image's pg_basebackup of 17 or newer (postgresClientVersion);
 * incrementalChainMax means nothing without baseIncremental.
 */
export function incrementalProblems(c: {
  readonly physicalBackups: boolean;
  readonly postgresServerVersions: readonly number[];
  readonly postgresClientVersion?: number;
  readonly clusters: readonly {
    readonly postgresMajor?: number;
    readonly baseIncremental?: boolean;
    readonly incrementalChainMax?: number;
  }[];
}): { path: (string | number)[]; message: string }[] {
  const problems: { path: (string | number)[]; message: string }[] = [];
  const client =
    c.postgresClientVersion ??
    (c.postgresServerVersions.length > 0 ? Math.max(...c.postgresServerVersions) : DEFAULT_POSTGRES_MAJOR);
  c.clusters.forEach((cl, i) => {
    const at = (key: string) => ['clusters', i, key];
    if (cl.incrementalChainMax !== undefined && cl.baseIncremental !== true) {
      problems.push({
        path: at('incrementalChainMax'),
        message: 'applies only with baseIncremental: true; set that too or remove incrementalChainMax',
      });
    }
    if (cl.baseIncremental !== true) return;
    if (!c.physicalBackups) {
      problems.push({
        path: at('baseIncremental'),
        message:
          'incrementals are of the scheduled base backups, and physicalBackups is false; set physicalBackups: true or remove baseIncremental',
      });
    } else if (cl.postgresMajor === undefined) {
      problems.push({
        path: at('baseIncremental'),
        message: `needs PostgreSQL ${MIN_INCREMENTAL_MAJOR} or newer: set postgresMajor to the cluster's server major (${MIN_INCREMENTAL_MAJOR} or more)`,
      });
    } else if (cl.postgresMajor < MIN_INCREMENTAL_MAJOR) {
      problems.push({
        path: at('baseIncremental'),
        message: `incremental base backups need PostgreSQL ${MIN_INCREMENTAL_MAJOR} or newer and this cluster's postgresMajor is ${cl.postgresMajor}; remove baseIncremental (its base backups stay full ones)`,
      });
    } else if (client < MIN_INCREMENTAL_MAJOR) {
      problems.push({
        path: at('baseIncremental'),
        message: `the image's pg_basebackup is PostgreSQL ${client} (postgresClientVersion), which takes no incremental; set postgresClientVersion to ${MIN_INCREMENTAL_MAJOR} or more or remove baseIncremental`,
      });
    }
  });
  return problems;
}

/** Client tools' major when the configuration names no server major (postgresServerVersions: []). */
export const DEFAULT_POSTGRES_MAJOR = 17;

/**
 * Major of the image's PostgreSQL client tools (the PG_CLIENT_VERSION build argument): the configured
 * one, else the newest server major of the configuration, so pg_dump is never older than a server.
 */
export function postgresClientVersion(c: DeployConfig): number {
  if (c.postgresClientVersion !== undefined) return c.postgresClientVersion;
  return c.postgresServerVersions.length > 0 ? Math.max(...c.postgresServerVersions) : DEFAULT_POSTGRES_MAJOR;
}

/** Days the retention function may keep a GFS backup: the longest of the daily, weekly, monthly and WAL holds. */
export function longestHoldDays(r: DeployConfig['retention']): number {
  return Math.max(r.days, r.weeks * 7, r.months * 31, r.walDays, r.configCount, r.indexesCount);
}

/** The safety-net expiration in days (configured, or the longest hold plus 60 days). */
export function expirationDays(c: DeployConfig): number {
  return c.bucket.expireAfterDays ?? longestHoldDays(c.retention) + 60;
}

/** Whether `pgvault wal receive` runs for this cluster. */
export function receivesWal(c: DeployConfig, cluster: ClusterConfig): boolean {
  return cluster.walReceive ?? c.walReceive.enabled;
}

/** Fargate's valid CPU / memory combinations; undefined when valid. */
export function fargateSizeProblem(cpu: number, memoryMiB: number): string | undefined {
  const ranges: Record<number, [number, number, number]> = {
    256: [512, 2048, 512],
    512: [1024, 4096, 1024],
    1024: [2048, 8192, 1024],
    2048: [4096, 16384, 1024],
    4096: [8192, 30720, 1024],
  };
  const r = ranges[cpu];
  if (!r) return `cpu ${cpu} is not a Fargate size`;
  const [min, max, step] = r;
  const ok =
    cpu === 256
      ? [512, 1024, 2048].includes(memoryMiB)
      : memoryMiB >= min && memoryMiB <= max && memoryMiB % step === 0;
  return ok
    ? undefined
    : `${memoryMiB} MiB is not valid with cpu ${cpu} (Fargate allows ${min}–${max} MiB in steps of ${step})`;
}

function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return tz.includes('/') || tz === 'UTC';
  } catch {
    return false;
  }
}

const DOW_NAMES = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];

/**
 * A crontab line's schedule (minute hour day-of-month month day-of-week) as an EventBridge Scheduler
 * expression: a sixth field (year), `?` in the unused day field, and day-of-week 0/7=Sunday mapped to
 * Scheduler's SUN..SAT names. `cron(...)` and `rate(...)` pass through. Undefined when not convertible
 * (Scheduler cannot restrict both day fields at once).
 */
export function cronToScheduler(expr: string): string | undefined {
  const trimmed = expr.trim();
  if (/^(cron|rate|at)\(.+\)$/.test(trimmed)) return trimmed;
  const fields = trimmed.split(/\s+/);
  if (fields.length !== 5) return undefined;
  const [min, hour, dom, mon, dow] = fields as [string, string, string, string, string];
  const simple = /^[0-9*/,-]+$/;
  if (![min, hour, dom].every((f) => simple.test(f)) || !/^[0-9A-Za-z*/,-]+$/.test(mon)) return undefined;
  if (dow === '*' || dow === '?') return `cron(${min} ${hour} ${dom} ${mon} ? *)`;
  if (dom !== '*' && dom !== '?') return undefined;
  const mapped = mapDayOfWeek(dow);
  return mapped === undefined ? undefined : `cron(${min} ${hour} ? ${mon} ${mapped} *)`;
}

function mapDayOfWeek(dow: string): string | undefined {
  const one = (d: string): string | undefined => {
    if (/^[0-7]$/.test(d)) return DOW_NAMES[Number(d) % 7];
    const up = d.toUpperCase();
    return DOW_NAMES.includes(up) ? up : undefined;
  };
  const parts = dow.split(',').map((part) => {
    const range = part.split('-');
    if (range.length === 1) return one(part);
    if (range.length !== 2) return undefined;
    const [a, b] = [one(range[0]!), one(range[1]!)];
    if (!a || !b) return undefined;
    // crontab's 1-7 ends on Sunday; Scheduler's ranges run SUN..SAT, so a range ending in 7 is split.
    if (range[1] === '7' && a !== 'SUN') return `${a}-SAT,SUN`;
    return `${a}-${b}`;
  });
  return parts.every((p) => p !== undefined) ? parts.join(',') : undefined;
}

/** Validates a parsed configuration; throws DeployConfigError with one line naming the field. */
export function parseDeployConfig(input: unknown, source = 'configuration'): DeployConfig {
  const result = deployConfigSchema.safeParse(input);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const field = issue.path.length ? formatPath(issue.path) : '(top level)';
  throw new DeployConfigError(`pgvault deploy config ${source}: ${field}: ${issue.message}`);
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${String(p)}`)).join('');
}

/** Reads and validates a configuration file (JSON). */
export function loadDeployConfig(path: string): DeployConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new DeployConfigError(`pgvault deploy config ${path}: cannot be read (${(err as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new DeployConfigError(`pgvault deploy config ${path}: not valid JSON (${(err as Error).message})`);
  }
  return parseDeployConfig(json, path);
}

/**
 * The account and region to deploy to: the configuration's, else the CDK CLI's (CDK_DEFAULT_ACCOUNT /
 * CDK_DEFAULT_REGION, from the AWS profile). A region is required: the Secrets Manager condition of the
 * KMS grants, the schedules' time zone and every ARN name it, and an environment-agnostic stack would
 * deploy wherever the caller's profile points. The account may stay open (the profile's at deploy).
 */
export function deploymentEnv(
  config: DeployConfig,
  source: string,
  env: NodeJS.ProcessEnv = process.env,
): { account?: string; region: string } {
  const region = config.region ?? env.CDK_DEFAULT_REGION;
  if (!region) {
    throw new DeployConfigError(
      `pgvault deploy config ${source}: region: not set, and the AWS CLI profile names none (CDK_DEFAULT_REGION); set "region" (e.g. "eu-west-1")`,
    );
  }
  const account = config.account ?? env.CDK_DEFAULT_ACCOUNT;
  return account ? { account, region } : { region };
}

/** The path to load: `-c config=PATH`, else PGVAULT_DEPLOY_CONFIG, else the example. */
export function deployConfigPath(contextValue: unknown, env: NodeJS.ProcessEnv = process.env): string {
  if (typeof contextValue === 'string' && contextValue !== '') return resolve(contextValue);
  if (env.PGVAULT_DEPLOY_CONFIG) return resolve(env.PGVAULT_DEPLOY_CONFIG);
  return EXAMPLE_CONFIG_PATH;
}
