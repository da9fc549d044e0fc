import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
// Types only: the SNS client is required when SNS_TOPIC_ARN is set, never on CLI start-up.
import type { SNSClient } from '@aws-sdk/client-sns';
import { awsClientCredentials, type Config, patroniSecrets } from '../config';
import { errorMessage } from '../errors';
import { startupSecretValues } from '../pg/startup-secrets';
import { localChannels } from './channels';
import { alertBody, alertLine, alertSubject, redact } from './format';
import type { Alert, AlertChannel, AlertContext } from './types';

/**
 * The notifier. Every alert is one line on stderr; it is also sent through every configured channel:
 * SNS_TOPIC_ARN (published to the topic), SMTP_URL (mailed to EMAIL_TO), ALERT_WEBHOOK_URL and
 * ALERT_COMMAND (core/alert/channels.ts), one message per alert: each names one problem and its fix.
 * Sending never throws: a channel that fails is one warning line and the caller's exit code stays its own.
 */

type SnsSdk = typeof import('@aws-sdk/client-sns');

/** How long a publish may take before the CLI gives up on it (it must not hang a cron job). */
const PUBLISH_TIMEOUT_MS = 10_000;

export interface SendOptions {
  /** Where lines go (default: process.stderr). */
  readonly write?: (line: string) => void;
  /** false: publish only (the CLI's error path has already printed its own line). Default true. */
  readonly stderr?: boolean;
  readonly now?: Date;
}

export interface SendResult {
  readonly lines: readonly string[];
  readonly published: number;
  /** One line per alert that could not be published. */
  readonly failures: readonly string[];
}

/** Values that must never leave the machine in a message. */
function secretsOf(
  config: Pick<Config, 'encryption' | 'pg'> & Partial<Pick<Config, 'alerts' | 'cloud'>>,
): (string | undefined)[] {
  const smtp = config.alerts?.smtp && new URL(config.alerts.smtp.url);
  const hook = config.alerts?.webhookUrl && new URL(config.alerts.webhookUrl);
  return [
    config.encryption.passphrase,
    config.pg.password,
    ...patroniSecrets(config.pg.patroni),
    // Read from Secrets Manager at start (Patroni API, repositories' credentials).
    ...startupSecretValues(),
    process.env.PGPASSWORD,
    process.env.AWS_SECRET_ACCESS_KEY,
    process.env.AWS_SESSION_TOKEN,
    config.cloud?.credentials?.secretAccessKey,
    config.cloud?.credentials?.sessionToken,
    config.cloud?.azure?.accountKey,
    config.cloud?.azure?.sasToken,
    config.cloud?.azure?.connectionString,
    /AccountKey=([^;]+)/i.exec(config.cloud?.azure?.connectionString ?? '')?.[1],
    /SharedAccessSignature=([^;]+)/i.exec(config.cloud?.azure?.connectionString ?? '')?.[1],
    smtp ? decodeURIComponent(smtp.password) : undefined,
    smtp ? smtp.password : undefined,
    // A webhook's path and query are its token (Slack, Teams): never echoed.
    hook ? `${hook.pathname}${hook.search}`.replace(/^\/$/, '') : undefined,
  ];
}

/** Every channel the config names: SNS first (the AWS deployment's), then SMTP, webhook, command. */
export function alertChannels(
  config: Pick<Config, 'alerts'> & Partial<Pick<Config, 'cloud'>>,
): AlertChannel[] {
  const arn = config.alerts.snsTopicArn;
  const sns: AlertChannel[] =
    arn === undefined
      ? []
      : [
          {
            name: arn,
            send: async (alert, context) => {
              await publishAlert(arn, alert, context, config.cloud);
            },
          },
        ];
  return [...sns, ...localChannels(config.alerts)];
}

/** The alert with every text field redacted. */
export function redactAlert(
  alert: Alert,
  config: Pick<Config, 'encryption' | 'pg'> & Partial<Pick<Config, 'alerts' | 'cloud'>>,
): Alert {
  const secrets = secretsOf(config);
  return {
    ...alert,
    what: redact(alert.what, secrets),
    title: redact(alert.title, secrets),
    nextStep: redact(alert.nextStep, secrets),
    ...(alert.hint ? { hint: redact(alert.hint, secrets) } : {}),
  };
}

