import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupBase } from '../../core/backup/base';
import type { TempCluster } from '../../core/pg/cluster';
import { runPgvault } from '../helpers/cli';
import { startCluster } from '../helpers/pg';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
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
 * `restore pitr` from S3 when every S3 setting (endpoint, credentials, timeouts) is in the config file
 * only, as an operator with a /etc/pgvault.conf has it: restore_command runs inside the sandbox server,
 * which reads the config file pgvault writes for it, not the operator's. Before, that file carried no
 * credentials and no S3 timeouts, so the sandbox's restore_command could not read the archive (the
 * SDK found no credentials) and the recovery stopped at the base backup.
 */
let s3: S3TestServer;
let a: ArchivingCluster;
let into: TempCluster;
const batches: Batch[] = [];

beforeAll(async () => {
  s3 = await startS3Server();
  [a, into] = await Promise.all([
    startAppCluster({
      extra: {
        CLOUD_PROVIDER: 's3',
        CLOUD_BUCKET: s3.bucket,
        CLOUD_PREFIX: 'vault',
        S3_ENDPOINT: s3.endpoint,
        AWS_DEFAULT_REGION: s3.region,
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
        S3_REQUEST_TIMEOUT: '20',
        S3_MAX_ATTEMPTS: '2',
        LOCAL_COPY: 'false',
      },
    }),
    startCluster(),
  ]);
  batches.push(await commitBatch(a.cluster, 0));
  await backupBase(a.vault(), { schedule: 'daily' });
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 1));
  await switchAndWaitArchived(a.cluster);
  await sleep(1100);
  batches.push(await commitBatch(a.cluster, 2));
  await switchAndWaitArchived(a.cluster);
}, 180_000);

afterAll(async () => {
  await Promise.all([a?.stop(), into?.stop(), s3?.stop()]);
});

describe('restore pitr from S3 with its settings only in the config file', () => {
  it('recovers through the archive to the target: batch 1 is there, batch 2 is not', async () => {
    const target = between(batches[1]!.commitTime, batches[2]!.commitTime);
    // Nothing of the test process's environment: no AWS variable, no shared credentials file.
    const env = {
      PATH: process.env.PATH,
      HOME: a.work,
      TMPDIR: process.env.TMPDIR ?? '/tmp',
      AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
      AWS_CONFIG_FILE: '/nonexistent',
      AWS_EC2_METADATA_DISABLED: 'true',
      PGHOST: into.host,
      PGPORT: String(into.port),
      PGUSER: into.superuser,
    };
    const run = await runPgvault(
      ['--config', a.configFile, '--json', 'restore', 'pitr', 'auto', target, 'pitr_s3', '--from', 'app'],
      env,
      a.work,
    );
    expect(run.stderr).not.toContain(s3.credentials.secretAccessKey);
    expect(run.code, run.stderr).toBe(0);
    expect(await batchesIn(into, 'pitr_s3')).toEqual({ 0: 50, 1: 50 });
  });
});
