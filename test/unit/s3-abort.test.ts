import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { ObjectExistsError, StorageError } from '../../core/errors';
import { choosePartSize, S3Target } from '../../core/storage/s3';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PART_SIZE = 5 * MiB;

/** `size` zero bytes in 1 MiB chunks, failing with `error` after `failAfter` bytes when given. */
function zeroSource(size: number, failure?: { afterBytes: number; error: Error }): Readable {
  async function* produce() {
    for (let sent = 0; sent < size; sent += MiB) {
      if (failure !== undefined && sent >= failure.afterBytes) throw failure.error;
      yield Buffer.alloc(Math.min(MiB, size - sent));
    }
  }
  return Readable.from(produce());
}

/** An SDK-shaped service error, as the client throws it after its retries. */
function serviceError(name: string, message: string, httpStatusCode: number): Error {
  return Object.assign(new Error(message), { name, $metadata: { httpStatusCode } });
}

describe('S3Target multipart failure handling', () => {
  const s3Mock = mockClient(S3Client);
  let target: S3Target;

  beforeEach(() => {
    s3Mock.reset();
    s3Mock.on(CreateMultipartUploadCommand).resolves({ UploadId: 'upload-42' });
    s3Mock.on(UploadPartCommand).resolves({ ETag: '"etag"' });
    s3Mock.on(CompleteMultipartUploadCommand).resolves({});
    s3Mock.on(AbortMultipartUploadCommand).resolves({});
    s3Mock.on(PutObjectCommand).resolves({});
    s3Mock.on(DeleteObjectCommand).resolves({});
    const client = new S3Client({
      region: 'us-east-1',
      credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    });
    target = new S3Target({
      bucket: 'vault',
      prefix: 'pg',
      region: 'us-east-1',
      client,
      partSize: PART_SIZE,
    });
  });

  afterAll(() => {
    s3Mock.restore();
  });

  it('aborts the upload with its UploadId and reports the part failure when UploadPart fails', async () => {
    // Prepare
    const partFailure = serviceError(
      'InternalError',
      'We encountered an internal error. Please try again.',
      500,
    );
    // Only part 2 fails; the parts after it would succeed if they were still sent.
    s3Mock.on(UploadPartCommand, { PartNumber: 2 }).rejects(partFailure);

    // Act
    const [put] = await Promise.allSettled([target.put('c1/base/base.tar', zeroSource(60 * MiB))]);

    // Assess
    expect(put.status).toBe('rejected');
    const error = put.status === 'rejected' ? put.reason : undefined;
    expect(error).toBeInstanceOf(StorageError);
    expect(error.cause).toBe(partFailure);
    expect(error.message).toContain('InternalError: We encountered an internal error');
    const aborts = s3Mock.commandCalls(AbortMultipartUploadCommand);
    expect(aborts).toHaveLength(1);
    expect(aborts[0]!.args[0].input).toEqual({
      Bucket: 'vault',
      Key: 'pg/c1/base/base.tar',
      UploadId: 'upload-42',
    });
    expect(s3Mock.commandCalls(CompleteMultipartUploadCommand)).toHaveLength(0);
    // Upload's workers share one part generator, so the first failure ends it: not all 12 parts are sent.
    expect(s3Mock.commandCalls(UploadPartCommand).length).toBeLessThan(8);
  });

  it('still reports the original failure when the abort itself fails (s3rver answers 405)', async () => {
    // Prepare
    const partFailure = serviceError('SlowDown', 'Please reduce your request rate.', 503);
    s3Mock.on(UploadPartCommand).rejects(partFailure);
    s3Mock
      .on(AbortMultipartUploadCommand)
      .rejects(
        serviceError('MethodNotAllowed', 'The specified method is not allowed against this resource.', 405),
      );

    // Act
    const [put] = await Promise.allSettled([target.put('c1/base/base.tar', zeroSource(20 * MiB))]);

    // Assess
    const error = put.status === 'rejected' ? put.reason : undefined;
    expect(error).toBeInstanceOf(StorageError);
    expect(error.cause).toBe(partFailure);
    expect(error.message).not.toContain('MethodNotAllowed');
    expect(s3Mock.commandCalls(AbortMultipartUploadCommand)[0]!.args[0].input.UploadId).toBe('upload-42');
  });

  it('rejects with the source stream error itself and aborts when the source fails midway', async () => {
    // Prepare
    const sourceFailure = new Error(
      'pg_dump: error: query failed: server closed the connection unexpectedly',
    );
    s3Mock.on(AbortMultipartUploadCommand).rejects(serviceError('MethodNotAllowed', 'not allowed', 405));

    // Act
    const [put] = await Promise.allSettled([
      target.put('c1/full/full.dump', zeroSource(30 * MiB, { afterBytes: 12 * MiB, error: sourceFailure })),
    ]);

    // Assess
    expect(put.status === 'rejected' && put.reason).toBe(sourceFailure);
    expect(s3Mock.commandCalls(AbortMultipartUploadCommand)[0]!.args[0].input).toMatchObject({
      Key: 'pg/c1/full/full.dump',
      UploadId: 'upload-42',
    });
    expect(s3Mock.commandCalls(CompleteMultipartUploadCommand)).toHaveLength(0);
  });

  it('never deletes another writer’s object when completing the upload fails after the whole source was read', async () => {
    // Prepare: the complete's answer is lost; the object under the key is another write's.
    const completeFailure = serviceError('InternalError', 'internal error', 500);
    s3Mock.on(CompleteMultipartUploadCommand).rejects(completeFailure);
    s3Mock.on(HeadObjectCommand).resolves({ Metadata: { 'pgvault-write': 'someone-else' }, ETag: '"e"' });

    // Act
    const [put] = await Promise.allSettled([target.put('c1/full/full.dump', zeroSource(12 * MiB))]);

    // Assess
    expect(put.status === 'rejected' && put.reason.cause).toBe(completeFailure);
    expect(s3Mock.commandCalls(AbortMultipartUploadCommand)).toHaveLength(1);
    expect(s3Mock.commandCalls(DeleteObjectCommand)).toHaveLength(0);
  });

  it('succeeds when the final request’s answer was lost but the object under the key is this write’s', async () => {
    // Prepare: the PutObject reached the store (its metadata is there), its answer did not come back.
    s3Mock.on(PutObjectCommand).rejects(serviceError('TimeoutError', 'socket hang up', 0));
    s3Mock.on(HeadObjectCommand).callsFake(() => {
      const sent = s3Mock.commandCalls(PutObjectCommand)[0]!.args[0].input;
      return { Metadata: sent.Metadata, ETag: '"e"' };
    });

    // Act
    const { size } = await target.put('c1/wal/segment', zeroSource(3 * MiB));

    // Assess
    expect(size).toBe(3 * MiB);
    expect(s3Mock.commandCalls(DeleteObjectCommand)).toHaveLength(0);
  });

  it('sends If-None-Match for a create-only put, and names a refusal ObjectExistsError without touching the object', async () => {
    // Prepare
    s3Mock
      .on(PutObjectCommand)
      .rejects(
        serviceError(
          'PreconditionFailed',
          'At least one of the pre-conditions you specified did not hold',
          412,
        ),
      );
    s3Mock.on(HeadObjectCommand).resolves({ Metadata: { 'pgvault-write': 'another-archiver' }, ETag: '"e"' });

    // Act
    const [put] = await Promise.allSettled([
      target.put('c1/wal/segment', zeroSource(MiB), { ifAbsent: true }),
    ]);

    // Assess
    expect(s3Mock.commandCalls(PutObjectCommand)[0]!.args[0].input.IfNoneMatch).toBe('*');
    expect(put.status === 'rejected' && put.reason).toBeInstanceOf(ObjectExistsError);
    expect(s3Mock.commandCalls(DeleteObjectCommand)).toHaveLength(0);
  });

  it('sends a checksum of every upload body (S3 then refuses a body cut short)', () => {
    expect(target.clientConfig('upload').requestChecksumCalculation).toBe('WHEN_SUPPORTED');
  });

  it('uploads a body that fits one part with a single PutObject', async () => {
    // Act
    const { size } = await target.put('c1/wal/segment', zeroSource(3 * MiB));

    // Assess
    expect(size).toBe(3 * MiB);
    expect(s3Mock.commandCalls(PutObjectCommand)).toHaveLength(1);
    expect(s3Mock.commandCalls(PutObjectCommand)[0]!.args[0].input.Key).toBe('pg/c1/wal/segment');
    expect(s3Mock.commandCalls(CreateMultipartUploadCommand)).toHaveLength(0);
  });

  it('turns access and bucket errors into one line with the next step', async () => {
    // Prepare
    s3Mock
      .on(PutObjectCommand)
      .rejectsOnce(serviceError('NoSuchBucket', 'The specified bucket does not exist', 404))
      .rejectsOnce(serviceError('AccessDenied', 'Access Denied', 403));

    // Act
    const [missingBucket, denied] = await Promise.allSettled([
      target.probe('c1'),
      target.putBytes('c1/x', 'x'),
    ]);

    // Assess
    expect(missingBucket.status === 'rejected' && missingBucket.reason.message).toBe(
      'bucket vault does not exist or is not accessible (NoSuchBucket); create it or check CLOUD_BUCKET and credentials',
    );
    expect(denied.status === 'rejected' && denied.reason.message).toBe(
      'access to s3://vault/pg was denied (AccessDenied) trying to upload c1/x; check the credentials and the bucket policy',
    );
  });
});

