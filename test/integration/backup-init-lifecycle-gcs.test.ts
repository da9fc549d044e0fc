import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runPgvault } from '../helpers/cli';
import { type GcsStandIn, startGcsStandIn } from '../helpers/gcs-server';
import { tempDir } from '../helpers/vault';

/**
 * `pgvault backup init` (the built CLI; `npm run build` first) and a GCS repository's lifecycle rules,
 * through the real @google-cloud/storage client against the GCS stand-in (test/helpers/gcs-server.ts,
 * a JSON-API server written for the tests: no GCS emulator can be installed here). The stand-in
 * keeps the bucket's lifecycle (bucket GET and PATCH, as the JSON API) and refuses the PATCH with
 * GCS's 403 for a credential without storage.buckets.update when told to. Not checked here: that GCS
 * itself accepts the document (its structure: test/unit/lifecycle-rules.test.ts).
 */
let gcs: GcsStandIn;
let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  [gcs, work] = await Promise.all([startGcsStandIn('pgvault-lifecycle'), tempDir('pgvault-init-gcs-')]);
});
afterAll(async () => {
  await Promise.all([gcs?.stop(), work?.remove()]);
});
beforeEach(() => {
  gcs.denyBucketUpdate(false);
  gcs.lifecycle = [];
});

function settings(prefix: string, cluster = 'main'): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '',
    CLUSTER_NAME: cluster,
    BACKUP_DIR: `${work.path}/${prefix}-${cluster}`,
    CLOUD_PROVIDER: 'gcs',
    CLOUD_BUCKET: gcs.bucket,
    CLOUD_PREFIX: prefix,
    STORAGE_EMULATOR_HOST: gcs.endpoint,
    LOCAL_COPY: 'false',
    // No server: the archiving check says it skipped.
    PGHOST: '127.0.0.1',
    PGPORT: '1',
  };
}

const init = (env: Record<string, string>, extra: string[] = []) =>
  runPgvault(['backup', 'init', '--json', ...extra], env, work.path);

type Rule = { action: { type: string; storageClass?: string }; condition: Record<string, unknown> };
const prefixesOf = (r: Rule) => (r.condition.matchesPrefix as string[] | undefined) ?? [];

/** Another tool's rule (no prefix), another cluster's pgvault rule, and a stale rule of `main`. */
function existingRules(prefix: string): Rule[] {
  return [
    { action: { type: 'Delete' }, condition: { age: 5, matchesPrefix: ['logs/'] } },
    { action: { type: 'Delete' }, condition: { age: 3, isLive: false } },
    { action: { type: 'Delete' }, condition: { age: 77, matchesPrefix: [`${prefix}/other/full/daily/`] } },
    { action: { type: 'Delete' }, condition: { age: 999, matchesPrefix: [`${prefix}/main/full/daily/`] } },
  ];
}

