import { readFileSync } from 'node:fs';
import type { PatroniConfig } from '../config';
import { ConfigError, errorMessage, PgVaultError } from '../errors';
import { normalizeRole, type Topology, type TopologyNode } from './choose';

/*
 * Patroni's REST API: `GET /cluster` (every member, its role, state, host, port, timeline and lag)
 * from the first PATRONI_URL that answers, so one node's API being down is not an outage. Short
 * timeouts; credentials as HTTP basic auth, never in a message; https with PATRONI_CACERT.
 */

/** The Patroni API could not be read: every URL tried and why, in one line. */
export class TopologyError extends PgVaultError {}

interface ApiAnswer {
  readonly status: number;
  readonly body: string;
}

let caCache: { file: string; ca: Buffer } | undefined;

function readCa(caFile: string): Buffer {
  if (caCache?.file === caFile) return caCache.ca;
  try {
    caCache = { file: caFile, ca: readFileSync(caFile) };
    return caCache.ca;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError(
      `PATRONI_CACERT=${caFile} cannot be read (${code}); check the path and its permissions`,
    );
  }
}

/** One GET with a deadline for the whole answer. Rejects with a short reason (no URL, no secret). */
function get(config: PatroniConfig, entry: PatroniConfig['urls'][number], path: string): Promise<ApiAnswer> {
  const url = new URL(path, `${entry.url}/`);
  const https = url.protocol === 'https:';
  const mod = (https ? require('node:https') : require('node:http')) as typeof import('node:https');
  const auth = entry.auth ?? config.auth;
  const timeoutMs = config.timeoutSeconds * 1000;
  return new Promise((resolve, reject) => {
    const req = mod.request(url, {
      method: 'GET',
      headers: {
        accept: 'application/json',
        ...(auth ? { authorization: `Basic ${Buffer.from(auth).toString('base64')}` } : {}),
      },
      ...(https && config.caFile ? { ca: readCa(config.caFile) } : {}),
    });
    const timer = setTimeout(
      () => req.destroy(new Error(`no answer in ${config.timeoutSeconds} s`)),
      timeoutMs,
    );
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        if (body.length < 4 * 1024 * 1024) body += c;
      });
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body });
      });
      res.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end();
  });
}

/** Why a request failed, in a few words (with what to do when it is ours to fix). */
function reason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ECONNREFUSED') return 'connection refused';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'host name not found';
  if (code === 'ECONNRESET') return 'connection reset';
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return 'host unreachable';
  if (code !== undefined && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code)) {
    return `TLS certificate not trusted (${code}); set PATRONI_CACERT to the CA file that signed it`;
  }
  if (code === 'EPROTO' || /wrong version number|SSL routines/i.test(errorMessage(err))) {
    return 'TLS handshake failed (an https:// URL for an http API, or the reverse?)';
  }
  return code ?? errorMessage(err);
}

function statusReason(status: number): string {
  if (status === 401 || status === 403) {
    return `answered ${status} (set PATRONI_USERNAME and PATRONI_PASSWORD, or user:password@ in the URL)`;
  }
  return `answered HTTP ${status}`;
}

interface RawMember {
  name?: unknown;
  role?: unknown;
  state?: unknown;
  host?: unknown;
  port?: unknown;
  timeline?: unknown;
  lag?: unknown;
  api_url?: unknown;
}

function member(m: RawMember): TopologyNode {
  const lag =
    typeof m.lag === 'number'
      ? m.lag
      : typeof m.lag === 'string' && /^\d+$/.test(m.lag)
        ? Number(m.lag)
        : undefined;
  const role = normalizeRole(typeof m.role === 'string' ? m.role : undefined);
  return {
    name: String(m.name ?? '?'),
    role,
    state: typeof m.state === 'string' ? m.state : 'unknown',
    host: typeof m.host === 'string' ? m.host : '',
    port: typeof m.port === 'number' ? m.port : 5432,
    ...(typeof m.timeline === 'number' ? { timeline: m.timeline } : {}),
    ...(role !== 'leader' && lag !== undefined ? { lagBytes: lag } : {}),
    ...(typeof m.api_url === 'string' ? { apiUrl: m.api_url } : {}),
  };
}

