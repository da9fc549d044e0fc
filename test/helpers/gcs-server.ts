import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { CRC32C } from '@google-cloud/storage';

/**
 * A STAND-IN for Google Cloud Storage's JSON API, written for pgvault's tests. It is NOT an emulator
 * and NOT Google's code: no GCS emulator can be installed on these machines (none is on npm or in
 * Debian, see /work/shared/TOOLING.md), so this server answers the few requests the real
 * @google-cloud/storage client sends for what pgvault does, in the shapes the JSON API documents:
 *
 * - resumable uploads: `POST /upload/storage/v1/b/B/o?uploadType=resumable&name=N` (JSON metadata:
 *   storageClass, retention, metadata; `ifGenerationMatch=0`), answered with a session URI in
 *   `Location`; chunks `PUT` to it with `Content-Range: bytes A-B/TOTAL|*` answered 308 with
 *   `Range: bytes=0-N` until the last one creates the object (200, the object resource); a status
 *   query `Content-Range: bytes * /TOTAL|*`; `DELETE` of the session cancels it (499). Only the
 *   final chunk makes an object: an unfinished session is never listed nor readable.
 * - `GET /storage/v1/b/B/o/N` (the object resource), `?alt=media` (the bytes, `Range` honoured,
 *   `x-goog-hash` crc32c and md5 so the client checks the download), `GET /storage/v1/b/B/o`
 *   (prefix, maxResults, pageToken; UTF-8 byte order, as GCS), `DELETE /storage/v1/b/B/o/N` (403
 *   while the object's retention `retainUntilTime` is in the future, as GCS).
 * - `GET /storage/v1/b/B` (the bucket resource, its `lifecycle`), `PATCH` of it (`lifecycle` replaced;
 *   403 with `denyBucketUpdate`, as GCS for a role without storage.buckets.update).
 *   Paths are accepted with and without `/storage/v1` (the client drops it when it takes the
 *   endpoint from STORAGE_EMULATOR_HOST).
 *
 * Point the real client at it (`apiEndpoint`, or STORAGE_EMULATOR_HOST=`endpoint`), so the client's
 * own upload path, chunking and retries are what runs. Fault switches (`addFault`) stand in for what
 * a healthy server never does: answer 500/503, reset the connection part-way through a request's
 * body, or never answer.
 */

export type GcsFaultAction =
  | { readonly kind: 'status'; readonly status: number }
  | { readonly kind: 'reset'; readonly afterBytes: number }
  | { readonly kind: 'stall' };

export interface GcsFaultRule {
  readonly method?: string;
  /** Over the path, `/upload/storage/v1/b/B/o` or `/storage/v1/b/B/o/NAME` (decoded). */
  readonly path?: RegExp;
  /** Over the object name: the `name` of an upload session, or the name in the path. */
  readonly name?: RegExp;
  /** Which requests: `chunk` (a PUT of upload data, not a status query), `init` (a session's POST). */
  readonly request?: 'chunk' | 'init';
  /** How many matching requests get the fault (counted from the first). @default every one */
  readonly times?: number;
  readonly action: GcsFaultAction;
}

export interface StoredObject {
  readonly name: string;
  /** The bytes (empty with `discardData`). */
  readonly data: Buffer;
  readonly size: number;
  readonly hashes: { readonly crc32c: string; readonly md5Hash: string };
  readonly generation: number;
  readonly storageClass: string;
  readonly metadata: Record<string, string>;
  readonly retention?: { readonly mode: string; readonly retainUntilTime: string };
  readonly created: Date;
}

