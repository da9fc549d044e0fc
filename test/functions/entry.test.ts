import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { S3Target } from '../../core/storage/s3';
import { clusterEnvironment } from '../../functions/env';
import { startCluster } from '../helpers/pg';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';

/**
 * The container entry, run here without Docker: `tasks/entry.sh backup full manual` with the
 * environment a task gets (the task definition's settings and secrets, plus the dispatcher's
 * per-cluster override), against a real PostgreSQL and the bucket in s3rver. The lifecycle event goes
 * to a local stand-in for EventBridge (the SDK's AWS_ENDPOINT_URL_EVENTBRIDGE), the metrics to stdout.
 */

const ENTRY = resolve(__dirname, '../../tasks/entry.sh');
const KEY = 'task passphrase from Secrets Manager';

let pg: TempCluster;
let s3: S3TestServer;
let bus: Server;
const putEvents: {
  target: string;
  body: { Entries: { DetailType: string; Source: string; EventBusName: string; Detail: string }[] };
}[] = [];

function body(req: IncomingMessage): Promise<string> {
  return new Promise((ok) => {
    let text = '';
    req.on('data', (c: Buffer) => {
      text += c.toString();
    });
    req.on('end', () => ok(text));
  });
}

function taskEnv(): Record<string, string> {
  // The dispatcher's container override, built by the same code the functions use.
  const override = clusterEnvironment({
    name: 'main',
    mode: 'single-node',
    host: pg.host,
    port: pg.port,
    database: 'postgres',
    credentialsSecretArn: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:main-db',
  });
  return {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/root',
    // The task definition's environment and secrets.
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    CLOUD_PREFIX: 'vault',
    S3_ENDPOINT: s3.endpoint,
    LOCAL_COPY: 'false',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY: KEY,
    ENCRYPTION_ITERATIONS: '1000',
    COMPRESSION: 'zstd',
    PGUSER: pg.superuser,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    EVENT_BUS_NAME: 'pgvault-events',
    AWS_ENDPOINT_URL_EVENTBRIDGE: `http://127.0.0.1:${(bus.address() as AddressInfo).port}`,
    // What ECS sets in every container (turns the metric lines on).
    ECS_CONTAINER_METADATA_URI_V4: 'http://169.254.170.2/v4/test',
    ...override,
  };
}

