import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Template } from 'aws-cdk-lib/assertions';

/**
 * What an IAM role may do on S3, taken from a synthesized template, and an HTTP proxy in front of
 * s3rver that enforces it: the way to see, without AWS, that a command run under a role never reads,
 * writes, lists or deletes a key its statements do not allow (issue 12: the probe at the repository
 * root that every scheduled backup failed on).
 *
 * The evaluator knows the subset of IAM the templates use: Allow/Deny statements, Action and Resource
 * with `*` and `?` wildcards, the `s3:prefix` StringLike/StringEquals condition. Default deny; an
 * explicit Deny wins. Intrinsics in a Resource (the bucket's GetAtt, a fleet stack's SSM parameter) stand
 * for the one vault bucket, `arn:aws:s3:::<bucket>`.
 */

// biome-ignore lint/suspicious/noExplicitAny: synthesized CloudFormation JSON has no static type
type Json = any;

export interface S3Statement {
  readonly effect: 'Allow' | 'Deny';
  readonly actions: readonly string[];
  readonly resources: readonly string[];
  /** s3:prefix patterns of a StringLike/StringEquals condition; undefined when none. */
  readonly prefixes?: readonly string[];
}

export interface S3Request {
  readonly action: string;
  /** arn:aws:s3:::bucket or arn:aws:s3:::bucket/key */
  readonly resource: string;
  /** The ListBucket prefix. */
  readonly prefix?: string;
}

