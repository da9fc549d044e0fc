import {
  awsClientCredentials,
  type Config,
  type RepositoryConfig,
  type RepositoryKind,
  repositoryHolds,
} from '../config';
import { ConfigError } from '../errors';
import { objectLockRetainUntil } from '../retention/lock';
import { retentionPolicy } from '../retention/plan';
import { AzureTarget } from './azure';
import { FileTarget } from './file';
import { GcsTarget } from './gcs';
import { S3Target } from './s3';
import type { ObjectLockOptions, StorageTarget } from './target';

export { AzureTarget, type AzureTargetOptions, blockSizeAt, chooseBlockSize } from './azure';
export { assertValidKey, assertValidPrefix, FileTarget } from './file';
export { GcsTarget, type GcsTargetOptions } from './gcs';
export { choosePartSize, placementFor, S3Target, type S3TargetOptions } from './s3';
export type { ObjectInfo, ObjectLockOptions, PutOptions, StorageTarget } from './target';

/**
 * The per-object lock every cloud target puts on new objects (OBJECT_LOCK_MODE with
 * OBJECT_LOCK_RETAIN=gfs): each object's retain-until is its planned GFS expiry under this config's
 * retention (core/retention/lock.ts), never less than OBJECT_LOCK_MIN_DAYS from the write. One
 * computation for S3, Azure and GCS; undefined when no per-object lock is configured.
 */
export function objectLockOptions(config: Config): ObjectLockOptions | undefined {
  const lock = config.cloud.objectLock;
  if (lock === undefined) return undefined;
  const policy = retentionPolicy(config);
  return {
    mode: lock.mode,
    retainUntil: (key: string, now: Date) => objectLockRetainUntil(key, policy, now, lock.minDays),
  };
}

/**
 * The targets a backup writes to, local first: a restore prefers the local copy, and a local write
 * failing (disk full) is cheaper to find out before the upload has started. Creating them loads no
 * SDK; the S3 client is made on first use.
 */
export function createTargets(config: Config): StorageTarget[] {
  if (config.repositories) {
    // One target per repository, in REPO<n> order (the read preference), each read as a single target.
    return config.repositories.map((repo) => {
      const [target] = createTargets(repo.config);
      REPOSITORY.set(target!, repo);
      return target!;
    });
  }
  const { cloud } = config;
  switch (cloud.provider) {
    case 'none':
      return [new FileTarget(config.backupDir)];
    case 's3': {
      if (cloud.bucket === undefined) {
        throw new ConfigError('CLOUD_PROVIDER=s3 needs CLOUD_BUCKET; set it to the bucket name');
      }
      const objectLock = objectLockOptions(config);
      const s3 = new S3Target({
        bucket: cloud.bucket,
        prefix: cloud.prefix,
        region: cloud.region,
        endpoint: cloud.s3Endpoint,
        lifecycleTags: cloud.lifecycleTags,
        ...(cloud.storageClass ? { storageClass: cloud.storageClass } : {}),
        ...awsClientCredentials(cloud),
        requestTimeoutMs: cloud.requestTimeoutSeconds * 1000,
        maxAttempts: cloud.maxAttempts,
        ...(objectLock ? { objectLock } : {}),
      });
      return config.localCopy ? [new FileTarget(config.backupDir), s3] : [s3];
    }
    case 'azure': {
      if (cloud.bucket === undefined) {
        throw new ConfigError('CLOUD_PROVIDER=azure needs CLOUD_BUCKET; set it to the container name');
      }
      const objectLock = objectLockOptions(config);
      const azure = new AzureTarget({
        container: cloud.bucket,
        prefix: cloud.prefix,
        ...cloud.azure,
        ...(cloud.accessTier ? { accessTier: cloud.accessTier } : {}),
        requestTimeoutMs: cloud.requestTimeoutSeconds * 1000,
        maxAttempts: cloud.maxAttempts,
        ...(objectLock ? { objectLock } : {}),
      });
      return config.localCopy ? [new FileTarget(config.backupDir), azure] : [azure];
    }
    case 'gcs': {
      if (cloud.bucket === undefined) {
        throw new ConfigError('CLOUD_PROVIDER=gcs needs CLOUD_BUCKET; set it to the bucket name');
      }
      const gcs = new GcsTarget(gcsTargetOptions(config));
      return config.localCopy ? [new FileTarget(config.backupDir), gcs] : [gcs];
    }
  }
}

const REPOSITORY = new WeakMap<StorageTarget, RepositoryConfig>();

/** The repository (REPO<n>_*) a target was made for; undefined with the single-target keys. */
export function repositoryOf(target: StorageTarget): RepositoryConfig | undefined {
  return REPOSITORY.get(target);
}

/** A target's name in messages: `repo2 (s3://bucket/prefix)`, or its location without repositories. */
export function targetName(target: StorageTarget): string {
  const repo = REPOSITORY.get(target);
  return repo ? `repo${repo.n} (${target.location})` : target.location;
}

/**
 * The targets that hold a kind (REPO<n>_HOLDS; a full or base backup with its schedule). Without
 * repositories every target holds everything, as before.
 */
export function targetsHolding(
  targets: readonly StorageTarget[],
  kind: RepositoryKind,
  schedule?: string,
): StorageTarget[] {
  return targets.filter((t) => {
    const repo = REPOSITORY.get(t);
    return repo === undefined || repositoryHolds(repo.holds, kind, schedule);
  });
}

/** CLOUD_PROVIDER=gcs: the target's options from the config. */
function gcsTargetOptions(config: Config): ConstructorParameters<typeof GcsTarget>[0] {
  const { cloud } = config;
  const settings = cloud.gcs ?? {};
  const objectLock = objectLockOptions(config);
  return {
    bucket: cloud.bucket!,
    prefix: cloud.prefix,
    ...(settings.endpoint ? { endpoint: settings.endpoint } : {}),
    ...(settings.keyFile ? { keyFile: settings.keyFile } : {}),
    ...(settings.projectId ? { projectId: settings.projectId } : {}),
    ...(settings.storageClass ? { storageClass: settings.storageClass } : {}),
    requestTimeoutMs: cloud.requestTimeoutSeconds * 1000,
    maxAttempts: cloud.maxAttempts,
    ...(objectLock ? { objectLock } : {}),
  };
}
