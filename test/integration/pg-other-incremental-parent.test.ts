import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ManifestBody, sealManifest } from '../../core/catalog/manifest';
import { S3Target } from '../../core/storage/s3';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import {
  OTHER_MAJOR_SKIP_LINE,
  type OtherArchivingCluster,
  OtherMajorSession,
  otherMajor,
} from '../helpers/pg-other';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { createAppTable, sleep } from './pitr-fixture';

/**
 * Issue 15, the parent's server manifest as an object of its own: every base backup stores the
 * server's backup_manifest beside its tar (`{id}.server-manifest.json...`, listed in the backup's
 * manifest with both digests), and an incremental reads that object, not the parent's tar (a 1 TB
 * read per incremental before). PostgreSQL 17 in the other major's root (pgvault inside it), base
 * backups into s3rver behind the fault proxy, which counts the reads and makes the parent's tar
 * unreadable on demand; WAL goes to the local folder (archive_command), which these tests never read.
 */
const other = otherMajor();
if (!other) console.warn(`pg-other-incremental-parent.test.ts skipped: ${OTHER_MAJOR_SKIP_LINE}`);

interface Listed {
  readonly key: string;
}

describe.skipIf(!other)(
  `the parent's server manifest on PostgreSQL ${other?.major ?? '(other major)'}`,
  { timeout: 300_000 },
  () => {
    let s: OtherMajorSession;
    let a: OtherArchivingCluster;
    let s3: S3TestServer;
    let proxy: FaultProxy;
    /** The bucket read directly, not through the proxy (the test's own view, never faulted). */
    let bucket: S3Target;
    let env: NodeJS.ProcessEnv;
    let fullId: string;
    let lastId: string;

    const keysOf = async (id: string): Promise<string[]> => {
      const keys: string[] = [];
      for await (const o of bucket.list('parent/')) if ((o as Listed).key.includes(id)) keys.push(o.key);
      return keys.sort();
    };
    /** GETs of the object keys that end in `.tar...` of backup `id` since request number `from`. */
    const tarReads = (id: string, from: number) =>
      proxy.requests.slice(from).filter((r) => r.method === 'GET' && r.key.includes(`${id}.tar`)).length;

    beforeAll(async () => {
      [s3, s] = await Promise.all([startS3Server('pgvault-parent'), OtherMajorSession.open(other!)]);
      proxy = await startFaultProxy(s3.endpoint);
      bucket = new S3Target({
        bucket: s3.bucket,
        region: s3.region,
        endpoint: s3.endpoint,
        credentials: s3.credentials,
      });
      a = await s.archivingCluster({ clusterName: 'parent' });
      env = {
        PATH: process.env.PATH,
        TZ: 'UTC',
        CLOUD_PROVIDER: 's3',
        CLOUD_BUCKET: s3.bucket,
        S3_ENDPOINT: proxy.endpoint,
        S3_MAX_ATTEMPTS: '2',
        AWS_DEFAULT_REGION: s3.region,
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        LOCAL_COPY: 'false',
      };
      await createAppTable(a.cluster);
      await a.cluster.query('ALTER SYSTEM SET summarize_wal = on');
      await a.cluster.query('SELECT pg_reload_conf()');
      await a.cluster.query(
        `CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
         INSERT INTO big SELECT g, 0, repeat(md5(g::text), 6) FROM generate_series(1, 5000) g;`,
        [],
        'app',
      );
    }, 180_000);

    afterAll(async () => {
      await s?.close();
      await proxy?.stop();
      await s3?.stop();
    });

    it('a full base backup stores the server manifest as its own object, listed with both digests; verify file reads it', async () => {
      const full = await a.pgvault(['--json', 'backup', 'base', 'weekly'], env);
      expect(full.code, full.stderr).toBe(0);
      const m = full.json.manifest as ManifestBody;
      fullId = m.id;
      const object = m.objects.find((o) => o.kind === 'server-manifest');
      expect(object, JSON.stringify(m.objects)).toBeDefined();
      expect(object!.key).toBe(`parent/base/weekly/${fullId}.server-manifest.json.zst.enc`);
      // The raw digest is the server manifest's own, the one recorded when the backup was taken.
      expect(object!.rawSha256).toBe(m.physical!.serverManifestSha256);
      expect(await keysOf(fullId)).toEqual(
        [
          `parent/base/weekly/${fullId}.manifest.json`,
          `parent/base/weekly/${fullId}.server-manifest.json.zst.enc`,
          `parent/base/weekly/${fullId}.tar.zst.enc`,
        ].sort(),
      );
      const v = await a.pgvault(['--json', 'verify', 'file', fullId], env);
      expect(v.code, v.stderr).toBe(0);
      expect(v.json.objects.map((o: { key: string }) => o.key)).toContain(object!.key);
    });

    it("the parent's tar unreadable: the incremental never reads it and succeeds, while a check of the parent itself is refused", async () => {
      await a.cluster.query('UPDATE big SET v = 1 WHERE id % 20 = 0', [], 'app');
      const rule = proxy.addRule({
        method: 'GET',
        key: new RegExp(`${fullId}\\.tar`),
        action: { kind: 'status', status: 500 },
      });
      try {
        const mark = proxy.requests.length;
        const incr = await a.pgvault(['--json', 'backup', 'base', 'daily', '--incremental'], env);
        expect(incr.code, incr.stderr).toBe(0);
        expect(incr.json).toMatchObject({ incremental: true, incrementalOf: fullId });
        expect(tarReads(fullId, mark)).toBe(0);
        expect(proxy.hits(rule)).toBe(0);
        // Its own server manifest object was read instead.
        expect(
          proxy.requests
            .slice(mark)
            .filter((r) => r.method === 'GET' && r.key.includes(`${fullId}.server-manifest.json`)).length,
        ).toBeGreaterThan(0);
        expect((incr.json.notes ?? []).join('\n')).not.toContain('no server manifest object');

        // The tar really is unreadable: reading the parent through is refused.
        const v = await a.pgvault(['verify', 'file', fullId], env);
        expect(v.code, v.stderr).not.toBe(0);
        expect(v.stderr).toContain(fullId);
        expect(proxy.hits(rule)).toBeGreaterThan(0);
      } finally {
        proxy.clearRules();
      }
    });

    it('the server manifest object cannot be stored: the backup fails, no manifest, its tar removed; the catalog is unchanged', async () => {
      const before = await a.pgvault(['--json', 'restore', 'list'], env);
      expect(before.code, before.stderr).toBe(0);
      const rule = proxy.addRule({
        method: 'PUT',
        key: /\.server-manifest\.json/,
        action: { kind: 'status', status: 503 },
      });
      try {
        const r = await a.pgvault(['--json', 'backup', 'base', 'weekly'], env);
        expect(r.code, r.stderr).not.toBe(0);
        expect(proxy.hits(rule)).toBeGreaterThan(0);
        const id = /backup (base-weekly-\S+) failed and was removed/.exec(r.stderr)?.[1];
        expect(id, r.stderr).toBeDefined();
        // Nothing of it is left: no manifest (so no backup), no tar, no claim.
        expect(await keysOf(id!)).toEqual([]);
      } finally {
        proxy.clearRules();
      }
      const after = await a.pgvault(['--json', 'restore', 'list'], env);
      expect(after.code, after.stderr).toBe(0);
      const ids = (r: { json?: { backups: { id: string }[] } }) => r.json?.backups.map((b) => b.id);
      expect(ids(after)).toEqual(ids(before));
    });

    it('a parent taken before the object existed: its tar is read, and the output says so', async () => {
      // A full base backup as an older pgvault left it: no server-manifest object, its manifest
      // without it (sealed again with the archive's key, as that pgvault sealed it).
      const full = await a.pgvault(['--json', 'backup', 'base', 'weekly'], env);
      expect(full.code, full.stderr).toBe(0);
      const oldId = full.json.manifest.id as string;
      const manifestKey = `parent/base/weekly/${oldId}.manifest.json`;
      const stored = JSON.parse((await bucket.getBytes(manifestKey)).toString('utf8'));
      delete stored.hmac;
      const own = stored.objects.find((o: { kind: string }) => o.kind === 'server-manifest');
      const body: ManifestBody = {
        ...stored,
        objects: stored.objects.filter((o: { kind: string }) => o.kind !== 'server-manifest'),
        rawSize: stored.rawSize - own.rawSize,
        storedSize: stored.storedSize - own.storedSize,
      };
      const passphrase = readFileSync(a.settings.ENCRYPTION_KEY_FILE!, 'utf8').trim();
      await bucket.putBytes(manifestKey, await sealManifest(body, passphrase));
      await bucket.delete(own.key);

      await a.cluster.query('UPDATE big SET v = 2 WHERE id % 20 = 1', [], 'app');
      await sleep(1100);
      const mark = proxy.requests.length;
      const incr = await a.pgvault(['--json', 'backup', 'base', 'daily', '--incremental'], env);
      expect(incr.code, incr.stderr).toBe(0);
      expect(incr.json).toMatchObject({ incremental: true, incrementalOf: oldId });
      expect(incr.json.notes.join('\n')).toContain(
        `backup ${oldId} has no server manifest object of its own (taken by an older pgvault): reading its backup_manifest out of its base backup tar`,
      );
      expect(tarReads(oldId, mark)).toBeGreaterThan(0);
      // The next incremental's parent (just taken) has its object: nothing to say.
      const next = await a.pgvault(['--json', 'backup', 'base', 'daily', '--incremental'], env);
      expect(next.code, next.stderr).toBe(0);
      expect(next.json).toMatchObject({ incremental: true, incrementalOf: incr.json.manifest.id });
      expect((next.json.notes ?? []).join('\n')).not.toContain('no server manifest object');
      lastId = next.json.manifest.id;
    });

    it('verify all checks the server manifest objects; a deleted backup takes its server manifest object with it', async () => {
      // Every backup's objects read through, the server manifests among them, without a fault. (The
      // WAL is archived into the local folder, not this bucket: its faults are not this test's.)
      const v = await a.pgvault(['--json', 'verify', 'all'], env);
      const objectFaults = (v.json.faults as { kind: string }[]).filter(
        (f) => f.kind !== 'wal' && f.kind !== 'archiving',
      );
      expect(objectFaults, v.stdout).toEqual([]);
      expect(v.json.backups, v.stdout).toBe(5);

      // A server manifest object gone: verify all names it.
      const [key] = (await keysOf(lastId)).filter((k) => k.includes('.server-manifest.'));
      expect(key).toBeDefined();
      const bytes = await bucket.getBytes(key!);
      await bucket.delete(key!);
      try {
        const broken = await a.pgvault(['--json', 'verify', 'all', '--quick'], env);
        expect(broken.code).not.toBe(0);
        expect(JSON.stringify(broken.json.faults)).toContain(key!);
      } finally {
        await bucket.putBytes(key!, bytes);
      }

      const d = await a.pgvault(['--json', 'backup', 'delete', lastId, '--yes'], env);
      expect(d.code, d.stderr).toBe(0);
      expect(await keysOf(lastId)).toEqual([]);
    });
  },
);