describe('choosePartSize', () => {
  it('uses 16 MiB without a size hint', () => {
    expect(choosePartSize()).toBe(16 * MiB);
    expect(choosePartSize(Number.NaN)).toBe(16 * MiB);
    expect(choosePartSize(-1)).toBe(16 * MiB);
  });

  it('never goes below 8 MiB', () => {
    expect(choosePartSize(0)).toBe(8 * MiB);
    expect(choosePartSize(10 * GiB)).toBe(8 * MiB);
  });

  it('grows with the hint, in whole MiB, keeping 25% headroom under 10,000 parts', () => {
    // Act
    const partSize = choosePartSize(100 * GiB);

    // Assess
    expect(partSize).toBe(13 * MiB);
    expect(partSize % MiB).toBe(0);
    expect(Math.ceil((1.25 * 100 * GiB) / partSize)).toBeLessThanOrEqual(10_000);
  });

  it('fits a 5 TB stream under 10,000 parts', () => {
    for (const fiveTerabytes of [5e12, 5 * 1024 * GiB]) {
      // Act
      const partSize = choosePartSize(fiveTerabytes);

      // Assess
      expect(partSize % MiB).toBe(0);
      expect(Math.ceil(fiveTerabytes / partSize)).toBeLessThan(10_000);
      expect(partSize).toBeLessThanOrEqual(5 * GiB);
    }
  });

  it('is capped at 5 GiB, the largest part S3 accepts', () => {
    expect(choosePartSize(1024 * 1024 * GiB)).toBe(5 * GiB);
  });
});
