import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import {
  type ExistingDataDirOptions,
  type ServerOwner,
  TempCluster,
  type TempClusterOptions,
} from '../../core/pg/cluster';
import { type CliRun, runProgram } from './cli';

/**
 * The other PostgreSQL major (17 on Debian 12, 15 on Debian 13), from the other Debian release's
 * root that .ci/pg-other-major makes once per machine. Its programs run with chroot, each in a
 * mount namespace of its own (unshare -m) where the paths the tests use are bind-mounted at the same
 * place as outside: /tmp (every temporary folder), the project, its node_modules and this machine's
 * node. So no mount is ever made on the host, and none outlives the processes that use it.
 *
 *   const other = otherMajor();                    // undefined: skip (outside CI only)
 *   const s = await OtherMajorSession.open(other);
 *   const cluster = await s.startCluster();         // TempCluster, server inside the root
 *   await s.runPgvault(['backup', 'full'], env, cwd); // the CLI inside the root (as root)
 *   s.binDir                                         // wrappers: PG_BIN_DIR for a host pgvault
 *   await s.close();                                 // afterAll: servers, stray processes, files
 *
 * The server runs as the root's postgres user, whose uid is not the host's: its archive_command and
 * restore_command (pgvault) run inside the root too. Keep every writer of one backup folder on the
 * same side: pgvault inside the root (runPgvault), or the wrappers from the host.
 */

const PROJECT = resolve(__dirname, '..', '..');
const PGVAULT_CLI = join(PROJECT, 'bin', 'pgvault.js');
/** The shell launcher: with ARCHIVE_ASYNC it answers archive_command without starting node. */
const PGVAULT_LAUNCHER = join(PROJECT, 'bin', 'pgvault');
const CACHE = process.env.PGVAULT_CI_CACHE ?? '/var/cache/pgvault-ci';

export interface OtherMajorRoot {
  readonly root: string;
  readonly release: string;
  readonly major: number;
  /** Whether the root has pgvector (trixie's postgresql-17-pgvector; bookworm packages none for 15). */
  readonly pgvector: boolean;
}

/**
 * The line a test prints when it skips its pgvector part: neither the host's server nor the other
 * major's root has pgvector (test/helpers/pg-vector.ts vectorPlace() chooses where they run).
 */
export const NO_PGVECTOR_LINE =
  "neither this host's PostgreSQL nor the other major's root has pgvector (bookworm packages none for PostgreSQL 15): install the host's postgresql-<major>-pgvector where its release packages it (.ci/run does), or build the trixie root on Debian 12 (.ci/pg-other-major), and run these tests again";

/** The line a test prints when it skips because the root is not built. */
export const OTHER_MAJOR_SKIP_LINE =
  'the other PostgreSQL major is not installed here: run .ci/pg-other-major (as root) to build it, then run these tests again';

function readRoot(root: string): OtherMajorRoot | undefined {
  let marker: string;
  try {
    marker = readFileSync(join(root, '.pgvault-root'), 'utf8');
  } catch {
    return undefined;
  }
  const release = /release=(\S+)/.exec(marker)?.[1];
  const major = Number(/major=(\d+)/.exec(marker)?.[1]);
  if (!release || !Number.isInteger(major)) return undefined;
  const pgvector = existsSync(
    join(root, 'usr', 'share', 'postgresql', String(major), 'extension', 'vector.control'),
  );
  return { root, release, major, pgvector };
}

/**
 * The other major's root: PGVAULT_PG_OTHER_ROOT (set by .ci/run, which builds it; a missing or
 * unfinished root there fails the tests), else the cache folder's pg-other-* root, else undefined
 * (the tests skip, saying to run .ci/pg-other-major). In CI (CI set) it must be there.
 */
export function otherMajor(): OtherMajorRoot | undefined {
  const configured = process.env.PGVAULT_PG_OTHER_ROOT;
  if (configured) {
    const found = readRoot(configured);
    if (!found)
      throw new Error(`PGVAULT_PG_OTHER_ROOT=${configured} is not a finished root; run .ci/pg-other-major`);
    return found;
  }
  let names: string[] = [];
  try {
    names = readdirSync(CACHE).filter((n) => /^pg-other-[a-z]+$/.test(n));
  } catch {
    // No cache folder: not built here.
  }
  for (const name of names) {
    const found = readRoot(join(CACHE, name));
    if (found) return found;
  }
  if (process.env.CI) throw new Error(`CI: ${OTHER_MAJOR_SKIP_LINE}`);
  return undefined;
}