/** IAM's wildcard match: `*` any run of characters, `?` one character, case-sensitive. */
export function iamMatch(pattern: string, value: string): boolean {
  const re = pattern
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${re}$`, 's').test(value);
}

function matches(statement: S3Statement, request: S3Request): boolean {
  if (!statement.actions.some((a) => iamMatch(a.toLowerCase(), request.action.toLowerCase()))) return false;
  if (!statement.resources.some((r) => iamMatch(r, request.resource))) return false;
  if (statement.prefixes !== undefined) {
    // A condition on a key the request does not carry does not match (IAM's StringLike on a missing key).
    if (request.prefix === undefined) return false;
    return statement.prefixes.some((p) => iamMatch(p, request.prefix!));
  }
  return true;
}

/** Whether the statements allow the request: default deny, an explicit Deny wins. */
export function isAllowed(statements: readonly S3Statement[], request: S3Request): boolean {
  const hits = statements.filter((s) => matches(s, request));
  return hits.some((s) => s.effect === 'Allow') && !hits.some((s) => s.effect === 'Deny');
}

function resolveResource(value: Json, bucket: string): string {
  if (typeof value === 'string') return value;
  if (value && Array.isArray(value['Fn::Join'])) {
    const [sep, parts] = value['Fn::Join'] as [string, Json[]];
    return parts.map((p) => resolveResource(p, bucket)).join(sep);
  }
  // The bucket's ARN through GetAtt, Ref or the SSM parameter a fleet stack reads it from.
  return `arn:aws:s3:::${bucket}`;
}

const list = <T>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

/** The S3 statements of every IAM policy in `template` attached to the role with logical id `roleId`. */
export function roleS3Statements(template: Template, roleId: string, bucket: string): S3Statement[] {
  const out: S3Statement[] = [];
  const policies = Object.values(template.findResources('AWS::IAM::Policy')) as Json[];
  for (const policy of policies) {
    const roles = list(policy.Properties.Roles as Json[]);
    if (!roles.some((r) => r?.Ref === roleId)) continue;
    for (const s of list(policy.Properties.PolicyDocument.Statement as Json[])) {
      const actions = list<string>(s.Action).filter((a) => a.toLowerCase().startsWith('s3:') || a === '*');
      if (!actions.length) continue;
      const condition = s.Condition?.StringLike ?? s.Condition?.StringEquals;
      const prefixes =
        condition?.['s3:prefix'] !== undefined ? list<string>(condition['s3:prefix']) : undefined;
      out.push({
        effect: s.Effect,
        actions,
        resources: list(s.Resource as Json).map((r) => resolveResource(r, bucket)),
        prefixes,
      });
    }
  }
  return out;
}

/** Which S3 action an HTTP request to a path-style S3 endpoint is, and on what. */
export function s3RequestOf(method: string, url: string): S3Request & { key: string } {
  const parsed = new URL(url, 'http://x');
  const [, bucket = '', ...rest] = parsed.pathname.split('/');
  const key = decodeURIComponent(rest.join('/'));
  const q = parsed.searchParams;
  const bucketArn = `arn:aws:s3:::${decodeURIComponent(bucket)}`;
  const objectArn = `${bucketArn}/${key}`;
  if (key === '') {
    if (q.has('lifecycle')) {
      const action = method === 'GET' ? 's3:GetLifecycleConfiguration' : 's3:PutLifecycleConfiguration';
      return { action, resource: bucketArn, key };
    }
    if (method === 'GET' && (q.has('list-type') || q.has('prefix') || !parsed.search)) {
      return { action: 's3:ListBucket', resource: bucketArn, prefix: q.get('prefix') ?? '', key };
    }
    if (method === 'POST' && q.has('delete'))
      return { action: 's3:DeleteObject', resource: `${bucketArn}/?`, key };
    return { action: `s3:Bucket${method}`, resource: bucketArn, key };
  }
  if (q.has('tagging'))
    return {
      action: method === 'GET' ? 's3:GetObjectTagging' : 's3:PutObjectTagging',
      resource: objectArn,
      key,
    };
  if (q.has('attributes')) return { action: 's3:GetObjectAttributes', resource: objectArn, key };
  if (q.has('retention'))
    return {
      action: method === 'GET' ? 's3:GetObjectRetention' : 's3:PutObjectRetention',
      resource: objectArn,
      key,
    };
  switch (method) {
    case 'GET':
    case 'HEAD':
      return { action: 's3:GetObject', resource: objectArn, key };
    case 'PUT':
    case 'POST':
      return { action: 's3:PutObject', resource: objectArn, key };
    case 'DELETE':
      return {
        action: q.has('uploadId') ? 's3:AbortMultipartUpload' : 's3:DeleteObject',
        resource: objectArn,
        key,
      };
    default:
      return { action: `s3:Unknown${method}`, resource: objectArn, key };
  }
}

export interface PolicyProxy {
  readonly endpoint: string;
  /** Every request seen, with whether the role allowed it. */
  readonly seen: ReadonlyArray<S3Request & { key: string; allowed: boolean }>;
  readonly denied: ReadonlyArray<S3Request & { key: string }>;
  stop(): Promise<void>;
}

/**
 * An HTTP proxy in front of an S3-compatible server that answers 403 AccessDenied (S3's XML) to every
 * request the statements do not allow, and forwards the rest unchanged (so SigV4 signatures match).
 */
export async function startPolicyProxy(
  upstream: string,
  statements: readonly S3Statement[],
): Promise<PolicyProxy> {
  const target = new URL(upstream);
  const seen: Array<S3Request & { key: string; allowed: boolean }> = [];
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    const request = s3RequestOf(req.method ?? 'GET', req.url ?? '/');
    // A write carrying its tags (x-amz-tagging on PutObject or CreateMultipartUpload) is authorized
    // by S3 as s3:PutObjectTagging too: both must be allowed.
    const checks = [request];
    if (request.action === 's3:PutObject' && req.headers['x-amz-tagging'] !== undefined)
      checks.push({ ...request, action: 's3:PutObjectTagging' });
    let allowed = true;
    for (const check of checks) {
      const ok = isAllowed(statements, check);
      seen.push({ ...check, allowed: ok });
      allowed &&= ok;
    }
    if (!allowed) {
      req.resume();
      req.on('end', () => {
        res.writeHead(403, { 'content-type': 'application/xml' });
        res.end(
          `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message><Resource>${request.resource}</Resource></Error>`,
        );
      });
      return;
    }
    const forward = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    seen,
    get denied() {
      return seen.filter((s) => !s.allowed);
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
