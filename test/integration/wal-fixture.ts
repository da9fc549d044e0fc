import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { serverOsUser, TempCluster } from '../../core/pg/cluster';

/**
 * A PostgreSQL cluster whose own archiver runs the built CLI (`npm run build` first), with its
 * configuration, key and vault in a work folder the server's OS user owns (archive_command runs as
 * that user). Segments are 1 MB so that tests can make dozens quickly.
 */

export const BIN = resolve(__dirname, '../../bin/pgvault');
export const KEY = 'wal test passphrase';
export const CLUSTER_NAME = 'walt';
export const SEGMENT_BYTES = 1024 * 1024;

export interface WalFixture {
  readonly cluster: TempCluster;
  readonly work: string;
  readonly vaultDir: string;
  readonly configFile: string;
  readonly keyFile: string;
  /** Runs the CLI (the sh launcher) as root, from the data directory unless told otherwise. */
  pgvault(
    args: string[],
    options?: { cwd?: string; env?: Record<string, string> },
  ): { code: number | null; stdout: string; stderr: string; ms: number };
  /** Writes a row and switches WAL `count` times; returns the names of the segments completed. */
  makeSegments(count: number): Promise<string[]>;
  archiver(): Promise<{ archived: number; failed: number; lastArchived: string | null }>;
  /** Waits until PostgreSQL reports `name` (and everything before it) archived. */
  waitArchived(name: string, timeoutMs?: number): Promise<void>;
  setArchiveCommand(command: string): Promise<void>;
  stop(): Promise<void>;
}

export function pgvaultCommand(configFile: string): string {
  return `${BIN} --config ${configFile} backup wal %p`;
}

/**
 * Decodes a stored WAL object with the standard tools only, as the README tells an operator to:
 * the archive's archive.json names how the WAL passphrase is derived (`openssl kdf`), then
 * `openssl enc -d`, then zstd.
 */