/** The uid/gid of a user in the root's own /etc/passwd. */
function rootUser(root: string, name: string): ServerOwner {
  const line = readFileSync(join(root, 'etc', 'passwd'), 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no ${name} user in ${root}/etc/passwd`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

/** Client programs of the root that the wrappers run as root; the server's programs run as postgres. */
const CLIENT_TOOLS = [
  'pg_dump',
  'pg_dumpall',
  'pg_restore',
  'psql',
  'pg_basebackup',
  'pg_receivewal',
  'pg_verifybackup',
  'pg_combinebackup',
  'pg_controldata',
];
const SERVER_TOOLS = ['initdb', 'pg_ctl', 'postgres'];

function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** A server of the other major archiving with pgvault inside the root, and its pgvault config. */
export interface OtherArchivingCluster {
  readonly cluster: TempCluster;
  /** Its own temporary folder (config, key, backups), removed by the session's close(). */
  readonly work: string;
  readonly backupDir: string;
  readonly configFile: string;
  /** The settings in configFile, as KEY=VALUE. */
  readonly settings: Readonly<Record<string, string>>;
  /** pgvault inside the root with this config (`--config` added), its --json output parsed. */
  // biome-ignore lint/suspicious/noExplicitAny: a command's --json output, read by the tests
  pgvault(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<CliRun & { json?: any }>;
}

/** Sessions still open in this process: their processes are killed on exit if close() never ran. */
const openSessions = new Set<OtherMajorSession>();
let exitHook = false;

export class OtherMajorSession {
  private readonly clusters: TempCluster[] = [];
  private readonly folders: string[] = [];
  private closed = false;

  private constructor(
    readonly other: OtherMajorRoot,
    /** Holds the wrappers and the enter script; removed by close(). */
    readonly dir: string,
    /** Wrappers of the root's programs: PG_BIN_DIR for pgvault on the host, binDir for TempCluster. */
    readonly binDir: string,
    /** `enter client|server PROGRAM ARGS...`: runs PROGRAM inside the root, as root or as postgres. */
    readonly enter: string,
    /** The root's postgres user, which owns its servers' files. */
    readonly owner: ServerOwner,
    /** Tags every process started inside the root by this session (PGVAULT_OTHER_SESSION). */
    readonly tag: string,
  ) {}

  get major(): number {
    return this.other.major;
  }

  /**
   * Writes the enter script and the wrappers. `extraBinds`: more host folders to show inside the
   * root at the same path (everything under /tmp, the project and node already are).
   */
  static async open(
    other: OtherMajorRoot,
    extraBinds: readonly string[] = [],
    /**
     * Folders of the root to show differently in this session's namespace only (the root is not
     * changed): `at` inside the root shows the host folder `from` (e.g. an extension folder copy
     * without pgvector, to see what pgvault says when the sandbox cannot load it).
     */
    replace: ReadonlyArray<{ readonly at: string; readonly from: string }> = [],
  ): Promise<OtherMajorSession> {
    const dir = mkdtempSync(join(tmpdir(), 'pgvault-other-'));
    chmodSync(dir, 0o755);
    const tag = basename(dir);
    const binDir = join(dir, 'bin');
    const node = realpathSync(process.execPath);
    const dirs = new Set([realpathSync(tmpdir()), PROJECT, ...extraBinds.map((d) => realpathSync(d))]);
    const modules = join(PROJECT, 'node_modules');
    // A worktree's node_modules may be a link to another checkout's: that folder too.
    if (existsSync(modules)) dirs.add(realpathSync(modules));
    const root = other.root;
    const enter = join(dir, 'enter');
    // mkdir/touch the mount points inside the root (empty folders and files, kept), then bind; the
    // namespace and its mounts end with the last process in it.
    const inner = [
      'set -e',
      `root=${shellQuote(root)}`,
      'mount -t proc proc "$root/proc"',
      'mount --rbind /dev "$root/dev"',
      ...[...dirs].map(
        (d) => `mkdir -p "$root"${shellQuote(d)} && mount --bind ${shellQuote(d)} "$root"${shellQuote(d)}`,
      ),
      ...replace.map((r) => `mount --bind ${shellQuote(realpathSync(r.from))} "$root"${shellQuote(r.at)}`),
      `mkdir -p "$root"${shellQuote(dirname(node))} && { [ -e "$root"${shellQuote(node)} ] || : >"$root"${shellQuote(node)}; } && mount --bind ${shellQuote(node)} "$root"${shellQuote(node)}`,
      'as=$1; shift',
      // chroot starts in /: go back to the caller's folder when it is there (it is, under /tmp).
      'case "$as" in',
      '  server) exec chroot "$root" /usr/sbin/runuser -u postgres -- /bin/sh -c \'cd "$0" 2>/dev/null || cd /; exec "$@"\' "$PWD" "$@" ;;',
      '  *) exec chroot "$root" /bin/sh -c \'cd "$0" 2>/dev/null || cd /; exec "$@"\' "$PWD" "$@" ;;',
      'esac',
    ].join('\n');
    writeFileSync(
      enter,
      [
        '#!/bin/sh',
        `# Runs a program of ${root} (PostgreSQL ${other.major}) inside it: enter client|server PROGRAM ARGS...`,
        '[ "$(id -u)" = 0 ] || { echo "pg-other: chroot and mount need root" >&2; exit 2; }',
        `export PGVAULT_OTHER_SESSION=${tag}`,
        '[ -n "$PATH" ] || PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH',
        `exec /usr/bin/unshare --mount --propagation private /bin/sh -c ${shellQuote(inner)} sh "$@"`,
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
    mkdirSync(binDir, { mode: 0o755 });
    const programs = join(root, 'usr', 'lib', 'postgresql', String(other.major), 'bin');
    for (const tool of [...CLIENT_TOOLS, ...SERVER_TOOLS]) {
      const inside = `/usr/lib/postgresql/${other.major}/bin/${tool}`;
      if (!existsSync(join(programs, tool))) continue;
      const as = SERVER_TOOLS.includes(tool) ? 'server' : 'client';
      writeFileSync(join(binDir, tool), `#!/bin/sh\nexec ${shellQuote(enter)} ${as} ${inside} "$@"\n`, {
        mode: 0o755,
      });
    }
    const session = new OtherMajorSession(other, dir, binDir, enter, rootUser(root, 'postgres'), tag);
    openSessions.add(session);
    if (!exitHook) {
      exitHook = true;
      process.on('exit', () => {
        for (const s of openSessions) s.killProcesses();
      });
    }
    return session;
  }

  /** A throwaway server of the other major, inside the root; stopped by close() at the latest. */
  async startCluster(options: TempClusterOptions = {}): Promise<TempCluster> {
    const cluster = await TempCluster.start({ ...options, binDir: this.binDir, owner: this.owner });
    this.clusters.push(cluster);
    return cluster;
  }

  /** A server of the other major on an existing data directory (owned by the root's postgres). */
  async startOn(options: ExistingDataDirOptions): Promise<TempCluster> {
    const cluster = await TempCluster.startOn({ ...options, binDir: this.binDir, owner: this.owner });
    this.clusters.push(cluster);
    return cluster;
  }

  /**
   * A server of the other major with 1 MB WAL segments and commit timestamps, archiving through
   * pgvault's own archive_command inside the root (ARCHIVE_ASYNC=true in `extra`: through the shell
   * launcher, as the README says), and the config file for it: encrypted, local folder, TZ=UTC.
   */
  async archivingCluster(
    options: { readonly clusterName?: string; readonly extra?: Record<string, string> } = {},
  ): Promise<OtherArchivingCluster> {
    const work = mkdtempSync(join(tmpdir(), 'pgvault-other-work-'));
    this.folders.push(work);
    chmodSync(work, 0o755);
    const clusterName = options.clusterName ?? 'other';
    const backupDir = join(work, 'backups');
    mkdirSync(join(backupDir, clusterName), { recursive: true, mode: 0o700 });
    const keyFile = join(work, 'encryption-key');
    writeFileSync(keyFile, 'other major test key, long enough\n', { mode: 0o600 });
    const configFile = join(work, 'pgvault.conf');
    const program =
      options.extra?.ARCHIVE_ASYNC === 'true'
        ? PGVAULT_LAUNCHER
        : `${realpathSync(process.execPath)} ${PGVAULT_CLI}`;
    const cluster = await this.startCluster({
      initdbArgs: ['--wal-segsize=1'],
      settings: {
        wal_level: 'replica',
        archive_mode: 'on',
        archive_command: `${program} --config ${configFile} backup wal %p`,
        track_commit_timestamp: 'on',
      },
    });
    const settings: Record<string, string> = {
      BACKUP_DIR: backupDir,
      CLUSTER_NAME: clusterName,
      PGHOST: cluster.host,
      PGPORT: String(cluster.port),
      PGUSER: cluster.superuser,
      PGDATABASE: 'postgres',
      PARALLEL_JOBS: '2',
      ENCRYPTION: 'true',
      ENCRYPTION_KEY_FILE: keyFile,
      ENCRYPTION_ITERATIONS: '1000',
      TZ: 'UTC',
      ...options.extra,
    };
    writeFileSync(
      configFile,
      `${Object.entries(settings)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
      { mode: 0o600 },
    );
    // The server's archive_command (the root's postgres) writes the archive and reads config and key.
    this.chownToServer(backupDir);
    this.chownToServer(keyFile);
    this.chownToServer(configFile);
    return {
      cluster,
      work,
      backupDir,
      configFile,
      settings,
      pgvault: async (args, env = { PATH: process.env.PATH, TZ: 'UTC' }) => {
        const r = await this.runPgvault(['--config', configFile, ...args], env, work);
        return { ...r, json: args.includes('--json') && r.stdout.trim() ? JSON.parse(r.stdout) : undefined };
      },
    };
  }

  /** Hands a path to the root's postgres user (the server's archive_command writes as it). */
  chownToServer(path: string): void {
    const r = spawnSync('chown', ['-R', `${this.owner.uid}:${this.owner.gid}`, path]);
    if (r.status !== 0) throw new Error(`chown ${path}: ${r.stderr}`);
  }

  /** archive_command that runs this project's pgvault inside the root (node and paths as outside). */
  archiveCommand(configFile: string): string {
    return `${realpathSync(process.execPath)} ${PGVAULT_CLI} --config ${configFile} backup wal %p`;
  }

  /** The built CLI inside the root, as root, with exactly this environment (like runPgvault). */
  runPgvault(args: readonly string[], env: NodeJS.ProcessEnv, cwd: string): Promise<CliRun> {
    return this.run(['client', realpathSync(process.execPath), PGVAULT_CLI, ...args], env, cwd);
  }

  /** Any program inside the root: `client` runs it as root, `server` as the root's postgres user. */
  run(args: readonly string[], env: NodeJS.ProcessEnv, cwd: string): Promise<CliRun> {
    return runProgram(this.enter, args, env, cwd);
  }

  /** Pids of the processes this session started inside the root (its tag is in their environment). */
  processes(): number[] {
    const found: number[] = [];
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
      try {
        const env = readFileSync(`/proc/${name}/environ`);
        if (env.includes(`PGVAULT_OTHER_SESSION=${this.tag}\0`)) found.push(Number(name));
      } catch {
        // Gone already, or not ours to read.
      }
    }
    return found;
  }

  /** Kills what is left of this session's processes (a server that would not stop, a prefetcher). */
  killProcesses(): void {
    for (const pid of this.processes()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }

  /** Stops every server this session started, kills its leftovers, removes its files. Never throws. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.clusters.map((c) => c.stop().catch(() => {})));
    for (let i = 0; i < 50 && this.processes().length > 0; i++) {
      if (i === 10) this.killProcesses();
      await new Promise((r) => setTimeout(r, 100));
    }
    this.killProcesses();
    openSessions.delete(this);
    for (const folder of [...this.folders, this.dir]) rmSync(folder, { recursive: true, force: true });
  }
}
