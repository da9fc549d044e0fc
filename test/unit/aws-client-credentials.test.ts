import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { PublishCommand, SNSClient } from '@aws-sdk/client-sns';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sendAlerts } from '../../core/alert/notify';
import type { Alert } from '../../core/alert/types';
import { loadConfig } from '../../core/config';
import { publishLifecycleEvent } from '../../core/events';
import { createTargets } from '../../core/storage';
import { tempDir } from '../helpers/vault';

/**
 * Issue 11 follow-up: AWS keys or AWS_PROFILE written in the --config file reach every AWS client
 * pgvault makes (S3, SNS, EventBridge), through the one helper (core/config.ts awsClientCredentials).
 * The SDK's default chain never reads the file: a client that is not handed them finds no credentials
 * (or the machine's other ones). The sends are mocked (control plane); the clients are real.
 */
const events = mockClient(EventBridgeClient);
const sns = mockClient(SNSClient);
const KEYS = {
  accessKeyId: 'AKIAFROMFILE',
  secretAccessKey: 'secret-from-file',
  sessionToken: 'token-from-file',
};
const BUS = 'arn:aws:events:eu-west-1:123456789012:event-bus/pgvault';
const TOPIC = 'arn:aws:sns:eu-west-1:123456789012:pgvault-alerts';
const alert: Alert = {
  kind: 'backup-age',
  severity: 'warning',
  cluster: 'main',
  title: 'newest full backup is 50 h old',
  what: 'the newest full backup finished 50 h ago (ALERT_BACKUP_AGE_HOURS 48)',
  since: '2026-02-10T04:00:00.000Z',
  sinceKind: 'observed',
  nextStep: 'pgvault backup full',
};

let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  work = await tempDir('pgvault-aws-clients-');
});

beforeEach(() => {
  events.reset();
  sns.reset();
  events.on(PutEventsCommand).resolves({ FailedEntryCount: 0, Entries: [{ EventId: 'e' }] });
  sns.on(PublishCommand).resolves({ MessageId: 'm' });
});

afterAll(async () => {
  events.restore();
  sns.restore();
  await work?.remove();
});

function configFrom(name: string, lines: string[]) {
  const file = join(work.path, `${name}.env`);
  writeFileSync(
    file,
    [
      `BACKUP_DIR=${join(work.path, name)}`,
      'CLUSTER_NAME=main',
      'CLOUD_PROVIDER=s3',
      'CLOUD_BUCKET=backups',
      'LOCAL_COPY=false',
      `EVENT_BUS_NAME=${BUS}`,
      `SNS_TOPIC_ARN=${TOPIC}`,
      ...lines,
    ].join('\n'),
  );
  // No AWS_* in the environment: only the file can supply them.
  return loadConfig({ configFile: file, env: {}, cwd: work.path });
}

type WithCredentials = { config: { credentials(): Promise<Record<string, unknown>> } };

async function clientCredentials(config: ReturnType<typeof loadConfig>) {
  const put = await publishLifecycleEvent(
    config,
    { kind: 'backup', outcome: 'succeeded', cluster: 'main' },
    { warn: (line) => expect.fail(line) },
  );
  expect(put).toBe(true);
  await sendAlerts(config, [alert], { write: () => {} });
  const [target] = createTargets(config);
  const { client: s3 } = await (
    target as unknown as { connect(): Promise<{ client: WithCredentials }> }
  ).connect();
  return {
    eventBridge: await (events.send.thisValues[0] as WithCredentials).config.credentials(),
    sns: await (sns.send.thisValues[0] as WithCredentials).config.credentials(),
    s3: await s3.config.credentials(),
  };
}

describe('AWS credentials from the config file', () => {
  it('AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN reach the EventBridge, SNS and S3 clients', async () => {
    // Prepare
    const config = configFrom('keys', [
      `AWS_ACCESS_KEY_ID=${KEYS.accessKeyId}`,
      `AWS_SECRET_ACCESS_KEY=${KEYS.secretAccessKey}`,
      `AWS_SESSION_TOKEN=${KEYS.sessionToken}`,
    ]);

    // Act
    const got = await clientCredentials(config);

    // Assess
    expect(events.commandCalls(PutEventsCommand)).toHaveLength(1);
    expect(sns.commandCalls(PublishCommand)).toHaveLength(1);
    expect(got.eventBridge).toMatchObject(KEYS);
    expect(got.sns).toMatchObject(KEYS);
    expect(got.s3).toMatchObject(KEYS);
  });

  it('AWS_PROFILE selects that profile of the shared credentials file for the EventBridge, SNS and S3 clients', async () => {
    // Prepare
    const aws = join(work.path, 'aws');
    mkdirSync(aws);
    writeFileSync(
      join(aws, 'credentials'),
      '[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = default-secret\n\n[backups]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = profile-secret\n',
    );
    writeFileSync(join(aws, 'config'), '');
    const saved = { ...process.env };
    process.env.AWS_SHARED_CREDENTIALS_FILE = join(aws, 'credentials');
    process.env.AWS_CONFIG_FILE = join(aws, 'config');
    const config = configFrom('profile', ['AWS_PROFILE=backups']);

    // Act
    let got: Awaited<ReturnType<typeof clientCredentials>>;
    try {
      got = await clientCredentials(config);
    } finally {
      process.env = saved;
    }

    // Assess
    const profile = { accessKeyId: 'AKIAPROFILE', secretAccessKey: 'profile-secret' };
    expect(got.eventBridge).toMatchObject(profile);
    expect(got.sns).toMatchObject(profile);
    expect(got.s3).toMatchObject(profile);
  });
});
