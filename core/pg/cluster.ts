import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { QueryResultRow } from 'pg';
import type { PgConnection } from '../config';
import { errorMessage, MissingToolError, PgVaultError, PostgresError } from '../errors';
import { findPgBinary, pgEnv, withClient } from './tools';

/** PostgreSQL refuses to run as root; as root we hand its files and processes to this OS user. */
export const SERVER_OS_USER = 'postgres';

export interface TempClusterOptions {
  /** TCP port on 127.0.0.1; a free one is picked when absent. */
  readonly port?: number;
  /** Server settings (-c name=value); they override the test-friendly defaults below. */
  readonly settings?: Readonly<Record<string, string>>;
  /** Bootstrap superuser name. @default 'postgres' */
  readonly superuser?: string;
  /** Directory in which the cluster's own temporary directory is made. @default os.tmpdir() */
  readonly baseDir?: string;
  /** Directory holding initdb and pg_ctl (PG_BIN_DIR); found automatically when absent. */
  readonly binDir?: string;
  /** Extra initdb arguments, e.g. ['--wal-segsize=1'] for small WAL segments in tests. */
  readonly initdbArgs?: readonly string[];
  /** Listen on the Unix socket in the cluster's directory only, never on TCP. @default false */
  readonly socketOnly?: boolean;
  /** The server's environment. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
  /** See ServerOwner: programs in binDir that switch to the server's user themselves. */
  readonly owner?: ServerOwner;
}

/**
 * The OS user that owns a server's files when binDir's programs switch to it themselves (the test
 * harness's wrappers that run another major's programs in a chroot as that root's postgres user,
 * test/helpers/pg-other.ts): its files are handed to this uid/gid and the programs are run as we are.
 */
export interface ServerOwner {
  readonly uid: number;
  readonly gid: number;
}

/** Starting a server on a data directory that already exists (a restored base backup). */
export interface ExistingDataDirOptions {
  /** The data directory; owned by the server's OS user when we are root. */
  readonly dataDir: string;
  /**
   * Directory for the socket and the log, removed by stop() with everything in it (so a data
   * directory inside it goes too). A fresh temporary one when absent.
   */
  readonly runDir?: string;
  readonly port?: number;
  /** Server settings (-c name=value); they override the data directory's own configuration. */
  readonly settings?: Readonly<Record<string, string>>;
  /** Role that connection() and query() use. @default 'postgres' */
  readonly superuser?: string;
  readonly binDir?: string;
  /** The server's environment (restore_command and archive_command inherit it). @default process.env */
  readonly env?: NodeJS.ProcessEnv;
  /**
   * Wait until the server accepts connections (pg_ctl -w). Without waiting, a server replaying a
   * long archive is watched by the caller instead of by pg_ctl's timeout. @default true
   */
  readonly wait?: boolean;
  /** Listen on the Unix socket in the run directory only, never on TCP. @default false */
  readonly socketOnly?: boolean;
  /** See ServerOwner. */
  readonly owner?: ServerOwner;
}

/**
 * Durability is pointless for a throwaway cluster and costs seconds per test; callers that care
 * (the demo, restore sandboxes) pass their own values.
 */
export const TEMP_CLUSTER_DEFAULT_SETTINGS: Readonly<Record<string, string>> = {
  fsync: 'off',
  synchronous_commit: 'off',
};

interface OsUser {
  readonly uid: number;
  readonly gid: number;
}

let serverUserCache: OsUser | undefined;

function runningAsRoot(): boolean {
  return process.getuid?.() === 0;
}

