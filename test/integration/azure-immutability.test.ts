import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inMemorySource, runBackup } from '../../core/backup/run';
import { parseConfig } from '../../core/config';
import { ObjectLockedError } from '../../core/errors';
import type { ServerInfo } from '../../core/pg/server';
import { AzureTarget, createTargets, objectLockOptions } from '../../core/storage';
import { openVault } from '../../core/vault';
import { AZURITE_ACCOUNT, AZURITE_KEY, type AzuriteServer, startAzurite } from '../helpers/azurite';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, type SeenRequest, startFaultProxy } from '../helpers/fault-proxy';
import { recordingReporter, tempDir } from '../helpers/vault';

/**
 * Azure version-level immutability (OBJECT_LOCK_MODE with OBJECT_LOCK_RETAIN=gfs, CLOUD_PROVIDER=azure):
 * each blob carries an immutability policy until its own planned GFS expiry, and a delete Azure refuses
 * because of one is reported as locked, not as a failure.
 *
 * Azurite does not implement immutability policies: it stores the blobs and ignores the policy headers.
 * So what is tested here, and how, said plainly:
 * - RECORDING: the requests the real @azure/storage-blob client sends, recorded by the fault proxy
 *   (test/helpers/fault-proxy.ts) in front of Azurite, which stores the blobs: Put Blob and Put Block
 *   List carry `x-ms-immutability-policy-until-date` and `x-ms-immutability-policy-mode`, with the
 *   dates and modes Azure's REST reference names. Not checked: that Azure itself then refuses deletes.
 * - STAND-IN ANSWER: Azure's own refusal of a delete of an immutable blob (409, error code
 *   BlobImmutableDueToPolicy, the Blob service's code for it) is answered by the proxy in Azurite's
 *   place; what pgvault (the target, and `backup retention` through the built CLI) does with it is real.
 */
const DAY = 86_400_000;
const SERVER: ServerInfo = {
  version: '15.8',
  versionNum: 150008,
  major: 15,
  systemIdentifier: '7345000000000000003',
  superuser: true,
};
const POLICY_DATE = 'x-ms-immutability-policy-until-date';
const POLICY_MODE = 'x-ms-immutability-policy-mode';

let azurite: AzuriteServer;
let proxy: FaultProxy;
let work: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  [azurite, work] = await Promise.all([startAzurite('pgvault-lock'), tempDir('pgvault-azure-lock-')]);
  proxy = await startFaultProxy(azurite.endpoint.replace(/\/[^/]*$/, ''));
});
afterAll(async () => {
  await proxy?.stop();
  await Promise.all([azurite?.stop(), work?.remove()]);
});

function settings(prefix: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    CLUSTER_NAME: 'main',
    BACKUP_DIR: `${work.path}/${prefix}`,
    CLOUD_PROVIDER: 'azure',
    CLOUD_BUCKET: azurite.container,
    CLOUD_PREFIX: prefix,
    AZURE_STORAGE_CONNECTION_STRING: `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=${proxy.endpoint}/${AZURITE_ACCOUNT};`,
    LOCAL_COPY: 'false',
    COMPRESSION: 'none',
    S3_MAX_ATTEMPTS: '1',
    ...extra,
  };
}

/** The recorded writes (Put Blob, Put Block List) of `blob` (its name in the container). */
function writesOf(blob: string): SeenRequest[] {
  return proxy.requests.filter((r) => r.method === 'PUT' && r.path.endsWith(`/${blob}`) && !isStagedBlock(r));
}

/** Put Block (a staged block, not yet part of any blob). */
const isStagedBlock = (r: SeenRequest) => /(^|&)comp=block(&|$)/.test(r.query);

const policyOf = (r: SeenRequest) => ({
  until: r.headers[POLICY_DATE] === undefined ? undefined : new Date(String(r.headers[POLICY_DATE])),
  mode: r.headers[POLICY_MODE],
});

