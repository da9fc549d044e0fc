import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import { parseRecoveryTarget, restorePitrDatabase } from '../../core/restore/pitr';
import { startS3Server } from '../helpers/s3-server';
import {
  type ArchivingCluster,
  type Batch,
  batchesIn,
  between,
  commitBatch,
  sleep,
  startAppCluster,
  switchAndWaitArchived,
} from './pitr-fixture';

/**
 * The basic PITR with S3 as the only target: base backup and WAL in the bucket (s3rver), the
 * sandbox's restore_command reading from it with the SDK's usual credentials.
 */
let s3: Awaited<ReturnType<typeof startS3Server>>;
let a: ArchivingCluster;
const batches: Batch[] = [];

beforeAll(async () => {
  s3 = await startS3Server();
  // The server and its archive_command / restore_command inherit these.
  process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey;
  a = await startAppCluster({
    cluster: 'in-s3',
    extra: { CLOUD_PROVIDER: 's3', CLOUD_BUCKET: s3.bucket, S3_ENDPOINT: s3.endpoint, LOCAL_COPY: 'false' },
  });
  batches.push(await commitBatch(a.cluster, 0));
  await backupBase(a.vault(), { schedule: 'weekly' });
  batches.push(await commitBatch(a.cluster, 1));
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 2));
  await switchAndWaitArchived(a.cluster);
}, 120_000);

afterAll(async () => {
  await a?.stop();
  await s3?.stop();
});

describe('restore pitr with S3 as the target', () => {
  it('recovers to a time between two commits from the bucket alone', async () => {
    // Prepare
    const vault = a.vault();
    const target = parseRecoveryTarget({ time: between(batches[1]!.commitTime, batches[2]!.commitTime) });

    // Act
    const r = await restorePitrDatabase(vault, 'auto', target, { database: 'from_s3', from: 'app' });

    // Assess
    expect(vault.targets.map((t) => t.kind)).toEqual(['s3']);
    expect(await batchesIn(a.cluster, 'from_s3')).toEqual({ 0: 50, 1: 50 });
    expect(r.recovered.segmentsRestored).toBeGreaterThan(0);
  });
});
