import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir, totalmem, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import type { CatalogEntry } from '../catalog/catalog';
import { describeChain } from '../catalog/chain';
import type { StoredObject } from '../catalog/manifest';
import { corruptionBehindProgramFailure, decryptionFor, readObjectIntoProgram } from '../catalog/objects';
import { removeOnExit } from '../cleanup';
import { type Config, loadConfig, type PgConnection } from '../config';
import { diskFullError, ensureFreeSpace } from '../disk';
import {
  errorMessage,
  IntegrityError,
  PgVaultError,
  PostgresError,
  StorageError,
  UsageError,
} from '../errors';
import { asServerUser, chownToServerUser, SERVER_OS_USER, serverOsUser, TempCluster } from '../pg/cluster';
import { findPgBinary, pgEnv, withClient, withoutLibpq } from '../pg/tools';
import { startTool } from '../stream/process';
import type { Reporter } from '../vault';
import { createDatabase, dbnameConninfo, dropDatabase } from './database';

/*
 * The pieces of a physical restore: a base backup extracted into a data directory as the server's
 * OS user, the recovery settings, the restore_command with the config it runs with, and a sandbox
 * server that recovers a copy privately (its own socket, no TCP) so one database can be copied out.
 */

/** Config keys written for restore_command; the sandbox server's environment drops them, so the file rules. */
const CONFIG_KEYS = [
  'BACKUP_DIR',
  'WAL_ARCHIVE_DIR',
  'COMPRESSION',
  'COMPRESSION_LEVEL',
  'PARALLEL_JOBS',
  'ENCRYPTION',
  'ENCRYPTION_KEY',
  'ENCRYPTION_KEY_FILE',
  'ENCRYPTION_KEYS_RETIRED_FILE',
  'ENCRYPTION_ITERATIONS',
  'CLOUD_PROVIDER',
  'CLOUD_BUCKET',
  'CLOUD_PREFIX',
  'S3_ENDPOINT',
  'S3_REQUEST_TIMEOUT',
  'S3_MAX_ATTEMPTS',
  'AZURE_STORAGE_ACCOUNT',
  'AZURE_STORAGE_CONNECTION_STRING',
  'AZURE_STORAGE_KEY',
  'AZURE_STORAGE_SAS_TOKEN',
  'STORAGE_EMULATOR_HOST',
  'GOOGLE_APPLICATION_CREDENTIALS',
  'GOOGLE_CLOUD_PROJECT',
  'AWS_DEFAULT_REGION',
  'LOCAL_COPY',
  'DEPLOYMENT_MODE',
  'CLUSTER_NAME',
  'PG_BIN_DIR',
  'WAL_PREFETCH',
  'SPOOL_DIR',
  'PGVAULT_CONFIG',
] as const;