export function openWithoutPgvault(objectPath: string, keyFile: string): Buffer {
  const walDir = objectPath.slice(0, objectPath.lastIndexOf('/wal/') + '/wal'.length);
  const identity = JSON.parse(readFileSync(join(walDir, 'archive.json'), 'utf8')) as {
    encryptionIterations: number;
    walKey?: { salt: string; iterations: number; objectIterations: number };
  };
  const isSegment = /^[0-9A-F]{24}(\.partial)?\./.test(basename(objectPath));
  let passFile = keyFile;
  let iterations = identity.encryptionIterations;
  if (identity.walKey && isSegment) {
    const key = readFileSync(keyFile, 'utf8').replace(/\r?\n$/, '');
    const derived = execFileSync('openssl', [
      'kdf',
      '-keylen',
      '32',
      '-kdfopt',
      'digest:SHA256',
      '-kdfopt',
      `pass:${key}`,
      '-kdfopt',
      `salt:${identity.walKey.salt}`,
      '-kdfopt',
      `iter:${identity.walKey.iterations}`,
      'PBKDF2',
    ])
      .toString()
      .trim()
      .replace(/:/g, '')
      .toLowerCase();
    passFile = join(dirname(keyFile), 'wal.pass');
    writeFileSync(passFile, `${derived}\n`, { mode: 0o600 });
    iterations = identity.walKey.objectIterations;
  }
  const plain = execFileSync(
    'openssl',
    [
      'enc',
      '-d',
      '-aes-256-cbc',
      '-pbkdf2',
      '-iter',
      String(iterations),
      '-md',
      'sha256',
      '-pass',
      `file:${passFile}`,
      '-in',
      objectPath,
    ],
    { maxBuffer: 64 * 1024 * 1024 },
  );
  return execFileSync('zstd', ['-d', '-q', '-c'], { input: plain, maxBuffer: 64 * 1024 * 1024 });
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Hands a path to the server's OS user (when root), so archive_command can use it. */
export function giveToServer(path: string): void {
  const user = serverOsUser();
  if (user) chownSync(path, user.uid, user.gid);
}

export function walKeyPath(vaultDir: string, name: string, extension = '.zst.enc'): string {
  return join(vaultDir, CLUSTER_NAME, 'wal', name.slice(0, 8), name.slice(0, 16), `${name}${extension}`);
}

export async function startWalFixture(
  config: Record<string, string> = {},
  /** archiveCommand '' leaves it unset: segments wait (.ready) without failures until it is set. */
  options: { archiveCommand?: string /** @default 1 */; segmentMiB?: number } = {},
): Promise<WalFixture> {
  const work = mkdtempSync(join(tmpdir(), 'pgvault-wal-'));
  const vaultDir = join(work, 'vault');
  const configFile = join(work, 'pgvault.env');
  const keyFile = join(work, 'key');
  mkdirSync(vaultDir, { mode: 0o700 });
  writeFileSync(keyFile, `${KEY}\n`, { mode: 0o600 });
  const settings: Record<string, string> = {
    BACKUP_DIR: vaultDir,
    CLUSTER_NAME,
    COMPRESSION: 'zstd',
    ENCRYPTION: 'true',
    ENCRYPTION_KEY_FILE: keyFile,
    ENCRYPTION_ITERATIONS: '1000',
    PARALLEL_JOBS: '2',
    ...config,
  };
  writeFileSync(
    configFile,
    `${Object.entries(settings)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
    { mode: 0o600 },
  );
  for (const path of [work, vaultDir, configFile, keyFile]) giveToServer(path);
  chmodSync(work, 0o700);
  const cluster = await TempCluster.start({
    initdbArgs: [`--wal-segsize=${options.segmentMiB ?? 1}`],
    settings: {
      wal_level: 'replica',
      archive_mode: 'on',
      // Nothing recycles segments behind the test's back.
      checkpoint_timeout: '1h',
      max_wal_size: '1GB',
    },
  });

  // archive_command is set with ALTER SYSTEM, not -c: a command-line setting cannot be changed by a reload.
  const fixture: WalFixture = {
    cluster,
    work,
    vaultDir,
    configFile,
    keyFile,
    pgvault(args, runOptions = {}) {
      const started = Date.now();
      const r = spawnSync(BIN, ['--config', configFile, ...args], {
        encoding: 'utf8',
        cwd: runOptions.cwd ?? cluster.dataDir,
        env: { PATH: process.env.PATH ?? '', HOME: '/root', ...runOptions.env },
        timeout: 120_000,
      });
      return { code: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - started };
    },
    async makeSegments(count) {
      await cluster.query('CREATE TABLE IF NOT EXISTS wal_test (id serial, note text)');
      const names: string[] = [];
      while (names.length < count) {
        await cluster.query("INSERT INTO wal_test (note) VALUES (repeat('x', 100))");
        // pg_switch_wal() returns the end of the segment it completed (+1), or where it is when nothing was written.
        const [row] = await cluster.query<{ name: string }>(
          'SELECT pg_walfile_name(pg_switch_wal() - 1) AS name',
        );
        if (!names.includes(row!.name) && (names.length === 0 || row!.name > names[names.length - 1]!))
          names.push(row!.name);
      }
      return names;
    },
    async archiver() {
      const [row] = await cluster.query<{ archived: string; failed: string; last: string | null }>(
        'SELECT archived_count AS archived, failed_count AS failed, last_archived_wal AS last FROM pg_stat_archiver',
      );
      return { archived: Number(row!.archived), failed: Number(row!.failed), lastArchived: row!.last };
    },
    async waitArchived(name, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const { lastArchived } = await fixture.archiver();
        if (lastArchived !== null && lastArchived >= name) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      const state = await fixture.archiver();
      throw new Error(
        `${name} was not archived within ${timeoutMs} ms (archiver: ${JSON.stringify(state)}); server log:\n${cluster.readLog().split('\n').slice(-15).join('\n')}`,
      );
    },
    async setArchiveCommand(command) {
      await cluster.query(`ALTER SYSTEM SET archive_command = '${command.replace(/'/g, "''")}'`);
      await cluster.query('SELECT pg_reload_conf()');
    },
    async stop() {
      await cluster.stop();
      // Prefetchers started by restore wal outlive their calls (they leave by themselves after 30 s).
      killProcessesNaming(work);
      rmSync(work, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    },
  };
  const archiveCommand = options.archiveCommand ?? pgvaultCommand(configFile);
  if (archiveCommand !== '') await fixture.setArchiveCommand(archiveCommand);
  return fixture;
}

/** SIGKILLs every process whose command line contains `text` (Linux /proc). */
export function killProcessesNaming(text: string): void {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(text))
        process.kill(Number(entry), 'SIGKILL');
    } catch {
      // Gone already, or not ours to read.
    }
  }
}

export function readSegment(cluster: TempCluster, name: string): Buffer {
  return readFileSync(join(cluster.dataDir, 'pg_wal', name));
}
