import { Readable } from 'node:stream';
import { GetObjectTaggingCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { LIFECYCLE_TAG, lifecycleTagFor, S3Target } from '../../core/storage/s3';
import { LIFECYCLE_TAG as INFRA_LIFECYCLE_TAG, LIFECYCLE_CLASSES } from '../../infra/constructs/vault-bucket';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';

const MiB = 1024 * 1024;
const PREFIX = 'pgvault';

describe('lifecycleTagFor: the class of a key below the prefix', () => {
  it('classifies every managed folder of a cluster, and nothing else', () => {
    expect(lifecycleTagFor('main/full/weekly/20260104T030000Z/dump.zst.enc')).toBe('archive');
    expect(lifecycleTagFor('main/base/monthly/x/base.tar')).toBe('archive');
    expect(lifecycleTagFor('main/full/daily/x/manifest.json')).toBe('expire');
    expect(lifecycleTagFor('orders/wal/000000010000000000000001.zst')).toBe('expire');
    expect(lifecycleTagFor('orders/config/x')).toBe('expire');
    expect(lifecycleTagFor('orders/indexes/x')).toBe('expire');
    expect(lifecycleTagFor('orders/reports/2026-01-01.json')).toBe('report');
    expect(lifecycleTagFor('orders/drills/x.json')).toBe('report');
    // Manual backups are kept until deleted by hand: no tag, so no lifecycle rule reaches them.
    expect(lifecycleTagFor('main/manual/x/dump')).toBeUndefined();
    expect(lifecycleTagFor('main/full/yearly/x')).toBeUndefined();
    expect(lifecycleTagFor('catalog.json')).toBeUndefined();
    // The WAL archive's identity says how every WAL object is encrypted: never expired.
    expect(lifecycleTagFor('orders/wal/archive.json')).toBeUndefined();
    expect(lifecycleTagFor('main/full/manual/20260104T030000Z.manifest.json')).toBeUndefined();
    expect(lifecycleTagFor('full/weekly/x')).toBeUndefined(); // no cluster folder: "weekly/x" below "full"
    expect(lifecycleTagFor('main/full/weekly/')).toBeUndefined();
  });

  it('agrees with the folders and the tag the bucket lifecycle rules select (infra)', () => {
    expect(LIFECYCLE_TAG).toBe(INFRA_LIFECYCLE_TAG);
    for (const [folder, tag] of Object.entries(LIFECYCLE_CLASSES)) {
      expect(lifecycleTagFor(`any-cluster/${folder}object`), folder).toBe(tag);
    }
  });
});

describe('S3Target tags objects with their lifecycle class (s3rver)', () => {
  let server: S3TestServer;
  let client: S3Client;
  const target = (lifecycleTags?: boolean) =>
    new S3Target({
      bucket: server.bucket,
      prefix: PREFIX,
      region: server.region,
      endpoint: server.endpoint,
      credentials: server.credentials,
      partSize: 5 * MiB,
      lifecycleTags,
    });
  const tagsOf = async (key: string) =>
    (await client.send(new GetObjectTaggingCommand({ Bucket: server.bucket, Key: `${PREFIX}/${key}` })))
      .TagSet ?? [];

  beforeAll(async () => {
    server = await startS3Server();
    client = new S3Client({
      region: server.region,
      endpoint: server.endpoint,
      forcePathStyle: true,
      credentials: server.credentials,
    });
  });

  afterAll(async () => {
    client?.destroy();
    await server?.stop();
  });

  it('put (single part) and putBytes tag the key’s class', async () => {
    const t = target(true);
    expect(t.lifecycleTags).toBe(true);
    await t.put('main/full/weekly/b1/dump.zst.enc', Readable.from([Buffer.from('weekly dump')]));
    await t.putBytes('main/full/weekly/b1/manifest.json', '{"id":"b1"}');
    await t.putBytes('main/reports/r1.json', '{}');
    expect(await tagsOf('main/full/weekly/b1/dump.zst.enc')).toEqual([
      { Key: LIFECYCLE_TAG, Value: 'archive' },
    ]);
    expect(await tagsOf('main/full/weekly/b1/manifest.json')).toEqual([
      { Key: LIFECYCLE_TAG, Value: 'archive' },
    ]);
    expect(await tagsOf('main/reports/r1.json')).toEqual([{ Key: LIFECYCLE_TAG, Value: 'report' }]);
  });

  it('a multipart put is tagged once complete', async () => {
    const t = target(true);
    const data = Buffer.alloc(11 * MiB, 7);
    await t.put('orders/wal/000000010000000000000001.zst', Readable.from([data]), { sizeHint: data.length });
    const head = await client.send(
      new HeadObjectCommand({
        Bucket: server.bucket,
        Key: `${PREFIX}/orders/wal/000000010000000000000001.zst`,
      }),
    );
    expect(head.ContentLength).toBe(data.length);
    expect(await tagsOf('orders/wal/000000010000000000000001.zst')).toEqual([
      { Key: LIFECYCLE_TAG, Value: 'expire' },
    ]);
  });

  it('manual backups and keys outside the managed folders get no tag', async () => {
    const t = target(true);
    await t.putBytes('main/manual/m1/manifest.json', '{}');
    await t.put('main/manual/m1/dump', Readable.from([Buffer.from('manual')]));
    expect(await tagsOf('main/manual/m1/manifest.json')).toEqual([]);
    expect(await tagsOf('main/manual/m1/dump')).toEqual([]);
  });

  it('off unless asked for (S3_LIFECYCLE_TAGS=true): other S3 stores may not tag', async () => {
    expect(target().lifecycleTags).toBe(false);
    expect(parseConfig({ CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'b' }).cloud.lifecycleTags).toBe(false);
    expect(
      parseConfig({ CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'b', S3_LIFECYCLE_TAGS: 'true' }).cloud.lifecycleTags,
    ).toBe(true);
    expect(() => parseConfig({ S3_LIFECYCLE_TAGS: 'sometimes' })).toThrow(/S3_LIFECYCLE_TAGS/);
    await target(false).putBytes('main/config/c1.sql', 'x');
    expect(await tagsOf('main/config/c1.sql')).toEqual([]);
  });
});