describe('each blob locked until its planned GFS expiry (RECORDING of the requests sent to Azurite)', () => {
  it('Put Blob carries the policy of its kind: daily backup, WAL segment; a manual backup none', async () => {
    // Prepare: compliance (Azure: Locked), the S3_ name of the mode still works as an alias.
    const config = parseConfig(
      settings('single', {
        S3_OBJECT_LOCK_MODE: 'compliance',
        OBJECT_LOCK_MIN_DAYS: '1',
        RETENTION_DAYS: '7',
        RETENTION_WAL_DAYS: '10',
      }),
    );
    const [target] = createTargets(config);
    expect(target).toBeInstanceOf(AzureTarget);
    const before = Date.now();

    // Act
    await target!.putBytes('main/full/daily/full-daily-20260211-020000.manifest.json', '{}');
    await target!.put('main/wal/00000001/0000000100000000/000000010000000000000003', Readable.from(['wal']));
    await target!.putBytes('main/full/manual/full-manual-20260211-020000.manifest.json', '{}');

    // Assess: the daily backup until the start of its day + 7 days (not before now + 1 day); WAL
    // until its write + 10 days; the manual backup without a policy (the container's default applies).
    const [daily] = writesOf('single/main/full/daily/full-daily-20260211-020000.manifest.json');
    const floor = new Date(before + DAY);
    expect(policyOf(daily!).mode).toBe('Locked');
    expect(policyOf(daily!).until!.getTime()).toBeGreaterThanOrEqual(
      Math.floor(floor.getTime() / 1000) * 1000,
    );
    expect(policyOf(daily!).until!.getTime()).toBeLessThanOrEqual(Date.now() + DAY);
    const [wal] = writesOf('single/main/wal/00000001/0000000100000000/000000010000000000000003');
    expect(policyOf(wal!).mode).toBe('Locked');
    const walUntil = policyOf(wal!).until!.getTime();
    expect(walUntil).toBeGreaterThanOrEqual(Math.floor((before + 10 * DAY) / 1000) * 1000);
    expect(walUntil).toBeLessThanOrEqual(Date.now() + 10 * DAY);
    const [manual] = writesOf('single/main/full/manual/full-manual-20260211-020000.manifest.json');
    expect(policyOf(manual!)).toEqual({ until: undefined, mode: undefined });
    // Azurite stored all three (it ignores the headers): the writes themselves went through.
    expect(await target!.stat('main/full/manual/full-manual-20260211-020000.manifest.json')).toBeDefined();
  });

  it('a daily backup of a past day: until the start of its day + RETENTION_DAYS, the date Azure is sent', async () => {
    // A backup id of today 02:00 UTC: its lock ends at the start of today + 7 days, whatever the write time.
    const today = new Date();
    const stamp = `${today.toISOString().slice(0, 10).replace(/-/g, '')}-020000`;
    const config = parseConfig(settings('dated', { OBJECT_LOCK_MODE: 'governance', RETENTION_DAYS: '7' }));
    const [target] = createTargets(config);
    await target!.putBytes(`main/full/daily/full-daily-${stamp}.manifest.json`, '{}');
    const [write] = writesOf(`dated/main/full/daily/full-daily-${stamp}.manifest.json`);
    const start = Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate());
    // Governance is Azure's Unlocked policy; the date is sent as RFC 1123 (whole seconds).
    expect(write!.headers[POLICY_MODE]).toBe('Unlocked');
    expect(write!.headers[POLICY_DATE]).toBe(new Date(start + 7 * DAY).toUTCString());
  });

  it('a block-list upload: the policy goes on Put Block List (the commit), never on the staged blocks', async () => {
    // Prepare: the same lock the config makes, on a target with small blocks so the stream is staged.
    const config = parseConfig(settings('blocks', { OBJECT_LOCK_MODE: 'compliance', RETENTION_WEEKS: '4' }));
    const target = new AzureTarget({
      container: azurite.container,
      prefix: 'blocks',
      connectionString: config.cloud.azure!.connectionString,
      blockSize: 1024,
      maxAttempts: 1,
      objectLock: objectLockOptions(config)!,
    });
    const key = 'main/full/weekly/full-weekly-20260215-030000.app.dump';

    // Act
    await target.put(key, Readable.from([Buffer.alloc(5000, 7)]));

    // Assess: four staged blocks without a policy, one commit with it (until the Monday of the
    // backup's ISO week + 4 weeks, or later when that is already past: the floor is the write).
    const requests = proxy.requests.filter((r) => r.path.endsWith(`/blocks/${key}`) && r.method === 'PUT');
    const staged = requests.filter(isStagedBlock);
    const commits = requests.filter((r) => r.query.includes('comp=blocklist'));
    expect(staged.length).toBeGreaterThanOrEqual(4);
    expect(staged.every((r) => r.headers[POLICY_DATE] === undefined)).toBe(true);
    expect(commits).toHaveLength(1);
    expect(commits[0]!.headers[POLICY_MODE]).toBe('Locked');
    const expected = objectLockOptions(config)!.retainUntil(key, new Date())!;
    expect(Math.abs(policyOf(commits[0]!).until!.getTime() - expected.getTime())).toBeLessThan(60_000);
    expect((await target.getBytes(key)).length).toBe(5000);
  });

  it('OBJECT_LOCK_MODE off (the default): no policy headers at all', async () => {
    const [target] = createTargets(parseConfig(settings('off')));
    await target!.putBytes('main/full/daily/full-daily-20260211-020000.manifest.json', '{}');
    const [write] = writesOf('off/main/full/daily/full-daily-20260211-020000.manifest.json');
    expect(policyOf(write!)).toEqual({ until: undefined, mode: undefined });
  });
});

