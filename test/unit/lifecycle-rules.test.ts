import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import {
  azureManagementPolicy,
  gcsLifecycleDocument,
  type LifecycleScope,
  lifecycleDays,
  mergeS3Rules,
  s3LifecycleRules,
} from '../../core/storage/lifecycle-rules';
import { lifecycleTagFor } from '../../core/storage/s3';

/**
 * The lifecycle documents `backup init` applies or prints (core/storage/lifecycle-rules.ts), checked
 * structurally against each provider's schema (the fields and limits its API documents) and against
 * pgvault's lifecycle kinds: every key a rule reaches is one of the cluster's managed folders; manual
 * backups and `wal/archive.json` are reached by none. Goldens for the default retention settings.
 */
const scope: LifecycleScope = { bucket: 'vault', prefix: 'pg/prod', cluster: 'main' };
const defaults = lifecycleDays(parseConfig({}));
// RETENTION_DAYS 7, WEEKS 4, MONTHS 6, WAL_DAYS 7, CONFIG_COUNT 10, INDEXES_COUNT 5: hold 186 days.
const EXPIRE = 186 + 60;

/** Keys of every folder of a cluster, as pgvault writes them (relative to the bucket). */
const SAMPLE_KEYS = [
  'full/daily/full-daily-20260211-020000.app.dump',
  'full/weekly/full-weekly-20260215-030000.app.dump',
  'full/monthly/full-monthly-20260201-040000.manifest.json',
  'base/daily/base-daily-20260211-020000.base.tar',
  'base/weekly/base-weekly-20260215-030000.base.tar',
  'base/monthly/base-monthly-20260201-040000.base.tar',
  'config/config-20260211-020000.tar',
  'indexes/indexes-20260211-020000.sql',
  'wal/00000001/0000000100000000/000000010000000000000003.zst',
  'wal/00000002/00000002.history',
  'wal/archive.json',
  'reports/2026-02.json',
  'drills/drill-20260211.json',
  'manual/full-manual-20260211-020000.app.dump',
  'full/manual/full-manual-20260211-020000.app.dump',
];

describe('the rules follow the lifecycle kinds (core/storage/s3.ts lifecycleTagFor)', () => {
  const reached = (prefixes: readonly string[], key: string) => prefixes.some((p) => key.startsWith(p));

  it('S3: each key is reached by the rules of its own kind only; manual backups and wal/archive.json by none', () => {
    const rules = s3LifecycleRules(scope, defaults);
    for (const relative of SAMPLE_KEYS) {
      const key = `pg/prod/main/${relative}`;
      const hits = rules.filter((r) =>
        key.startsWith('Prefix' in r.Filter ? r.Filter.Prefix : r.Filter.And.Prefix),
      );
      const expiring = hits.filter((r) => r.Expiration !== undefined);
      const kind = lifecycleTagFor(`main/${relative}`);
      if (kind === undefined) {
        expect(expiring, key).toEqual([]);
        continue;
      }
      expect(expiring, key).toHaveLength(1);
      expect(expiring[0]!.Expiration!.Days, key).toBe(kind === 'report' ? 400 : EXPIRE);
      expect(
        hits.some((r) => r.Transitions !== undefined),
        key,
      ).toBe(kind === 'archive');
    }
  });

  it('GCS and Azure: the same keys, through their prefix lists', () => {
    const gcs = gcsLifecycleDocument(scope, defaults).lifecycle.rule;
    const azure = azureManagementPolicy(scope, defaults).rules;
    for (const relative of SAMPLE_KEYS) {
      const kind = lifecycleTagFor(`main/${relative}`);
      const key = `pg/prod/main/${relative}`;
      const deletes = gcs.filter(
        (r) =>
          r.action.type === 'Delete' &&
          r.condition.isLive !== false &&
          reached(r.condition.matchesPrefix!, key),
      );
      const azureHits = azure.filter((r) => reached(r.definition.filters.prefixMatch, `vault/${key}`));
      if (kind === undefined) {
        expect(deletes, key).toEqual([]);
        expect(azureHits, key).toEqual([]);
        continue;
      }
      expect(
        deletes.map((r) => r.condition.age),
        key,
      ).toEqual([kind === 'report' ? 400 : EXPIRE]);
      expect(
        azureHits.map((r) => r.definition.actions.baseBlob.delete?.daysAfterModificationGreaterThan),
        key,
      ).toEqual([kind === 'report' ? 400 : EXPIRE]);
    }
  });

  it('days come from RETENTION_*: the longest hold + 60; no move to the colder class when everything goes first', () => {
    const long = lifecycleDays(parseConfig({ RETENTION_MONTHS: '24', RETENTION_WAL_DAYS: '30' }));
    expect(long).toMatchObject({ expireAfterDays: 24 * 31 + 60, archiveAfterDays: 30 });
    const short = lifecycleDays(
      parseConfig({
        RETENTION_DAYS: '0',
        RETENTION_WEEKS: '0',
        RETENTION_MONTHS: '0',
        RETENTION_WAL_DAYS: '0',
        RETENTION_CONFIG_COUNT: '0',
        RETENTION_INDEXES_COUNT: '0',
      }),
    );
    expect(short.expireAfterDays).toBe(60);
    expect(short.archiveAfterDays).toBe(30);
    expect(
      s3LifecycleRules(scope, { ...short, archiveAfterDays: undefined }).some((r) => r.Transitions),
    ).toBe(false);
  });
});

