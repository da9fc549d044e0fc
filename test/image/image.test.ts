import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TempCluster } from '../../core/pg/cluster';
import { runPgvault } from '../helpers/cli';
import { createSampleData, startCluster } from '../helpers/pg';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { tempDir } from '../helpers/vault';

/*
 * The Fargate image (tasks/Dockerfile), built for real and run: buildah (Debian's package) builds it
 * with `--isolation chroot` and the vfs storage driver, FROM a local base that .ci/image-base makes
 * with debootstrap (no container registry is reachable here), PG_APT=debian (apt.postgresql.org is not
 * reachable either: the release's own PostgreSQL major). Then `pgvault backup full daily` runs inside
 * the image, through its entry (tasks/entry.sh) as its `node` user, with a task's environment, against
 * a throwaway PostgreSQL and s3rver on this machine; the backup must be in s3rver and verify.
 *
 * Cache: the base is built once per machine; the image is tagged by the hash of everything it is built
 * from (the Docker context the .dockerignore lets through, the build arguments, the base), so a run on
 * unchanged inputs reuses the image an earlier run built (PGVAULT_IMAGE_REBUILD=1 builds it anyway)
 * and still runs the backup in it. Skipped only when this machine cannot build (not root, buildah or
 * debootstrap missing: .ci/run installs both) or PGVAULT_IMAGE_TEST=skip, saying why.
 */

const exec = promisify(execFile);
const ROOT = resolve(__dirname, '../..');
const CACHE = process.env.PGVAULT_CI_CACHE ?? '/var/cache/pgvault-ci';
const STORAGE = [
  '--storage-driver',
  'vfs',
  '--root',
  join(CACHE, 'containers', 'storage'),
  '--runroot',
  join(CACHE, 'containers', 'run'),
];
const IMAGE_REPO = 'localhost/pgvault-ci-image';
const PASSPHRASE = 'image test passphrase, handed over as ECS hands its secrets';

function onPath(tool: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => dir && existsSync(join(dir, tool)));
}