function runEntry(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((ok, fail) => {
    const child = spawn(ENTRY, args, { env: taskEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('error', fail);
    child.on('close', (code) => ok({ code, stdout, stderr }));
  });
}

function metricLines(stdout: string): Record<string, unknown>[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{"_aws"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

beforeAll(async () => {
  bus = createServer((req, res) => {
    void body(req).then((text) => {
      putEvents.push({ target: String(req.headers['x-amz-target']), body: JSON.parse(text) });
      res.setHeader('content-type', 'application/x-amz-json-1.1');
      res.end(JSON.stringify({ FailedEntryCount: 0, Entries: [{ EventId: `e-${putEvents.length}` }] }));
    });
  });
  await new Promise<void>((ok) => bus.listen(0, '127.0.0.1', ok));
  [pg, s3] = await Promise.all([startCluster(), startS3Server('pgvault-entry')]);
  await pg.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
  await pg.query("INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 500) g");
});

afterAll(async () => {
  await Promise.all([pg?.stop(), s3?.stop(), new Promise((ok) => bus?.close(ok))]);
});

describe('tasks/entry.sh', () => {
  it('runs the command the dispatcher sends: the backup is stored, the event put, the metrics written', async () => {
    // Prepare
    putEvents.length = 0;

    // Act
    const r = await runEntry(['backup', 'full', 'manual']);

    // Assess: exit 0 and a complete backup (its manifest) in the bucket.
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(
      `pgvault task: cluster main (single-node at ${pg.host}:${pg.port}): pgvault backup full manual`,
    );
    const bucket = new S3Target({
      bucket: s3.bucket,
      prefix: 'vault',
      region: 'us-east-1',
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
    const keys: string[] = [];
    for await (const o of bucket.list('main/full/manual/')) keys.push(o.key);
    const manifests = keys.filter((k) => k.endsWith('.manifest.json'));
    expect(manifests).toHaveLength(1);
    const id = manifests[0]!.split('/').pop()!.replace('.manifest.json', '');
    expect(keys).toContain(`main/full/manual/${id}.postgres.dump.zst.enc`);

    expect(putEvents).toHaveLength(1);
    const [put] = putEvents;
    expect(put!.target).toBe('AWSEvents.PutEvents');
    const entry = put!.body.Entries[0]!;
    expect(entry).toMatchObject({
      Source: 'pgvault',
      DetailType: 'Backup Succeeded',
      EventBusName: 'pgvault-events',
    });
    const detail = JSON.parse(entry.Detail);
    expect(detail).toEqual({
      version: 1,
      outcome: 'succeeded',
      cluster: 'main',
      command: 'backup full manual',
      origin: 'cli',
      backupId: id,
      backupType: 'full',
      schedule: 'manual',
      databases: ['postgres'],
      rawBytes: expect.any(Number),
      storedBytes: expect.any(Number),
      durationMs: expect.any(Number),
      startedAt: expect.any(String),
      finishedAt: expect.any(String),
      host: expect.any(String),
      at: expect.any(String),
    });
    expect(detail.storedBytes).toBeGreaterThan(0);

    const metrics = metricLines(r.stdout);
    expect(metrics).toHaveLength(1);
    expect(metrics[0]).toMatchObject({
      _aws: {
        CloudWatchMetrics: [
          {
            Namespace: 'pgvault',
            Dimensions: [['Cluster'], ['Cluster', 'BackupType']],
            Metrics: [
              { Name: 'BackupSucceeded', Unit: 'Count' },
              { Name: 'BackupDurationSeconds', Unit: 'Seconds' },
              { Name: 'BackupRawBytes', Unit: 'Bytes' },
              { Name: 'BackupStoredBytes', Unit: 'Bytes' },
            ],
          },
        ],
      },
      Cluster: 'main',
      BackupType: 'full',
      BackupSucceeded: 1,
      BackupRawBytes: detail.rawBytes,
      BackupStoredBytes: detail.storedBytes,
    });
    expect(`${r.stdout}${r.stderr}${JSON.stringify(putEvents)}`).not.toContain(KEY);
  });

  it('passes a failing command\'s exit code through and puts "Backup Failed"', async () => {
    // Prepare
    putEvents.length = 0;

    // Act
    const r = await runEntry(['backup', 'full', 'hourly']);

    // Assess
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      'pgvault: schedule hourly is not allowed; use one of daily, weekly, monthly, manual',
    );
    expect(putEvents.map((p) => p.body.Entries[0]!.DetailType)).toEqual(['Backup Failed']);
    expect(JSON.parse(putEvents[0]!.body.Entries[0]!.Detail)).toMatchObject({
      outcome: 'failed',
      cluster: 'main',
      command: 'backup full hourly',
      backupType: 'full',
      schedule: 'hourly',
      error: 'schedule hourly is not allowed; use one of daily, weekly, monthly, manual',
    });
    expect(metricLines(r.stdout)).toEqual([
      expect.objectContaining({ Cluster: 'main', BackupType: 'full', BackupFailed: 1 }),
    ]);
  });

  it('passes an operational failure through (PostgreSQL not reachable: exit 1)', async () => {
    // Act
    const r = await new Promise<{ code: number | null; stderr: string }>((ok) => {
      const child = spawn(ENTRY, ['backup', 'config'], {
        env: { ...taskEnv(), PGPORT: '1', EVENT_BUS_NAME: '' },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => {
        stderr += c.toString();
      });
      child.on('close', (code) => ok({ code, stderr }));
    });

    // Assess
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/pgvault: .*(connect|refused)/i);
  });

  it('refuses to start without a command', async () => {
    // Act
    const r = await runEntry([]);

    // Assess
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('pgvault task: no command given; the functions pass one, e.g. backup full daily\n');
  });
});
