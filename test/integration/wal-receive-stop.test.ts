import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Target } from '../../core/storage/s3';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { BIN, CLUSTER_NAME, startWalFixture, type WalFixture } from './wal-fixture';

/**
 * Issue 12: an ECS deployment stops the WAL receiver with SIGTERM. Here the segment's upload is stored
 * by s3rver but its answer never comes (the fault proxy holds it) when the SIGTERM arrives: the clean
 * stop must still leave the segment stored, nothing staged that was stored, and exit 0 (no alert).
 */
const PREFIX = 'stop';
let s3: S3TestServer;
let proxy: FaultProxy;
let fx: WalFixture;
let receiver: ChildProcess | undefined;
let credentials: Record<string, string>;

beforeAll(async () => {
  s3 = await startS3Server('pgvault-stop');
  proxy = await startFaultProxy(s3.endpoint);
  credentials = {
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  };
  fx = await startWalFixture(
    {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      CLOUD_PREFIX: PREFIX,
      S3_ENDPOINT: proxy.endpoint,
      S3_REQUEST_TIMEOUT: '20',
      LOCAL_COPY: 'false',
    },
    { archiveCommand: '' },
  );
}, 120_000);

afterAll(async () => {
  receiver?.kill('SIGKILL');
  await fx?.stop();
  await proxy?.stop();
  await s3?.stop();
});

describe('wal receive stopped while a segment upload hangs', () => {
  it('stores the segment, leaves nothing staged and exits 0', async () => {
    // Prepare: uploads of a WAL segment are stored by s3rver but not answered (the first two).
    const stall = proxy.addRule({
      method: 'PUT',
      key: /\/wal\/[0-9A-F]{8}\//,
      times: 2,
      action: { kind: 'lose-response', answer: 'stall' },
    });
    receiver = spawn(BIN, ['--config', fx.configFile, 'wal', 'receive', '--slot', 'pgvault_stop', '--json'], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: '/root',
        PGHOST: fx.cluster.host,
        PGPORT: String(fx.cluster.port),
        PGUSER: fx.cluster.superuser,
        PGDATABASE: 'postgres',
        ...credentials,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    receiver.stderr!.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    let stdout = '';
    receiver.stdout!.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    const exited = new Promise<number | null>((resolve) => receiver!.once('exit', (code) => resolve(code)));

    // pg_receivewal streams from where the server is when it starts: wait for it before switching.
    const deadline = Date.now() + 60_000;
    while (!stdout.includes('"receiving":true') && Date.now() < deadline) await sleep(100);

    // Act: a completed segment, its upload stalled; then the deployment's SIGTERM.
    const [name] = await fx.makeSegments(1);
    await proxy.waitFor(stall, 60_000);
    receiver.kill('SIGTERM');
    const code = await exited;

    // Assess: exit 0 after the clean-up; the segment is in the bucket and no longer staged.
    expect(`exit ${code}`, stderr).toBe('exit 0');
    expect(proxy.hits(stall)).toBeGreaterThanOrEqual(1);
    const bucket = new S3Target({
      bucket: s3.bucket,
      prefix: PREFIX,
      region: s3.region,
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
    const key = `${CLUSTER_NAME}/wal/00000001/${name!.slice(0, 16)}/${name}.zst.enc`;
    expect(await bucket.stat(key), stderr).toBeDefined();
    const staging = join(fx.vaultDir, '.pgvault-receive', CLUSTER_NAME);
    expect(readdirSync(staging).filter((f) => f === name)).toEqual([]);
  }, 180_000);
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
