import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A fault-injecting HTTP proxy for an S3-compatible test server (s3rver, path-style): point the
 * client's S3 endpoint at `endpoint`. Every request is forwarded unchanged (headers included, so SigV4
 * signatures still match), except those a rule picks, which get a fault instead. It stands in for the
 * faults no real S3 server can be made to produce on demand: lost answers, stalls, uploads and
 * downloads cut in the middle. These are the partial-failure bugs a healthy server never shows.
 *
 * A rule matches on (each optional; all given must match):
 * - `method`: the HTTP method (GET, PUT, DELETE, HEAD, POST);
 * - `path`: a regex over the request's path, `/bucket/prefix/key` (decoded, no query);
 * - `key`: a regex over the object key, the path after `/bucket/` (empty for bucket-level requests);
 * - `query`: a regex over the raw query string (`partNumber=` picks UploadPart out of the PUTs);
 * - `nth` and `times`: which of the matching requests (counted per rule, 1-based) get the fault:
 *   `times` of them from the `nth` on. Neither given: every one; `nth` alone: that one only; `times`
 *   alone: the first `times`. The SDK retries a failed request, so a fault meant to stick to one
 *   object either leaves both out or sets `times` to at least its attempts.
 * Rules are tried in the order added; the first whose turn it is wins.
 *
 * Faults (`action.kind`):
 * - `status`: answers 500 or 503 with an S3-style XML error, without forwarding.
 * - `s3-error`: answers the given status with S3's error XML (Code, Message), without forwarding: the
 *   answers s3rver never gives (403 AccessDenied for an object under Object Lock, say).
 * - `reset-request`: reads `afterBytes` bytes of the request body, then resets the connection (the
 *   server never sees the request: an upload cut off in the middle).
 * - `stall`: reads the body, forwards nothing and never answers (the client's timeouts must cut it).
 * - `lose-response`: forwards the request and lets the server answer (so an upload is stored), then
 *   resets the connection (`answer: 'reset'`, default) or never answers (`answer: 'stall'`) instead of
 *   passing the answer on: the client cannot know the outcome. `after` delays that until the given
 *   promise settles (tests use it to order two writers).
 * - `reset-download`: forwards the request, passes the answer's status, headers and at most
 *   `afterBytes` bytes of its body on, then resets the connection: a download cut in the middle.
 * - `answer`: reads the request's body (kept as `body` in `requests`: a recording of what the client
 *   sent) and answers the given status, headers and body, without forwarding: a stand-in for an answer
 *   the server behind cannot give (an S3 API s3rver lacks, Azure's error for an immutable blob).
 *
 * Use `hits(index)` or `waitFor(index)` to know a rule fired; `requests` lists every request seen.
 */

export type FaultAction =
  | { readonly kind: 'status'; readonly status: 500 | 503 }
  | { readonly kind: 's3-error'; readonly status: number; readonly code: string; readonly message: string }
  | { readonly kind: 'reset-request'; readonly afterBytes: number }
  | { readonly kind: 'stall' }
  | {
      readonly kind: 'lose-response';
      readonly answer?: 'reset' | 'stall';
      readonly after?: Promise<unknown>;
    }
  | { readonly kind: 'reset-download'; readonly afterBytes: number }
  | {
      readonly kind: 'answer';
      readonly status: number;
      readonly headers?: Readonly<Record<string, string>>;
      readonly body?: string;
    };

export interface FaultRule {
  /** HTTP method, e.g. PUT. Any when absent. */
  readonly method?: string;
  /** Matched against the decoded path, `/bucket/prefix/key`. Any when absent. */
  readonly path?: RegExp;
  /** Matched against the decoded object key, `prefix/key` (the path after `/bucket/`). Any when absent. */
  readonly key?: RegExp;
  /** Matched against the raw query string (without '?'), e.g. /partNumber=/. Any when absent. */
  readonly query?: RegExp;
  /** The first matching request (1-based) that gets the fault. @default 1 */
  readonly nth?: number;
  /** How many matching requests from `nth` on get the fault. @default every one without `nth`, 1 with it */
  readonly times?: number;
  readonly action: FaultAction;
}

export interface SeenRequest {
  readonly method: string;
  readonly path: string;
  /** The object key: the path after `/bucket/`, '' for a bucket-level request. */
  readonly key: string;
  readonly query: string;
  /** The request's headers as received (checksums, conditions, metadata). */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** Index of the rule that fired, if any. */
  readonly rule?: number;
  /** The request's body, for requests an `answer` rule took (set once it is read). */
  body?: string;
}

export interface FaultProxy {
  /** http://127.0.0.1:PORT: give this to the client as its S3 endpoint. */
  readonly endpoint: string;
  readonly requests: readonly SeenRequest[];
  /** Adds a rule (matched in the order added; the first that fires wins); returns its index. */
  addRule(rule: FaultRule): number;
  /** Removes every rule (counts start again; `requests` stays). */
  clearRules(): void;
  /** How many times rule `index` fired. */
  hits(index: number): number;
  /** Resolves once rule `index` has fired (for lose-response: once the server has answered). */
  waitFor(index: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

interface ActiveRule {
  readonly rule: FaultRule;
  matches: number;
  fired: number;
  readonly waiters: Array<() => void>;
}

/** Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream` (http://host:port). */
export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const target = new URL(upstream);
  const rules: ActiveRule[] = [];
  const requests: SeenRequest[] = [];
  const sockets = new Set<Socket>();

  const fired = (active: ActiveRule) => {
    active.fired++;
    for (const wake of active.waiters.splice(0)) wake();
  };

  const matches = (rule: FaultRule, method: string, path: string, key: string, query: string) =>
    (rule.method === undefined || rule.method.toUpperCase() === method) &&
    (rule.path === undefined || rule.path.test(path)) &&
    (rule.key === undefined || rule.key.test(key)) &&
    (rule.query === undefined || rule.query.test(query));

  const inTurn = (active: ActiveRule) => {
    const { nth, times } = active.rule;
    const first = nth ?? 1;
    const count = times ?? (nth === undefined ? Number.POSITIVE_INFINITY : 1);
    return active.matches >= first && active.matches < first + count;
  };

  const forward = (req: IncomingMessage, onAnswer: (upstreamRes: IncomingMessage) => void) => {
    const out = httpRequest(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
      },
      onAnswer,
    );
    out.on('error', () => req.socket.destroy());
    req.pipe(out);
  };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://proxy');
    const method = (req.method ?? 'GET').toUpperCase();
    const path = decodeURIComponent(url.pathname);
    const key = path.replace(/^\/+[^/]*\/?/, '');
    const query = url.search.replace(/^\?/, '');
    let chosen: { index: number; active: ActiveRule } | undefined;
    for (const [index, active] of rules.entries()) {
      if (!matches(active.rule, method, path, key, query)) continue;
      active.matches++;
      if (chosen === undefined && inTurn(active)) chosen = { index, active };
    }
    const seen: SeenRequest = {
      method,
      path,
      key,
      query,
      headers: { ...req.headers },
      ...(chosen ? { rule: chosen.index } : {}),
    };
    requests.push(seen);
    if (chosen === undefined) {
      forward(req, (upstreamRes) => {
        res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
        upstreamRes.pipe(res);
      });
      return;
    }
    const { active } = chosen;
    const action = active.rule.action;
    switch (action.kind) {
      case 'status': {
        req.resume();
        req.on('end', () => {
          const code = action.status === 503 ? 'SlowDown' : 'InternalError';
          res.writeHead(action.status, { 'content-type': 'application/xml', connection: 'close' });
          res.end(
            `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected by the fault proxy</Message></Error>`,
          );
          fired(active);
        });
        return;
      }
      case 's3-error': {
        req.resume();
        req.on('end', () => {
          res.writeHead(action.status, { 'content-type': 'application/xml' });
          res.end(
            `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${action.code}</Code><Message>${action.message}</Message><RequestId>FAULTPROXY</RequestId><HostId>fault-proxy</HostId></Error>`,
          );
          fired(active);
        });
        return;
      }
      case 'answer': {
        const chunks: Buffer[] = [];
        req.on('data', (chunk: Buffer) => chunks.push(chunk));
        req.on('end', () => {
          seen.body = Buffer.concat(chunks).toString('utf8');
          res.writeHead(action.status, { ...action.headers });
          res.end(action.body ?? '');
          fired(active);
        });
        return;
      }
      case 'reset-request': {
        let received = 0;
        const onData = (chunk: Buffer) => {
          received += chunk.length;
          if (received >= action.afterBytes) {
            req.off('data', onData);
            fired(active);
            req.socket.resetAndDestroy();
          }
        };
        req.on('data', onData);
        // A body shorter than the limit: cut at its end.
        req.on('end', () => {
          if (!req.socket.destroyed) {
            fired(active);
            req.socket.resetAndDestroy();
          }
        });
        return;
      }
      case 'stall': {
        req.resume();
        req.on('end', () => fired(active));
        return;
      }
      case 'lose-response': {
        forward(req, (upstreamRes) => {
          upstreamRes.resume();
          upstreamRes.on('end', () => {
            fired(active);
            void Promise.resolve(action.after)
              .catch(() => {})
              .then(() => {
                if ((action.answer ?? 'reset') === 'reset' && !req.socket.destroyed)
                  req.socket.resetAndDestroy();
              });
          });
        });
        return;
      }
      case 'reset-download': {
        forward(req, (upstreamRes) => {
          res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
          let sent = 0;
          let cutting = false;
          const cut = () => {
            upstreamRes.destroy();
            fired(active);
            req.socket.resetAndDestroy();
          };
          upstreamRes.on('data', (chunk: Buffer) => {
            if (cutting) return;
            const room = action.afterBytes - sent;
            if (chunk.length < room) {
              sent += chunk.length;
              res.write(chunk);
              return;
            }
            cutting = true;
            res.write(chunk.subarray(0, room), cut);
          });
          // A body shorter than the limit: cut before its end is confirmed.
          upstreamRes.on('end', () => {
            if (cutting) return;
            cutting = true;
            cut();
          });
        });
        return;
      }
    }
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // A reset leaves an ECONNRESET on our side of the socket too; it is the point, not a failure.
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    addRule(rule) {
      rules.push({ rule, matches: 0, fired: 0, waiters: [] });
      return rules.length - 1;
    },
    clearRules() {
      rules.length = 0;
    },
    hits(index) {
      return rules[index]?.fired ?? 0;
    },
    waitFor(index, timeoutMs = 60_000) {
      const active = rules[index];
      if (active === undefined) return Promise.reject(new Error(`no rule ${index}`));
      if (active.fired > 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`fault rule ${index} did not fire within ${timeoutMs} ms`)),
          timeoutMs,
        );
        active.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