describe('S3 lifecycle configuration (PutBucketLifecycleConfiguration)', () => {
  const rules = s3LifecycleRules(scope, defaults);

  it('schema: unique IDs of at most 255 characters, Status, one Filter, at least one action each', () => {
    expect(new Set(rules.map((r) => r.ID)).size).toBe(rules.length);
    for (const r of rules) {
      expect(r.ID.length).toBeLessThanOrEqual(255);
      expect(r.ID.startsWith('pgvault:pg/prod/main/')).toBe(true);
      expect(r.Status).toBe('Enabled');
      const prefix = 'Prefix' in r.Filter ? r.Filter.Prefix : r.Filter.And.Prefix;
      expect(prefix.startsWith('pg/prod/main/')).toBe(true);
      const actions = [
        r.Expiration,
        r.Transitions,
        r.AbortIncompleteMultipartUpload,
        r.NoncurrentVersionExpiration,
      ];
      expect(actions.some((a) => a !== undefined)).toBe(true);
    }
  });

  it('golden: weekly and monthly backups over 128 KiB move to GLACIER_IR after 30 days', () => {
    expect(rules.find((r) => r.ID === 'pgvault:pg/prod/main/full/weekly/archive')).toEqual({
      ID: 'pgvault:pg/prod/main/full/weekly/archive',
      Status: 'Enabled',
      Filter: { And: { Prefix: 'pg/prod/main/full/weekly/', ObjectSizeGreaterThan: 131072 } },
      Transitions: [{ Days: 30, StorageClass: 'GLACIER_IR' }],
    });
    expect(rules.find((r) => r.ID === 'pgvault:pg/prod/main/wal/0expire')).toEqual({
      ID: 'pgvault:pg/prod/main/wal/0expire',
      Status: 'Enabled',
      Filter: { Prefix: 'pg/prod/main/wal/0' },
      Expiration: { Days: EXPIRE },
    });
    expect(rules).toHaveLength(4 * 2 + 5 + 2 + 1);
  });

  it('S3_STORAGE_CLASS_ARCHIVE set: the objects are written in their class, no transition', () => {
    const config = parseConfig({
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: 'b',
      S3_STORAGE_CLASS_ARCHIVE: 'GLACIER',
    });
    expect(s3LifecycleRules(scope, defaults, config.cloud.storageClass).some((r) => r.Transitions)).toBe(
      false,
    );
  });

  it("merging keeps the bucket's other rules, replaces this scope's former ones, and sees when nothing changed", () => {
    const foreign = { ID: 'logs', Status: 'Enabled', Filter: { Prefix: 'logs/' }, Expiration: { Days: 5 } };
    const otherCluster = s3LifecycleRules({ ...scope, cluster: 'other' }, defaults);
    const stale = { ...rules[0]!, Expiration: { Days: 999 } };
    const merged = mergeS3Rules([foreign, stale, ...otherCluster], rules, scope);
    expect(merged.changed).toBe(true);
    expect(merged.kept).toBe(1 + otherCluster.length);
    expect(merged.rules).toEqual([foreign, ...otherCluster, ...rules]);
    // As the SDK gives them back: keys in another order, empty lists.
    const echoed = rules.map((r) => ({ Transitions: [], ...JSON.parse(JSON.stringify(r)) }));
    expect(mergeS3Rules([foreign, ...echoed.reverse()], rules, scope).changed).toBe(false);
  });
});