export interface GcsStandIn {
  /** http://127.0.0.1:PORT: the client's apiEndpoint or STORAGE_EMULATOR_HOST. */
  readonly endpoint: string;
  readonly bucket: string;
  /** The objects stored (finalized uploads), by name. */
  readonly objects: ReadonlyMap<string, StoredObject>;
  /** Upload sessions neither finished nor cancelled. */
  openSessions(): number;
  /**
   * Bytes of upload data (chunk PUT bodies) received so far, counted as they arrive on the socket,
   * over every session (a resent byte counts again): what the uploader has got off its hands.
   */
  receivedBytes(): number;
  /** Sessions cancelled with DELETE (an aborted upload). */
  cancelledSessions(): number;
  /** Every request seen: method, path, the upload session's or path's object name. */
  readonly requests: ReadonlyArray<{ method: string; path: string; name: string; fault?: number }>;
  /**
   * The bucket's lifecycle rules (`GET /b/B` gives them, `PATCH /b/B` with `lifecycle` replaces them,
   * as GCS); set them to play rules already on the bucket.
   */
  lifecycle: Array<Record<string, unknown>>;
  /** Bucket metadata PATCHes accepted so far. */
  bucketPatches(): number;
  /**
   * On: a bucket PATCH is refused with GCS's 403 for a credential without storage.buckets.update
   * (an object-only role such as roles/storage.objectAdmin); reads of the bucket still answer.
   */
  denyBucketUpdate(on: boolean): void;
  addFault(rule: GcsFaultRule): number;
  /** How many times fault `index` fired. */
  hits(index: number): number;
  clearFaults(): void;
  stop(): Promise<void>;
}

interface Session {
  readonly id: string;
  readonly name: string;
  readonly resource: Record<string, unknown>;
  readonly ifGenerationMatch?: string;
  chunks: Buffer[];
  received: number;
  readonly crc: InstanceType<typeof CRC32C>;
  readonly md5: ReturnType<typeof createHash>;
  finished?: StoredObject;
}

export interface GcsStandInOptions {
  /**
   * Keep only each object's size and hashes, not its bytes (benchmarks: a 500 MB upload without
   * 500 MB in this process); reads then give zeros.
   */
  readonly discardData?: boolean;
}

