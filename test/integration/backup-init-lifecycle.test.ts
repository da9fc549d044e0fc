import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AzuriteServer, startAzurite } from '../helpers/azurite';
import { runPgvault } from '../helpers/cli';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { type S3Statement, startPolicyProxy } from '../helpers/s3-policy';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { tempDir } from '../helpers/vault';

/**
 * `pgvault backup init` (the built CLI; `npm run build` first) and the lifecycle rules of each
 * provider: applied where the credentials may, printed as the exact JSON with the command to apply
 * it where they may not, exit 0 either way.
 *
 * s3rver does not implement bucket lifecycle (GET and PUT ?lifecycle answer NotImplemented), so:
 * - STAND-IN + RECORDING: the fault proxy in front of s3rver answers GetBucketLifecycleConfiguration
 *   (a stand-in configuration, S3's XML) and PutBucketLifecycleConfiguration (200), and records the
 *   configuration the real AWS SDK sends; the probe and everything else go to s3rver. Not checked:
 *   that S3 itself accepts the document (its structure is checked in test/unit/lifecycle-rules.test.ts).
 * - AccessDenied: the S3 role-policy proxy (test/helpers/s3-policy.ts) in front, with a role that may
 *   read and write objects but not s3:PutLifecycleConfiguration: S3's real refusal of that request.
 * Azure: init against Azurite (real), the management policy printed, never applied.
 */
let s3: S3TestServer;
let fault: FaultProxy;
let azurite: AzuriteServer;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [s3, azurite, work] = await Promise.all([
    startS3Server('pgvault-lifecycle'),
    startAzurite('pgvault-lifecycle'),
    tempDir('pgvault-init-lifecycle-'),
  ]);
  fault = await startFaultProxy(s3.endpoint);
});
afterAll(async () => {
  await fault?.stop();
  await Promise.all([s3?.stop(), azurite?.stop(), work?.remove()]);
});

function s3Settings(prefix: string, endpoint: string): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '',
    CLUSTER_NAME: 'main',
    BACKUP_DIR: `${work.path}/${prefix}`,
    CLOUD_PROVIDER: 's3',
    CLOUD_BUCKET: s3.bucket,
    CLOUD_PREFIX: prefix,
    S3_ENDPOINT: endpoint,
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_REGION: s3.region,
    LOCAL_COPY: 'false',
    S3_MAX_ATTEMPTS: '1',
    // No server: the archiving check says it skipped.
    PGHOST: '127.0.0.1',
    PGPORT: '1',
  };
}

const init = (env: Record<string, string>, json = true) =>
  runPgvault(json ? ['backup', 'init', '--json'] : ['backup', 'init'], env, work.path);

/** A stand-in GetBucketLifecycleConfiguration answer: another tool's rule and a stale pgvault rule of `main`. */
function existingConfiguration(prefix: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>
<LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Rule><ID>access-logs</ID><Filter><Prefix>logs/</Prefix></Filter><Status>Enabled</Status><Expiration><Days>5</Days></Expiration></Rule>
<Rule><ID>pgvault:${prefix}/main/full/daily/expire</ID><Filter><Prefix>${prefix}/main/full/daily/</Prefix></Filter><Status>Enabled</Status><Expiration><Days>999</Days></Expiration></Rule>
</LifecycleConfiguration>`;
}

describe('S3: applied where the credentials may', () => {
  it("merges pgvault's rules into the bucket's configuration and puts it (STAND-IN answers, RECORDED request)", async () => {
    // Prepare
    fault.addRule({
      method: 'GET',
      query: /(^|&)lifecycle(=|&|$)/,
      action: {
        kind: 'answer',
        status: 200,
        headers: { 'content-type': 'application/xml' },
        body: existingConfiguration('applied'),
      },
    });
    const put = fault.addRule({
      method: 'PUT',
      query: /(^|&)lifecycle(=|&|$)/,
      action: { kind: 'answer', status: 200 },
    });
    try {
      // Act
      const r = await init(s3Settings('applied', fault.endpoint));

      // Assess: exit 0, applied, no warning; the configuration sent holds the other tool's rule, not
      // the stale pgvault one, and pgvault's rules scoped to applied/main/.
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).not.toContain('warning');
      const out = JSON.parse(r.stdout);
      expect(out.ok).toBe(true);
      expect(out.lifecycle).toHaveLength(1);
      expect(out.lifecycle[0]).toMatchObject({
        provider: 's3',
        applied: true,
        target: `s3://${s3.bucket}/applied`,
      });
      expect(out.lifecycle[0].detail).toMatch(
        /^applied: 16 rules for applied\/main\/; the bucket's 1 other rule\(s\) kept$/,
      );
      expect(fault.hits(put)).toBe(1);
      const sent = fault.requests.find((q) => q.rule === put)!.body!;
      const ids = [...sent.matchAll(/<ID>([^<]*)<\/ID>/g)].map((m) => m[1]);
      expect(ids).toHaveLength(17);
      expect(ids[0]).toBe('access-logs');
      expect(ids.slice(1).every((id) => id!.startsWith('pgvault:applied/main/'))).toBe(true);
      expect(sent).not.toContain('<Days>999</Days>');
      expect(sent).toContain('<Prefix>applied/main/full/daily/</Prefix>');
      expect(sent).toContain('<StorageClass>GLACIER_IR</StorageClass>');
      // The default retention: longest hold 186 days (6 months x 31) + 60.
      expect(sent).toContain('<Days>246</Days>');
      // The JSON output holds the whole document that was put.
      expect(out.lifecycle[0].document.Rules.map((x: { ID: string }) => x.ID)).toEqual(ids);
    } finally {
      fault.clearRules();
    }
  });

  it('with S3_LIFECYCLE_TAGS=true (the AWS deployment) the bucket is not touched', async () => {
    const before = fault.requests.length;
    const r = await init({ ...s3Settings('tagged', fault.endpoint), S3_LIFECYCLE_TAGS: 'true' });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.lifecycle[0]).toMatchObject({ applied: false });
    expect(out.lifecycle[0].detail).toMatch(/^not changed: with S3_LIFECYCLE_TAGS=true/);
    expect(fault.requests.slice(before).filter((q) => q.query.includes('lifecycle'))).toEqual([]);
  });
});

