import type { Alert } from './types';

export { formatBytes } from '../format';

/** Pure text of an alert: the stderr line, the SNS subject and body. Secrets are removed by redact(). */

/** 2026-02-12T02:00:05.123Z → 2026-02-12 02:00:05 UTC */
export function utc(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

export function sinceText(alert: Pick<Alert, 'since' | 'sinceKind'>): string {
  switch (alert.sinceKind) {
    case 'observed':
      return `since ${utc(alert.since)}`;
    case 'estimated':
      return `since about ${utc(alert.since)}`;
    case 'checked':
      return `as of ${utc(alert.since)}`;
  }
}

/** The one stderr line: `pgvault: ALERT [main] <what> (since ...); next: <command>`. */
export function alertLine(alert: Alert): string {
  return `pgvault: ALERT [${alert.cluster}] ${alert.what} (${sinceText(alert)}); next: ${alert.nextStep}`;
}

/** SNS subjects: under 100 characters, no line breaks or control characters. */
export function alertSubject(alert: Alert): string {
  const subject =
    `pgvault ${alert.severity === 'critical' ? 'ALERT' : 'warning'} [${alert.cluster}]: ${alert.title}`
      .replace(/[\p{Cc}]+/gu, ' ')
      .trim();
  return subject.length <= 99 ? subject : `${subject.slice(0, 96)}...`;
}

export function alertBody(alert: Alert, context: { host: string; checkedAt: string }): string {
  return [
    `pgvault ${alert.severity === 'critical' ? 'alert' : 'warning'} for cluster ${alert.cluster}`,
    '',
    `What failed: ${alert.what}`,
    `Since: ${utc(alert.since)}${alert.sinceKind === 'observed' ? '' : alert.sinceKind === 'estimated' ? ' (estimated)' : ' (at least; first seen by this check)'}`,
    `Next step: ${alert.nextStep}`,
    ...(alert.hint ? [alert.hint] : []),
    '',
    `Host: ${context.host}`,
    `Checked: ${utc(context.checkedAt)}`,
    '',
  ].join('\n');
}

/**
 * Removes secrets from text that leaves the machine: the given values (passphrase, passwords,
 * cloud secret keys) and the user:password part of any URL.
 */
export function redact(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/)[^\s/@:]+:[^\s/@]+@/gi, '$1***@');
  for (const secret of secrets) {
    if (secret === undefined || secret.length < 4) continue;
    out = out.split(secret).join('***');
  }
  return out;
}

/** 95 min → "1.6 h"; 30 min → "30 min"; 3000 min → "2.1 days". */
export function formatMinutes(minutes: number): string {
  if (minutes < 1) return `${Math.round(minutes * 60)} s`;
  if (minutes < 90) return `${Math.round(minutes)} min`;
  if (minutes < 48 * 60) return `${(minutes / 60).toFixed(1)} h`;
  return `${(minutes / 1440).toFixed(1)} days`;
}

/** Days until something: "5.2 days", "14 h", "more than 10 years". */
export function formatDays(days: number): string {
  if (days < 1) return `${Math.round(days * 24)} h`;
  if (days > 3650) return 'more than 10 years';
  return `${days.toFixed(1)} days`;
}