/** Azure's answer to a delete of a blob under an immutability policy (STAND-IN, from the proxy). */
const IMMUTABLE = {
  kind: 'answer',
  status: 409,
  headers: { 'content-type': 'application/xml', 'x-ms-error-code': 'BlobImmutableDueToPolicy' },
  body: '<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobImmutableDueToPolicy</Code><Message>This operation is not permitted as the blob is immutable due to a policy.</Message></Error>',
} as const;

describe('a delete refused as immutable (STAND-IN answer of Azure’s error code, from the proxy)', () => {
  it('the target throws ObjectLockedError: "still locked (Azure immutability policy)"', async () => {
    const [target] = createTargets(parseConfig(settings('refused')));
    const key = 'main/full/daily/full-daily-20260211-020000.manifest.json';
    await target!.putBytes(key, '{}');
    const rule = proxy.addRule({ method: 'DELETE', path: /\/refused\/main\//, action: IMMUTABLE });
    try {
      const error = await target!.delete(key).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(ObjectLockedError);
      expect((error as ObjectLockedError).detail).toBe('still locked (Azure immutability policy)');
      expect(proxy.hits(rule)).toBe(1);
      expect(await target!.stat(key)).toBeDefined();
    } finally {
      proxy.clearRules();
    }
  });

  async function twoBackups(prefix: string) {
    const vault = openVault(parseConfig(settings(prefix, retention)), recordingReporter());
    const take = (at: Date) =>
      runBackup(vault, {
        type: 'full',
        schedule: 'daily',
        server: SERVER,
        tools: {},
        now: at,
        sources: [
          {
            ...inMemorySource('database', 'dump', 'app', Buffer.from('app data')),
            part: 'app',
            database: 'app',
          },
        ],
      });
    const newest = await take(new Date(Date.now() - 60_000));
    const old = await take(new Date(Date.now() - 3 * DAY));
    return { newest, old };
  }
  const retention = { RETENTION_DAYS: '1', RETENTION_WEEKS: '0', RETENTION_MONTHS: '0' };
  const retentionRun = (prefix: string) =>
    runPgvault(
      ['backup', 'retention', '--json'],
      { PATH: process.env.PATH, ...settings(prefix, retention) },
      work.path,
    );

  it('built CLI `backup retention`: the locked manifest is reported as locked, the backup stays whole, exit 0', async () => {
    const { newest, old } = await twoBackups('retained');
    const rule = proxy.addRule({
      method: 'DELETE',
      path: new RegExp(`${old.id}\\.manifest\\.json$`),
      action: IMMUTABLE,
    });
    try {
      const result = await retentionRun('retained');
      expect(result.code, result.stderr).toBe(0);
      const out = JSON.parse(result.stdout);
      expect(out.failed).toEqual([]);
      expect(out.locked).toEqual([
        {
          key: `main/full/daily/${old.id}.manifest.json`,
          target: `azure://${AZURITE_ACCOUNT}/${azurite.container}/retained`,
          detail: 'still locked (Azure immutability policy)',
        },
      ]);
      expect(proxy.hits(rule)).toBeGreaterThan(0);
      const listed = await runPgvault(
        ['restore', 'list', '--json'],
        { PATH: process.env.PATH, ...settings('retained') },
        work.path,
      );
      expect(listed.stdout).toContain(old.id);
      expect(listed.stdout).toContain(newest.id);
    } finally {
      proxy.clearRules();
    }
  });

  it('another 409 (a lease on the blob) is a failure: exit 1, nothing reported as locked', async () => {
    const { old } = await twoBackups('leased');
    proxy.addRule({
      method: 'DELETE',
      path: new RegExp(`${old.id}\\.manifest\\.json$`),
      action: {
        ...IMMUTABLE,
        headers: { 'content-type': 'application/xml', 'x-ms-error-code': 'LeaseIdMissing' },
        body: '<?xml version="1.0" encoding="utf-8"?><Error><Code>LeaseIdMissing</Code><Message>There is currently a lease on the blob and no lease ID was specified in the request.</Message></Error>',
      },
    });
    try {
      const result = await retentionRun('leased');
      expect(result.code).toBe(1);
      const out = JSON.parse(result.stdout);
      expect(out.locked).toEqual([]);
      expect(out.failed).toHaveLength(1);
      expect(out.failed[0].error).toContain('LeaseIdMissing');
    } finally {
      proxy.clearRules();
    }
  });
});