/**
 * The first PATRONI_URL whose answer to `GET /<path>` `accept` takes: it returns the result, or the
 * reason the answer is not Patroni's (then the next URL is asked). Every URL down or wrong: a
 * TopologyError naming each URL and why. A ConfigError (say, an unreadable CA file) stops at once.
 */
async function fromFirstApi<T>(
  config: PatroniConfig,
  path: string,
  request: string,
  accept: (answer: ApiAnswer, entry: PatroniConfig['urls'][number]) => Promise<T | string>,
): Promise<T> {
  const failures: string[] = [];
  for (const entry of config.urls) {
    let answer: ApiAnswer;
    try {
      answer = await get(config, entry, path);
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      failures.push(`${entry.url}: ${reason(err)}`);
      continue;
    }
    if (answer.status !== 200) {
      failures.push(`${entry.url}: ${statusReason(answer.status)}`);
      continue;
    }
    const result = await accept(answer, entry);
    if (typeof result === 'string') {
      failures.push(`${entry.url}: ${result}`);
      continue;
    }
    return result;
  }
  throw new TopologyError(
    `no Patroni REST API answered${request} (PATRONI_URL): ${failures.join('; ')}; check that Patroni runs and that PATRONI_URL names each node's restapi address`,
  );
}

/**
 * The cluster as the first PATRONI_URL that answers `GET /cluster` describes it. Every URL down or
 * wrong: a TopologyError naming each URL and why.
 */
export function readPatroniTopology(config: PatroniConfig): Promise<Topology> {
  return fromFirstApi<Topology>(config, 'cluster', '', async (answer, entry) => {
    let parsed: { members?: RawMember[]; scope?: unknown };
    try {
      parsed = JSON.parse(answer.body) as typeof parsed;
    } catch {
      parsed = {};
    }
    if (!Array.isArray(parsed.members)) {
      return "/cluster is not Patroni's answer (no members list); is this the REST API port?";
    }
    let scope = typeof parsed.scope === 'string' ? parsed.scope : undefined;
    if (scope === undefined) {
      // Patroni before 3.1 leaves the scope out of /cluster; /patroni has it.
      try {
        const status = await get(config, entry, 'patroni');
        const info = JSON.parse(status.body) as { patroni?: { scope?: unknown } };
        if (typeof info.patroni?.scope === 'string') scope = info.patroni.scope;
      } catch {
        // The scope is informative: the members are what matters.
      }
    }
    return {
      mode: 'patroni',
      ...(scope !== undefined ? { scope } : {}),
      nodes: parsed.members.map(member),
      source: entry.url,
    };
  });
}

/** Patroni's dynamic configuration (`GET /config`), as the API returned it, and which URL answered. */
export interface PatroniDynamicConfig {
  /** The answer's JSON text, unchanged. */
  readonly text: string;
  readonly source: string;
}

/**
 * Patroni's dynamic configuration (`GET /config`: ttl, loop_wait, postgresql.parameters, ...) from the
 * first PATRONI_URL that answers, with the same auth, TLS and timeout as `/cluster`. Every URL down
 * or wrong: a TopologyError naming each URL and why.
 */
export function readPatroniConfig(config: PatroniConfig): Promise<PatroniDynamicConfig> {
  return fromFirstApi<PatroniDynamicConfig>(config, 'config', ' GET /config', async (answer, entry) => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(answer.body);
    } catch {
      parsed = undefined;
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      return "/config is not Patroni's answer (not a JSON object); is this the REST API port?";
    }
    return { text: answer.body, source: entry.url };
  });
}