/** Quotes one word for /bin/sh, which runs restore_command. */
export function shellWord(word: string): string {
  return /^[A-Za-z0-9_./=:,@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** A postgresql.conf string literal. */
export function confString(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** A value in the KEY=VALUE config format (node:util parseEnv): quoted so '#' and spaces survive. */
function envValue(value: string): string {
  if (!value.includes("'")) return `'${value}'`;
  if (!value.includes('"') && !value.includes('\\')) return `"${value}"`;
  return `\`${value}\``;
}

/** This installation's bin/pgvault.js, found upwards from this module (core/restore or dist/core/restore). */
export function pgvaultBin(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'bin', 'pgvault.js');
    if (existsSync(candidate) && existsSync(join(dir, 'package.json'))) {
      if (!existsSync(join(dir, 'dist', 'cli', 'main.js'))) {
        throw new UsageError(
          `${candidate} needs the built CLI (${join(dir, 'dist', 'cli', 'main.js')}); run npm run build in ${dir}`,
        );
      }
      return candidate;
    }
    dir = dirname(dir);
  }
  throw new UsageError(
    'cannot find bin/pgvault.js above this module; run pgvault from its installation (npm install -g, or the repository)',
  );
}

/** The effective settings restore_command needs, as a config file's text (AWS keys included when configured). */
// No libpq setting (config.pg, LIBPQ_KEYS) goes in: restore_command reads the archive, never a database.
export function restoreCommandConfigText(config: Config, keyFile: string | undefined): string {
  const lines =
    config.repositories === undefined
      ? restoreCommandLines(config, keyFile)
      : repositoryLines(config, keyFile);
  return [
    "# Written by pgvault restore pitr for restore_command (0600, the server user's). The key stays in",
    "# ENCRYPTION_KEY_FILE; AWS credentials given in pgvault's config are here, else the SDK's chain.",
    ...lines.filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${envValue(String(v))}`),
    '',
  ].join('\n');
}

type ConfigLine = [string, string | number | boolean | undefined];

/** Keys that say which single target there is: with repositories, REPO<n>_* says it instead. */
const SINGLE_TARGET_ONLY = new Set(['CLOUD_PROVIDER', 'CLOUD_BUCKET', 'CLOUD_PREFIX', 'LOCAL_COPY']);

/**
 * Several repositories (REPO<n>_*): the shared settings, then each repository as REPO<n>_TYPE, its
 * place and holds, and REPO<n>_<KEY> for each setting of its own that differs from the shared one
 * (its region, endpoint, credentials), so restore_command reads every repository in the same order,
 * falling back from one to the next, with nothing the reads never need.
 */
function repositoryLines(config: Config, keyFile: string | undefined): ConfigLine[] {
  const shared = restoreCommandLines(config, keyFile).filter(([k]) => !SINGLE_TARGET_ONLY.has(k));
  const sharedValue = new Map(shared.map(([k, v]) => [k, v === undefined ? undefined : String(v)]));
  const lines: ConfigLine[] = [...shared];
  for (const repo of config.repositories ?? []) {
    const n = `REPO${repo.n}_`;
    lines.push([`${n}TYPE`, repo.type]);
    if (repo.type === 'file') lines.push([`${n}PATH`, repo.config.backupDir]);
    else {
      lines.push([`${n}BUCKET`, repo.config.cloud.bucket]);
      if (repo.config.cloud.prefix !== '') lines.push([`${n}PREFIX`, repo.config.cloud.prefix]);
    }
    lines.push([`${n}HOLDS`, repo.holds.join(',')]);
    for (const [k, v] of restoreCommandLines(repo.config, keyFile)) {
      if (SINGLE_TARGET_ONLY.has(k) || k === 'BACKUP_DIR' || v === undefined) continue;
      if (String(v) !== sharedValue.get(k)) lines.push([`${n}${k}`, v]);
    }
  }
  return lines;
}

function restoreCommandLines(config: Config, keyFile: string | undefined): ConfigLine[] {
  return [
    ['BACKUP_DIR', config.backupDir],
    ['COMPRESSION', config.compression],
    ['COMPRESSION_LEVEL', config.compressionLevel],
    ['PARALLEL_JOBS', config.parallelJobs],
    ['ENCRYPTION', config.encryption.enabled],
    ['ENCRYPTION_KEY_FILE', keyFile],
    ['ENCRYPTION_KEYS_RETIRED_FILE', config.encryption.retiredFile],
    ['ENCRYPTION_ITERATIONS', config.encryption.iterations],
    ['CLOUD_PROVIDER', config.cloud.provider],
    ['CLOUD_BUCKET', config.cloud.bucket],
    ['CLOUD_PREFIX', config.cloud.prefix === '' ? undefined : config.cloud.prefix],
    ['S3_ENDPOINT', config.cloud.s3Endpoint],
    ['AWS_DEFAULT_REGION', config.cloud.region],
    // A stalled endpoint must time out in recovery as it does here (S3_REQUEST_TIMEOUT, S3_MAX_ATTEMPTS).
    ['S3_REQUEST_TIMEOUT', config.cloud.requestTimeoutSeconds],
    ['S3_MAX_ATTEMPTS', config.cloud.maxAttempts],
    // Credentials and profile given in pgvault's config (a file too): the server's environment is not
    // ours, and the SDK's chain never reads pgvault's config file. From the environment they are in the
    // server's environment already (sandboxServerEnv keeps AWS_*), and written here all the same.
    ['AWS_PROFILE', config.cloud.profile],
    ['AWS_ACCESS_KEY_ID', config.cloud.credentials?.accessKeyId],
    ['AWS_SECRET_ACCESS_KEY', config.cloud.credentials?.secretAccessKey],
    ['AWS_SESSION_TOKEN', config.cloud.credentials?.sessionToken],
    // The same for Azure (CLOUD_PROVIDER=azure): the account and the one way to sign in that was given.
    ['AZURE_STORAGE_ACCOUNT', config.cloud.azure?.account],
    ['AZURE_STORAGE_CONNECTION_STRING', config.cloud.azure?.connectionString],
    ['AZURE_STORAGE_KEY', config.cloud.azure?.accountKey],
    ['AZURE_STORAGE_SAS_TOKEN', config.cloud.azure?.sasToken],
    // GCS (CLOUD_PROVIDER=gcs): the endpoint and the key file's path (never its contents; the server's
    // OS user must be able to read it), or nothing for a workload identity.
    ['STORAGE_EMULATOR_HOST', config.cloud.gcs?.endpoint],
    ['GOOGLE_APPLICATION_CREDENTIALS', config.cloud.gcs?.keyFile],
    ['GOOGLE_CLOUD_PROJECT', config.cloud.gcs?.projectId],
    ['LOCAL_COPY', config.localCopy],
    // patroni is left out: it needs PATRONI_URL (and maybe its password) to parse, and restore_command
    // never asks the cluster anything (a restore of a Patroni cluster's base backup failed on it).
    ['DEPLOYMENT_MODE', config.deploymentMode === 'patroni' ? undefined : config.deploymentMode],
    ['CLUSTER_NAME', config.clusterName],
    ['PG_BIN_DIR', config.pgBinDir],
    // Known to restore wal (prefetch); read loosely so this file does not depend on its exact shape.
    ['WAL_PREFETCH', (config as { walPrefetch?: number }).walPrefetch],
  ];
}

export interface RestoreCommandFiles {
  readonly configFile: string;
  readonly keyFile?: string;
  /** True when the key was given inline and this command wrote it to keyFile. */
  readonly keyFileWritten: boolean;
  /** True when configFile holds AWS keys or an Azure secret from pgvault's config (restoreCommandConfigText). */
  readonly credentialsWritten: boolean;
  /** The restore_command line, ready for postgresql.auto.conf (unquoted). */
  readonly restoreCommand: string;
  /** The same pgvault with the same config, for another subcommand (archive_command of a copy). */
  readonly pgvaultCommand: string;
  /** Removes the files this command wrote. */
  remove(): Promise<void>;
}

/**
 * Writes the config file restore_command runs with (0600, owned by the server's OS user) into
 * `dir`, and the key file when the key was given inline; the key never goes into postgresql.auto.conf.
 */
export async function writeRestoreCommandFiles(
  config: Config,
  dir: string,
  stem: string,
): Promise<RestoreCommandFiles> {
  const bin = pgvaultBin();
  const configFile = join(dir, `${stem}.conf`);
  const written: string[] = [];
  let keyFile: string | undefined;
  let keyFileWritten = false;
  const passphrase = config.encryption.passphrase;
  if (passphrase !== undefined) {
    if (config.encryption.keyFile !== undefined) keyFile = config.encryption.keyFile;
    else {
      keyFile = join(dir, `${stem}.key`);
      await rm(keyFile, { force: true });
      // The reader strips one trailing newline, so a passphrase that ends with one survives.
      await writeFile(keyFile, `${passphrase}\n`, { mode: 0o600, flag: 'wx' });
      await chownToServerUser(keyFile);
      written.push(keyFile);
      keyFileWritten = true;
    }
  }
  await rm(configFile, { force: true });
  await writeFile(configFile, restoreCommandConfigText(config, keyFile), { mode: 0o600, flag: 'wx' });
  await chownToServerUser(configFile);
  written.push(configFile);
  // The file must reproduce this configuration on its own (the environment of the server is not ours).
  const reread = loadConfig({ configFile, env: {}, cwd: dir });
  if (reread.backupDir !== config.backupDir || reread.clusterName !== config.clusterName) {
    throw new PgVaultError(
      `the restore_command config ${configFile} does not read back as written; report this`,
    );
  }
  // The sh launcher beside bin/pgvault.js serves prefetched WAL without starting Node (recovery asks
  // for one file at a time); it is told which node to run, since the server's PATH may lack it.
  const launcher = join(dirname(bin), 'pgvault');
  const restoreCommand = `PGVAULT_NODE=${shellWord(process.execPath)} ${[launcher, '--config', configFile].map(shellWord).join(' ')}`;
  return {
    configFile,
    keyFile,
    keyFileWritten,
    credentialsWritten: [config, ...(config.repositories ?? []).map((r) => r.config)].some(
      (c) =>
        c.cloud.credentials !== undefined ||
        c.cloud.azure?.connectionString !== undefined ||
        c.cloud.azure?.accountKey !== undefined ||
        c.cloud.azure?.sasToken !== undefined,
    ),
    restoreCommand: `${restoreCommand} restore wal %f %p`,
    pgvaultCommand: restoreCommand,
    remove: async () => {
      await Promise.all(written.map((f) => rm(f, { force: true })));
    },
  };
}

function runAs(file: string, args: string[]): Promise<boolean> {
  const cmd = asServerUser(file, args);
  return new Promise((resolvePromise) => {
    execFile(cmd.file, cmd.args, { timeout: 30_000 }, (err) => resolvePromise(err === null));
  });
}

/**
 * When we are root the server, and so restore_command, runs as the postgres OS user: everything
 * it touches must be readable by that user, or recovery would fail with a message buried in the
 * server log. Checked up front, naming the path.
 */
export async function assertServerUserCanUse(
  config: Config,
  extra: ReadonlyArray<{ readonly path: string; readonly what: string; readonly write?: boolean }>,
): Promise<void> {
  if (serverOsUser() === undefined) return;
  const bin = pgvaultBin();
  const root = dirname(dirname(bin));
  const checks: Array<{ path: string; what: string; flag: string }> = [
    { path: process.execPath, what: 'node', flag: '-x' },
    { path: bin, what: 'pgvault', flag: '-r' },
    { path: join(dirname(bin), 'pgvault'), what: "pgvault's launcher", flag: '-x' },
    { path: join(root, 'dist', 'cli', 'main.js'), what: "pgvault's built CLI", flag: '-r' },
    { path: join(root, 'node_modules'), what: "pgvault's node_modules", flag: '-x' },
  ];
  if (config.cloud.provider === 'none' || config.localCopy) {
    for (const [path, what] of [
      [config.backupDir, 'BACKUP_DIR'],
      [config.walArchiveDir, 'WAL_ARCHIVE_DIR'],
    ] as const) {
      if (existsSync(path)) checks.push({ path, what, flag: '-x' });
    }
  }
  for (const e of extra) checks.push({ path: e.path, what: e.what, flag: e.write ? '-w' : '-r' });
  const results = await Promise.all(checks.map((c) => runAs('test', [c.flag, c.path])));
  const failed = checks.filter((_, i) => !results[i]);
  if (failed.length > 0) {
    const f = failed[0]!;
    throw new UsageError(
      `the ${SERVER_OS_USER} OS user, which runs the server and its restore_command, cannot ${f.flag === '-w' ? 'write' : f.flag === '-x' ? 'reach' : 'read'} ${f.what} (${f.path}); grant it access (chmod/chown the path and its parent directories) and retry; nothing was restored`,
    );
  }
}

/** Removes everything inside a directory, keeping the directory (its owner and mode stay). */
export async function clearDirectory(dir: string): Promise<void> {
  await stopProcessesUsing(dir);
  const entries = await readdir(dir).catch(() => [] as string[]);
  await Promise.all(entries.map((e) => rm(join(dir, e), REMOVE_TREE)));
}

/**
 * A helper of the server's (the WAL prefetcher restore_command starts) may still be writing into
 * the tree for a moment after the server stopped; retrying outlasts it.
 */
const REMOVE_TREE = { recursive: true, force: true, maxRetries: 10, retryDelay: 100 } as const;

export interface ExtractOptions {
  readonly entry: CatalogEntry;
  readonly object: StoredObject;
  readonly config: Config;
  readonly reporter: Reporter;
  readonly dataDir: string;
  /**
   * The chain when the backup is incremental (full first, this one last; ./chain.ts
   * resolveBaseChain): each member is extracted beside dataDir, then pg_combinebackup writes the
   * combined backup into dataDir. Without it an incremental backup is refused.
   */
  readonly chain?: readonly CatalogEntry[];
  /** The chain already extracted (stageBaseChain), to combine into dataDir. */
  readonly staged?: StagedChain;
  /** A throwaway directory (a sandbox): pg_combinebackup need not fsync what it writes. */
  readonly noSync?: boolean;
}

/** Every member of a chain extracted into its own folder under `root`, full first. */
export interface StagedChain {
  readonly chain: readonly CatalogEntry[];
  readonly root: string;
  readonly dirs: readonly string[];
  /** "full X + incr Y + incr Z". */
  readonly description: string;
  remove(): Promise<void>;
}

/**
 * Extracts every member of a chain into a new folder under `parentDir` (each read and checked as a
 * restore reads any base backup: a corrupt or missing object fails here, and the folder is removed),
 * so nothing is written to the restore's target until the whole chain has been read.
 */
export async function stageBaseChain(options: {
  readonly chain: readonly CatalogEntry[];
  readonly config: Config;
  readonly reporter: Reporter;
  readonly parentDir: string;
}): Promise<StagedChain> {
  const { chain, config, reporter } = options;
  const root = await mkdtemp(join(options.parentDir, '.pgvault-chain-'));
  const forget = removeOnExit(root);
  const remove = async () => {
    await rm(root, REMOVE_TREE);
    forget();
  };
  try {
    await chownToServerUser(root);
    const dirs: string[] = [];
    for (const [i, entry] of chain.entries()) {
      const object = entry.manifest.objects.find((o) => o.kind === 'base');
      if (object === undefined)
        throw new IntegrityError(`backup ${entry.manifest.id} lists no base backup object`);
      const dir = join(root, `${i}`);
      await mkdir(dir, { mode: 0o700 });
      await chownToServerUser(dir);
      reporter.info(`fetching chain member ${i + 1}/${chain.length}: ${entry.manifest.id}`);
      try {
        await extractOneBaseBackup({ entry, object, config, reporter, dataDir: dir });
      } catch (err) {
        if (err instanceof IntegrityError) {
          throw new IntegrityError(
            `the chain of ${chain.at(-1)!.manifest.id} is broken: member ${entry.manifest.id}: ${errorMessage(err)}; nothing was restored`,
            { cause: err },
          );
        }
        throw err;
      }
      dirs.push(dir);
    }
    return { chain, root, dirs, description: describeChain(chain), remove };
  } catch (err) {
    await remove();
    throw err;
  }
}

/**
 * pg_combinebackup of the backup's own major (PG_BIN_DIR's when set, else /usr/lib/postgresql/N/bin
 * of the server that took it, else the newest found) writes the combined chain into dataDir.
 */
export async function combineStagedChain(
  staged: StagedChain,
  config: Config,
  reporter: Reporter,
  dataDir: string,
  noSync = false,
): Promise<void> {
  const major = Math.floor(staged.chain.at(-1)!.manifest.server.versionNum / 10000);
  const own = join('/usr/lib/postgresql', String(major), 'bin', 'pg_combinebackup');
  const tool =
    config.pgBinDir === undefined && existsSync(own)
      ? own
      : findPgBinary('pg_combinebackup', config.pgBinDir);
  const cmd = asServerUser(tool, [...(noSync ? ['--no-sync'] : []), '-o', dataDir, ...staged.dirs]);
  const proc = startTool(cmd.file, cmd.args, { label: 'pg_combinebackup', stdout: 'ignore' });
  try {
    await proc.exited;
  } catch (err) {
    throw new PgVaultError(`pg_combinebackup could not combine ${staged.description}: ${errorMessage(err)}`, {
      cause: err,
    });
  }
  reporter.info(`combined chain: ${staged.description}`);
}

/**
 * Lays down a base backup in a data directory: extracted (extractOneBaseBackup), or for an
 * incremental its chain staged beside it and combined into it.
 */
export async function extractBaseBackup(options: ExtractOptions): Promise<void> {
  const { entry, config, reporter, dataDir } = options;
  if (options.staged !== undefined) {
    await combineStagedChain(options.staged, config, reporter, dataDir, options.noSync);
    return;
  }
  if (entry.manifest.incrementalOf === undefined) {
    await extractOneBaseBackup(options);
    return;
  }
  const chain = options.chain;
  if (chain === undefined || chain.length < 2 || chain.at(-1)!.manifest.id !== entry.manifest.id) {
    throw new PgVaultError(
      `${entry.manifest.id} is an incremental base backup (of ${entry.manifest.incrementalOf}) and its chain was not resolved; this is a bug in pgvault`,
    );
  }
  const staged = await stageBaseChain({ chain, config, reporter, parentDir: dirname(dataDir) });
  try {
    await combineStagedChain(staged, config, reporter, dataDir, options.noSync);
  } finally {
    await staged.remove();
  }
}

/**
 * Streams a base backup into a data directory: stored bytes → checks → decrypt → decompress →
 * `tar -x` run as the server's OS user, so every file is the server's without a chown pass. The
 * digests are known only at the end: a copy that fails them is wiped and the next target tried.
 */
async function extractOneBaseBackup(options: ExtractOptions): Promise<void> {
  const { entry, object, config, reporter, dataDir } = options;
  await ensureFreeSpace(
    dataDir,
    object.rawSize,
    'the base backup',
    'free space or choose another directory (TMPDIR for the sandbox)',
  );
  let lastError: unknown;
  for (const target of entry.targets) {
    // -i: read to the end of the stream, past the end-of-archive blocks (see verify/file.ts).
    const tarCmd = asServerUser('tar', ['-x', '-i', '-f', '-', '-C', dataDir]);
    const tar = startTool(tarCmd.file, tarCmd.args, { label: 'tar -x', stdout: 'ignore' });
    try {
      // The decompressor writes into tar's stdin itself; Node only checks and decrypts the stored bytes.
      const read = readObjectIntoProgram(
        {
          target,
          object,
          compression: entry.manifest.compression.algorithm,
          threads: config.parallelJobs,
          encryption: decryptionFor(entry.manifest, config.encryption.passphrase),
          onProgress: (bytes) => reporter.progress('fetch base backup', bytes, object.storedSize),
        },
        tar.stdin,
      );
      const [fetched, extracted] = await Promise.allSettled([read, tar.exited]);
      if (extracted.status === 'fulfilled') {
        if (fetched.status === 'rejected') throw fetched.reason;
        return;
      }
      // tar failed. Whoever noticed first (tar seeing garbage, the decompressor finding tar gone),
      // the stored bytes decide whether the object or the extraction is the cause.
      const own = extracted.reason;
      const corrupt = await corruptionBehindProgramFailure(target, object, own, fetched);
      if (corrupt !== undefined) throw corrupt;
      // Not the target's fault: another copy would fail the same way.
      throw (
        diskFullError(own, dataDir, 'free space there (or choose another directory) and retry') ??
        new PgVaultError(
          `cannot extract ${object.key} into ${dataDir}: ${errorMessage(own)}; the object is intact (its sha256 matches the manifest): check that the ${SERVER_OS_USER} OS user can write there and the disk has room`,
          { cause: own },
        )
      );
    } catch (err) {
      if (tar.child.exitCode === null) tar.child.kill('SIGTERM');
      lastError = err;
      await tar.exited.catch(() => {});
      await clearDirectory(dataDir);
      if ((err instanceof IntegrityError || err instanceof StorageError) && entry.targets.length > 1) {
        reporter.warn(`${target.location}: ${errorMessage(err)}; trying the next copy`);
        continue;
      }
      break;
    }
  }
  throw lastError;
}

/**
 * Makes an extracted base backup recover when started: recovery.signal (never standby.signal,
 * which would wait for more WAL forever) and the recovery settings appended to
 * postgresql.auto.conf, where they win over everything before them.
 */
export async function prepareRecovery(
  dataDir: string,
  settings: Readonly<Record<string, string>>,
  comment: string,
): Promise<{ warnings: string[] }> {
  const warnings: string[] = [];
  await rm(join(dataDir, 'standby.signal'), { force: true });
  const signal = join(dataDir, 'recovery.signal');
  await writeFile(signal, '', { mode: 0o600 });
  await chownToServerUser(signal);
  const auto = join(dataDir, 'postgresql.auto.conf');
  const created = !existsSync(auto);
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${confString(v)}`);
  await appendFile(auto, `\n# ${comment}, ${new Date().toISOString()}\n${lines.join('\n')}\n`, {
    mode: 0o600,
  });
  if (created) await chownToServerUser(auto);
  if (!existsSync(join(dataDir, 'postgresql.conf'))) {
    warnings.push(
      `the base backup holds no postgresql.conf (Debian and Ubuntu keep it in /etc/postgresql/): start the server with its configuration, e.g. postgres -D ${dataDir} -c config_file=/etc/postgresql/<version>/main/postgresql.conf`,
    );
  }
  return { warnings };
}

/** Where recovery ended, from the server log and the promoted server. */
export interface RecoveredPoint {
  /** Last WAL location replayed. */
  readonly lsn?: string;
  /** Commit time of the last transaction replayed, as PostgreSQL printed it. */
  readonly lastTransactionTime?: string;
  /** The timeline the promoted server chose. */
  readonly timeline?: number;
  /** PostgreSQL's own words: 'before commit of transaction 745, time ...'. */
  readonly stopReason?: string;
  readonly segmentsRestored: number;
}

/** FATAL lines the server logs for our own connection attempts while it recovers: not failures. */
const CONNECTION_NOISE =
  /the database system is (starting up|not yet accepting connections|not accepting connections|in recovery mode)|Hot standby mode is disabled|role ".*" does not exist|Consistent recovery state has not been yet reached/;

/** Reads a log file from where the last call stopped. */
class LogFollower {
  private offset = 0;
  private partial = '';
  readonly recent: string[] = [];
  constructor(private readonly path: string) {}
  async read(): Promise<string[]> {
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(this.path, 'r');
    } catch {
      return [];
    }
    try {
      const chunks: Buffer[] = [];
      for (;;) {
        const buffer = Buffer.alloc(64 * 1024);
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, this.offset);
        if (bytesRead === 0) break;
        this.offset += bytesRead;
        chunks.push(buffer.subarray(0, bytesRead));
      }
      const text = this.partial + Buffer.concat(chunks).toString('utf8');
      const lines = text.split('\n');
      this.partial = lines.pop() ?? '';
      for (const l of lines) {
        if (l.trim() === '' || CONNECTION_NOISE.test(l)) continue;
        this.recent.push(l);
        if (this.recent.length > 40) this.recent.shift();
      }
      return lines;
    } finally {
      await handle.close();
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Settings of a sandbox that only recovers and is then read by pg_dump: private (socket only,
 * trust on it, in a 0700 directory), no archiving into the production archive, no durability,
 * log in English on stderr so recovery can be followed, nothing that points outside the sandbox.
 */
function sandboxSettings(runDir: string, dataDir: string): Record<string, string> {
  const sharedBuffersMb = Math.max(128, Math.min(8192, Math.floor(totalmem() / 4 / 2 ** 20)));
  return {
    data_directory: dataDir,
    hba_file: join(runDir, 'pg_hba.conf'),
    ident_file: join(runDir, 'pg_ident.conf'),
    // A configured one may name the production server's pid file on this host.
    external_pid_file: join(runDir, 'external.pid'),
    archive_mode: 'off',
    archive_cleanup_command: '',
    recovery_end_command: '',
    // Without hot standby nothing checks max_connections & co. against the primary's.
    hot_standby: 'off',
    fsync: 'off',
    synchronous_commit: 'off',
    logging_collector: 'off',
    log_destination: 'stderr',
    lc_messages: 'C',
    ssl: 'off',
    huge_pages: 'off',
    shared_buffers: `${sharedBuffersMb}MB`,
  };
}

/**
 * A sandbox server's environment: no secrets it does not need, no libpq variable naming the
 * configured server, and no config keys that would override the restore_command file.
 */
export function sandboxServerEnv(): NodeJS.ProcessEnv {
  const env = withoutLibpq(process.env);
  for (const k of CONFIG_KEYS) delete env[k];
  return env;
}

/** A throwaway server recovering a base backup in a private temporary directory. */
export class RecoverySandbox {
  private cluster: TempCluster | undefined;
  private user: string | undefined;

  private constructor(
    readonly dir: string,
    private readonly config: Config,
    private readonly reporter: Reporter,
    private readonly forget: () => void,
  ) {}

  get dataDir(): string {
    return join(this.dir, 'data');
  }

  static async create(config: Config, reporter: Reporter): Promise<RecoverySandbox> {
    const dir = await mkdtemp(join(tmpdir(), 'pgvault-pitr-'));
    const forget = removeOnExit(dir);
    await chownToServerUser(dir);
    return new RecoverySandbox(dir, config, reporter, forget);
  }

  /** Extracts the backup and writes everything the sandbox server needs to recover by itself. */
  async layDown(
    entry: CatalogEntry,
    object: StoredObject,
    settingsFor: (restoreCommand: string) => { settings: Record<string, string>; comment: string },
    /** The chain of an incremental backup (./chain.ts resolveBaseChain). */
    chain?: readonly CatalogEntry[],
  ): Promise<void> {
    await mkdir(this.dataDir, { mode: 0o700 });
    await chownToServerUser(this.dataDir);
    // Inside the sandbox, so they go with it (an inline key included).
    const files = await writeRestoreCommandFiles(this.config, this.dir, 'restore-command');
    await assertServerUserCanUse(this.config, [
      { path: files.configFile, what: 'the restore_command config file' },
      ...(files.keyFile ? [{ path: files.keyFile, what: 'ENCRYPTION_KEY_FILE' }] : []),
    ]);
    await extractBaseBackup({
      entry,
      object,
      config: this.config,
      reporter: this.reporter,
      dataDir: this.dataDir,
      chain,
      noSync: true,
    });
    const { settings, comment } = settingsFor(files.restoreCommand);
    await prepareRecovery(this.dataDir, settings, comment);
    for (const [name, text] of [
      ['pg_hba.conf', 'local all all trust\n'],
      ['pg_ident.conf', ''],
    ] as const) {
      await writeFile(join(this.dir, name), text, { mode: 0o600 });
      await chownToServerUser(join(this.dir, name));
    }
    const conf = join(this.dataDir, 'postgresql.conf');
    if (!existsSync(conf)) {
      // Debian keeps the configuration in /etc: the defaults are enough for a sandbox.
      await writeFile(conf, '# written by pgvault for a recovery sandbox\n', { mode: 0o600 });
      await chownToServerUser(conf);
    }
  }

  /** Starts the server without waiting: recovery may take long, waitForPromotion follows it. */
  async start(): Promise<void> {
    this.cluster = await TempCluster.startOn({
      dataDir: this.dataDir,
      runDir: this.dir,
      settings: sandboxSettings(this.dir, this.dataDir),
      env: sandboxServerEnv(),
      wait: false,
      socketOnly: true,
      binDir: this.config.pgBinDir,
    });
  }

  /** A connection to the promoted sandbox over its socket. */
  connection(database: string): PgConnection {
    const c = this.cluster;
    if (c === undefined || this.user === undefined) throw new PgVaultError('the sandbox is not running');
    return { host: c.socketDir, port: c.port, user: this.user, database, isolated: true };
  }

  /** Environment for a client of the sandbox: none of the configured server's libpq variables. */
  clientEnv(database: string): NodeJS.ProcessEnv {
    return pgEnv(this.connection(database));
  }

  /**
   * Follows recovery until the server promoted (pg_is_in_recovery() false). A server that stops
   * instead (target not reached, a WAL file missing) fails with the log's own last lines.
   */
  async waitForPromotion(options: { maxWaitMs?: number } = {}): Promise<RecoveredPoint> {
    const cluster = this.cluster;
    if (cluster === undefined) throw new PgVaultError('the sandbox was not started');
    const log = new LogFollower(cluster.logFile);
    const started = Date.now();
    let seenAlive = false;
    let segments = 0;
    let lastSegment: string | undefined;
    let lastReport = Date.now();
    let ready = false;
    let lastAttempt = 0;
    const point: { lsn?: string; lastTransactionTime?: string; timeline?: number; stopReason?: string } = {};
    const candidates = [
      ...new Set([this.config.pg.user, 'postgres', userInfo().username].filter((u) => u)),
    ] as string[];
    for (;;) {
      for (const line of await log.read()) {
        const restored = /restored log file "([0-9A-F]{24})" from archive/.exec(line);
        if (restored) {
          segments++;
          lastSegment = restored[1];
        }
        const stop = /recovery stopping (.+)$/.exec(line);
        if (stop) point.stopReason = stop[1]!.trim();
        const redo = /redo done at ([0-9A-F]+\/[0-9A-F]+)/.exec(line);
        if (redo) point.lsn = redo[1];
        const last = /last completed transaction was at log time (.+)$/.exec(line);
        if (last) point.lastTransactionTime = last[1]!.trim();
        const tli = /selected new timeline ID: (\d+)/.exec(line);
        if (tli) point.timeline = Number(tli[1]);
        if (/database system is ready to accept connections/.test(line)) ready = true;
      }
      const alive = cluster.serverAlive();
      if (alive) seenAlive = true;
      if (!alive && (seenAlive || Date.now() - started > 15_000)) {
        await sleep(200);
        await log.read();
        throw this.recoveryFailed(log.recent);
      }
      // Connections are refused while it recovers (hot_standby off): try once the log says ready,
      // and now and then in case the log is worded otherwise.
      if (ready || Date.now() - lastAttempt > 5_000) {
        lastAttempt = Date.now();
        const promoted = await this.probe(candidates);
        if (promoted) return { ...point, ...(await this.replayPoint(point)), segmentsRestored: segments };
      }
      if (Date.now() - lastReport > 5_000) {
        lastReport = Date.now();
        this.reporter.info(
          `recovering: ${segments} WAL segment(s) restored from the archive${lastSegment ? `, last ${lastSegment}` : ''}`,
        );
      }
      if (options.maxWaitMs !== undefined && Date.now() - started > options.maxWaitMs) {
        this.reporter.warn(`the sandbox server's log ends with:\n  ${log.recent.slice(-10).join('\n  ')}`);
        throw new PostgresError(
          `recovery did not finish within ${Math.round(options.maxWaitMs / 1000)} s (${segments} segment(s) restored, last ${lastSegment ?? 'none'}); nothing was copied`,
        );
      }
      await sleep(250);
    }
  }

  /** true once some candidate role connects and the server is out of recovery. */
  private async probe(candidates: readonly string[]): Promise<boolean> {
    const c = this.cluster!;
    for (const user of this.user ? [this.user] : candidates) {
      try {
        const inRecovery = await withClient(
          { host: c.socketDir, port: c.port, user },
          'template1',
          async (client) => {
            const r = await client.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
            return r.rows[0]?.r !== false;
          },
        );
        this.user = user;
        return !inRecovery;
      } catch (err) {
        const message = errorMessage(err);
        if (/role .* does not exist/.test(message)) continue;
        return false;
      }
    }
    if (this.user === undefined) {
      throw new PostgresError(
        `the recovered cluster has none of the roles ${candidates.join(', ')}; set PGUSER to a superuser of the backed-up cluster`,
      );
    }
    return false;
  }

  /** Fills what the log did not say from the server (the log wording differs when no target was set). */
  private async replayPoint(fromLog: { lsn?: string; lastTransactionTime?: string }): Promise<{
    lsn?: string;
    lastTransactionTime?: string;
  }> {
    try {
      const row = await withClient(this.connection('template1'), 'template1', async (client) => {
        const r = await client.query<{ lsn: string | null; ts: string | null }>(
          'SELECT pg_last_wal_replay_lsn()::text AS lsn, pg_last_xact_replay_timestamp()::text AS ts',
        );
        return r.rows[0];
      });
      return {
        lsn: fromLog.lsn ?? row?.lsn ?? undefined,
        lastTransactionTime: fromLog.lastTransactionTime ?? row?.ts ?? undefined,
      };
    } catch {
      return fromLog;
    }
  }

  /**
   * One line that says why (PostgreSQL's own FATAL line), with the log's tail shown as a warning
   * first, since the CLI prints only an error's first line.
   */
  private recoveryFailed(recent: readonly string[]): PostgresError {
    const fatal = [...recent].reverse().find((l) => /(FATAL|PANIC):/.test(l));
    const reason = fatal?.replace(/^.*?(FATAL|PANIC):\s*/, '') ?? 'the server stopped';
    const hint = /recovery ended before configured recovery target was reached/.test(reason)
      ? 'the WAL ends before the target (check the target and `pgvault verify wal`)'
      : /before consistent recovery point/.test(reason)
        ? "the target is earlier than the base backup's end; use an older base backup"
        : 'the server log lines above say more';
    const tail = recent.slice(-12);
    this.reporter.warn(`the sandbox server's log ends with:\n  ${tail.join('\n  ')}`);
    return new PostgresError(
      `recovery failed: ${reason}; ${hint}; nothing was copied\n  ${tail.join('\n  ')}`,
    );
  }

  /** Stops the server and removes the sandbox with everything in it. Never throws. */
  async remove(): Promise<void> {
    try {
      await this.cluster?.stop();
    } catch {
      // stop() does not throw; the directory goes below either way.
    }
    // restore_command may have left a helper behind (the WAL prefetcher) that would write into
    // the sandbox again after it is gone.
    await stopProcessesUsing(this.dir);
    try {
      await rm(this.dir, REMOVE_TREE);
      this.forget();
    } catch (err) {
      // Left for the exit hook to try once more; say so rather than leave it silently.
      this.reporter.warn(`could not remove the sandbox ${this.dir}: ${errorMessage(err)}; remove it by hand`);
    }
  }
}

/**
 * Ends the processes whose command line names a directory (Linux /proc): helpers started for a
 * sandbox, which must not outlive it. SIGTERM, then SIGKILL for any still there after 2 s.
 */
export async function stopProcessesUsing(dir: string): Promise<void> {
  const find = async (): Promise<number[]> => {
    const pids: number[] = [];
    for (const entry of await readdir('/proc').catch(() => [] as string[])) {
      const pid = Number(entry);
      if (!Number.isInteger(pid) || pid === process.pid) continue;
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.split('\0').some((arg) => arg === dir || arg.startsWith(`${dir}/`))) pids.push(pid);
    }
    return pids;
  };
  const signal = (pids: number[], sig: NodeJS.Signals) => {
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        // Already gone.
      }
    }
  };
  let pids = await find();
  if (pids.length === 0) return;
  signal(pids, 'SIGTERM');
  for (let i = 0; i < 20 && pids.length > 0; i++) {
    await sleep(100);
    pids = await find();
  }
  signal(pids, 'SIGKILL');
}

