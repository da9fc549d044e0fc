import { awsClientCredentials, type Config } from '../config';
import { ConfigError } from '../errors';
import { objectLockRetainUntil } from '../retention/lock';
import { retentionPolicy } from '../retention/plan';
import { AzureTarget } from './azure';
import { FileTarget } from './file';
import { GcsTarget } from './gcs';
import { S3Target } from './s3';
import type { StorageTarget } from './target';

export { AzureTarget, type AzureTargetOptions, blockSizeAt, chooseBlockSize } from './azure';
export { assertValidKey, assertValidPrefix, FileTarget } from './file';
export { GcsTarget, type GcsTargetOptions } from './gcs';
export { choosePartSize, placementFor, S3Target, type S3TargetOptions } from './s3';
export type { ObjectInfo, PutOptions, StorageTarget } from './target';

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
      const lockPolicy = retentionPolicy(config);
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
        ...(cloud.objectLock
          ? {
              objectLock: {
                mode: cloud.objectLock.mode,
                retainUntil: (key: string, now: Date) =>
                  objectLockRetainUntil(key, lockPolicy, now, cloud.objectLock!.minDays),
              },
            }
          : {}),
      });
      return config.localCopy ? [new FileTarget(config.backupDir), s3] : [s3];
    }
    case 'azure': {
      if (cloud.bucket === undefined) {
        throw new ConfigError('CLOUD_PROVIDER=azure needs CLOUD_BUCKET; set it to the container name');
      }
      const azure = new AzureTarget({
        container: cloud.bucket,
        prefix: cloud.prefix,
        ...cloud.azure,
        ...(cloud.accessTier ? { accessTier: cloud.accessTier } : {}),
        requestTimeoutMs: cloud.requestTimeoutSeconds * 1000,
        maxAttempts: cloud.maxAttempts,
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

/** CLOUD_PROVIDER=gcs: the target's options from the config (retention: each object's GFS expiry). */
function gcsTargetOptions(config: Config): ConstructorParameters<typeof GcsTarget>[0] {
  const { cloud } = config;
  const settings = cloud.gcs ?? {};
  const retention = settings.retention;
  const lockPolicy = retentionPolicy(config);
  return {
    bucket: cloud.bucket!,
    prefix: cloud.prefix,
    ...(settings.endpoint ? { endpoint: settings.endpoint } : {}),
    ...(settings.keyFile ? { keyFile: settings.keyFile } : {}),
    ...(settings.projectId ? { projectId: settings.projectId } : {}),
    ...(settings.storageClass ? { storageClass: settings.storageClass } : {}),
    requestTimeoutMs: cloud.requestTimeoutSeconds * 1000,
    maxAttempts: cloud.maxAttempts,
    ...(retention
      ? {
          retention: {
            mode: retention.mode,
            retainUntil: (key: string, now: Date) =>
              objectLockRetainUntil(key, lockPolicy, now, retention.minDays),
          },
        }
      : {}),
  };
}