/** The uid/gid PostgreSQL must run as when we are root; undefined when we are not root. */
export function serverOsUser(): OsUser | undefined {
  if (!runningAsRoot()) return undefined;
  if (serverUserCache) return serverUserCache;
  try {
    const uid = Number(execFileSync('id', ['-u', SERVER_OS_USER], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', SERVER_OS_USER], { encoding: 'utf8' }).trim());
    serverUserCache = { uid, gid };
    return serverUserCache;
  } catch {
    throw new PgVaultError(
      `PostgreSQL cannot run as root and there is no '${SERVER_OS_USER}' OS user to run it as; create one (useradd --system ${SERVER_OS_USER}) or run pgvault as a normal user`,
    );
  }
}

/** The command line that runs a server program as the server's OS user (runuser when we are root). */
export function asServerUser(file: string, args: readonly string[]): { file: string; args: string[] } {
  if (serverOsUser() === undefined) return { file, args: [...args] };
  return { file: 'runuser', args: ['-u', SERVER_OS_USER, '--', file, ...args] };
}

/** A program that switches to the server's user itself (ServerOwner): run as we are. */
function asOwner(file: string, args: readonly string[]): { file: string; args: string[] } {
  return { file, args: [...args] };
}

/** Hands a directory tree to the server's OS user when we are root; nothing otherwise. */
export async function chownToServerUser(path: string): Promise<void> {
  const user = serverOsUser();
  if (user === undefined) return;
  await chown(path, user.uid, user.gid);
}

interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

class CommandError extends Error {
  constructor(
    message: string,
    readonly stdout: string,
    readonly stderr: string,
    readonly exitCode: number | null,
  ) {
    super(message);
  }
}

function run(
  file: string,
  args: readonly string[],
  options: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
) {
  return new Promise<RunResult>((resolve, reject) => {
    execFile(
      file,
      args,
      {
        cwd: options.cwd,
        env: options.env,
        timeout: options.timeoutMs ?? 120_000,
        maxBuffer: 16 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (err) {
          const code = typeof err.code === 'number' ? err.code : null;
          reject(new CommandError(`${file} failed: ${stderr.trim() || err.message}`, stdout, stderr, code));
        } else {
          resolve({ stdout, stderr });
        }
      },
    );
  });
}

/** Quotes one word for /bin/sh, which is what pg_ctl hands its -o options to. */
function shellWord(word: string): string {
  return /^[A-Za-z0-9_./=:,@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** True when something accepts a connection on this port of this address. */
function listening(host: string, port: number): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const socket = createConnection({ host, port });
    const done = (answer: boolean) => {
      socket.destroy();
      resolvePromise(answer);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** True when the port can be bound on every address (0.0.0.0), as listen_addresses = '*' would. */
function bindableEverywhere(port: number): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolvePromise(false));
    server.listen({ port, host: '0.0.0.0', exclusive: true }, () => server.close(() => resolvePromise(true)));
  });
}

/** Socket directories where a server on this host may already hold `.s.PGSQL.<port>`. */
const SOCKET_DIRECTORIES = ['/var/run/postgresql', '/run/postgresql', '/tmp'];

/**
 * A port for the copy that no server on this host uses now: free on 127.0.0.1 (freePort), on every
 * address, and with no PostgreSQL socket lock of that number in the usual socket directories.
 */
export async function freeServerPort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await freePort();
    if (SOCKET_DIRECTORIES.some((d) => existsSync(join(d, `.s.PGSQL.${port}.lock`)))) continue;
    if (!(await bindableEverywhere(port))) continue;
    if (await listening('::1', port)) continue;
    return port;
  }
  throw new PgVaultError('cannot find a free TCP port on this host; free one and retry');
}

function lastLines(text: string, count: number): string[] {
  return text
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l !== '')
    .slice(-count);
}

/** Clusters still running in this process, stopped on exit if their owner never got to it. */
const liveClusters = new Set<TempCluster>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' allows only synchronous work: an immediate stop is enough to keep no server behind.
  process.on('exit', () => {
    for (const cluster of liveClusters) cluster.stopSync();
  });
}

/**
 * A throwaway PostgreSQL cluster: initdb into a fresh temporary directory, trust authentication on
 * 127.0.0.1 only, removed completely by stop(). Used by tests, the demo and restore sandboxes.
 */
export class TempCluster {
  /** 127.0.0.1, or the socket directory for a socket-only server. */
  readonly host: string;
  private stopped = false;

  private constructor(
    readonly port: number,
    readonly superuser: string,
    /** The temporary directory holding everything: data, socket and log. */
    readonly baseDir: string,
    readonly dataDir: string,
    readonly socketDir: string,
    readonly logFile: string,
    private readonly pgCtl: string,
    private readonly binDir: string | undefined,
    private readonly launch: {
      env?: NodeJS.ProcessEnv;
      wait: boolean;
      socketOnly: boolean;
      owner?: ServerOwner;
    } = {
      wait: true,
      socketOnly: false,
    },
  ) {
    this.host = launch.socketOnly ? socketDir : '127.0.0.1';
  }

