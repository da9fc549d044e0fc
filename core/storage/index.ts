import { awsClientCredentials, type Config } from '../config';
import { ConfigError } from '../errors';
import { objectLockRetainUntil } from '../retention/lock';
import { retentionPolicy } from '../retention/plan';
import { AzureTarget } from './azure';
import { FileTarget } from './file';
import { S3Target } from './s3';
import type { StorageTarget } from './target';

export { AzureTarget, type AzureTargetOptions, blockSizeAt, chooseBlockSize } from './azure';
export { assertValidKey, assertValidPrefix, FileTarget } from './file';
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
    case 'gcs':
      throw new ConfigError(`CLOUD_PROVIDER=${cloud.provider} is not supported yet; use s3, azure or none`);
  }
}
