import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FileTarget } from '../../core/storage/file';
import { type CliRun, runPgvault } from '../helpers/cli';
import { tempDir } from '../helpers/vault';
import { HOUR, storeBackup, storeHistory } from './report-fixture';

/**
 * Alerts as the built CLI sends them: a stand-in SNS endpoint (AWS_ENDPOINT_URL_SNS) records every
 * Publish, so the real client, its lazy loading and the CLI's error path are all exercised. Runs the
 * built CLI (npm test builds first).
 */
const TOPIC = 'arn:aws:sns:eu-west-1:123456789012:pgvault-alerts';
let work: Awaited<ReturnType<typeof tempDir>>;
let sns: Server;
let snsUrl: string;
let closedUrl: string;
let closedPort: number;
const published: Record<string, string>[] = [];

function pgvault(args: string[], env: Record<string, string>): Promise<CliRun> {
  return runPgvault(
    args,
    {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/root',
      AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE',
      AWS_SECRET_ACCESS_KEY: 'not-a-real-secret-key',
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      ...env,
    },
    work.path,
  );
}

function configFile(name: string, lines: string[]): string {
  const path = join(work.path, `${name}.env`);
  writeFileSync(
    path,
    [
      `BACKUP_DIR=${join(work.path, name)}`,
      'CLUSTER_NAME=main',
      'PGHOST=127.0.0.1',
      `PGPORT=${closedPort}`,
      ...lines,
    ].join('\n'),
  );
  return path;
}

beforeAll(async () => {
  work = await tempDir('pgvault-alert-cli-');
  sns = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => {
      body += c.toString();
    });
    req.on('end', () => {
      published.push(Object.fromEntries(new URLSearchParams(body)));
      res.setHeader('content-type', 'text/xml');
      res.end(
        '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult><MessageId>m-1</MessageId></PublishResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></PublishResponse>',
      );
    });
  });
  await new Promise<void>((r) => sns.listen(0, '127.0.0.1', r));
  snsUrl = `http://127.0.0.1:${(sns.address() as AddressInfo).port}`;
  // A port nobody listens on: PostgreSQL that is down, and an SNS endpoint that is unreachable.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  closedPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  closedUrl = `http://127.0.0.1:${closedPort}`;
});

beforeEach(() => {
  published.length = 0;
});

afterAll(async () => {
  await new Promise<void>((r) => sns?.close(() => r()));
  await work?.remove();
});

describe('failure alerts from the CLI error path', () => {
  it('publishes a failed backup to SNS and keeps the error line and the exit code', async () => {
    // Prepare
    const plain = configFile('plain', []);
    const alerting = configFile('alerting', [`SNS_TOPIC_ARN=${TOPIC}`]);
    const last = await storeBackup([new FileTarget(join(work.path, 'alerting'))], 'main', {
      type: 'full',
      at: new Date('2026-02-11T02:00:00Z'),
      databases: { app: 1_000_000 },
    });

    // Act
    const without = await pgvault(['--config', plain, 'backup', 'full', 'daily'], {});
    const withSns = await pgvault(['--config', alerting, 'backup', 'full', 'daily'], {
      AWS_ENDPOINT_URL_SNS: snsUrl,
    });

    // Assess: the same line, the same code; the alert went to the topic only.
    const line = `pgvault: cannot connect to PostgreSQL at 127.0.0.1:${closedPort} (ECONNREFUSED); check PGHOST/PGPORT and that the server is running\n`;
    expect(without).toMatchObject({ code: 1, stderr: line });
    expect(withSns).toMatchObject({ code: 1, stderr: line });
    expect(published).toHaveLength(1);
    const p = published[0]!;
    expect(p).toMatchObject({
      Action: 'Publish',
      TopicArn: TOPIC,
      Subject: 'pgvault ALERT [main]: backup failed (pgvault backup full)',
    });
    const body = p.Message!.split('\n');
    expect(body.slice(0, 6)).toEqual([
      'pgvault alert for cluster main',
      '',
      `What failed: pgvault backup full failed: ${line.slice('pgvault: '.length, -1)}`,
      expect.stringMatching(/^Since: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/),
      `Next step: pgvault --config ${alerting} backup full daily`,
      `Fix the cause named above, then run the command again. Last successful backup of this type: ${last.id}, finished 2026-02-11 02:01:00 UTC.`,
    ]);
    expect(p.Message).not.toContain('not-a-real-secret-key');
  });

  it('adds one warning line when SNS cannot be reached, and nothing else changes', async () => {
    // Prepare
    const alerting = configFile('unreachable', [`SNS_TOPIC_ARN=${TOPIC}`]);

    // Act
    const r = await pgvault(
      ['--config', alerting, 'verify', 'file', 'full-daily-20260212-020000', '--json'],
      {
        AWS_ENDPOINT_URL_SNS: closedUrl,
      },
    );

    // Assess
    const lines = r.stderr.trimEnd().split('\n');
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, kind: 'UsageError' });
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^pgvault: backup full-daily-20260212-020000 not found in /);
    expect(lines[1]).toBe(
      `pgvault: warning: alert "pgvault ALERT [main]: verification failed (pgvault verify file)" not sent to ${TOPIC}: connect ECONNREFUSED 127.0.0.1:${closedPort}`,
    );
  });

  it('sends nothing for archive_command failures (PostgreSQL retries them)', async () => {
    // Prepare
    const alerting = configFile('wal', [`SNS_TOPIC_ARN=${TOPIC}`]);

    // Act
    const r = await pgvault(['--config', alerting, 'backup', 'wal', 'pg_wal/000000010000000000000001'], {
      AWS_ENDPOINT_URL_SNS: snsUrl,
    });

    // Assess
    expect(r.code).not.toBe(0);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(published).toEqual([]);
  });
});

