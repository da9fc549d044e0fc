import {
  accessSync,
  chmodSync,
  constants,
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TempCluster } from '../../core/pg/cluster';
import { type ArchivingCluster, startArchivingCluster } from '../integration/pitr-fixture';
import { type CliRun, PGVAULT_CLI, runPgvault, runProgram } from './cli';
import {
  NO_PGVECTOR_LINE,
  type OtherArchivingCluster,
  type OtherMajorRoot,
  OtherMajorSession,
  otherMajor,
} from './pg-other';

/**
 * Where the pgvector checks run (test/integration/pg-other-vector-indexes.test.ts, and the pgvector
 * part of pg-other-major.test.ts): the one place that answers it.
 *
 *   1. this host's own server, when its major has pgvector's extension files
 *      (/usr/share/postgresql/<major>/extension/vector.control): Debian 13, where .ci/run installs
 *      postgresql-17-pgvector;
 *   2. else the other major's root (test/helpers/pg-other.ts), when it has them: Debian 12's
 *      trixie root with postgresql-17-pgvector;
 *   3. else nowhere: the tests print NO_PGVECTOR_LINE and skip (outside CI only: .ci/run provides
 *      one of the two on both releases).
 *
 * The same test body runs in either place through openVectorSession().
 */
export type VectorPlace =
  | { readonly where: 'host'; readonly major: number }
  | { readonly where: 'root'; readonly major: number; readonly other: OtherMajorRoot };

/** Folders the choice reads (the real ones unless a unit test gives fakes). */
export interface VectorPlaceSources {
  /** Holds <major>/bin/initdb per installed server: /usr/lib/postgresql. */
  readonly lib?: string;
  /** Holds <major>/extension/: /usr/share/postgresql. */
  readonly share?: string;
  /** The other major's root, or undefined when there is none (otherMajor()). */
  readonly other: OtherMajorRoot | undefined;
}

/**
 * The host's server major: the newest with an executable initdb, the one TempCluster starts when
 * given no binDir (core/pg/tools.ts findPgBinary looks newest first too).
 */
export function hostServerMajor(lib = '/usr/lib/postgresql'): number | undefined {
  let names: string[];
  try {
    names = readdirSync(lib);
  } catch {
    return undefined;
  }
  const majors = names.filter((n) => /^\d+$/.test(n)).sort((x, y) => Number(y) - Number(x));
  for (const major of majors) {
    try {
      accessSync(join(lib, major, 'bin', 'initdb'), constants.X_OK);
      return Number(major);
    } catch {
      // Client tools only for this major.
    }
  }
  return undefined;
}

/** Where the pgvector checks run here, or undefined when nowhere (then NO_PGVECTOR_LINE, and a skip). */
export function vectorPlace(sources: VectorPlaceSources): VectorPlace | undefined {
  const share = sources.share ?? '/usr/share/postgresql';
  const major = hostServerMajor(sources.lib);
  if (major !== undefined && existsSync(join(share, String(major), 'extension', 'vector.control')))
    return { where: 'host', major };
  if (sources.other?.pgvector) return { where: 'root', major: sources.other.major, other: sources.other };
  return undefined;
}

/**
 * vectorPlace() for the tests: here (the real folders, otherMajor()). In CI (CI set), where .ci/run
 * provides pgvector on the host or in the root on both releases, nowhere is a failure, not a skip.
 */
export function vectorPlaceHere(
  sources: VectorPlaceSources = { other: otherMajor() },
  env: NodeJS.ProcessEnv = process.env,
): VectorPlace | undefined {
  const place = vectorPlace(sources);
  if (!place && env.CI) throw new Error(`CI: ${NO_PGVECTOR_LINE}`);
  return place;
}

/** The line a vector test prints to say where its checks run, or NO_PGVECTOR_LINE before it skips. */
export function vectorPlaceLine(place: VectorPlace | undefined): string {
  if (!place) return NO_PGVECTOR_LINE;
  return place.where === 'host'
    ? `the pgvector checks run on this host's PostgreSQL ${place.major} (its pgvector package)`
    : `the pgvector checks run on PostgreSQL ${place.major} in the other major's root ${place.other.root} (this host's PostgreSQL has no pgvector)`;
}

