import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runPgvault } from '../helpers/cli';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { tempDir } from '../helpers/vault';

/**
 * Issue 11: AWS credentials written in the --config file (the guide keeps everything in one .env)
 * were ignored ("no AWS credentials found"). The built CLI runs with no AWS variable in its
 * environment and a HOME of its own, against s3rver, with the keys or a profile named only in the file.
 */
let work: Awaited<ReturnType<typeof tempDir>>;
let s3: S3TestServer;

function pgvault(args: string[]): Promise<CliRun> {
  // No AWS_* at all: only the config file can supply credentials.
  return runPgvault(
    args,
    {
      PATH: process.env.PATH ?? '',
      HOME: work.path,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    },
    work.path,
  );
}

function configFile(name: string, lines: string[]): string {
  const path = join(work.path, `${name}.env`);
  writeFileSync(
    path,
    [
      `BACKUP_DIR=${join(work.path, name)}`,
      'CLUSTER_NAME=main',
      'CLOUD_PROVIDER=s3',
      `CLOUD_BUCKET=${s3.bucket}`,
      `CLOUD_PREFIX=${name}`,
      `S3_ENDPOINT=${s3.endpoint}`,
      `AWS_DEFAULT_REGION=${s3.region}`,
      'LOCAL_COPY=false',
      ...lines,
    ].join('\n'),
  );
  return path;
}

beforeAll(async () => {
  work = await tempDir('pgvault-config-aws-');
  s3 = await startS3Server();
});

afterAll(async () => {
  await s3?.stop();
  await work?.remove();
});

describe('AWS credentials from the --config file', () => {
  it('AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the file reach the bucket, and are not printed', async () => {
    // Prepare
    const file = configFile('keys', [
      `AWS_ACCESS_KEY_ID=${s3.credentials.accessKeyId}`,
      `AWS_SECRET_ACCESS_KEY=${s3.credentials.secretAccessKey}`,
    ]);
    const none = configFile('none', []);

    // Act
    const withKeys = await pgvault(['--config', file, '--json', 'backup', 'init']);
    const without = await pgvault(['--config', none, '--json', 'backup', 'init']);

    // Assess
    expect(withKeys.code, withKeys.stderr + withKeys.stdout).toBe(0);
    expect(JSON.parse(withKeys.stdout)).toMatchObject({ ok: true });
    expect(withKeys.stdout + withKeys.stderr).not.toContain(s3.credentials.secretAccessKey);
    // The same file without keys fails as before: the keys were what made it work.
    expect(without.code).not.toBe(0);
    expect(without.stdout + without.stderr).toContain('no AWS credentials found');
  });

  it('AWS_PROFILE in the file selects that profile of ~/.aws/credentials', async () => {
    // Prepare
    mkdirSync(join(work.path, '.aws'), { recursive: true });
    writeFileSync(
      join(work.path, '.aws', 'credentials'),
      `[backups]\naws_access_key_id = ${s3.credentials.accessKeyId}\naws_secret_access_key = ${s3.credentials.secretAccessKey}\n`,
    );
    const file = configFile('profile', ['AWS_PROFILE=backups']);

    // Act
    const r = await pgvault(['--config', file, '--json', 'backup', 'init']);

    // Assess
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true });
  });
});
