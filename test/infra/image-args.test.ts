import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { describe, expect, it } from 'vitest';
import { DeployConfigError, type DeployConfigInput, parseDeployConfig } from '../../infra/config';
import { createDeployment } from '../../infra/stack';
import { testConfig } from './synth';

/**
 * The image asset's Docker build arguments, as `cdk deploy` hands them to `docker build` (the asset
 * manifest): Lambda bundling skipped, the Dockerfile asset kept (its context is only staged at synth).
 */
function imageBuildArgs(overrides: Partial<DeployConfigInput>): Record<string, string> {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const deployment = createDeployment(app, {
    config: testConfig(overrides),
    env: { account: '123456789012', region: 'eu-west-1' },
  });
  const assembly = app.synth();
  const manifest = JSON.parse(
    readFileSync(join(assembly.directory, `${deployment.shared.stackName}.assets.json`), 'utf8'),
  ) as {
    dockerImages: Record<string, { source: { dockerFile: string; dockerBuildArgs: Record<string, string> } }>;
  };
  const images = Object.values(manifest.dockerImages);
  expect(images.map((i) => i.source.dockerFile)).toEqual(['tasks/Dockerfile']);
  return images[0]!.source.dockerBuildArgs;
}

function rejection(input: Partial<DeployConfigInput>): string {
  const base = JSON.parse(JSON.stringify(testConfig())) as Record<string, unknown>;
  try {
    parseDeployConfig({ ...base, ...input }, 'cfg.json');
  } catch (err) {
    expect(err).toBeInstanceOf(DeployConfigError);
    return (err as Error).message;
  }
  throw new Error('configuration was accepted');
}

describe('PostgreSQL majors of the image (issue 12)', () => {
  it('builds the client tools of the newest configured server major, or the configured client major', () => {
    // Default: the example's servers, the client of the newest.
    expect(imageBuildArgs({})).toEqual({ PG_CLIENT_VERSION: '17', PG_SERVER_VERSIONS: '17' });
    // An 18 server: pg_dump 17 refuses it, so the client follows to 18.
    expect(imageBuildArgs({ postgresServerVersions: [15, 18] })).toEqual({
      PG_CLIENT_VERSION: '18',
      PG_SERVER_VERSIONS: '15 18',
    });
    // Per deployment: a newer client than any sandbox server, and a fleet without sandboxes.
    expect(imageBuildArgs({ postgresServerVersions: [16], postgresClientVersion: 18 })).toEqual({
      PG_CLIENT_VERSION: '18',
      PG_SERVER_VERSIONS: '16',
    });
    expect(imageBuildArgs({ postgresServerVersions: [] })).toEqual({
      PG_CLIENT_VERSION: '17',
      PG_SERVER_VERSIONS: '',
    });
  }, 240_000);

  it('refuses a client major older than a server major, in one line naming both', () => {
    const message = rejection({ postgresServerVersions: [16, 18], postgresClientVersion: 17 });
    expect(message.split('\n')).toHaveLength(1);
    expect(message).toContain('postgresClientVersion');
    expect(message).toContain(
      '17 is older than the newest of postgresServerVersions (18); pg_dump refuses a newer server: use 18 or later, or leave it out',
    );
    expect(rejection({ postgresClientVersion: 19 })).toContain('postgresClientVersion');
  });
});
