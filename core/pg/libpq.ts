import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { type ConnectionOptions, checkServerIdentity } from 'node:tls';
import { ConfigError } from '../errors';

/*
 * libpq's environment settings (PGSSLMODE, PGSSLROOTCERT, PGAPPNAME, ...; config.pg.libpq, from the
 * environment or a config file) for node-postgres, which reads few of them itself and none from a
 * config file. The child tools (pg_dump, psql, ...) get them as they are (pgEnv); this module gives
 * pgvault's own connections the same behaviour, refuses what would connect elsewhere or less safely
 * (PGSERVICE, PGGSSENCMODE=require), and names in one warning what node-postgres cannot do.
 */

export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

type Libpq = Readonly<Record<string, string>>;

/** One TLS setting of node-postgres: false (plain) or tls.connect options. */
export type NodePgSsl = false | ConnectionOptions;

/** What libpq itself would use for sslmode: PGSSLMODE, else PGREQUIRESSL=1 means require, else prefer. */
export function sslMode(libpq: Libpq): SslMode {
  const v = libpq.PGSSLMODE?.trim();
  if (v !== undefined && v !== '') {
    if (!(SSL_MODES as readonly string[]).includes(v)) {
      throw new ConfigError(`PGSSLMODE=${v} is not allowed; use one of ${SSL_MODES.join(', ')}`);
    }
    return v as SslMode;
  }
  return libpq.PGREQUIRESSL?.trim() === '1' ? 'require' : 'prefer';
}

/** A certificate file libpq would read: the setting, else its default under ~/.postgresql when present. */
function certFile(libpq: Libpq, key: string, defaultName: string): string | undefined {
  const v = libpq[key]?.trim();
  if (v !== undefined && v !== '') return v;
  const fallback = join(homedir(), '.postgresql', defaultName);
  return existsSync(fallback) ? fallback : undefined;
}

function readCert(key: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError(`${key}=${path} cannot be read (${code}); check the path and its permissions`);
  }
}

/**
 * The tls options libpq's sslmode means, for a connection that uses TLS: verify-full checks the chain
 * and the host name (PGHOST, also when PGHOSTADDR is dialled); verify-ca the chain only; require
 * encrypts without checking, unless a root certificate is given (PGSSLROOTCERT or
 * ~/.postgresql/root.crt), when libpq checks the chain as verify-ca does. prefer and allow encrypt
 * without checking. PGSSLROOTCERT=system uses the system's CAs.
 */
export function tlsOptions(libpq: Libpq, host: string | undefined): ConnectionOptions {
  const mode = sslMode(libpq);
  const options: ConnectionOptions = {};
  const rootCert = certFile(libpq, 'PGSSLROOTCERT', 'root.crt');
  const verify =
    mode === 'verify-full' || mode === 'verify-ca' || (mode === 'require' && rootCert !== undefined);
  if (verify) {
    if (rootCert === undefined) {
      throw new ConfigError(
        `PGSSLMODE=${mode} needs the server's root certificate; set PGSSLROOTCERT to the CA file (or to system), or create ~/.postgresql/root.crt`,
      );
    }
    if (rootCert !== 'system') options.ca = readCert('PGSSLROOTCERT', rootCert);
    options.rejectUnauthorized = true;
    const name = host ?? 'localhost';
    options.checkServerIdentity =
      mode === 'verify-full' ? (_servername, cert) => checkServerIdentity(name, cert) : () => undefined;
  } else {
    options.rejectUnauthorized = false;
  }
  if (libpq.PGSSLCERTMODE?.trim() !== 'disable') {
    const cert = certFile(libpq, 'PGSSLCERT', 'postgresql.crt');
    const key = certFile(libpq, 'PGSSLKEY', 'postgresql.key');
    if (cert !== undefined && key !== undefined) {
      options.cert = readCert('PGSSLCERT', cert);
      options.key = readCert('PGSSLKEY', key);
    } else if (libpq.PGSSLCERT !== undefined || libpq.PGSSLKEY !== undefined) {
      throw new ConfigError(
        `${libpq.PGSSLCERT === undefined ? 'PGSSLKEY' : 'PGSSLCERT'} is set without ${libpq.PGSSLCERT === undefined ? 'PGSSLCERT' : 'PGSSLKEY'}; set both (the client certificate and its key)`,
      );
    }
  }
  const crl = libpq.PGSSLCRL?.trim();
  if (crl) options.crl = readCert('PGSSLCRL', crl);
  options.minVersion = tlsVersion(libpq, 'PGSSLMINPROTOCOLVERSION') ?? 'TLSv1.2';
  const max = tlsVersion(libpq, 'PGSSLMAXPROTOCOLVERSION');
  if (max !== undefined) options.maxVersion = max;
  return options;
}