describe('GCS lifecycle rules (gcloud storage buckets update --lifecycle-file)', () => {
  const doc = gcsLifecycleDocument(scope, defaults);

  it('schema: lifecycle.rule[] of action {type Delete | SetStorageClass (+ storageClass)} and condition', () => {
    expect(Object.keys(doc)).toEqual(['lifecycle']);
    expect(Object.keys(doc.lifecycle)).toEqual(['rule']);
    const conditionFields = [
      'age',
      'matchesPrefix',
      'matchesStorageClass',
      'isLive',
      'daysSinceNoncurrentTime',
    ];
    for (const rule of doc.lifecycle.rule) {
      expect(['Delete', 'SetStorageClass']).toContain(rule.action.type);
      if (rule.action.type === 'SetStorageClass') {
        expect(['NEARLINE', 'COLDLINE', 'ARCHIVE']).toContain(rule.action.storageClass);
      } else {
        expect(rule.action.storageClass).toBeUndefined();
      }
      expect(Object.keys(rule.condition).every((k) => conditionFields.includes(k))).toBe(true);
      expect(rule.condition.matchesPrefix!.every((p) => p.startsWith('pg/prod/main/'))).toBe(true);
      for (const n of [rule.condition.age, rule.condition.daysSinceNoncurrentTime]) {
        if (n !== undefined) expect(Number.isInteger(n) && n >= 0).toBe(true);
      }
    }
  });

  it('golden', () => {
    expect(doc.lifecycle.rule[0]).toEqual({
      action: { type: 'SetStorageClass', storageClass: 'NEARLINE' },
      condition: {
        age: 30,
        matchesPrefix: [
          'pg/prod/main/full/weekly/',
          'pg/prod/main/full/monthly/',
          'pg/prod/main/base/weekly/',
          'pg/prod/main/base/monthly/',
        ],
        matchesStorageClass: ['STANDARD'],
      },
    });
    expect(doc.lifecycle.rule.at(-1)).toEqual({
      action: { type: 'Delete' },
      condition: { isLive: false, daysSinceNoncurrentTime: 30, matchesPrefix: ['pg/prod/main/'] },
    });
  });
});

describe('Azure lifecycle management policy (az storage account management-policy create --policy)', () => {
  const policy = azureManagementPolicy(scope, defaults);

  it('schema: rules[] {enabled, name, type Lifecycle, definition {filters, actions}}; prefixMatch begins with the container', () => {
    expect(Object.keys(policy)).toEqual(['rules']);
    const names = policy.rules.map((r) => r.name);
    expect(new Set(names).size).toBe(names.length);
    for (const rule of policy.rules) {
      expect(rule.enabled).toBe(true);
      expect(rule.type).toBe('Lifecycle');
      expect(rule.name).toMatch(/^[A-Za-z0-9]{1,256}$/);
      expect(Object.keys(rule.definition).sort()).toEqual(['actions', 'filters']);
      const { filters, actions } = rule.definition;
      expect(filters.blobTypes).toEqual(['blockBlob']);
      expect(filters.prefixMatch.length).toBeGreaterThan(0);
      expect(filters.prefixMatch.length).toBeLessThanOrEqual(10);
      expect(filters.prefixMatch.every((p) => p.startsWith('vault/pg/prod/main/'))).toBe(true);
      const base = actions.baseBlob;
      for (const [action, value] of Object.entries(base)) {
        expect(['tierToCool', 'tierToCold', 'tierToArchive', 'delete']).toContain(action);
        expect(Object.keys(value!)).toEqual(['daysAfterModificationGreaterThan']);
        expect(Number.isInteger(value!.daysAfterModificationGreaterThan)).toBe(true);
      }
      // A tier move comes before the delete.
      if (base.tierToCool && base.delete) {
        expect(base.tierToCool.daysAfterModificationGreaterThan).toBeLessThan(
          base.delete.daysAfterModificationGreaterThan,
        );
      }
      expect(actions.version).toEqual({ delete: { daysAfterCreationGreaterThan: 30 } });
    }
  });

  it('golden: weekly and monthly backups to Cool after 30 days, deleted after the safety net', () => {
    const archive = policy.rules.find((r) => r.name.endsWith('archive'))!;
    expect(archive.definition).toEqual({
      actions: {
        baseBlob: {
          tierToCool: { daysAfterModificationGreaterThan: 30 },
          delete: { daysAfterModificationGreaterThan: EXPIRE },
        },
        version: { delete: { daysAfterCreationGreaterThan: 30 } },
      },
      filters: {
        blobTypes: ['blockBlob'],
        prefixMatch: [
          'vault/pg/prod/main/full/weekly/',
          'vault/pg/prod/main/full/monthly/',
          'vault/pg/prod/main/base/weekly/',
          'vault/pg/prod/main/base/monthly/',
        ],
      },
    });
    expect(archive.name).toMatch(/^pgvaultpgprodmain[0-9a-f]{8}archive$/);
    // Two clusters whose names differ only in punctuation still get their own rules.
    const other = azureManagementPolicy({ ...scope, cluster: 'ma-in' }, defaults);
    expect(other.rules[0]!.name).not.toBe(archive.name);
  });
});
