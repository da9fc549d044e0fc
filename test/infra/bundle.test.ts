import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildStack, type CfnJson, testConfig } from './synth';

// The slow path `cdk synth` takes: esbuild bundles functions/*.ts, the image asset copies the Docker
// context, and CDK's own CloudFormation validation runs. One synth for the file.
describe('full synth (bundling, image asset, CloudFormation validation)', () => {
  it('bundles the five handlers and stages a narrow Docker context', () => {
    const { app } = buildStack(testConfig(), { bundle: true, cfnValidation: true });
    const assembly = app.synth();
    const manifest = JSON.parse(readFileSync(join(assembly.directory, 'Pgvault.assets.json'), 'utf8'));

    const files = Object.values(
      manifest.files as Record<string, { source: { path: string; packaging?: string } }>,
    )
      .map((f) => f.source)
      .filter((s) => s.packaging === 'zip');
    expect(files).toHaveLength(5);
    for (const source of files) {
      const bundle = join(assembly.directory, source.path, 'index.js');
      expect(statSync(bundle).size).toBeGreaterThan(1000);
      const code = readFileSync(bundle, 'utf8');
      expect(code).toContain('handler');
      // Everything is bundled but optional modules required inside try/catch: pg-native (pg falls back to
      // JavaScript) and the CRT signer (only for SigV4a, which pgvault does not use).
      const optional = ['pg-native', '@aws-sdk/signature-v4-crt'];
      const required = [...code.matchAll(/require\("([^".][^"]*)"\)/g)].map((m) => m[1]!);
      expect(
        required.filter((r) => !r.startsWith('node:') && !isBuiltin(r) && !optional.includes(r)),
      ).toEqual([]);
    }

    const images = Object.values(manifest.dockerImages as Record<string, { source: CfnJson }>);
    expect(images).toHaveLength(1);
    const image = images[0]!.source;
    expect(image).toMatchObject({
      dockerFile: 'tasks/Dockerfile',
      platform: 'linux/arm64',
      dockerBuildArgs: { PG_SERVER_VERSIONS: '17' },
    });
    const context = join(assembly.directory, image.directory);
    const top = readdirSync(context).sort();
    for (const needed of [
      'bin',
      'cli',
      'core',
      'package-lock.json',
      'package.json',
      'tasks',
      'tsconfig.json',
    ]) {
      expect(top).toContain(needed);
    }
    for (const absent of ['node_modules', 'test', 'bench', 'cdk.out', '.git', 'dist', 'infra', 'functions']) {
      expect(top).not.toContain(absent);
    }
    expect(existsSync(join(context, 'tasks', 'Dockerfile'))).toBe(true);
  }, 240_000);
});

function isBuiltin(name: string): boolean {
  return require('node:module').builtinModules.includes(name.split('/')[0]!);
}