/** arn:aws:sns:eu-west-1:123456789012:topic → eu-west-1 */
export function regionOfTopic(arn: string): string | undefined {
  return arn.split(':')[3] || undefined;
}

let client: { key: string; client: SNSClient; sdk: SnsSdk } | undefined;

function snsFor(
  arn: string,
  aws?: Pick<Config['cloud'], 'credentials' | 'profile'>,
): { client: SNSClient; sdk: SnsSdk } {
  const auth = awsClientCredentials(aws);
  // One client per topic and credentials (kept in memory only, never printed).
  const key = JSON.stringify([arn, auth]);
  if (client?.key !== key) {
    const sdk = require('@aws-sdk/client-sns') as SnsSdk;
    client = {
      key,
      sdk,
      client: new sdk.SNSClient({
        region: regionOfTopic(arn),
        ...auth,
        maxAttempts: 3,
        requestHandler: { connectionTimeout: 3000, requestTimeout: PUBLISH_TIMEOUT_MS },
      }),
    };
  }
  return client;
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms / 1000} s`)), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Publishes one alert to the topic. Throws on failure; sendAlerts() turns that into a warning. */
export async function publishAlert(
  arn: string,
  alert: Alert,
  context: AlertContext,
  aws?: Pick<Config['cloud'], 'credentials' | 'profile'>,
): Promise<string | undefined> {
  const { client: sns, sdk } = snsFor(arn, aws);
  const subject = alertSubject(alert);
  const message = alertBody(alert, context);
  const fifo = arn.endsWith('.fifo')
    ? {
        MessageGroupId: alert.cluster,
        MessageDeduplicationId: createHash('sha256')
          .update(`${subject}\n${message}`)
          .digest('hex')
          .slice(0, 64),
      }
    : {};
  const out = await withTimeout(
    sns.send(
      new sdk.PublishCommand({
        TopicArn: arn,
        Subject: subject,
        Message: message,
        MessageAttributes: {
          cluster: { DataType: 'String', StringValue: alert.cluster },
          kind: { DataType: 'String', StringValue: alert.kind },
          severity: { DataType: 'String', StringValue: alert.severity },
        },
        ...fifo,
      }),
    ),
    PUBLISH_TIMEOUT_MS + 2000,
    'SNS Publish',
  );
  return out.MessageId;
}

/**
 * Sends alerts: one stderr line each (unless options.stderr is false) and one message per alert
 * through each configured channel. Never throws. The caller decides the exit code (non-zero when
 * alerts.length > 0).
 */
export async function sendAlerts(
  config: Pick<Config, 'alerts' | 'encryption' | 'pg'> & Partial<Pick<Config, 'cloud'>>,
  alerts: readonly Alert[],
  options: SendOptions = {},
): Promise<SendResult> {
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const context = { host: hostname(), checkedAt: (options.now ?? new Date()).toISOString() };
  const clean = alerts.map((a) => redactAlert(a, config));
  const lines: string[] = [];
  if (options.stderr !== false) {
    for (const a of clean) {
      const line = alertLine(a);
      lines.push(line);
      write(line);
    }
  }
  const channels = clean.length === 0 ? [] : alertChannels(config);
  const outcomes = await Promise.all(
    channels.map(async (channel) => {
      let published = 0;
      const failures: string[] = [];
      for (const a of clean) {
        try {
          await channel.send(a, context);
          published++;
        } catch (err) {
          const reason = redact(errorMessage(err).split('\n')[0] ?? '', secretsOf(config));
          failures.push(`alert "${alertSubject(a)}" not sent to ${channel.name}: ${reason}`);
        }
      }
      return { published, failures };
    }),
  );
  let published = 0;
  const failures: string[] = [];
  for (const o of outcomes) {
    published += o.published;
    failures.push(...o.failures);
    // One warning line per channel however many alerts failed: one cause (credentials, network) fails them all.
    if (o.failures.length > 0) {
      const line = `pgvault: warning: ${o.failures[0]}${o.failures.length > 1 ? ` (and ${o.failures.length - 1} more alert(s) not sent)` : ''}`;
      lines.push(line);
      write(line);
    }
  }
  return { lines, published, failures };
}
