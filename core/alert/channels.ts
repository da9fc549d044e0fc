import { spawn } from 'node:child_process';
import type { AlertConfig } from '../config';
import { alertBody, alertSubject, utc } from './format';
import type { Alert, AlertChannel, AlertContext } from './types';

/**
 * The local alert channels, beside SNS (core/alert/notify.ts): mail over SMTP (SMTP_URL, EMAIL_FROM,
 * EMAIL_TO), a webhook (ALERT_WEBHOOK_URL) and a command (ALERT_COMMAND). Each delivers one alert per
 * call and throws when it could not; notify.ts turns that into one warning line. nodemailer loads
 * only when a mail is sent.
 */

/** How long one delivery may take: a cron job must not hang on a dead mail server or hook. */
export const DELIVERY_TIMEOUT_MS = 15_000;

type Nodemailer = typeof import('nodemailer');

/** smtp://user:secret@mail.example.com:587 → "SMTP mail.example.com:587" (no user, no password). */
export function smtpName(url: string): string {
  const u = new URL(url);
  const port = u.port || (u.protocol === 'smtps:' ? '465' : '587');
  return `SMTP ${u.hostname}:${port}`;
}

/** https://hooks.slack.com/services/T0/B0/secret → "webhook https://hooks.slack.com" (paths hold tokens). */
export function webhookName(url: string): string {
  return `webhook ${new URL(url).origin}`;
}

export function smtpChannel(smtp: NonNullable<AlertConfig['smtp']>): AlertChannel {
  return {
    name: smtpName(smtp.url),
    async send(alert, context) {
      const nodemailer = require('nodemailer') as Nodemailer;
      const transport = nodemailer.createTransport({
        url: smtp.url,
        connectionTimeout: DELIVERY_TIMEOUT_MS,
        greetingTimeout: DELIVERY_TIMEOUT_MS,
        socketTimeout: DELIVERY_TIMEOUT_MS,
      } as Parameters<Nodemailer['createTransport']>[0]);
      try {
        await transport.sendMail({
          from: smtp.from,
          to: [...smtp.to],
          subject: alertSubject(alert),
          text: alertBody(alert, context),
          headers: {
            'X-Pgvault-Cluster': alert.cluster,
            'X-Pgvault-Kind': alert.kind,
            'X-Pgvault-Severity': alert.severity,
          },
        });
      } finally {
        transport.close();
      }
    },
  };
}

/**
 * The webhook's JSON: `text` (subject and body) is what Slack incoming webhooks and Teams connectors
 * show; the other fields are for anything that reads JSON (a PagerDuty Events API v2 transformer,
 * Alertmanager-style receivers, a script).
 */
export function webhookPayload(alert: Alert, context: AlertContext): Record<string, unknown> {
  return {
    text: `${alertSubject(alert)}\n${alertBody(alert, context)}`,
    source: 'pgvault',
    subject: alertSubject(alert),
    cluster: alert.cluster,
    kind: alert.kind,
    severity: alert.severity,
    title: alert.title,
    what: alert.what,
    since: alert.since,
    sinceText: utc(alert.since),
    sinceKind: alert.sinceKind,
    nextStep: alert.nextStep,
    ...(alert.hint ? { hint: alert.hint } : {}),
    host: context.host,
    checkedAt: context.checkedAt,
  };
}

export function webhookChannel(url: string): AlertChannel {
  return {
    name: webhookName(url),
    async send(alert, context) {
      let res: Response;
      try {
        res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'user-agent': 'pgvault' },
          body: JSON.stringify(webhookPayload(alert, context)),
          signal: AbortSignal.timeout(DELIVERY_TIMEOUT_MS),
          redirect: 'error',
        });
      } catch (err) {
        // fetch's own message is "fetch failed"; the cause names the network error.
        const cause = (err as { cause?: { code?: string; message?: string } }).cause;
        throw new Error(cause?.code ?? cause?.message ?? (err as Error).message);
      }
      await res.arrayBuffer().catch(() => undefined);
      if (!res.ok) throw new Error(`HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`);
    },
  };
}

/** The variables an ALERT_COMMAND gets (besides a minimal PATH, HOME, LANG). */
export function alertEnvironment(alert: Alert, context: AlertContext): Record<string, string> {
  return {
    PGVAULT_ALERT_SUBJECT: alertSubject(alert),
    PGVAULT_ALERT_CLUSTER: alert.cluster,
    PGVAULT_ALERT_KIND: alert.kind,
    PGVAULT_ALERT_SEVERITY: alert.severity,
    PGVAULT_ALERT_TITLE: alert.title,
    PGVAULT_ALERT_WHAT: alert.what,
    PGVAULT_ALERT_SINCE: alert.since,
    PGVAULT_ALERT_NEXT_STEP: alert.nextStep,
    PGVAULT_ALERT_HINT: alert.hint ?? '',
    PGVAULT_ALERT_HOST: context.host,
    PGVAULT_ALERT_JSON: JSON.stringify(webhookPayload(alert, context)),
  };
}

/** Variables passed through to ALERT_COMMAND: nothing else, so no secret of pgvault's reaches it. */
const PASSED_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'USER', 'LOGNAME', 'TMPDIR'];

/**
 * ALERT_COMMAND runs through /bin/sh -c with the alert in PGVAULT_ALERT_* and the mail body on stdin.
 * Its argv is the command as configured: no alert text and no secret is ever put on it.
 */
export function commandChannel(command: string): AlertChannel {
  return {
    name: 'ALERT_COMMAND',
    send(alert, context) {
      const env: Record<string, string> = {};
      for (const k of PASSED_ENV) if (process.env[k] !== undefined) env[k] = process.env[k]!;
      Object.assign(env, alertEnvironment(alert, context));
      return new Promise<void>((resolve, reject) => {
        const child = spawn('/bin/sh', ['-c', command], { env, stdio: ['pipe', 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (c: Buffer) => {
          if (stderr.length < 4096) stderr += c.toString();
        });
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`it ran longer than ${DELIVERY_TIMEOUT_MS / 1000} s and was stopped`));
        }, DELIVERY_TIMEOUT_MS);
        timer.unref();
        child.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
        child.on('close', (code, signal) => {
          clearTimeout(timer);
          if (code === 0) return resolve();
          const said = stderr.trim().split('\n')[0];
          reject(
            new Error(
              `it exited with ${code === null ? `signal ${signal}` : `code ${code}`}${said ? `: ${said}` : ''}`,
            ),
          );
        });
        // A command that does not read stdin closes it early: EPIPE is not a failure of delivery.
        child.stdin.on('error', () => {});
        child.stdin.end(alertBody(alert, context));
      });
    },
  };
}

/** The local channels the config names (SNS is added by notify.ts). */
export function localChannels(alerts: AlertConfig): AlertChannel[] {
  const channels: AlertChannel[] = [];
  if (alerts.smtp) channels.push(smtpChannel(alerts.smtp));
  if (alerts.webhookUrl) channels.push(webhookChannel(alerts.webhookUrl));
  if (alerts.command) channels.push(commandChannel(alerts.command));
  return channels;
}
