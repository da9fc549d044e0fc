import { awsClientCredentials, type Config } from '../config';
import { ConfigError } from '../errors';
import { objectLockRetainUntil } from '../retention/lock';
import { retentionPolicy } from '../retention/plan';
import { AzureTarget } from './azure';
import { FileTarget } from './file';
import { S3Target } from './s3';
import type { ObjectLockOptions, StorageTarget } from './target';

export { AzureTarget, type AzureTargetOptions, blockSizeAt, chooseBlockSize } from './azure';
export { assertValidKey, assertValidPrefix, FileTarget } from './file';
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
    case 'gcs':
      throw new ConfigError(`CLOUD_PROVIDER=${cloud.provider} is not supported yet; use s3, azure or none`);
  }
}