export interface CopyDatabaseOptions {
  readonly source: string;
  readonly target: string;
  /** The target exists and is empty: restore into it in one transaction instead of creating it. */
  readonly targetExists: boolean;
}

/**
 * Copies one database out of the promoted sandbox into the configured server: `pg_dump -Fc` piped
 * into `pg_restore`, no file in between. A database this created is dropped again on failure.
 * Returns whether it created the database.
 */
export async function copyDatabase(
  sandbox: RecoverySandbox,
  config: Config,
  options: CopyDatabaseOptions,
): Promise<boolean> {
  const info = await withClient(sandbox.connection('template1'), 'template1', async (c) => {
    const r = await c.query<{ encoding: string; collate: string; ctype: string; size: string }>(
      `SELECT pg_encoding_to_char(encoding) AS encoding, datcollate AS collate, datctype AS ctype,
              pg_database_size(oid)::text AS size FROM pg_database WHERE datname = $1`,
      [options.source],
    );
    if (r.rows.length === 0) {
      const all = await c.query<{ datname: string }>(
        'SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1',
      );
      throw new UsageError(
        `the recovered cluster has no database "${options.source}"; it has ${all.rows.map((x) => x.datname).join(', ')}`,
      );
    }
    return r.rows[0]!;
  });
  let created = false;
  if (!options.targetExists) {
    await createDatabase(config, options.target, { ...info, sizeBytes: Number(info.size) });
    created = true;
  }
  try {
    const dump = startTool(findPgBinary('pg_dump', config.pgBinDir), ['--format=custom', '--compress=0'], {
      env: sandbox.clientEnv(options.source),
      label: `pg_dump of "${options.source}" in the sandbox`,
      stdin: 'ignore',
      bufferOutput: true,
    });
    const args = ['--exit-on-error', `--dbname=${dbnameConninfo(options.target)}`];
    // Into a database that existed: one transaction, so a failure leaves it as empty as it was.
    if (options.targetExists) args.push('--single-transaction');
    const restore = startTool(findPgBinary('pg_restore', config.pgBinDir), args, {
      env: pgEnv({ ...config.pg, database: options.target }),
      label: 'pg_restore',
      stdout: 'ignore',
    });
    dump.stdout.pipe(restore.stdin);
    const [restored, dumped] = await Promise.allSettled([restore.exited, dump.exited]);
    // pg_restore's failure explains a pg_dump that then hit a closed pipe, so it is named first.
    if (restored.status === 'rejected') {
      const role = /role "([^"]+)" does not exist/.exec(
        `${errorMessage(restored.reason)}\n${(restored.reason as { stderr?: string }).stderr ?? ''}`,
      )?.[1];
      if (role !== undefined) {
        throw new PostgresError(
          `role "${role}" does not exist on the target server; create it (or restore the roles with \`pgvault restore globals <full backup>\`) and retry`,
          { cause: restored.reason },
        );
      }
      throw restored.reason;
    }
    if (dumped.status === 'rejected') throw dumped.reason;
  } catch (err) {
    if (created) await dropDatabase(config, options.target).catch(() => {});
    throw err;
  }
  return created;
}
