import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { PublishCommand, SNSClient } from '@aws-sdk/client-sns';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { z } from 'zod';
import { formatBytes, formatMinutes, utc } from '../core/alert/format';
import { regionOfTopic } from '../core/alert/notify';
import { awsClientCredentials, type Config } from '../core/config';
import { reportMetrics } from '../core/events';
import { collectReport, type StoredReport, writeReport } from '../core/report/collect';
import type { ReportData } from '../core/report/model';
import { openVault } from '../core/vault';
import {
  clusterConfig,
  clusterNameSchema,
  findCluster,
  logReporter,
  parsePayload,
  recordFailure,
  recordOutcome,
} from './env';

/**
 * report: `pgvault verify report` in Lambda. Writes the HTML, Markdown and JSON report under
 * `{cluster}/reports/` in the bucket, then mails its summary through SNS_TOPIC_ARN with a presigned
 * link to the HTML. The failing checks are listed in the summary; they are not sent again one by
 * one (the verify function sends each threshold alert).
 *
 * Payload: {"cluster": "main"}
 */

const payloadSchema = z.strictObject({ cluster: clusterNameSchema });

/** SigV4's longest presigned URL: 7 days (temporary credentials end it sooner, see linkNote). */
export const LINK_EXPIRES_SECONDS = 7 * 24 * 3600;

export interface ReportFunctionResult {
  readonly cluster: string;
  readonly status: ReportData['status'];
  readonly failing: readonly string[];
  /** s3://bucket/key of the HTML report. */
  readonly html: string;
  /** Presigned HTTPS link to the HTML report. */
  readonly link: string;
  /** The SNS message id of the summary; absent without SNS_TOPIC_ARN. */
  readonly messageId?: string;
}

function parseS3Url(url: string): { bucket: string; key: string } | undefined {
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(url);
  return m ? { bucket: m[1]!, key: m[2]! } : undefined;
}

async function presignedLink(config: Config, html: string): Promise<string> {
  const { bucket, key } = parseS3Url(html)!;
  const s3 = new S3Client({
    region: config.cloud.region,
    ...awsClientCredentials(config.cloud),
    ...(config.cloud.s3Endpoint ? { endpoint: config.cloud.s3Endpoint, forcePathStyle: true } : {}),
  });
  return getSignedUrl(s3, new GetObjectCommand({ Bucket: bucket, Key: key }), {
    expiresIn: LINK_EXPIRES_SECONDS,
  });
}

/** The mail: status, RPO and RTO, backups per type, the failing checks, the link. */
export function summaryText(data: ReportData, html: string, link: string): string {
  const rpo = data.rpo.measuredMinutes === undefined ? 'unknown' : formatMinutes(data.rpo.measuredMinutes);
  const rto = data.rto.latestMinutes === undefined ? 'not measured' : formatMinutes(data.rto.latestMinutes);
  return [
    `pgvault report of cluster ${data.cluster}, ${utc(data.generatedAt)}`,
    '',
    `Status: ${data.failing.length === 0 ? 'every check passes' : `${data.failing.length} check(s) failing`}`,
    `RPO ${rpo} (target ${formatMinutes(data.rpo.targetMinutes)}), RTO ${rto} (target ${formatMinutes(data.rto.targetMinutes)})`,
    `${data.totals.count} complete backup(s), ${formatBytes(data.totals.storedBytes)} stored`,
    ...data.backups.map(
      (b) =>
        `  ${b.type}: ${b.count}, newest ${b.newestId} (${b.ageHours.toFixed(1)} h ago, ${formatBytes(b.newestStoredBytes)})`,
    ),
    ...(data.failing.length > 0
      ? ['', 'Failing checks:', ...data.failing.map((a) => `  - ${a.title}: ${a.what}; next: ${a.nextStep}`)]
      : []),
    '',
    `Full report (HTML): ${link}`,
    `The link works for up to 7 days, less when the function's temporary credentials expire first; then: aws s3 cp ${html} .`,
  ].join('\n');
}

function subject(data: ReportData): string {
  const status = data.failing.length === 0 ? 'every check passes' : `${data.failing.length} check(s) failing`;
  return `pgvault report [${data.cluster}]: ${status}`.slice(0, 99);
}

export const handler = async (event: unknown): Promise<ReportFunctionResult> => {
  const { cluster: name } = parsePayload(payloadSchema, event);
  const config = await clusterConfig(findCluster(name), { withKey: true });
  const vault = openVault(config, logReporter);
  const startedAt = new Date();
  let data: ReportData;
  let stored: StoredReport;
  let link: string;
  let messageId: string | undefined;
  try {
    ({ data } = await collectReport(vault, startedAt));
    const reports = await writeReport(vault, data);
    const inBucket = reports.find((r) => parseS3Url(r.html) !== undefined);
    if (inBucket === undefined)
      throw new Error('the report was not stored in a bucket; set CLOUD_PROVIDER=s3');
    stored = inBucket;
    link = await presignedLink(config, stored.html);
    const topic = config.alerts.snsTopicArn;
    if (topic !== undefined) {
      const sns = new SNSClient({ region: regionOfTopic(topic), ...awsClientCredentials(config.cloud) });
      const out = await sns.send(
        new PublishCommand({
          TopicArn: topic,
          Subject: subject(data),
          Message: summaryText(data, stored.html, link),
          MessageAttributes: {
            cluster: { DataType: 'String', StringValue: data.cluster },
            kind: { DataType: 'String', StringValue: 'report' },
          },
          ...(topic.endsWith('.fifo')
            ? {
                MessageGroupId: data.cluster,
                MessageDeduplicationId: `${data.cluster}-${data.generatedAt}`.replace(/[^A-Za-z0-9-]/g, '-'),
              }
            : {}),
        }),
      );
      messageId = out.MessageId;
    }
  } catch (err) {
    await recordFailure(config, 'report', {
      kind: 'report',
      commandPath: 'verify report',
      argv: ['verify', 'report'],
      error: err,
      startedAt,
    });
    throw err;
  }
  const finishedAt = new Date();
  await recordOutcome(
    config,
    'report',
    {
      kind: 'report',
      outcome: 'succeeded',
      cluster: data.cluster,
      command: 'verify report',
      durationMs: finishedAt.getTime() - startedAt.getTime(),
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      details: { status: data.status, failing: data.failing.map((a) => a.kind), html: stored.html },
    },
    [{ name: 'ReportSucceeded', value: 1, unit: 'Count' }, ...reportMetrics(data)],
  );
  return {
    cluster: data.cluster,
    status: data.status,
    failing: data.failing.map((a) => a.title),
    html: stored.html,
    link,
    ...(messageId !== undefined ? { messageId } : {}),
  };
};
