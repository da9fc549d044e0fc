import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GetObjectCommand, HeadObjectCommand, InvalidObjectState, S3Client } from '@aws-sdk/client-s3';
import { type AwsClientStub, mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { StorageError } from '../../core/errors';
import { ArchivedObjectError, S3Target } from '../../core/storage/s3';

/**
 * Reads of objects the vault's lifecycle moved to GLACIER or DEEP_ARCHIVE: S3 refuses GetObject with
 * InvalidObjectState (HTTP 403) until the object is restored. s3rver keeps a storage class but never
 * refuses a read, so the first test replays S3's answer from a stub HTTP server (the real SDK parses
 * it), and the variants run against a mocked client.
 */

const KEY = 'main/full/monthly/full-monthly-20260101-040000.app.dump.zst.enc';
const FULL_KEY = `pgvault/${KEY}`;

function invalidObjectState(fields: { StorageClass?: string; AccessTier?: string } = {}): InvalidObjectState {
  return new InvalidObjectState({
    message: "The operation is not valid for the object's storage class",
    $metadata: { httpStatusCode: 403 },
    ...fields,
  } as ConstructorParameters<typeof InvalidObjectState>[0]);
}

async function failure(read: Promise<unknown>): Promise<Error> {
  try {
    await read;
  } catch (err) {
    return err as Error;
  }
  throw new Error('the read succeeded');
}

describe('S3 answers InvalidObjectState (stub server with S3’s own response)', () => {
  let server: Server;
  let endpoint: string;
  const requests: string[] = [];

  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      requests.push(`${req.method} ${req.url}`);
      req.resume();
      if (req.method === 'HEAD') {
        // HEAD works on archived objects and names the class.
        res.writeHead(200, {
          'content-length': '734003200',
          'x-amz-storage-class': 'GLACIER',
          'last-modified': 'Thu, 01 Jan 2026 04:12:00 GMT',
        });
        res.end();
        return;
      }
      const body =
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidObjectState</Code>' +
        "<Message>The operation is not valid for the object's storage class</Message>" +
        '<StorageClass>GLACIER</StorageClass><RequestId>7Y3J0KXN2Q</RequestId><HostId>h0st</HostId></Error>';
      res.writeHead(403, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('is one StorageError line naming the key, GLACIER and the restore command, not "access denied"', async () => {
    const target = new S3Target({
      bucket: 'vault',
      prefix: 'pgvault',
      region: 'eu-west-1',
      endpoint,
      credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
      maxAttempts: 1,
    });
    const err = await failure(target.get(KEY));
    expect(err).toBeInstanceOf(ArchivedObjectError);
    expect(err).toBeInstanceOf(StorageError);
    expect(err.message).toBe(
      `object ${KEY} in s3://vault/pgvault is in GLACIER and cannot be read until it is restored ` +
        `(InvalidObjectState); start a restore with aws s3api restore-object --bucket vault --key ${FULL_KEY} ` +
        "--restore-request Days=7 (and the backup's other archived objects) and retry once it is done " +
        '(3-5 hours, minutes with the Expedited tier); archiving to GLACIER_IR instead keeps such backups ' +
        'readable at once',
    );
    expect(err.message).not.toContain('denied');
    expect(err.message.split('\n')).toHaveLength(1);
    expect((err as ArchivedObjectError).storageClass).toBe('GLACIER');
    expect((err as ArchivedObjectError).key).toBe(KEY);
    expect((err.cause as Error).name).toBe('InvalidObjectState');
    expect(requests).toEqual([`GET /vault/${FULL_KEY}?x-id=GetObject`, `HEAD /vault/${FULL_KEY}`]);
  });
});

describe('S3Target reads of archived objects (mocked client)', () => {
  // Mocked from here on only: the stub-server test above needs the real client.
  let s3: AwsClientStub<S3Client>;
  let target: S3Target;

  beforeAll(() => {
    s3 = mockClient(S3Client);
  });

  beforeEach(() => {
    s3.reset();
    target = new S3Target({
      bucket: 'vault',
      prefix: 'pgvault',
      region: 'eu-west-1',
      client: new S3Client({ region: 'eu-west-1', credentials: { accessKeyId: 't', secretAccessKey: 't' } }),
    });
  });

  afterAll(() => {
    s3.restore();
  });

  it('getBytes: the class from HEAD when the error has none (DEEP_ARCHIVE: up to 12 hours)', async () => {
    s3.on(GetObjectCommand).rejects(invalidObjectState());
    s3.on(HeadObjectCommand, { Bucket: 'vault', Key: FULL_KEY }).resolves({ StorageClass: 'DEEP_ARCHIVE' });
    const err = await failure(target.getBytes(KEY));
    expect(err).toBeInstanceOf(ArchivedObjectError);
    expect(err.message).toMatch(
      new RegExp(
        `^object ${KEY} in s3://vault/pgvault is in DEEP_ARCHIVE and cannot be read until it is restored \\(InvalidObjectState\\); start a restore with aws s3api restore-object --bucket vault --key ${FULL_KEY} --restore-request Days=7 .* \\(up to 12 hours\\); archiving to GLACIER_IR instead`,
      ),
    );
    expect((err as ArchivedObjectError).storageClass).toBe('DEEP_ARCHIVE');
  });

  it('a restore under way: retry once it is done, no second restore', async () => {
    s3.on(GetObjectCommand).rejects(invalidObjectState({ StorageClass: 'GLACIER' }));
    s3.on(HeadObjectCommand).resolves({ StorageClass: 'GLACIER', Restore: 'ongoing-request="true"' });
    const err = await failure(target.get(KEY));
    expect(err.message).toBe(
      `object ${KEY} in s3://vault/pgvault is in GLACIER and cannot be read until it is restored ` +
        '(InvalidObjectState); a restore of it is under way: retry once it is done ' +
        `(aws s3api head-object --bucket vault --key ${FULL_KEY} shows ongoing-request="false")`,
    );
    expect(err.message).not.toContain('restore-object');
  });

  it('Intelligent-Tiering archive tiers: the tier named, a restore request without Days', async () => {
    s3.on(GetObjectCommand).rejects(
      invalidObjectState({ StorageClass: 'INTELLIGENT_TIERING', AccessTier: 'ARCHIVE_ACCESS' }),
    );
    s3.on(HeadObjectCommand).resolves({ StorageClass: 'INTELLIGENT_TIERING' });
    const err = await failure(target.get(KEY));
    expect(err.message).toContain('is in INTELLIGENT_TIERING (ARCHIVE_ACCESS) and cannot be read');
    expect(err.message).toContain(`--key ${FULL_KEY} --restore-request '{}' `);
  });

  it('a HEAD that fails too still gives the clear line, without a class', async () => {
    s3.on(GetObjectCommand).rejects(invalidObjectState());
    s3.on(HeadObjectCommand).rejects(
      Object.assign(new Error('Forbidden'), { name: 'Forbidden', $metadata: { httpStatusCode: 403 } }),
    );
    const err = await failure(target.get(KEY));
    expect(err).toBeInstanceOf(ArchivedObjectError);
    expect(err.message).toMatch(
      new RegExp(
        `^object ${KEY} in s3://vault/pgvault is in an archive storage class and cannot be read until it is restored \\(InvalidObjectState\\); start a restore with aws s3api restore-object`,
      ),
    );
    expect((err as ArchivedObjectError).storageClass).toBeUndefined();
  });

  it('a real AccessDenied on a read is still "access denied", with no HEAD', async () => {
    s3.on(GetObjectCommand).rejects(
      Object.assign(new Error('Access Denied'), { name: 'AccessDenied', $metadata: { httpStatusCode: 403 } }),
    );
    const err = await failure(target.get(KEY));
    expect(err).not.toBeInstanceOf(ArchivedObjectError);
    expect(err.message).toBe(
      `access to s3://vault/pgvault was denied (AccessDenied) trying to download ${KEY}; check the credentials and the bucket policy`,
    );
    expect(s3.commandCalls(HeadObjectCommand)).toHaveLength(0);
  });
});