describe('GCS: applied where the credentials may', () => {
  it("merges this cluster's rules into the bucket's lifecycle and patches it; other rules kept", async () => {
    // Prepare
    gcs.lifecycle = existingRules('applied');
    const patchesBefore = gcs.bucketPatches();

    // Act
    const r = await init(settings('applied'));

    // Assess: exit 0, applied, no warning; the bucket now holds the other rules as they were, not the
    // stale rule of main, and pgvault's rules scoped to applied/main/ (NEARLINE after 30 days,
    // expiry after the longest hold 186 days + 60).
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain('warning');
    const out = JSON.parse(r.stdout);
    expect(out.lifecycle).toHaveLength(1);
    expect(out.lifecycle[0]).toMatchObject({
      provider: 'gcs',
      applied: true,
      target: `gs://${gcs.bucket}/applied`,
    });
    expect(out.lifecycle[0].detail).toBe(
      "applied: 4 rules for applied/main/; the bucket's 3 other rule(s) kept",
    );
    expect(gcs.bucketPatches()).toBe(patchesBefore + 1);
    const rules = gcs.lifecycle as Rule[];
    expect(rules.slice(0, 3)).toEqual(existingRules('applied').slice(0, 3));
    const ours = rules.slice(3);
    expect(ours).toHaveLength(4);
    expect(ours.every((x) => prefixesOf(x).every((p) => p.startsWith('applied/main/')))).toBe(true);
    expect(rules.some((x) => x.condition.age === 999)).toBe(false);
    expect(ours).toContainEqual({
      action: { type: 'SetStorageClass', storageClass: 'NEARLINE' },
      condition: expect.objectContaining({ age: 30, matchesStorageClass: ['STANDARD'] }),
    });
    expect(
      ours.find((x) => x.condition.age === 246 && prefixesOf(x).includes('applied/main/full/daily/')),
    ).toBeDefined();
    expect(out.lifecycle[0].document).toEqual({ lifecycle: { rule: rules } });
  });

  it('writes nothing when the rules are already in place (a second init)', async () => {
    // Prepare: a first init put them.
    const first = await init(settings('again'));
    expect(first.code, first.stderr).toBe(0);
    const patches = gcs.bucketPatches();

    // Act
    const second = await init(settings('again'));

    // Assess
    expect(second.code, second.stderr).toBe(0);
    const out = JSON.parse(second.stdout);
    expect(out.lifecycle[0]).toMatchObject({
      applied: true,
      detail: 'already in place: 4 rules for again/main/',
    });
    expect(gcs.bucketPatches()).toBe(patches);
  });

  it("a second cluster's init keeps the first cluster's rules", async () => {
    // Act
    const a = await init(settings('two', 'alpha'));
    const b = await init(settings('two', 'beta'));

    // Assess
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    const rules = gcs.lifecycle as Rule[];
    expect(rules).toHaveLength(8);
    expect(rules.filter((x) => prefixesOf(x)[0]!.startsWith('two/alpha/'))).toHaveLength(4);
    expect(rules.filter((x) => prefixesOf(x)[0]!.startsWith('two/beta/'))).toHaveLength(4);
  });
});

describe('GCS: printed where they may not', () => {
  it('403 (no storage.buckets.update): exit 0, one warning line, the JSON and the gcloud command printed', async () => {
    // Prepare
    gcs.denyBucketUpdate(true);
    gcs.lifecycle = existingRules('denied');
    const patches = gcs.bucketPatches();

    // Act
    const json = await init(settings('denied'));
    const text = await runPgvault(['backup', 'init'], settings('denied'), work.path);

    // Assess: nothing changed on the bucket; one warning line naming the refusal; the JSON carries the
    // whole merged lifecycle to apply (the bucket's other rules included), and the command.
    expect(json.code, json.stderr).toBe(0);
    expect(gcs.bucketPatches()).toBe(patches);
    expect(gcs.lifecycle).toEqual(existingRules('denied'));
    const warnings = json.stderr.split('\n').filter((l) => l.includes('warning'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(
      /^pgvault: warning: lifecycle rules of gs:\/\/pgvault-lifecycle\/denied not applied \(.*storage\.buckets\.update.*\); the JSON to apply and the command are printed$/,
    );
    const out = JSON.parse(json.stdout);
    expect(out.lifecycle[0]).toMatchObject({
      provider: 'gcs',
      applied: false,
      command: 'gcloud storage buckets update gs://pgvault-lifecycle --lifecycle-file=pgvault-lifecycle.json',
    });
    const doc = out.lifecycle[0].document.lifecycle.rule as Rule[];
    expect(doc.slice(0, 3)).toEqual(existingRules('denied').slice(0, 3));
    expect(doc).toHaveLength(7);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(
      'save this as pgvault-lifecycle.json, then run: gcloud storage buckets update gs://pgvault-lifecycle --lifecycle-file=pgvault-lifecycle.json',
    );
    expect(text.stdout).toContain('"matchesPrefix"');
  });

  it('--print-lifecycle: printed, the bucket not touched, no warning', async () => {
    const patches = gcs.bucketPatches();
    const r = await init(settings('printed'), ['--print-lifecycle']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain('warning');
    expect(gcs.bucketPatches()).toBe(patches);
    expect(gcs.lifecycle).toEqual([]);
    const out = JSON.parse(r.stdout);
    expect(out.lifecycle[0]).toMatchObject({ applied: false });
    expect(out.lifecycle[0].document.lifecycle.rule).toHaveLength(4);
  });
});
