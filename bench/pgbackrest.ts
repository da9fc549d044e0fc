/**
 * pgBackRest as the benchmark's reference: found (or installed with apt-get when missing), given its
 * own configuration file, repository, log, lock and spool folders in the run's temporary directory,
 * and a stanza for the main cluster. It runs as the OS user that owns the data directory (runuser
 * when the benchmark runs as root), as pgBackRest requires.
 *
 * The same work as pgvault's defaults: zstd level 3 (`compress-type=zst`), AES-256-CBC with a
 * passphrase (`repo1-cipher-type`), PARALLEL_JOBS processes (`process-max`), a fast checkpoint at the
 * start of a backup (`start-fast`, as pg_basebackup --checkpoint=fast). archive-get is asynchronous
 * (`[global:archive-get] archive-async=y`), so recovery prefetches WAL as pgvault's restore_command does.
 */
import { execFile } from 'node:child_process';
import { chmod, chown, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { asServerUser, type ServerOwner, serverOsUser, type TempCluster } from '../core/pg/cluster';
import { cleanEnv } from './steps';

export const STANZA = 'bench';

function run(
  file: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      file,
      [...args],
      {
        env: options.env ?? cleanEnv(),
        timeout: options.timeoutMs ?? 600_000,
        maxBuffer: 64 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr: stderr || (err && code !== 0 ? err.message : '') });
      },
    );
  });
}

/** pgBackRest's version line ("pgBackRest 2.45"), or why it is not available. */
export async function findPgbackrest(
  log: (line: string) => void,
): Promise<{ version: string } | { missing: string }> {
  const probe = await run('pgbackrest', ['version'], { timeoutMs: 20_000 });
  if (probe.code === 0) return { version: probe.stdout.trim() };
  if (process.getuid?.() !== 0) {
    return {
      missing: 'pgbackrest is not installed and installing it needs root (apt-get install pgbackrest)',
    };
  }
  log('pgBackRest is not installed: apt-get install -y pgbackrest');
  const env = { ...cleanEnv(), DEBIAN_FRONTEND: 'noninteractive' };
  let install = await run('apt-get', ['install', '-y', '-q', 'pgbackrest'], { env, timeoutMs: 600_000 });
  if (install.code !== 0 && /Unable to locate package|no installation candidate/i.test(install.stderr)) {
    await run('apt-get', ['update', '-q'], { env, timeoutMs: 600_000 });
    install = await run('apt-get', ['install', '-y', '-q', 'pgbackrest'], { env, timeoutMs: 600_000 });
  }
  if (install.code !== 0) {
    const line = install.stderr.trim().split('\n').filter(Boolean).slice(-1)[0] ?? `exit ${install.code}`;
    return { missing: `apt-get install pgbackrest failed: ${line}` };
  }
  const again = await run('pgbackrest', ['version'], { timeoutMs: 20_000 });
  return again.code === 0
    ? { version: again.stdout.trim() }
    : { missing: `pgbackrest still does not run after apt-get install: ${again.stderr.trim()}` };
}

export interface PgBackRestBackup {
  readonly label: string;
  /** Bytes of the data directory the backup holds (pgBackRest's "database size"). */
  readonly databaseBytes: number;
  /** Bytes stored in the repository (compressed, encrypted). */
  readonly repositoryBytes: number;
  readonly startLsn?: string;
  readonly stopLsn?: string;
}

/** How a command runs as the server's OS user (runuser on the host; a chroot for another root). */
export type AsServer = (file: string, args: readonly string[]) => { file: string; args: string[] };

/** A stanza of the main cluster with its own repository under `root`. */
export class PgBackRest {
  private constructor(
    readonly root: string,
    readonly configFile: string,
    readonly spoolPath: string,
    private readonly asServer: AsServer,
  ) {}

