import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A fault-injecting HTTP proxy for tests, put in front of s3rver (or any S3 endpoint speaking
 * path-style HTTP): point S3_ENDPOINT at `proxy.endpoint`. Every request is forwarded unchanged,
 * except the ones a rule matches, which get the rule's fault. A healthy s3rver never shows a lost
 * answer or a half-stored upload; this does, on demand and deterministically.
 *
 * Rules match on the HTTP method, a regex over the object key (the path after `/{bucket}/`,
 * decoded, without the query string) and the occurrence: `nth` is the first matching request hit
 * (1-based, counted per rule), `times` how many matching requests from there on (Infinity: all of
 * them; the SDK retries a failed request, so a fault meant to stick needs times >= its attempts).
 *
 * Faults:
 * - `status`: answer `status` (500 default, 503 ...) with an S3 error body; nothing is forwarded.
 * - `reset`: forward nothing and reset the connection once `afterBytes` request bytes (default 0)
 *   have arrived: an upload cut off in the middle.
 * - `stall`: forward nothing and never answer (the client's own timeout has to end it).
 * - `drop-answer`: forward, let the server store it, then never answer: the outcome is unknown.
 * - `reset-answer`: forward, let the server store it, then reset the connection instead of answering.
 * - `reset-download`: forward, then reset the connection after `afterBytes` bytes of the answer's body.
 */
export type FaultAction = 'status' | 'reset' | 'stall' | 'drop-answer' | 'reset-answer' | 'reset-download';

export interface FaultRule {
  /** GET, PUT, DELETE, HEAD, POST; any when omitted. */
  readonly method?: string;
  /** Tested against the decoded object key; any key (and bucket-level requests) when omitted. */
  readonly key?: RegExp;
  /** First matching occurrence to hit, 1-based. @default 1 */
  readonly nth?: number;
  /** Matching occurrences hit from `nth` on. @default 1 */
  readonly times?: number;
  readonly action: FaultAction;
  /** For `status`. @default 500 */
  readonly status?: number;
  /** For `reset` (request bytes) and `reset-download` (answer body bytes). @default 0 */
  readonly afterBytes?: number;
}

export interface ProxiedRequest {
  readonly method: string;
  readonly key: string;
  /** The fault applied, if a rule matched. */
  readonly fault?: FaultAction;
}

export interface FaultProxy {
  /** http://127.0.0.1:PORT */
  readonly endpoint: string;
  /** Every request seen, in arrival order. */
  readonly log: ProxiedRequest[];
  /** Adds a rule; rules are tried in the order added, the first that hits applies. */
  add(rule: FaultRule): void;
  /** Removes every rule (the log stays). */
  clear(): void;
  stop(): Promise<void>;
}

/** Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream` (http://host:port). */
export async function startFaultProxy(upstream: string, bucket?: string): Promise<FaultProxy> {
  const target = new URL(upstream);
  const rules: { rule: FaultRule; seen: number }[] = [];
  const log: ProxiedRequest[] = [];
  const stalled = new Set<IncomingMessage>();

  const keyOf = (url: string): string => {
    const path = decodeURIComponent((url.split('?')[0] ?? '').replace(/^\/+/, ''));
    const slash = path.indexOf('/');
    if (bucket !== undefined) return path.startsWith(`${bucket}/`) ? path.slice(bucket.length + 1) : '';
    return slash === -1 ? '' : path.slice(slash + 1);
  };

  const pick = (method: string, key: string): FaultRule | undefined => {
    for (const entry of rules) {
      const { rule } = entry;
      if (rule.method !== undefined && rule.method.toUpperCase() !== method) continue;
      if (rule.key !== undefined && !rule.key.test(key)) continue;
      entry.seen++;
      const first = rule.nth ?? 1;
      if (entry.seen >= first && entry.seen < first + (rule.times ?? 1)) return rule;
    }
    return undefined;
  };

  const forward = (
    req: IncomingMessage,
    onAnswer: (answer: IncomingMessage) => void,
    onError: () => void,
  ) => {
    const out = request(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
      },
      onAnswer,
    );
    out.on('error', onError);
    req.pipe(out);
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const method = (req.method ?? 'GET').toUpperCase();
    const key = keyOf(req.url ?? '/');
    const rule = pick(method, key);
    log.push({ method, key, ...(rule ? { fault: rule.action } : {}) });
    const reset = () => req.socket.destroy();
    switch (rule?.action) {
      case undefined:
        forward(
          req,
          (answer) => {
            res.writeHead(answer.statusCode ?? 502, answer.headers);
            answer.pipe(res);
          },
          reset,
        );
        return;
      case 'status': {
        req.resume();
        req.on('end', () => {
          const status = rule.status ?? 500;
          const code = status === 503 ? 'SlowDown' : 'InternalError';
          res.writeHead(status, { 'content-type': 'application/xml' });
          res.end(
            `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected by the fault proxy</Message></Error>`,
          );
        });
        return;
      }
      case 'reset': {
        let bytes = 0;
        const limit = rule.afterBytes ?? 0;
        if (limit === 0) return reset();
        req.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes >= limit) reset();
        });
        req.on('end', reset);
        return;
      }
      case 'stall':
        stalled.add(req);
        req.resume();
        return;
      case 'drop-answer':
      case 'reset-answer':
        forward(
          req,
          (answer) => {
            // Read the whole answer: the server has finished with the request (stored it).
            answer.resume();
            answer.on('end', () => {
              if (rule.action === 'reset-answer') reset();
              else stalled.add(req);
            });
          },
          reset,
        );
        return;
      case 'reset-download':
        forward(
          req,
          (answer) => {
            res.writeHead(answer.statusCode ?? 502, answer.headers);
            let bytes = 0;
            const limit = rule.afterBytes ?? 0;
            answer.on('data', (chunk: Buffer) => {
              if (bytes + chunk.length >= limit) {
                res.write(chunk.subarray(0, Math.max(0, limit - bytes)), () => reset());
                answer.destroy();
                return;
              }
              bytes += chunk.length;
              res.write(chunk);
            });
            answer.on('end', () => res.end());
          },
          reset,
        );
        return;
    }
  };

  const server: Server = createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    log,
    add: (rule) => rules.push({ rule, seen: 0 }),
    clear: () => {
      rules.length = 0;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        for (const req of stalled) req.socket.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
