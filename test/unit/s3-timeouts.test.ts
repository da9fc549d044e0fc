import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { createTargets } from '../../core/storage';
import type { S3Target } from '../../core/storage/s3';

/** S3_REQUEST_TIMEOUT and S3_MAX_ATTEMPTS: read by the one config reader, handed to the S3 client. */
describe('S3 request limits', () => {
  const s3 = { CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'vault', LOCAL_COPY: 'false' };

  it('default to 60 s and 3 attempts', () => {
    const config = parseConfig(s3);
    expect(config.cloud.requestTimeoutSeconds).toBe(60);
    expect(config.cloud.maxAttempts).toBe(3);
  });

  it('reach the client from the settings', () => {
    const [target] = createTargets(parseConfig({ ...s3, S3_REQUEST_TIMEOUT: '2', S3_MAX_ATTEMPTS: '5' }));
    const single = (target as S3Target).clientConfig('single');
    const upload = (target as S3Target).clientConfig('upload');
    expect(single.maxAttempts).toBe(5);
    expect(single.requestHandler.throwOnRequestTimeout).toBe(true);
    // Uploads: 2 s of silence on the connection cut the request; downloads get no idle limit.
    expect(upload.requestHandler.socketTimeout).toBe(2000);
    expect(single.requestHandler.socketTimeout).toBeUndefined();
  });

  it('refuse a value that is not a whole number in range, in one line naming the setting', () => {
    expect(() => parseConfig({ ...s3, S3_REQUEST_TIMEOUT: '0' })).toThrow(
      'S3_REQUEST_TIMEOUT=0 is not allowed; use a whole number, 1 to 3600',
    );
    expect(() => parseConfig({ ...s3, S3_MAX_ATTEMPTS: 'many' })).toThrow(
      'S3_MAX_ATTEMPTS=many is not allowed; use a whole number, 1 to 20',
    );
  });
});