  static async start(options: TempClusterOptions = {}): Promise<TempCluster> {
    let initdb: string;
    let pgCtl: string;
    try {
      initdb = findPgBinary('initdb', options.binDir);
      pgCtl = findPgBinary('pg_ctl', options.binDir);
    } catch (err) {
      if (!(err instanceof MissingToolError)) throw err;
      const hint =
        /install it with: (apt-get install \S+)/.exec(err.message)?.[1] ?? 'apt-get install postgresql';
      throw new MissingToolError(
        `PostgreSQL server binaries not found (initdb); install them with: ${hint}`,
        {
          cause: err,
        },
      );
    }
    const superuser = options.superuser ?? 'postgres';
    const osUser = options.owner ?? serverOsUser();
    const baseDir = await mkdtemp(join(options.baseDir ?? tmpdir(), 'pgvault-pg-'));
    const dataDir = join(baseDir, 'data');
    const socketDir = join(baseDir, 'socket');
    const logFile = join(baseDir, 'server.log');
    try {
      await mkdir(socketDir);
      if (osUser) {
        await chown(baseDir, osUser.uid, osUser.gid);
        await chown(socketDir, osUser.uid, osUser.gid);
      }
      const init = (options.owner ? asOwner : asServerUser)(initdb, [
        '-D',
        dataDir,
        '-A',
        'trust',
        '-U',
        superuser,
        '--no-sync',
        '-E',
        'UTF8',
        '--locale=C',
        ...(options.initdbArgs ?? []),
      ]);
      try {
        await run(init.file, init.args, { cwd: baseDir });
      } catch (err) {
        const detail =
          err instanceof CommandError ? lastLines(`${err.stdout}\n${err.stderr}`, 5).join(' | ') : '';
        throw new PostgresError(`initdb failed: ${detail || errorMessage(err)}`, { cause: err });
      }
      const settings = { ...TEMP_CLUSTER_DEFAULT_SETTINGS, ...options.settings };
      // A port picked free can be taken by someone else before the server binds it; pick again.
      const attempts = options.port === undefined ? 5 : 1;
      for (let attempt = 1; ; attempt++) {
        const port = options.port ?? (await freePort());
        const cluster = new TempCluster(
          port,
          superuser,
          baseDir,
          dataDir,
          socketDir,
          logFile,
          pgCtl,
          options.binDir,
          { env: options.env, wait: true, socketOnly: options.socketOnly ?? false, owner: options.owner },
        );
        const started = await cluster.startServer(settings);
        if (started.ok) {
          liveClusters.add(cluster);
          installExitHook();
          return cluster;
        }
        if (!started.portInUse || attempt >= attempts) {
          throw new PostgresError(
            `PostgreSQL did not start on ${options.socketOnly ? baseDir : `127.0.0.1:${port}`}; the server log ends with:\n  ${started.log.join('\n  ')}`,
          );
        }
      }
    } catch (err) {
      await rm(baseDir, { recursive: true, force: true }).catch(() => {});
      throw err;
    }
  }

  /**
   * Starts a server on an existing data directory (a restored base backup), with the socket and
   * log in a run directory that stop() removes. The data directory's own configuration applies,
   * overridden by `settings`.
   */
  static async startOn(options: ExistingDataDirOptions): Promise<TempCluster> {
    const pgCtl = findPgBinary('pg_ctl', options.binDir);
    const osUser = options.owner ?? serverOsUser();
    const runDir = options.runDir ?? (await mkdtemp(join(tmpdir(), 'pgvault-pg-run-')));
    const socketDir = join(runDir, 'socket');
    const logFile = join(runDir, 'server.log');
    await mkdir(socketDir, { recursive: true, mode: 0o700 });
    if (osUser) {
      await chown(runDir, osUser.uid, osUser.gid);
      await chown(socketDir, osUser.uid, osUser.gid);
    }
    const attempts = options.port === undefined ? 5 : 1;
    for (let attempt = 1; ; attempt++) {
      const port = options.port ?? (await freePort());
      const cluster = new TempCluster(
        port,
        options.superuser ?? 'postgres',
        runDir,
        options.dataDir,
        socketDir,
        logFile,
        pgCtl,
        options.binDir,
        {
          env: options.env,
          wait: options.wait ?? true,
          socketOnly: options.socketOnly ?? false,
          owner: options.owner,
        },
      );
      const started = await cluster.startServer({ ...options.settings });
      if (started.ok) {
        liveClusters.add(cluster);
        installExitHook();
        return cluster;
      }
      if (!started.portInUse || attempt >= attempts) {
        if (options.runDir === undefined) await rm(runDir, { recursive: true, force: true }).catch(() => {});
        throw new PostgresError(
          `PostgreSQL did not start on ${options.dataDir}; the server log ends with:\n  ${started.log.join('\n  ')}`,
        );
      }
    }
  }