export async function startGcsStandIn(
  bucket = 'pgvault-test',
  standInOptions: GcsStandInOptions = {},
): Promise<GcsStandIn> {
  const objects = new Map<string, StoredObject>();
  const sessions = new Map<string, Session>();
  let cancelled = 0;
  let received = 0;
  let lifecycle: Array<Record<string, unknown>> = [];
  let patches = 0;
  let denyUpdate = false;
  let metageneration = 1;
  let generation = 1_700_000_000_000_000;
  const faults: Array<{ rule: GcsFaultRule; matched: number; fired: number }> = [];
  const requests: Array<{ method: string; path: string; name: string; fault?: number }> = [];
  const sockets = new Set<Socket>();
  let endpoint = '';

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendError(res, 500, `stand-in failure: ${(err as Error).message}`);
      else res.destroy();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://stand-in');
    const method = (req.method ?? 'GET').toUpperCase();
    const path = decodeURIComponent(url.pathname).replace(/^\/storage\/v1(?=\/b\/)/, '');
    const session = sessions.get(url.searchParams.get('upload_id') ?? '');
    const upload = path.startsWith('/upload/storage/v1/b/');
    const objectPath = /^\/b\/([^/]+)\/o(?:\/(.+))?$/.exec(path);
    const uploadPath = /^\/upload\/storage\/v1\/b\/([^/]+)\/o$/.exec(path);
    const name = session?.name ?? url.searchParams.get('name') ?? objectPath?.[2] ?? '';
    const kind =
      upload && method === 'POST'
        ? 'init'
        : upload && method === 'PUT' && !/^bytes \*\//.test(String(req.headers['content-range'] ?? ''))
          ? 'chunk'
          : undefined;

    // Fault switches.
    let chosen: number | undefined;
    for (const [index, fault] of faults.entries()) {
      const { rule } = fault;
      if (rule.method !== undefined && rule.method.toUpperCase() !== method) continue;
      if (rule.path !== undefined && !rule.path.test(path)) continue;
      if (rule.name !== undefined && !rule.name.test(name)) continue;
      if (rule.request !== undefined && rule.request !== kind) continue;
      fault.matched++;
      if (chosen === undefined && fault.matched <= (rule.times ?? Number.POSITIVE_INFINITY)) chosen = index;
    }
    requests.push({ method, path, name, ...(chosen !== undefined ? { fault: chosen } : {}) });
    if (chosen !== undefined) {
      const fault = faults[chosen]!;
      const action = fault.rule.action;
      fault.fired++;
      if (action.kind === 'stall') {
        req.resume();
        return;
      }
      if (action.kind === 'reset') {
        let got = 0;
        req.on('data', (chunk: Buffer) => {
          got += chunk.length;
          if (got >= action.afterBytes) req.socket.destroy();
        });
        req.on('end', () => req.socket.destroy());
        return;
      }
      await readBody(req);
      sendError(res, action.status, `injected by the GCS stand-in (${action.status})`, {
        connection: 'close',
      });
      return;
    }

    if (kind === 'chunk') req.on('data', (c: Buffer) => (received += c.length));
    const body = await readBody(req);
    const bucketName = uploadPath?.[1] ?? objectPath?.[1];
    if (bucketName !== undefined && bucketName !== bucket) {
      sendError(res, 404, 'The specified bucket does not exist.');
      return;
    }

    const bucketPath = /^\/b\/([^/]+)$/.exec(path);
    if (bucketPath && bucketPath[1] !== bucket) {
      sendError(res, 404, 'The specified bucket does not exist.');
      return;
    }
    if (bucketPath && method === 'GET') {
      sendJson(res, 200, bucketResource());
      return;
    }
    if (bucketPath && method === 'PATCH') {
      if (denyUpdate) {
        sendError(
          res,
          403,
          `pgvault-test@pgvault-test.iam.gserviceaccount.com does not have storage.buckets.update access to the Google Cloud Storage bucket. Permission 'storage.buckets.update' denied on resource (or it may not exist).`,
          {},
          'forbidden',
        );
        return;
      }
      const patch = JSON.parse(body.toString('utf8') || '{}') as { lifecycle?: { rule?: unknown[] } | null };
      if ('lifecycle' in patch) {
        lifecycle = ((patch.lifecycle?.rule ?? []) as Array<Record<string, unknown>>).map((r) => ({ ...r }));
      }
      patches++;
      metageneration++;
      sendJson(res, 200, bucketResource());
      return;
    }

    if (uploadPath && method === 'POST') {
      if (url.searchParams.get('uploadType') !== 'resumable') {
        sendError(res, 400, 'the stand-in only takes uploadType=resumable');
        return;
      }
      const resource = body.length > 0 ? (JSON.parse(body.toString('utf8')) as Record<string, unknown>) : {};
      const objectName = url.searchParams.get('name') ?? (resource.name as string | undefined);
      if (!objectName) {
        sendError(res, 400, 'Required object name');
        return;
      }
      const ifGenerationMatch = url.searchParams.get('ifGenerationMatch') ?? undefined;
      if (ifGenerationMatch === '0' && objects.has(objectName)) {
        sendError(res, 412, 'At least one of the pre-conditions you specified did not hold.');
        return;
      }
      const id = randomBytes(12).toString('hex');
      sessions.set(id, {
        id,
        name: objectName,
        resource,
        ...(ifGenerationMatch !== undefined ? { ifGenerationMatch } : {}),
        chunks: [],
        received: 0,
        crc: new CRC32C(),
        md5: createHash('md5'),
      });
      const location = `${endpoint}/upload/storage/v1/b/${bucket}/o?uploadType=resumable&name=${encodeURIComponent(objectName)}&upload_id=${id}`;
      res.writeHead(200, { location, 'content-length': '0' });
      res.end();
      return;
    }

    if (uploadPath && (method === 'PUT' || method === 'POST' || method === 'DELETE')) {
      if (session === undefined) {
        sendError(res, 404, 'No such upload session (cancelled or never made)');
        return;
      }
      if (method === 'DELETE') {
        sessions.delete(session.id);
        cancelled++;
        res.writeHead(499, { 'content-length': '0' });
        res.end();
        return;
      }
      if (session.finished !== undefined) {
        sendJson(res, 200, resourceOf(session.finished));
        return;
      }
      const range = String(req.headers['content-range'] ?? '');
      const status = /^bytes \*\/(\d+|\*)$/.exec(range);
      const chunk = /^bytes (\d+)-(-?\d+)\/(\d+|\*)$/.exec(range);
      let total: number | undefined;
      if (status) {
        total = status[1] === '*' ? undefined : Number(status[1]);
      } else if (chunk) {
        const start = Number(chunk[1]);
        total = chunk[3] === '*' ? undefined : Number(chunk[3]);
        if (start > session.received) {
          sendError(res, 400, `chunk starts at ${start}, the session has ${session.received} bytes`);
          return;
        }
        const fresh = body.subarray(session.received - start);
        if (fresh.length > 0) {
          if (!standInOptions.discardData) session.chunks.push(Buffer.from(fresh));
          session.crc.update(fresh);
          session.md5.update(fresh);
          session.received += fresh.length;
        }
      } else {
        sendError(res, 400, `bad Content-Range: ${range}`);
        return;
      }
      if (total === undefined || session.received < total) {
        const headers: Record<string, string> = { 'content-length': '0' };
        if (session.received > 0) headers.range = `bytes=0-${session.received - 1}`;
        res.writeHead(308, headers);
        res.end();
        return;
      }
      if (session.ifGenerationMatch === '0' && objects.has(session.name)) {
        sessions.delete(session.id);
        sendError(res, 412, 'At least one of the pre-conditions you specified did not hold.');
        return;
      }
      const existing = objects.get(session.name);
      if (existing !== undefined && locked(existing)) {
        sessions.delete(session.id);
        sendError(res, 403, retentionMessage(existing));
        return;
      }
      const { resource } = session;
      const retention = resource.retention as StoredObject['retention'] | undefined;
      const stored: StoredObject = {
        name: session.name,
        data: standInOptions.discardData ? Buffer.alloc(0) : Buffer.concat(session.chunks),
        size: session.received,
        hashes: { crc32c: session.crc.toString(), md5Hash: session.md5.digest('base64') },
        generation: generation++,
        storageClass: (resource.storageClass as string | undefined) ?? 'STANDARD',
        metadata: (resource.metadata as Record<string, string> | undefined) ?? {},
        ...(retention ? { retention } : {}),
        created: new Date(),
      };
      objects.set(session.name, stored);
      session.finished = stored;
      session.chunks = [];
      sendJson(res, 200, resourceOf(stored));
      // A finished session still answers status queries with the object (a lost answer), then goes.
      setTimeout(() => sessions.delete(session.id), 60_000).unref();
      return;
    }

    if (objectPath && objectPath[2] === undefined && method === 'GET') {
      const prefix = url.searchParams.get('prefix') ?? '';
      const maxResults = Math.min(Number(url.searchParams.get('maxResults') ?? 1000) || 1000, 1000);
      const after = url.searchParams.get('pageToken');
      const names = [...objects.keys()]
        .filter((n) => n.startsWith(prefix))
        .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
        .filter((n) => after === null || Buffer.compare(Buffer.from(n), Buffer.from(after, 'base64')) > 0);
      const page = names.slice(0, maxResults);
      const more = names.length > page.length;
      sendJson(res, 200, {
        kind: 'storage#objects',
        items: page.map((n) => resourceOf(objects.get(n)!)),
        ...(more ? { nextPageToken: Buffer.from(page[page.length - 1]!).toString('base64') } : {}),
      });
      return;
    }

    if (objectPath && objectPath[2] !== undefined) {
      const stored = objects.get(objectPath[2]);
      if (method === 'GET' || method === 'HEAD') {
        if (stored === undefined) {
          sendError(res, 404, `No such object: ${bucket}/${objectPath[2]}`);
          return;
        }
        if (url.searchParams.get('alt') !== 'media') {
          sendJson(res, 200, resourceOf(stored));
          return;
        }
        const headers: Record<string, string> = {
          'content-type': 'application/octet-stream',
          'x-goog-generation': String(stored.generation),
          'x-goog-stored-content-encoding': 'identity',
          'x-goog-storage-class': stored.storageClass,
        };
        const wanted = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
        if (wanted) {
          const start = Number(wanted[1]);
          const end =
            wanted[2] === '' ? stored.data.length - 1 : Math.min(Number(wanted[2]), stored.data.length - 1);
          const part = stored.data.subarray(start, end + 1);
          res.writeHead(206, {
            ...headers,
            'content-length': String(part.length),
            'content-range': `bytes ${start}-${end}/${stored.data.length}`,
          });
          res.end(part);
          return;
        }
        const { crc32c, md5Hash } = stored.hashes;
        res.writeHead(200, {
          ...headers,
          'content-length': String(stored.data.length),
          'x-goog-hash': `crc32c=${crc32c},md5=${md5Hash}`,
        });
        res.end(stored.data);
        return;
      }
      if (method === 'DELETE') {
        if (stored === undefined) {
          sendError(res, 404, `No such object: ${bucket}/${objectPath[2]}`);
          return;
        }
        if (locked(stored)) {
          sendError(res, 403, retentionMessage(stored));
          return;
        }
        objects.delete(objectPath[2]);
        res.writeHead(204);
        res.end();
        return;
      }
    }
    sendError(res, 400, `the GCS stand-in does not answer ${method} ${path}`);
  }

  function bucketResource(): Record<string, unknown> {
    return {
      kind: 'storage#bucket',
      id: bucket,
      name: bucket,
      metageneration: String(metageneration),
      storageClass: 'STANDARD',
      location: 'US',
      ...(lifecycle.length > 0 ? { lifecycle: { rule: lifecycle } } : {}),
    };
  }

  function resourceOf(o: StoredObject): Record<string, unknown> {
    const { crc32c, md5Hash } = o.hashes;
    return {
      kind: 'storage#object',
      id: `${bucket}/${o.name}/${o.generation}`,
      name: o.name,
      bucket,
      generation: String(o.generation),
      metageneration: '1',
      contentType: 'application/octet-stream',
      storageClass: o.storageClass,
      size: String(o.size),
      md5Hash,
      crc32c,
      timeCreated: o.created.toISOString(),
      updated: o.created.toISOString(),
      metadata: o.metadata,
      ...(o.retention ? { retention: o.retention } : {}),
    };
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    endpoint,
    bucket,
    objects,
    openSessions: () => [...sessions.values()].filter((s) => s.finished === undefined).length,
    cancelledSessions: () => cancelled,
    receivedBytes: () => received,
    get lifecycle() {
      return lifecycle;
    },
    set lifecycle(rules) {
      lifecycle = rules;
    },
    bucketPatches: () => patches,
    denyBucketUpdate(on) {
      denyUpdate = on;
    },
    requests,
    addFault(rule) {
      faults.push({ rule, matched: 0, fired: 0 });
      return faults.length - 1;
    },
    hits: (index) => faults[index]?.fired ?? 0,
    clearFaults() {
      faults.length = 0;
    },
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function locked(o: StoredObject): boolean {
  return o.retention !== undefined && new Date(o.retention.retainUntilTime).getTime() > Date.now();
}

function retentionMessage(o: StoredObject): string {
  return `Object '${o.name}' is subject to bucket's retention policy or object retention and cannot be deleted or overwritten until ${o.retention!.retainUntilTime}`;
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  extra: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=UTF-8',
    'content-length': String(Buffer.byteLength(text)),
    ...extra,
  });
  res.end(text);
}

/** The JSON API's error shape: { error: { code, message, errors: [{ reason, message }] } }. */
function sendError(
  res: ServerResponse,
  status: number,
  message: string,
  extra: Record<string, string> = {},
  reasonGiven?: string,
): void {
  const reason =
    reasonGiven ??
    (status === 404
      ? 'notFound'
      : status === 403
        ? 'retentionPolicyNotMet'
        : status === 412
          ? 'conditionNotMet'
          : status === 503
            ? 'backendError'
            : status >= 500
              ? 'internalError'
              : 'invalid');
  sendJson(
    res,
    status,
    { error: { code: status, message, errors: [{ reason, message, domain: 'global' }] } },
    extra,
  );
}