function tlsVersion(libpq: Libpq, key: string): ConnectionOptions['minVersion'] {
  const v = libpq[key]?.trim();
  if (v === undefined || v === '') return undefined;
  const allowed = ['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3'] as const;
  const found = allowed.find((a) => a.toLowerCase() === v.toLowerCase());
  if (found === undefined)
    throw new ConfigError(`${key}=${v} is not allowed; use one of ${allowed.join(', ')}`);
  return found;
}

/**
 * The TLS settings to try, in order, as libpq does for sslmode: disable plain only; allow plain,
 * then TLS; prefer (libpq's default) TLS, then plain; require and verify-* TLS only. A Unix socket
 * never uses TLS (libpq ignores sslmode there).
 */
export function sslAttempts(libpq: Libpq, host: string | undefined): NodePgSsl[] {
  const mode = sslMode(libpq);
  if (host?.startsWith('/') || mode === 'disable') return [false];
  if (mode === 'allow') return [false, tlsOptions(libpq, host)];
  if (mode === 'prefer') return [tlsOptions(libpq, host), false];
  return [tlsOptions(libpq, host)];
}

/** Settings node-postgres cannot honour and pgvault's own connections therefore refuse. */
export function refuseUnsupported(libpq: Libpq): void {
  for (const key of ['PGSERVICE', 'PGSERVICEFILE'] as const) {
    if (libpq[key]?.trim()) {
      throw new ConfigError(
        `${key} is set, but pgvault's own connections (node-postgres) cannot read service files and would reach another server; set PGHOST, PGPORT, PGUSER and PGDATABASE instead`,
      );
    }
  }
  if (libpq.PGGSSENCMODE?.trim() === 'require') {
    throw new ConfigError(
      "PGGSSENCMODE=require cannot be honoured by pgvault's own connections (node-postgres has no GSSAPI encryption); use PGSSLMODE=verify-full instead",
    );
  }
}

/**
 * One line per libpq setting that reaches pg_dump & co. but that pgvault's own connections
 * (node-postgres) cannot apply. No value is printed (none of these holds a secret, but keep it so).
 */
export function libpqWarnings(libpq: Libpq): string[] {
  const limits: Array<[string, (v: string) => boolean, string]> = [
    ['PGTARGETSESSIONATTRS', (v) => v !== 'any', 'the server is not checked for it'],
    ['PGREQUIREAUTH', () => true, 'any authentication method the server asks for is used'],
    ['PGCHANNELBINDING', (v) => v === 'require', 'channel binding is not required'],
    ['PGREQUIREPEER', () => true, 'the peer user of a socket is not checked'],
    ['PGSSLCRLDIR', () => true, 'use PGSSLCRL (one file) instead'],
    ['PGSSLSNI', (v) => v === '0', 'SNI is sent for host names'],
    ['PGSSLCERTMODE', (v) => v === 'require', 'a client certificate is sent when given but not required'],
    ['PGLOADBALANCEHOSTS', (v) => v === 'random', 'hosts are not shuffled'],
    ['PGKRBSRVNAME', () => true, 'there is no GSSAPI/Kerberos authentication'],
    ['PGGSSLIB', () => true, 'there is no GSSAPI/Kerberos authentication'],
    ['PGGSSDELEGATION', (v) => v === '1', 'there is no GSSAPI/Kerberos authentication'],
  ];
  const warnings: string[] = [];
  for (const [key, applies, what] of limits) {
    const v = libpq[key]?.trim();
    if (v && applies(v)) {
      warnings.push(
        `${key} reaches pg_dump, pg_restore and psql, but pgvault's own connections (node-postgres) cannot apply it: ${what}`,
      );
    }
  }
  return warnings;
}

/** PGCONNECT_TIMEOUT in seconds as libpq reads it: 0 or less waits forever (undefined), 1 counts as 2. */
export function connectTimeoutSeconds(libpq: Libpq, fallback: number): number | undefined {
  const v = libpq.PGCONNECT_TIMEOUT?.trim();
  if (v === undefined || v === '') return fallback;
  if (!/^-?\d+$/.test(v)) {
    throw new ConfigError(`PGCONNECT_TIMEOUT=${v} is not allowed; use a whole number of seconds`);
  }
  const n = Number(v);
  return n <= 0 ? undefined : Math.max(2, n);
}