describe('verify sizes, capacity and report from the CLI', () => {
  it('report: prints the stored paths, one ALERT line per threshold crossed, publishes them, exits 1', async () => {
    // Prepare: the newest backup finished 60.5 h ago.
    const alerting = configFile('report', [`SNS_TOPIC_ARN=${TOPIC}`, 'ALERT_CAPACITY_PERCENT=100']);
    const target = new FileTarget(join(work.path, 'report'));
    await storeBackup([target], 'main', {
      type: 'full',
      at: new Date(Date.now() - 60.5 * HOUR),
      databases: { app: 1_000_000 },
    });

    // Act
    const r = await pgvault(['--config', alerting, 'verify', 'report'], { AWS_ENDPOINT_URL_SNS: snsUrl });

    // Assess
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('report of cluster main: 2 check(s) failing');
    expect(r.stdout).toMatch(
      new RegExp(`${join(work.path, 'report')}/main/reports/report-\\d{8}-\\d{6}-[0-9a-f]{8}\\.html`),
    );
    const alerts = r.stderr.trimEnd().split('\n');
    expect(alerts).toHaveLength(2);
    expect(alerts[0]).toMatch(
      /^pgvault: ALERT \[main\] newest backup full-daily-\d{8}-\d{6} finished 60\.\d h ago, over the 48 h limit \(ALERT_BACKUP_AGE_HOURS\) \(since .* UTC\); next: pgvault backup full daily$/,
    );
    expect(alerts[1]).toMatch(
      /^pgvault: ALERT \[main\] the newest recoverable point is backup .*; next: pgvault backup full daily$/,
    );
    expect(published.map((p) => p.Subject)).toEqual([
      'pgvault ALERT [main]: newest backup is 60 h old',
      'pgvault ALERT [main]: RPO 2.5 days over target 24.0 h',
    ]);
  });

  it('sizes --json: the series as JSON on stdout, the shrink as an ALERT line, exit 1', async () => {
    // Prepare
    const config = configFile('sizes', []);
    await storeHistory([new FileTarget(join(work.path, 'sizes'))], 'main', new Date(), {
      days: 3,
      shrinkLast: true,
    });

    // Act
    const r = await pgvault(['--config', config, 'verify', 'sizes', '--json'], {});
    const capacity = await pgvault(['--config', config, 'verify', 'capacity', '--json'], {
      ALERT_CAPACITY_PERCENT: '100',
    });

    // Assess
    expect(r.code).toBe(1);
    const sizes = JSON.parse(r.stdout);
    expect(sizes).toMatchObject({ ok: false, cluster: 'main', shrinkPercent: 50 });
    expect(sizes.suspects).toHaveLength(1);
    expect(r.stderr).toMatch(
      /^pgvault: ALERT \[main\] backup full-daily-\d{8}-\d{6} \(full\/app\) is 75\.6% smaller than/,
    );
    expect(capacity.code).toBe(0);
    expect(JSON.parse(capacity.stdout).targets[0]).toMatchObject({ basis: 'disk', kind: 'file' });
    expect(capacity.stderr).toBe('');
  });
});