  private async startServer(
    settings: Record<string, string>,
  ): Promise<{ ok: boolean; portInUse: boolean; log: string[] }> {
    // On the command line a value is taken as is: an empty one (not '') turns TCP off.
    const listen = this.launch.socketOnly ? 'listen_addresses=' : 'listen_addresses=127.0.0.1';
    const serverArgs = ['-p', String(this.port), '-k', this.socketDir, '-c', listen];
    for (const [name, value] of Object.entries(settings)) serverArgs.push('-c', `${name}=${value}`);
    const ctl = this.asServerUser(this.pgCtl, [
      'start',
      '-D',
      this.dataDir,
      ...(this.launch.wait ? ['-w', '-t', '60'] : ['-W']),
      '-l',
      this.logFile,
      '-o',
      serverArgs.map(shellWord).join(' '),
    ]);
    try {
      await run(ctl.file, ctl.args, { cwd: this.baseDir, timeoutMs: 90_000, env: this.launch.env });
      return { ok: true, portInUse: false, log: [] };
    } catch (err) {
      const log = await readFile(this.logFile, 'utf8').catch(() => '');
      const ctlOutput = err instanceof CommandError ? `${err.stdout}\n${err.stderr}` : errorMessage(err);
      // The server may be half up after a pg_ctl timeout; make sure nothing keeps running.
      this.stopSync(false);
      return {
        ok: false,
        portInUse: /could not bind|address already in use/i.test(log),
        log: lastLines(`${log}\n${ctlOutput}`, 12),
      };
    }
  }

  /** A server program's command line: as the server's user, unless binDir's programs switch to it. */
  private asServerUser(file: string, args: readonly string[]): { file: string; args: string[] } {
    return (this.launch.owner ? asOwner : asServerUser)(file, args);
  }

  connection(database?: string): PgConnection {
    return { host: this.host, port: this.port, user: this.superuser, database: database ?? 'postgres' };
  }

  /** Runs SQL through psql (ON_ERROR_STOP, unaligned, tuples only) and returns what it printed. */
  async psql(sql: string, database?: string): Promise<string> {
    const psql = findPgBinary('psql', this.binDir);
    const env = pgEnv(this.connection(database));
    return new Promise<string>((resolve, reject) => {
      const child = spawn(psql, ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-f', '-'], {
        env,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.on('error', (e) => reject(new PostgresError(`cannot run psql: ${e.message}`, { cause: e })));
      child.on('close', (code) => {
        if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
        else {
          const message = Buffer.concat(err).toString('utf8').trim();
          reject(new PostgresError(`psql failed on port ${this.port}: ${message || `exit code ${code}`}`));
        }
      });
      // psql may exit before reading everything (a connection failure); its exit code tells the story.
      child.stdin.on('error', () => {});
      child.stdin.end(sql);
    });
  }

  /** Runs one statement through node-postgres and returns its rows. */
  async query<R extends QueryResultRow = QueryResultRow>(
    sql: string,
    params?: unknown[],
    database?: string,
  ): Promise<R[]> {
    return withClient(this.connection(database), database ?? 'postgres', async (c) => {
      const result = await c.query<R>(sql, params);
      return result.rows;
    });
  }

  get running(): boolean {
    return !this.stopped;
  }

  /** Whether the postmaster is alive right now (it may have exited by itself, e.g. a failed recovery). */
  serverAlive(): boolean {
    let pid: number;
    try {
      pid = Number(readFileSync(join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    } catch {
      return false;
    }
    if (!Number.isInteger(pid) || pid <= 0) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      // EPERM: alive but another user's (we are not root and the server runs as someone else).
      return (err as NodeJS.ErrnoException).code === 'EPERM';
    }
  }

  /** Fast shutdown, then removes every file of the cluster. Idempotent; never throws. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    liveClusters.delete(this);
    try {
      const ctl = this.asServerUser(this.pgCtl, ['stop', '-D', this.dataDir, '-m', 'fast', '-w', '-t', '60']);
      await run(ctl.file, ctl.args, { cwd: this.baseDir, timeoutMs: 90_000 });
    } catch {
      // Already stopped, or refusing a fast shutdown: an immediate stop settles both.
      this.stopSync(false);
    }
    await rm(this.baseDir, { recursive: true, force: true }).catch(() => {});
  }

  /**
   * Immediate shutdown using only synchronous calls, for the process 'exit' hook. With
   * removeFiles, also deletes the directory.
   * @internal
   */
  stopSync(removeFiles = true): void {
    try {
      const ctl = this.asServerUser(this.pgCtl, [
        'stop',
        '-D',
        this.dataDir,
        '-m',
        'immediate',
        '-w',
        '-t',
        '30',
      ]);
      spawnSync(ctl.file, ctl.args, { cwd: '/', stdio: 'ignore', timeout: 40_000 });
    } catch {
      // Nothing else to try while the process is exiting.
    }
    if (removeFiles) {
      this.stopped = true;
      liveClusters.delete(this);
      try {
        rmSync(this.baseDir, { recursive: true, force: true });
      } catch {
        // Best effort during exit.
      }
    }
  }

  /** The server log so far (for diagnosing a failed test). */
  readLog(): string {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }
}
