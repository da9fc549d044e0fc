import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  cronToScheduler,
  DEFAULT_SCHEDULES,
  DeployConfigError,
  deployConfigPath,
  EXAMPLE_CONFIG_PATH,
  expirationDays,
  loadDeployConfig,
  parseDeployConfig,
} from '../../infra/config';
import { CLUSTERS_PER_FLEET_STACK } from '../../infra/stack';
import { resourcesOf, synthTemplate, testConfig } from './synth';

const minimal = {
  clusters: [
    {
      name: 'main',
      host: 'db.example.com',
      credentialsSecretArn: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf',
    },
  ],
  network: {
    vpcId: 'vpc-0123456789abcdef0',
    subnetIds: ['subnet-0123456789abcdef0'],
    securityGroupIds: ['sg-0123456789abcdef0'],
  },
};

/** The one line a bad configuration fails with. */
function rejection(input: unknown): string {
  try {
    parseDeployConfig(input, 'cfg.json');
  } catch (err) {
    expect(err).toBeInstanceOf(DeployConfigError);
    const message = (err as Error).message;
    expect(message.split('\n')).toHaveLength(1);
    return message;
  }
  throw new Error('configuration was accepted');
}

describe('deploy configuration', () => {
  it('fills every default from a minimal configuration (the guide crontab, UTC, GFS 7/4/6)', () => {
    const c = parseDeployConfig(minimal);
    expect(c.schedules).toEqual(DEFAULT_SCHEDULES);
    expect(c.timeZone).toBe('UTC');
    expect(c.retention).toEqual({
      days: 7,
      weeks: 4,
      months: 6,
      configCount: 10,
      indexesCount: 5,
      walDays: 7,
    });
    expect(c.clusters[0]).toMatchObject({ mode: 'single-node', port: 5432, database: 'postgres' });
    expect(c.bucket).toMatchObject({
      prefix: 'pgvault',
      // Glacier Instant Retrieval: an old monthly backup restores without restore-object (README).
      archiveStorageClass: 'GLACIER_IR',
      archiveAfterDays: 30,
      objectLock: null,
    });
    expect(c.network.assignPublicIp).toBe(false);
    expect(c.walReceive.enabled).toBe(false);
    expect(c.physicalBackups).toBe(false);
    expect(c.task).toEqual({ cpu: 1024, memoryMiB: 4096, ephemeralStorageGiB: 50 });
    expect(c.restoreTask.ephemeralStorageGiB).toBe(100);
    expect(expirationDays(c)).toBe(6 * 31 + 60);
    // Fleet stacks by name, one of them until the operator spreads them (infra/README.md "Fleet stacks").
    expect(c.fleet).toEqual({ layout: 'name', shards: 1 });
    expect(c.clusters[0]!.shard).toBeUndefined();
  });

  it('the example file is valid', () => {
    expect(loadDeployConfig(EXAMPLE_CONFIG_PATH).clusters.map((c) => c.name)).toEqual(['main', 'orders']);
  });

  it.each([
    [
      { ...minimal, network: { ...minimal.network, subnetIds: ['subnet-xyz'] } },
      'network.subnetIds[0]: a subnet id such as subnet-0123456789abcdef0',
    ],
    [{ ...minimal, network: { ...minimal.network, vpcId: 'vpc1' } }, 'network.vpcId: a VPC id'],
    [{ ...minimal, clusters: [] }, 'clusters'],
    [
      { ...minimal, clusters: [minimal.clusters[0], minimal.clusters[0]] },
      'clusters[1].name: duplicate cluster name main',
    ],
    [{ ...minimal, clusters: [{ ...minimal.clusters[0], name: 'bad name' }] }, 'clusters[0].name'],
    [
      { ...minimal, clusters: [{ ...minimal.clusters[0], mode: 'patroni' }] },
      'clusters[0].patroniUrl: required when mode is patroni',
    ],
    [{ ...minimal, clusters: [{ ...minimal.clusters[0], port: 70000 }] }, 'clusters[0].port'],
    [
      {
        ...minimal,
        clusters: [
          {
            ...minimal.clusters[0],
            credentialsSecretArn: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:db',
          },
        ],
      },
      'clusters[0].credentialsSecretArn: the complete secret ARN',
    ],
    [{ ...minimal, clusters: [{ ...minimal.clusters[0], password: 'x' }] }, 'clusters[0]'],
    [{ ...minimal, timeZone: 'Mars/Olympus' }, 'timeZone: an IANA time zone'],
    [{ ...minimal, schedules: { fullDaily: '0 25 * *' } }, 'schedules.fullDaily: expected a 5-field crontab'],
    [{ ...minimal, schedules: { fullWeekly: '0 3 1 * 0' } }, 'schedules.fullWeekly'],
    [{ ...minimal, compression: 'rar' }, 'compression'],
    [
      { ...minimal, bucket: { objectLock: { mode: 'governance', days: 30 } } },
      'bucket.objectLock.days: 30 is longer than the shortest retention',
    ],
    [{ ...minimal, bucket: { objectLock: { mode: 'legal', days: 3 } } }, 'bucket.objectLock.mode'],
    [
      { ...minimal, bucket: { expireAfterDays: 100 } },
      'bucket.expireAfterDays: 100 must be longer than the longest retention hold (186 days)',
    ],
    [
      { ...minimal, task: { cpu: 256, memoryMiB: 4096 } },
      'task.memoryMiB: 4096 MiB is not valid with cpu 256',
    ],
    [{ ...minimal, task: { ephemeralStorageGiB: 500 } }, 'task.ephemeralStorageGiB'],
    [{ ...minimal, alerts: { emails: ['not-an-address'] } }, 'alerts.emails[0]: an e-mail address'],
    [{ ...minimal, logRetentionDays: 10 }, 'logRetentionDays'],
    [{ ...minimal, clusters: [{ ...minimal.clusters[0], shard: 0 }] }, 'clusters[0].shard'],
    [{ ...minimal, clusters: [{ ...minimal.clusters[0], shard: 101 }] }, 'clusters[0].shard'],
    [{ ...minimal, fleet: { layout: 'random' } }, 'fleet.layout'],
    [{ ...minimal, fleet: { shards: 0 } }, 'fleet.shards'],
    [{ ...minimal, unknownKey: true }, '(top level)'],
  ])('rejects a bad configuration with one line naming the field (%#)', (input, expected) => {
    const message = rejection(input);
    expect(message).toContain('pgvault deploy config cfg.json: ');
    expect(message).toContain(expected);
  });

  it('reads files: names the file on a missing file or bad JSON', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgvault-deploy-'));
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{ "clusters": [');
    expect(() => loadDeployConfig(bad)).toThrow(/^pgvault deploy config .*bad\.json: not valid JSON/);
    expect(() => loadDeployConfig(join(dir, 'missing.json'))).toThrow(/missing\.json: cannot be read/);
    const good = join(dir, 'good.json');
    writeFileSync(good, JSON.stringify(minimal));
    expect(loadDeployConfig(good).clusters[0]!.name).toBe('main');
  });

  it('picks -c config=PATH, else PGVAULT_DEPLOY_CONFIG, else the example', () => {
    expect(deployConfigPath('/x/a.json', { PGVAULT_DEPLOY_CONFIG: '/y/b.json' })).toBe('/x/a.json');
    expect(deployConfigPath(undefined, { PGVAULT_DEPLOY_CONFIG: '/y/b.json' })).toBe('/y/b.json');
    expect(deployConfigPath(undefined, {})).toBe(EXAMPLE_CONFIG_PATH);
  });

  it('turns crontab lines into EventBridge Scheduler expressions', () => {
    expect(cronToScheduler('0 2 * * *')).toBe('cron(0 2 * * ? *)');
    expect(cronToScheduler('0 3 * * 0')).toBe('cron(0 3 ? * SUN *)');
    expect(cronToScheduler('0 3 * * 7')).toBe('cron(0 3 ? * SUN *)');
    expect(cronToScheduler('0 4 1 * *')).toBe('cron(0 4 1 * ? *)');
    expect(cronToScheduler('30 1 * * 1-5')).toBe('cron(30 1 ? * MON-FRI *)');
    expect(cronToScheduler('0 1 * * mon,wed')).toBe('cron(0 1 ? * MON,WED *)');
    expect(cronToScheduler('*/15 * * * *')).toBe('cron(*/15 * * * ? *)');
    expect(cronToScheduler('rate(6 hours)')).toBe('rate(6 hours)');
    expect(cronToScheduler('cron(0 2 * * ? *)')).toBe('cron(0 2 * * ? *)');
    expect(cronToScheduler('0 3 1 * 0')).toBeUndefined();
    expect(cronToScheduler('0 3 * *')).toBeUndefined();
    expect(cronToScheduler('0 3 * * 8')).toBeUndefined();
  });
});

describe('configuration variants', () => {
  it('null turns a schedule off; base backups only with physicalBackups', () => {
    const { template, fleets } = synthTemplate(
      testConfig({
        clusters: [testConfig().clusters[0]!],
        physicalBackups: false,
        schedules: { ...DEFAULT_SCHEDULES, indexes: null },
      }),
    );
    expect(fleets).toHaveLength(1);
    const fleet = fleets[0]!.template;
    const names = resourcesOf(fleet, 'AWS::Scheduler::Schedule').map(([, s]) => s.Properties.Name);
    expect(names.sort()).toEqual(
      [
        'main-config',
        'main-fullDaily',
        'main-fullMonthly',
        'main-fullWeekly',
        'main-report',
        'main-retention',
        'main-verify',
      ].sort(),
    );
    // Without WAL receiving: no service, no EFS.
    fleet.resourceCountIs('AWS::ECS::Service', 0);
    template.resourceCountIs('AWS::EFS::FileSystem', 0);
  }, 60_000);

  it('without a prefix the grants cover the bucket; without Object Lock no retention permissions; GLACIER stays selectable', () => {
    const base = testConfig();
    const { template, stack, fleets } = synthTemplate(
      testConfig({
        clusters: [base.clusters[0]!],
        bucket: { ...base.bucket, prefix: '', objectLock: null, archiveStorageClass: 'GLACIER' },
      }),
    );
    const text = JSON.stringify([template.toJSON(), ...fleets.map((f) => f.template.toJSON())]);
    expect(text).not.toContain('s3:PutObjectRetention');
    expect(text).not.toContain('ObjectLockConfiguration');
    const rules = template.toJSON().Resources[
      stack.getLogicalId(stack.vault.bucket.node.defaultChild as never)
    ].Properties.LifecycleConfiguration.Rules as Array<{ Id: string; Prefix?: string }>;
    const archive = rules.find((r) => r.Id === 'archive-weekly-monthly');
    expect(archive).toMatchObject({
      TagFilters: [{ Key: 'pgvault-lifecycle', Value: 'archive' }],
      Transitions: [{ StorageClass: 'GLACIER', TransitionInDays: 30 }],
    });
    // The whole bucket is the repository: the rules select by tag alone.
    expect(rules.filter((r) => r.Prefix !== undefined)).toEqual([]);
    const fns = resourcesOf(template, 'AWS::Lambda::Function');
    expect(fns[0]![1].Properties.Environment.Variables.CLOUD_PREFIX).toBeUndefined();
  }, 60_000);

  it('splits a larger fleet into fleet stacks of 12 clusters, in config order, with fleet.layout "position"', () => {
    const base = testConfig();
    const clusters = Array.from({ length: 30 }, (_, i) => ({ ...base.clusters[0]!, name: `cluster-${i}` }));
    const { deployment, fleets } = synthTemplate(testConfig({ clusters, fleet: { layout: 'position' } }));
    expect(CLUSTERS_PER_FLEET_STACK).toBe(12);
    expect(deployment.stacks.map((s) => s.stackName)).toEqual([
      'Pgvault',
      'Pgvault-Fleet1',
      'Pgvault-Fleet2',
      'Pgvault-Fleet3',
    ]);
    expect(fleets.map((f) => f.stack.clusterNames.length)).toEqual([12, 12, 6]);
    expect(fleets[1]!.stack.clusterNames).toContain('cluster-12');
    expect(fleets[0]!.stack.clusterNames).toContain('cluster-11');
    for (const f of fleets) expect(f.stack.dependencies).toEqual([deployment.shared]);
  }, 60_000);

  it('fails synth with one line when a stack still does not fit (the resource limit, here lowered)', () => {
    const base = testConfig();
    const clusters = Array.from({ length: 12 }, (_, i) => ({ ...base.clusters[0]!, name: `cluster-${i}` }));
    let message = '';
    try {
      synthTemplate(testConfig({ clusters }), { context: { '@aws-cdk/core:stackResourceLimit': 150 } });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(
      /^pgvault deploy config: stack Pgvault-Fleet1 needs about \d+ CloudFormation resources, more than the 150 one stack may hold$/,
    );
    expect(message.split('\n')).toHaveLength(1);
  }, 60_000);
});
