import { ECSClient, RunTaskCommand } from '@aws-sdk/client-ecs';
import { EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { PublishCommand, SNSClient } from '@aws-sdk/client-sns';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach } from 'vitest';
import { forgetCachedPassphrase } from '../../functions/env';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';

/**
 * What the functions tests share: Secrets Manager, SNS, EventBridge and ECS mocked (each test file
 * runs in its own module registry, so these mocks are that file's), a real bucket in s3rver, and the
 * function's environment in process.env. useFunctionsFixture registers the hooks: s3rver and the
 * environment before all tests; before each, fresh mocks with the default answers, the environment
 * again and no cached passphrase; after all, the environment as it was, the mocks and s3rver gone.
 */

export const ecs = mockClient(ECSClient);
export const events = mockClient(EventBridgeClient);
export const secrets = mockClient(SecretsManagerClient);
export const sns = mockClient(SNSClient);
const MOCKS = [ecs, events, secrets, sns];

/** One PutEvents entry as the functions sent it, its detail parsed. */
export interface PutEvent {
  DetailType?: string;
  Source?: string;
  EventBusName?: string;
  detail: Record<string, unknown>;
}

/** Every event put on the (mocked) bus since the last reset, in order. */
export function putEvents(): PutEvent[] {
  return events.commandCalls(PutEventsCommand).map((c) => {
    const e = c.args[0].input.Entries![0]!;
    return {
      DetailType: e.DetailType,
      Source: e.Source,
      EventBusName: e.EventBusName,
      detail: JSON.parse(e.Detail!),
    };
  });
}

export interface FunctionsFixtureOptions {
  /** The bucket s3rver holds. */
  readonly bucket: string;
  /** The function's environment (over the one the test started with); called once s3rver runs. */
  readonly env: () => Record<string, string>;
  /** What the mocks answer by default, before each test. */
  readonly answers: {
    /** RunTask's task. */
    readonly taskArn: string;
    /** PutEvents' event id. */
    readonly eventId: string;
    /** Publish's message id. */
    readonly messageId: string;
    /** GetSecretValue's SecretString; with secretArn, only a request for that secret is answered. */
    readonly secretString: string;
    readonly secretArn?: string;
  };
}

export interface FunctionsFixture {
  /** The running s3rver: its fields can be read from beforeAll on. */
  readonly s3: S3TestServer;
  /** S3_ENDPOINT and the credentials s3rver accepts. */
  s3Env(): Record<string, string>;
}

export function useFunctionsFixture(options: FunctionsFixtureOptions): FunctionsFixture {
  const savedEnv = { ...process.env };
  let started: S3TestServer | undefined;
  const running = (): S3TestServer => {
    if (!started) throw new Error('s3rver is not running yet (use it from beforeAll on)');
    return started;
  };
  // Stands for the server before it starts, so a test file can hold it in a module constant.
  const s3: S3TestServer = {
    get endpoint() {
      return running().endpoint;
    },
    get bucket() {
      return running().bucket;
    },
    get credentials() {
      return running().credentials;
    },
    get region() {
      return running().region;
    },
    stop: () => running().stop(),
  };
  const s3Env = () => ({
    S3_ENDPOINT: s3.endpoint,
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
  });
  const { answers } = options;

  beforeAll(async () => {
    started = await startS3Server(options.bucket);
    process.env = { ...savedEnv, ...options.env() };
  });

  beforeEach(() => {
    for (const m of MOCKS) m.reset();
    ecs.on(RunTaskCommand).resolves({ tasks: [{ taskArn: answers.taskArn }], failures: [] });
    events.on(PutEventsCommand).resolves({ FailedEntryCount: 0, Entries: [{ EventId: answers.eventId }] });
    secrets
      .on(
        GetSecretValueCommand,
        answers.secretArn === undefined ? undefined : { SecretId: answers.secretArn },
      )
      .resolves({ SecretString: answers.secretString });
    sns.on(PublishCommand).resolves({ MessageId: answers.messageId });
    process.env = { ...savedEnv, ...options.env() };
    forgetCachedPassphrase();
  });

  afterAll(async () => {
    process.env = savedEnv;
    for (const m of MOCKS) m.restore();
    await started?.stop();
  });

  return { s3, s3Env };
}