function whyUnavailable(): string | undefined {
  if (process.env.PGVAULT_IMAGE_TEST === 'skip') return 'PGVAULT_IMAGE_TEST=skip';
  if (process.platform !== 'linux') return `buildah builds on Linux only (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'the chroot build and debootstrap need root';
  const missing = ['buildah', 'debootstrap'].filter((t) => !onPath(t));
  if (missing.length > 0)
    return `${missing.join(' and ')} not installed (apt-get install buildah debootstrap)`;
  return undefined;
}
const unavailable = whyUnavailable();
if (unavailable) console.warn(`image test SKIPPED: ${unavailable}`);

/** A command's output; on failure its stderr's tail in the error. */
async function run(file: string, args: string[], timeoutMs: number): Promise<string> {
  try {
    const { stdout } = await exec(file, args, { cwd: ROOT, maxBuffer: 64 << 20, timeout: timeoutMs });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    const tail = `${e.stdout ?? ''}\n${e.stderr ?? ''}`.trim().split('\n').slice(-30).join('\n');
    throw new Error(`${file} ${args.slice(0, 8).join(' ')} failed: ${e.message.split('\n')[0]}\n${tail}`);
  }
}

/** Files of the Docker context: what the repository's .dockerignore lets through (its `!` lines). */
function contextFiles(): string[] {
  const allowed = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('!'))
    .map((l) => l.slice(1).replace(/\/\*\*$/, ''));
  const files: string[] = ['.dockerignore'];
  const walk = (path: string) => {
    if (!existsSync(path)) return;
    if (statSync(path).isDirectory()) {
      for (const name of readdirSync(path).sort()) walk(join(path, name));
    } else files.push(relative(ROOT, path));
  };
  for (const entry of allowed) walk(join(ROOT, entry));
  return files;
}

/** The release's own PostgreSQL major (what PG_APT=debian installs): this machine runs the same release. */
function releaseMajor(): string {
  const majors = readdirSync('/usr/lib/postgresql')
    .filter((v) => /^\d+$/.test(v))
    .sort((a, b) => Number(b) - Number(a));
  if (majors.length === 0) throw new Error('no /usr/lib/postgresql/<major> on this machine');
  return majors[0]!;
}

interface Built {
  readonly image: string;
  readonly buildArgs: Record<string, string>;
  /** Seconds the build took; undefined when an earlier run's image (same inputs) was reused. */
  readonly buildSeconds?: number;
}

async function buildImage(): Promise<Built> {
  const started = Date.now();
  const base = (await run(join(ROOT, '.ci', 'image-base'), [], 15 * 60_000)).trim().split('\n').pop()!;
  const baseSeconds = (Date.now() - started) / 1000;
  const major = releaseMajor();
  const buildArgs = {
    NODE_IMAGE: base,
    PG_APT: 'debian',
    PG_CLIENT_VERSION: major,
    PG_SERVER_VERSIONS: major,
  };
  const hash = createHash('sha256').update(JSON.stringify(buildArgs));
  for (const file of contextFiles()) hash.update(`${file}\0`).update(readFileSync(join(ROOT, file)));
  const image = `${IMAGE_REPO}:${hash.digest('hex').slice(0, 16)}`;
  const present = await run('buildah', [...STORAGE, 'images', '--format', '{{.Name}}:{{.Tag}}'], 60_000);
  if (process.env.PGVAULT_IMAGE_REBUILD !== '1' && present.split('\n').includes(image)) {
    console.log(`image test: base ${base} (${baseSeconds.toFixed(0)} s), reusing ${image} (same inputs)`);
    return { image, buildArgs };
  }

  // npm ci in the build stage reads this machine's npm cache (warm after the host's npm ci), offline first.
  const npmCache = (await run('npm', ['config', 'get', 'cache'], 60_000)).trim();
  await mkdir(npmCache, { recursive: true });
  const npmrc = join(CACHE, 'npmrc');
  // What the cache lacks (a lock without resolved URLs needs packuments too) comes from the registry
  // through this machine's TLS setup: its CA bundle (which holds a proxy's CA where there is one).
  const hostCa = [
    process.env.NODE_EXTRA_CA_CERTS,
    process.env.SSL_CERT_FILE,
    '/etc/ssl/certs/ca-certificates.crt',
  ]
    .filter((f): f is string => f !== undefined && f !== '')
    .find((f) => existsSync(f));
  writeFileSync(
    npmrc,
    `prefer-offline=true\ncache=/root/.npm\n${hostCa ? 'cafile=/etc/pgvault-host-ca.crt\n' : ''}`,
  );
  const buildStarted = Date.now();
  await run(
    'buildah',
    [
      ...STORAGE,
      'bud',
      '--isolation',
      'chroot',
      '--pull=never',
      '--file',
      'tasks/Dockerfile',
      ...Object.entries(buildArgs).flatMap(([k, v]) => ['--build-arg', `${k}=${v}`]),
      '--volume',
      `${npmCache}:/root/.npm`,
      '--volume',
      `${npmrc}:/root/.npmrc:ro`,
      ...(hostCa ? ['--volume', `${hostCa}:/etc/pgvault-host-ca.crt:ro`] : []),
      '--tag',
      image,
      '.',
    ],
    25 * 60_000,
  );
  const buildSeconds = (Date.now() - buildStarted) / 1000;
  console.log(
    `image test: base ${base} (${baseSeconds.toFixed(0)} s), built ${image} in ${buildSeconds.toFixed(0)} s`,
  );
  // Earlier images of this test are of other inputs: only the newest is kept (vfs stores whole copies).
  for (const old of present.split('\n').filter((n) => n.startsWith(`${IMAGE_REPO}:`) && n !== image)) {
    await run('buildah', [...STORAGE, 'rmi', old], 120_000).catch(() => undefined);
  }
  return { image, buildArgs, buildSeconds };
}

describe.skipIf(unavailable !== undefined)('the Fargate image, built with buildah and run', () => {
  let built: Built;
  let cluster: TempCluster;
  let s3: S3TestServer;
  let work: { path: string; remove(): Promise<void> };
  let container: string | undefined;

  beforeAll(async () => {
    [built, cluster, s3, work] = await Promise.all([
      buildImage(),
      startCluster(),
      startS3Server(),
      tempDir('pgvault-image-'),
    ]);
    await createSampleData(cluster, 'app');
  }, 40 * 60_000);

  afterAll(async () => {
    if (container) await run('buildah', [...STORAGE, 'rm', container], 300_000).catch(() => undefined);
    await Promise.all([cluster?.stop(), s3?.stop(), work?.remove()]);
  }, 300_000);

  /** The task environment (as the task definition sets it for a cluster), s3rver for S3. */
  function taskEnvironment(): Record<string, string> {
    return {
      CLOUD_PROVIDER: 's3',
      CLOUD_BUCKET: s3.bucket,
      CLOUD_PREFIX: 'pgvault',
      S3_ENDPOINT: s3.endpoint,
      AWS_REGION: s3.region,
      LOCAL_COPY: 'false',
      ENCRYPTION: 'true',
      COMPRESSION: 'zstd',
      BACKUP_DIR: '/var/lib/pgvault',
      TMPDIR: '/tmp',
      CLUSTER_NAME: 'main',
      DEPLOYMENT_MODE: 'single-node',
      PGHOST: cluster.host,
      PGPORT: String(cluster.port),
      PGDATABASE: 'postgres',
    };
  }

  /**
   * One container of the image for the test's commands (vfs copies the whole image per container).
   * The secrets (passphrase, database user, S3 keys) are in no argv: a file in the container, readable
   * by its user only, that a shell exports before exec'ing the entry, as ECS puts secrets in the environment.
   */
  async function theContainer(): Promise<string> {
    if (container) return container;
    const ctr = (await run('buildah', [...STORAGE, 'from', '--pull=never', built.image], 300_000)).trim();
    const mount = (await run('buildah', [...STORAGE, 'mount', ctr], 60_000)).trim();
    const secrets = {
      ENCRYPTION_KEY: PASSPHRASE,
      PGUSER: cluster.superuser,
      AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    };
    const secretsFile = join(mount, 'run', 'pgvault-secrets');
    writeFileSync(
      secretsFile,
      Object.entries(secrets)
        .map(([k, v]) => `export ${k}='${v.replaceAll("'", "'\\''")}'\n`)
        .join(''),
      { mode: 0o400 },
    );
    await run('chown', ['1000:1000', secretsFile], 10_000);
    await run('buildah', [...STORAGE, 'umount', ctr], 60_000);
    container = ctr;
    return ctr;
  }

  /** Runs the image's entry with pgvault's arguments (raw: the command itself) as the image's user. */
  async function inImage(
    args: string[],
    raw = false,
  ): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const ctr = await theContainer();
    const env = Object.entries(taskEnvironment()).flatMap(([k, v]) => ['--env', `${k}=${v}`]);
    return new Promise((done) => {
      const child = spawn(
        'buildah',
        [
          ...STORAGE,
          'run',
          '--isolation',
          'chroot',
          ...env,
          ctr,
          '--',
          'sh',
          '-c',
          raw ? '"$@"' : '. /run/pgvault-secrets && exec /usr/local/bin/pgvault-entry "$@"',
          'pgvault-entry',
          ...args,
        ],
        { cwd: ROOT },
      );
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => {
        stdout += c.toString();
      });
      child.stderr.on('data', (c: Buffer) => {
        stderr += c.toString();
      });
      child.on('close', (code) => done({ code, stdout, stderr }));
    });
  }

  it(
    'runs `pgvault backup full daily` in the built image: the backup is in S3, verifies and restores in the image',
    async () => {
      // Prepare: the image is what the build arguments asked for.
      const probe = await inImage(['--version']);
      expect(probe.code, probe.stderr).toBe(0);

      // Act
      const started = Date.now();
      const backup = await inImage(['backup', 'full', 'daily']);
      const backupSeconds = (Date.now() - started) / 1000;
      console.log(
        `image test: build ${built.buildSeconds === undefined ? 'reused' : `${built.buildSeconds.toFixed(0)} s`}, backup in the image ${backupSeconds.toFixed(1)} s`,
      );

      // Assess: the entry's line, exit 0, the objects in s3rver under the cluster's folder.
      expect(backup.code, `${backup.stdout}\n${backup.stderr}`).toBe(0);
      expect(backup.stderr).toContain(
        `pgvault task: cluster main (single-node at ${cluster.host}:${cluster.port}): pgvault backup full daily`,
      );
      expect(backup.stderr).not.toContain(PASSPHRASE);
      const client = new S3Client({
        endpoint: s3.endpoint,
        region: s3.region,
        forcePathStyle: true,
        credentials: s3.credentials,
      });
      const listed = await client.send(
        new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: 'pgvault/main/full/daily/' }),
      );
      client.destroy();
      const keys = (listed.Contents ?? []).map((o) => o.Key!);
      expect(keys.some((k) => k.includes('app'))).toBe(true);
      expect(keys.some((k) => k.endsWith('manifest.json'))).toBe(true);

      // The image's own pgvault lists it complete; the pg_dump inside was the requested major.
      const list = await inImage(['restore', 'list', '--json']);
      expect(list.code, list.stderr).toBe(0);
      const backups = (
        JSON.parse(list.stdout) as { backups: Array<{ id: string; state: string; databases: string[] }> }
      ).backups;
      expect(backups.map((b) => [b.state, b.databases.includes('app')])).toEqual([['complete', true]]);
      const id = backups[0]!.id;
      expect(id).toMatch(/^full-daily-/);
      const tools = await inImage(['pg_dump', '--version'], true);
      expect(tools.stdout).toContain(`(PostgreSQL) ${built.buildArgs.PG_CLIENT_VERSION}.`);

      // This checkout's CLI, outside the image, verifies it: decrypts, decompresses, parses and recounts.
      const verify = await runPgvault(
        ['verify', 'file', id],
        {
          PATH: process.env.PATH ?? '',
          HOME: work.path,
          ...taskEnvironment(),
          BACKUP_DIR: join(work.path, 'backups'),
          TMPDIR: work.path,
          ENCRYPTION_KEY: PASSPHRASE,
          PGUSER: cluster.superuser,
          AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
          AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
        },
        work.path,
      );
      expect(verify.code, `${verify.stdout}\n${verify.stderr}`).toBe(0);

      // The daily deep verification, in the image: restores into a scratch server the task starts itself
      // from the image's server packages, as its `node` user, and validates the row counts.
      const deep = await inImage(['verify', 'restore', 'latest']);
      expect(deep.code, `${deep.stdout}\n${deep.stderr}`).toBe(0);
      const databases = await cluster.query<{ datname: string }>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'pgvault_test%'",
      );
      expect(databases).toEqual([]);
    },
    10 * 60_000,
  );
});
