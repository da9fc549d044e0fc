import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A fault-injecting HTTP proxy for an S3-compatible test server (s3rver): every request is forwarded
 * unchanged (headers included, so SigV4 signatures still match), except those a rule picks, which get
 * a fault instead. It finds the partial-failure bugs a healthy server never shows: lost answers,
 * stalls, bodies cut in the middle.
 *
 * A rule matches on the method, a regex over the request's path (`/bucket/prefix/key`, decoded, no
 * query), optionally a regex over the query (`partNumber=` picks UploadPart out of the PUTs), and
 * the nth such request (1-based; without `nth`, every one). What it does:
 * - `status`: answers 500 or 503 with an S3-style XML error, without forwarding.
 * - `reset-request`: reads `afterBytes` bytes of the request body, then resets the connection (the
 *   server never sees the request).
 * - `stall`: reads the body and never answers (the client's timeouts must cut it).
 * - `lose-response`: forwards the request and lets the server answer (so an upload is stored), then
 *   resets the connection (`answer: 'reset'`, default) or never answers (`answer: 'stall'`) instead of
 *   passing the answer on; `after` delays that until the given promise settles (tests use it to
 *   order two writers).
 *
 * Use `hits(index)` or `waitFor(index)` to know a rule fired; `requests` lists every request seen.
 */

export type FaultAction =
  | { readonly kind: 'status'; readonly status: 500 | 503 }
  | { readonly kind: 'reset-request'; readonly afterBytes: number }
  | { readonly kind: 'stall' }
  | {
      readonly kind: 'lose-response';
      readonly answer?: 'reset' | 'stall';
      readonly after?: Promise<unknown>;
    };

export interface FaultRule {
  /** HTTP method, e.g. PUT. Any when absent. */
  readonly method?: string;
  /** Matched against the decoded path, `/bucket/prefix/key`. */
  readonly path: RegExp;
  /** Matched against the raw query string (without '?'), e.g. /partNumber=/. Any when absent. */
  readonly query?: RegExp;
  /** Only the nth matching request (1-based). Every matching request when absent. */
  readonly nth?: number;
  readonly action: FaultAction;
}

export interface SeenRequest {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  /** The request's headers as received (checksums, conditions, metadata). */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** Index of the rule that fired, if any. */
  readonly rule?: number;
}

export interface FaultProxy {
  /** http://127.0.0.1:PORT: give this to the client as its S3 endpoint. */
  readonly endpoint: string;
  readonly requests: readonly SeenRequest[];
  /** Adds a rule (matched in the order added; the first that fires wins); returns its index. */
  addRule(rule: FaultRule): number;
  /** Removes every rule (counts start again). */
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

export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const target = new URL(upstream);
  const rules: ActiveRule[] = [];
  const requests: SeenRequest[] = [];
  const sockets = new Set<Socket>();

  const fired = (active: ActiveRule) => {
    active.fired++;
    for (const wake of active.waiters.splice(0)) wake();
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
    const method = req.method ?? 'GET';
    const path = decodeURIComponent(url.pathname);
    const query = url.search.replace(/^\?/, '');
    let chosen: { index: number; active: ActiveRule } | undefined;
    for (const [index, active] of rules.entries()) {
      const { rule } = active;
      if (rule.method !== undefined && rule.method.toUpperCase() !== method) continue;
      if (!rule.path.test(path)) continue;
      if (rule.query !== undefined && !rule.query.test(query)) continue;
      active.matches++;
      if (chosen === undefined && (rule.nth === undefined || rule.nth === active.matches)) {
        chosen = { index, active };
      }
    }
    requests.push({
      method,
      path,
      query,
      headers: { ...req.headers },
      ...(chosen ? { rule: chosen.index } : {}),
    });
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