describe('S3: --print-lifecycle', () => {
  it('prints the rules and the command, sends no lifecycle request, no warning', async () => {
    const before = fault.requests.length;
    const r = await runPgvault(
      ['backup', 'init', '--print-lifecycle', '--json'],
      s3Settings('printed', fault.endpoint),
      work.path,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain('warning');
    const out = JSON.parse(r.stdout);
    expect(out.lifecycle[0]).toMatchObject({ provider: 's3', applied: false });
    expect(out.lifecycle[0].detail).toMatch(/^printed, not applied \(--print-lifecycle\)/);
    expect(out.lifecycle[0].command).toContain('aws s3api put-bucket-lifecycle-configuration');
    expect(out.lifecycle[0].document.Rules).toHaveLength(16);
    expect(fault.requests.slice(before).filter((q) => q.query.includes('lifecycle'))).toEqual([]);
  });
});

describe('S3: printed where the credentials may not (AccessDenied from the role-policy proxy)', () => {
  // A role that may use its objects and read the lifecycle configuration, but not change it.
  const statements: S3Statement[] = [
    {
      effect: 'Allow',
      actions: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:GetLifecycleConfiguration'],
      resources: [`arn:aws:s3:::pgvault-lifecycle`, 'arn:aws:s3:::pgvault-lifecycle/*'],
    },
    { effect: 'Allow', actions: ['s3:ListBucket'], resources: ['arn:aws:s3:::pgvault-lifecycle'] },
  ];

  it('exit 0, one warning line, the JSON and the command printed; --json carries the document', async () => {
    // Prepare: role proxy -> fault proxy (stand-in: the bucket has no configuration yet) -> s3rver.
    fault.addRule({
      method: 'GET',
      query: /(^|&)lifecycle(=|&|$)/,
      action: {
        kind: 'answer',
        status: 404,
        headers: { 'content-type': 'application/xml' },
        body: '<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchLifecycleConfiguration</Code><Message>The lifecycle configuration does not exist</Message></Error>',
      },
    });
    const role = await startPolicyProxy(fault.endpoint, statements);
    try {
      // Act
      const json = await init(s3Settings('denied', role.endpoint));
      const text = await init(s3Settings('denied', role.endpoint), false);

      // Assess: the write probe passed (the role may write objects); the lifecycle put was refused.
      expect(json.code, json.stderr).toBe(0);
      expect(role.denied.map((d) => d.action)).toContain('s3:PutLifecycleConfiguration');
      const warnings = json.stderr.split('\n').filter((l) => l.includes('warning'));
      expect(warnings).toEqual([
        expect.stringMatching(
          /^pgvault: warning: lifecycle rules of s3:\/\/pgvault-lifecycle\/denied not applied \(access to s3:\/\/pgvault-lifecycle\/denied was denied \(AccessDenied\) trying to set the bucket's lifecycle rules; .*\); the JSON to apply and the command are printed$/,
        ),
      ]);
      const out = JSON.parse(json.stdout);
      expect(out.ok).toBe(true);
      expect(out.lifecycle[0]).toMatchObject({
        provider: 's3',
        applied: false,
        command:
          'aws s3api put-bucket-lifecycle-configuration --bucket pgvault-lifecycle --lifecycle-configuration file://pgvault-lifecycle.json',
      });
      expect(out.lifecycle[0].document.Rules).toHaveLength(16);
      // Text: the line, the command, and the document as JSON a user can save and apply.
      expect(text.code, text.stderr).toBe(0);
      expect(text.stdout).toContain(
        `note  lifecycle rules s3://pgvault-lifecycle/denied: printed, not applied (access to`,
      );
      expect(text.stdout).toContain(
        `save this as pgvault-lifecycle.json, then run: ${out.lifecycle[0].command}`,
      );
      const printed = text.stdout.slice(text.stdout.indexOf('\n{') + 1);
      expect(JSON.parse(printed)).toEqual(out.lifecycle[0].document);
    } finally {
      await role.stop();
      fault.clearRules();
    }
  });
});

describe('Azure: printed (the management policy is an ARM resource)', () => {
  it('init against Azurite: exit 0, the management policy and the az command printed', async () => {
    const r = await init({
      PATH: process.env.PATH ?? '',
      CLUSTER_NAME: 'main',
      BACKUP_DIR: `${work.path}/azure`,
      CLOUD_PROVIDER: 'azure',
      CLOUD_BUCKET: azurite.container,
      CLOUD_PREFIX: 'vault',
      AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
      LOCAL_COPY: 'false',
      PGHOST: '127.0.0.1',
      PGPORT: '1',
    });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.ok).toBe(true);
    expect(out.lifecycle).toHaveLength(1);
    const [azure] = out.lifecycle;
    expect(azure).toMatchObject({
      provider: 'azure',
      applied: false,
      command:
        'az storage account management-policy create --account-name devstoreaccount1 --resource-group <resource-group> --policy @pgvault-lifecycle.json',
    });
    expect(azure.detail).toContain('Azure Resource Manager, which a data-plane credential');
    expect(azure.document.rules).toHaveLength(3);
    expect(azure.document.rules[0].definition.filters.prefixMatch[0]).toBe(
      'pgvault-lifecycle/vault/main/full/weekly/',
    );
  });
});
