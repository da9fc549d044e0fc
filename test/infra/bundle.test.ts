import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildStack, type CfnJson, testConfig } from './synth';

// The slow path `cdk synth` takes: esbuild bundles functions/*.ts, the image asset copies the Docker
// context, and CDK's own CloudFormation validation runs. One synth for the file.
describe('full synth (bundling, image asset, CloudFormation validation)', () => {
  it('bundles the five handlers, stages the cluster layer and a narrow Docker context', async () => {
    const { app, stack } = buildStack(testConfig(), { bundle: true, cfnValidation: true });
    const assembly = app.synth();
    const manifest = JSON.parse(readFileSync(join(assembly.directory, 'Pgvault.assets.json'), 'utf8'));

    const files = Object.values(
      manifest.files as Record<string, { source: { path: string; packaging?: string } }>,
    )
      .map((f) => f.source)
      .filter((s) => s.packaging === 'zip');
    // Five handler bundles and the cluster layer (the cluster list, outside the 4 KB environment).
    expect(files).toHaveLength(6);
    const layers = files.filter((s) =>
      existsSync(join(assembly.directory, s.path, 'pgvault', 'clusters.json')),
    );
    expect(layers).toHaveLength(1);
    const listed = JSON.parse(
      readFileSync(join(assembly.directory, layers[0]!.path, 'pgvault', 'clusters.json'), 'utf8'),
    ) as Array<{ name: string; taskDefinition: string }>;
    expect(listed.map((c) => [c.name, c.taskDefinition])).toEqual([
      ['main', 'Pgvault-backup-main'],
      ['orders', 'Pgvault-backup-orders'],
    ]);
    // The bundled dispatch handler reads that file (PGVAULT_CLUSTERS_FILE stands in for /opt/...): an
    // unknown cluster is refused naming the clusters it found there, before any AWS call.
    const template = assembly.getStackByName(stack.stackName).template as CfnJson;
    const dispatchId = stack.getLogicalId(stack.functions.functions.dispatch.node.defaultChild as never);
    const dispatchHash = String(template.Resources[dispatchId].Properties.Code.S3Key).replace(/\.zip$/, '');
    const dispatchPath = (manifest.files as Record<string, { source: { path: string } }>)[dispatchHash]!
      .source.path;
    const saved = process.env.PGVAULT_CLUSTERS_FILE;
    process.env.PGVAULT_CLUSTERS_FILE = join(assembly.directory, layers[0]!.path, 'pgvault', 'clusters.json');
    try {
      const bundled = require(join(assembly.directory, dispatchPath, 'index.js')) as {
        handler: (event: unknown) => Promise<unknown>;
      };
      const refused = await bundled.handler({ cluster: 'nope', command: ['backup', 'full', 'daily'] }).then(
        () => undefined,
        (err: unknown) => err as Error,
      );
      expect(refused?.message).toBe(
        'invalid payload: "cluster": nope is not a cluster of this deployment; use one of main, orders',
      );
      // What the Lambda log shows as errorType: the real class names, not minified ones (keepNames), up
      // the chain to core/errors.ts's UsageError and PgVaultError; the exit code rides along.
      expect(refused?.name).toBe('InvalidPayloadError');
      const chain: string[] = [];
      for (let c = refused?.constructor; c && c !== Error; c = Object.getPrototypeOf(c)) chain.push(c.name);
      expect(chain).toEqual(['InvalidPayloadError', 'UsageError', 'PgVaultError']);
      expect((refused as { exitCode?: number }).exitCode).toBe(2);
    } finally {
      if (saved === undefined) delete process.env.PGVAULT_CLUSTERS_FILE;
      else process.env.PGVAULT_CLUSTERS_FILE = saved;
    }

    for (const source of files.filter((s) => !layers.includes(s))) {
      const bundle = join(assembly.directory, source.path, 'index.js');
      expect(statSync(bundle).size).toBeGreaterThan(1000);
      const code = readFileSync(bundle, 'utf8');
      expect(code).toContain('handler');
      // Everything is bundled but optional modules required inside try/catch: pg-native (pg falls back to
      // JavaScript), the CRT signer (only for SigV4a, which pgvault does not use) and node-fetch's
      // `encoding` (charset conversion of text bodies, through the GCS client; pgvault reads bytes).
      const optional = ['pg-native', '@aws-sdk/signature-v4-crt', 'encoding'];
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
      dockerBuildArgs: { PG_CLIENT_VERSION: '17', PG_SERVER_VERSIONS: '17' },
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
    // Of tasks/, only what the image is built from: editing its README does not rebuild the image.
    expect(readdirSync(join(context, 'tasks')).sort()).toEqual(['Dockerfile', 'entry.sh']);
  }, 240_000);
});

function isBuiltin(name: string): boolean {
  return require('node:module').builtinModules.includes(name.split('/')[0]!);
}