/** Servers with pgvector, where vectorPlace() said, and pgvault on the same side as their archive_command. */
export interface VectorSession {
  readonly place: VectorPlace;
  readonly major: number;
  /**
   * A server archiving with pgvault's own archive_command (1 MB WAL segments, commit timestamps)
   * and its encrypted local-folder config, TZ=UTC; `pgvault()` runs the CLI with that config on
   * the server's side (the host's pgvault for a host server, the root's for the root's).
   */
  archivingCluster(options?: { readonly extra?: Record<string, string> }): Promise<OtherArchivingCluster>;
  /**
   * pgvault with `configFile`, on the server's side, where the server's extension folder shows a
   * copy without pgvector (in a mount namespace of its own: nothing changes for anyone else), so a
   * sandbox it starts cannot load the extension.
   */
  pgvaultWithoutVector(configFile: string, args: readonly string[], cwd: string): Promise<CliRun>;
  /** Stops its servers, removes their files. Never throws. */
  close(): Promise<void>;
}

const ENV = (): NodeJS.ProcessEnv => ({ PATH: process.env.PATH, TZ: 'UTC' });

/** A copy of `extensions` without pgvector's files, readable by the server's user; the caller removes it. */
function extensionsWithoutVector(extensions: string): string {
  const copy = mkdtempSync(join(tmpdir(), 'pgvault-ext-'));
  cpSync(extensions, copy, { recursive: true, filter: (src) => !/\/vector[^/]*$/.test(src) });
  chmodSync(copy, 0o755);
  return copy;
}

// biome-ignore lint/suspicious/noExplicitAny: a command's --json output, read by the tests
function parsed(args: readonly string[], r: CliRun): CliRun & { json?: any } {
  return { ...r, json: args.includes('--json') && r.stdout.trim() ? JSON.parse(r.stdout) : undefined };
}

class HostVectorSession implements VectorSession {
  private readonly clusters: ArchivingCluster[] = [];
  constructor(readonly place: VectorPlace & { where: 'host' }) {}

  get major(): number {
    return this.place.major;
  }

  async archivingCluster(options: { readonly extra?: Record<string, string> } = {}) {
    const a = await startArchivingCluster({ cluster: 'vector', extra: { TZ: 'UTC', ...options.extra } });
    this.clusters.push(a);
    const cluster: TempCluster = a.cluster;
    return {
      cluster,
      work: a.work,
      backupDir: a.backupDir,
      configFile: a.configFile,
      settings: a.settings,
      pgvault: async (args: readonly string[], env = ENV()) =>
        parsed(args, await runPgvault(['--config', a.configFile, ...args], env, a.work)),
    };
  }

  async pgvaultWithoutVector(configFile: string, args: readonly string[], cwd: string): Promise<CliRun> {
    const extensions = `/usr/share/postgresql/${this.major}/extension`;
    const copy = extensionsWithoutVector(extensions);
    try {
      // As root in a private mount namespace: the bind mount ends with the processes in it.
      const script = 'mount --bind "$0" "$1" && shift && exec "$@"';
      const argv = [
        '--mount',
        '--propagation',
        'private',
        '/bin/sh',
        '-c',
        script,
        copy,
        extensions,
        process.execPath,
        PGVAULT_CLI,
        '--config',
        configFile,
        ...args,
      ];
      return await runProgram('/usr/bin/unshare', argv, ENV(), cwd);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.clusters.map((a) => a.stop().catch(() => {})));
  }
}

class RootVectorSession implements VectorSession {
  constructor(
    readonly place: VectorPlace & { where: 'root' },
    private readonly session: OtherMajorSession,
  ) {}

  get major(): number {
    return this.place.major;
  }

  archivingCluster(options: { readonly extra?: Record<string, string> } = {}) {
    return this.session.archivingCluster(options);
  }

  async pgvaultWithoutVector(configFile: string, args: readonly string[], cwd: string): Promise<CliRun> {
    // A session whose root shows an extension folder without pgvector (the root stays as it is).
    const extensions = `/usr/share/postgresql/${this.major}/extension`;
    const copy = extensionsWithoutVector(join(this.place.other.root, extensions));
    const without = await OtherMajorSession.open(this.place.other, [], [{ at: extensions, from: copy }]);
    try {
      return await without.runPgvault(['--config', configFile, ...args], ENV(), cwd);
    } finally {
      await without.close();
      rmSync(copy, { recursive: true, force: true });
    }
  }

  close(): Promise<void> {
    return this.session.close();
  }
}

export async function openVectorSession(place: VectorPlace): Promise<VectorSession> {
  if (place.where === 'host') return new HostVectorSession(place);
  return new RootVectorSession(place, await OtherMajorSession.open(place.other));
}
