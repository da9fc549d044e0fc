import { describe, expect, it } from 'vitest';
import { lifecycleRules } from '../../core/backup/init';
import { parseConfig } from '../../core/config';
import type { S3LifecycleRule } from '../../core/storage/lifecycle-rules';
import { gcsLifecycleDocument, lifecycleDays } from '../../core/storage/lifecycle-rules';
import { openVault } from '../../core/vault';
import { recordingReporter } from '../helpers/vault';

/**
 * `backup init`'s lifecycle rules with several repositories (issue 14): each cloud repository's
 * rules use its own retention (REPO<n>_RETENTION_*) and its own placement (REPO<n>_HOLDS): a
 * repository that holds no weekly or monthly backups has no archive rule, and no rule reaches a
 * folder it does not hold. --print-lifecycle (apply: false): no request is sent.
 */
const settings = {
  CLUSTER_NAME: 'main',
  // Shared retention: 6 months would make a 246-day safety net.
  RETENTION_MONTHS: '6',
  REPO1_TYPE: 'file',
  REPO1_PATH: '/var/backups/postgresql',
  // The "daily" bucket: daily backups and WAL only, 3 days each.
  REPO2_TYPE: 's3',
  REPO2_BUCKET: 'daily-bucket',
  REPO2_PREFIX: 'pg',
  REPO2_REGION: 'eu-west-1',
  REPO2_HOLDS: 'full:daily,wal',
  REPO2_RETENTION_DAYS: '3',
  REPO2_RETENTION_WAL_DAYS: '3',
  // The "archive" bucket: every full and base backup, a year of monthlies.
  REPO3_TYPE: 's3',
  REPO3_BUCKET: 'archive-bucket',
  REPO3_REGION: 'eu-west-1',
  REPO3_HOLDS: 'full,base',
  REPO3_RETENTION_WEEKS: '8',
  REPO3_RETENTION_MONTHS: '12',
};

function prefixOf(rule: S3LifecycleRule): string {
  return 'Prefix' in rule.Filter ? rule.Filter.Prefix : rule.Filter.And.Prefix;
}

describe('lifecycle rules per repository', () => {
  it('each S3 repository gets rules from its own retention and only for the folders it holds', async () => {
    // Prepare
    const vault = openVault(parseConfig(settings), recordingReporter());

    // Act
    const outcomes = await lifecycleRules(vault, { apply: false });

    // Assess
    expect(outcomes.map((o) => [o.repository, o.target, o.applied])).toEqual([
      [2, 's3://daily-bucket/pg', false],
      [3, 's3://archive-bucket', false],
    ]);
    const daily = (outcomes[0]!.document as { Rules: S3LifecycleRule[] }).Rules;
    const archive = (outcomes[1]!.document as { Rules: S3LifecycleRule[] }).Rules;
    // repo2: no archive rule (it holds no weekly or monthly), full/daily and WAL expire after 3 + 60 days.
    expect(daily.filter((r) => r.Transitions !== undefined)).toEqual([]);
    expect(
      daily.filter((r) => r.Expiration !== undefined).map((r) => [prefixOf(r), r.Expiration!.Days]),
    ).toEqual([
      ['pg/main/full/daily/', 63],
      ['pg/main/wal/0', 63],
    ]);
    // repo3: full and base of every schedule; weekly and monthly moved after 30 days; 12 x 31 + 60.
    expect(archive.filter((r) => r.Transitions !== undefined).map(prefixOf)).toEqual([
      'main/full/weekly/',
      'main/full/monthly/',
      'main/base/weekly/',
      'main/base/monthly/',
    ]);
    const expiring = archive.filter((r) => r.Expiration !== undefined);
    expect(expiring.map(prefixOf).sort()).toEqual(
      [
        'main/full/daily/',
        'main/full/weekly/',
        'main/full/monthly/',
        'main/base/daily/',
        'main/base/weekly/',
        'main/base/monthly/',
      ].sort(),
    );
    expect(new Set(expiring.map((r) => r.Expiration!.Days))).toEqual(new Set([12 * 31 + 60]));
  });

  it('GCS: a repository holding only WAL gets no archive rule and no rule without a prefix', () => {
    // Act
    const holds = ['wal'];
    const doc = gcsLifecycleDocument(
      { bucket: 'b', prefix: '', cluster: 'main', holds },
      lifecycleDays(parseConfig({ RETENTION_WAL_DAYS: '10' }), holds),
    );

    // Assess
    expect(
      doc.lifecycle.rule.map((r) => [r.action.type, r.condition.age, r.condition.matchesPrefix]),
    ).toEqual([
      ['Delete', 70, ['main/wal/0']],
      ['Delete', undefined, ['main/']],
    ]);
  });
});