  static async create(options: {
    root: string;
    cluster: TempCluster;
    passphrase: string;
    processMax: number;
    /** More `[global]` options (e.g. repo1-bundle=y, repo1-block=y for block incremental). */
    global?: Readonly<Record<string, string>>;
    /** The OS user the server runs as, when not this host's postgres (a server in another root). */
    owner?: ServerOwner;
    /** How pgbackrest runs as that user; default runuser on this host. */
    asServer?: AsServer;
  }): Promise<PgBackRest> {
    const { root, cluster } = options;
    const extra = Object.entries(options.global ?? {})
      .map(([k, v]) => `${k}=${v}\n`)
      .join('');
    const dirs = ['repo', 'log', 'lock', 'spool'].map((d) => join(root, d));
    await mkdir(root, { recursive: true, mode: 0o700 });
    for (const dir of dirs) await mkdir(dir, { recursive: true, mode: 0o700 });
    const configFile = join(root, 'pgbackrest.conf');
    // Passphrase in the file (0600, the server user's), never on a command line.
    const config = `[global]
repo1-path=${join(root, 'repo')}
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=${options.passphrase}
repo1-retention-full=9999
compress-type=zst
compress-level=3
process-max=${options.processMax}
start-fast=y
${extra}log-path=${join(root, 'log')}
lock-path=${join(root, 'lock')}
spool-path=${join(root, 'spool')}
log-level-console=warn
log-level-stderr=warn

[global:archive-get]
archive-async=y

[${STANZA}]
pg1-path=${cluster.dataDir}
pg1-port=${cluster.port}
pg1-socket-path=${cluster.socketDir}
pg1-user=${cluster.superuser}
`;
    await writeFile(configFile, config, { mode: 0o600 });
    const user = options.owner ?? serverOsUser();
    if (user) {
      for (const path of [root, ...dirs, configFile]) await chown(path, user.uid, user.gid);
    }
    await chmod(configFile, 0o600);
    const br = new PgBackRest(root, configFile, join(root, 'spool'), options.asServer ?? asServerUser);
    await br.exec(['stanza-create']);
    return br;
  }

  /** The command line (runuser when root) for `pgbackrest --config ... --stanza ... <args>`. */
  command(args: readonly string[]): { file: string; args: string[] } {
    return this.asServer('pgbackrest', [`--config=${this.configFile}`, `--stanza=${STANZA}`, ...args]);
  }

  /** archive_command (PostgreSQL runs it as the server user already). */
  archiveCommand(async: boolean): string {
    return `pgbackrest --config=${this.configFile} --stanza=${STANZA}${async ? ' --archive-async' : ''} archive-push %p`;
  }

  async exec(args: readonly string[], timeoutMs = 600_000): Promise<string> {
    const { file, args: argv } = this.command(args);
    const r = await run(file, argv, { timeoutMs });
    if (r.code !== 0) {
      throw new Error(
        `pgbackrest ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`,
      );
    }
    return r.stdout;
  }

  /** The stanza's backups, oldest first. */
  async backups(): Promise<PgBackRestBackup[]> {
    const out = await this.exec(['info', '--output=json']);
    const info = JSON.parse(out) as Array<{
      name: string;
      backup?: Array<{
        label: string;
        info?: { size?: number; repository?: { size?: number; delta?: number } };
        lsn?: { start?: string; stop?: string };
      }>;
    }>;
    const stanza = info.find((s) => s.name === STANZA);
    return (stanza?.backup ?? []).map((b) => ({
      label: b.label,
      databaseBytes: b.info?.size ?? 0,
      repositoryBytes: b.info?.repository?.size ?? 0,
      startLsn: b.lsn?.start,
      stopLsn: b.lsn?.stop,
    }));
  }

  /** Expires every backup but the newest (pgBackRest keeps at least one full backup anyway). */
  async keepNewestOnly(): Promise<void> {
    const all = await this.backups();
    for (const b of all.slice(0, -1)) await this.exec(['expire', `--set=${b.label}`]);
  }
}
