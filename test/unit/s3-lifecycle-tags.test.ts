import { Readable } from 'node:stream';
import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { LIFECYCLE_TAG, lifecycleTagFor, S3Target } from '../../core/storage/s3';
import { LIFECYCLE_TAG as INFRA_LIFECYCLE_TAG, LIFECYCLE_CLASSES } from '../../infra/constructs/vault-bucket';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
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

/**
 * The tag travels with the write that creates the object (x-amz-tagging on PutObject and on
 * CreateMultipartUpload): an object is never stored untagged, not even between two calls. s3rver
 * ignores that header (it implements only PutObjectTagging), so the assertions read the requests
 * the client sent, through the fault proxy in front of s3rver: what a real S3 would receive.
 */
describe('S3Target tags objects with their lifecycle class on upload (s3rver behind the fault proxy)', () => {
  let server: S3TestServer;
  let proxy: FaultProxy;
  let client: S3Client;
  const target = (lifecycleTags?: boolean) =>
    new S3Target({
      bucket: server.bucket,
      prefix: PREFIX,
      region: server.region,
      endpoint: proxy.endpoint,
      credentials: server.credentials,
      partSize: 5 * MiB,
      lifecycleTags,
    });
  /** The x-amz-tagging header of each request that created `key` (PutObject or CreateMultipartUpload). */
  const creations = (key: string) =>
    proxy.requests
      .filter(
        (r) =>
          r.key === `${PREFIX}/${key}` &&
          ((r.method === 'PUT' && !/(^|&)(partNumber|uploadId|tagging)=?/.test(r.query)) ||
            (r.method === 'POST' && /(^|&)uploads(=|&|$)/.test(r.query))),
      )
      .map((r) => ({ method: r.method, tagging: r.headers['x-amz-tagging'] }));
  const taggingCalls = () => proxy.requests.filter((r) => /(^|&)tagging(=|&|$)/.test(r.query));

  beforeAll(async () => {
    server = await startS3Server();
    proxy = await startFaultProxy(server.endpoint);
    client = new S3Client({
      region: server.region,
      endpoint: server.endpoint,
      forcePathStyle: true,
      credentials: server.credentials,
    });
  });

  afterAll(async () => {
    client?.destroy();
    await proxy?.stop();
    await server?.stop();
  });

  it('put (single part) and putBytes send the key’s class with the PutObject, and no tagging call follows', async () => {
    const t = target(true);
    expect(t.lifecycleTags).toBe(true);

    await t.put('main/full/weekly/b1/dump.zst.enc', Readable.from([Buffer.from('weekly dump')]));
    await t.putBytes('main/full/weekly/b1/manifest.json', '{"id":"b1"}');
    await t.putBytes('main/reports/r1.json', '{}');

    expect(creations('main/full/weekly/b1/dump.zst.enc')).toEqual([
      { method: 'PUT', tagging: `${LIFECYCLE_TAG}=archive` },
    ]);
    expect(creations('main/full/weekly/b1/manifest.json')).toEqual([
      { method: 'PUT', tagging: `${LIFECYCLE_TAG}=archive` },
    ]);
    expect(creations('main/reports/r1.json')).toEqual([
      { method: 'PUT', tagging: `${LIFECYCLE_TAG}=report` },
    ]);
    expect(taggingCalls()).toEqual([]);
  });

  it('a multipart put carries the tag on CreateMultipartUpload, and no tagging call follows', async () => {
    const t = target(true);
    const data = Buffer.alloc(11 * MiB, 7);
    const key = 'orders/wal/000000010000000000000001.zst';

    await t.put(key, Readable.from([data]), { sizeHint: data.length });

    const head = await client.send(new HeadObjectCommand({ Bucket: server.bucket, Key: `${PREFIX}/${key}` }));
    expect(head.ContentLength).toBe(data.length);
    expect(creations(key)).toEqual([{ method: 'POST', tagging: `${LIFECYCLE_TAG}=expire` }]);
    expect(taggingCalls()).toEqual([]);
  });

  it('an upload whose answer is lost is kept as stored: its tag came with it, nothing is sent after', async () => {
    const t = target(true);
    const key = 'main/config/lost-answer.sql';
    const rule = proxy.addRule({
      method: 'PUT',
      key: /lost-answer/,
      times: 1,
      action: { kind: 'lose-response' },
    });

    let hits: number;
    try {
      await t.put(key, Readable.from([Buffer.from('config dump')]));
      hits = proxy.hits(rule);
    } finally {
      proxy.clearRules();
    }

    expect(hits).toBe(1);
    expect(
      (await client.send(new HeadObjectCommand({ Bucket: server.bucket, Key: `${PREFIX}/${key}` })))
        .ContentLength,
    ).toBe('config dump'.length);
    expect(creations(key)[0]).toEqual({ method: 'PUT', tagging: `${LIFECYCLE_TAG}=expire` });
    expect(taggingCalls()).toEqual([]);
  });

  it('manual backups and keys outside the managed folders get no tag', async () => {
    const t = target(true);
    await t.putBytes('main/manual/m1/manifest.json', '{}');
    await t.put('main/manual/m1/dump', Readable.from([Buffer.from('manual')]));
    expect(creations('main/manual/m1/manifest.json')).toEqual([{ method: 'PUT', tagging: undefined }]);
    expect(creations('main/manual/m1/dump')).toEqual([{ method: 'PUT', tagging: undefined }]);
  });

  it('off unless asked for (S3_LIFECYCLE_TAGS=true): other S3 stores may not tag', async () => {
    expect(target().lifecycleTags).toBe(false);
    expect(parseConfig({ CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'b' }).cloud.lifecycleTags).toBe(false);
    expect(
      parseConfig({ CLOUD_PROVIDER: 's3', CLOUD_BUCKET: 'b', S3_LIFECYCLE_TAGS: 'true' }).cloud.lifecycleTags,
    ).toBe(true);
    expect(() => parseConfig({ S3_LIFECYCLE_TAGS: 'sometimes' })).toThrow(/S3_LIFECYCLE_TAGS/);
    await target(false).putBytes('main/config/c1.sql', 'x');
    expect(creations('main/config/c1.sql')).toEqual([{ method: 'PUT', tagging: undefined }]);
  });
});
