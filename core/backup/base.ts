import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CatalogEntry } from '../catalog/catalog';
import { type ChainLink, incrementalsInChain } from '../catalog/chain';
import type { ManifestBody, PhysicalInfo } from '../catalog/manifest';
import type { Schedule } from '../catalog/naming';
import {
  corruptionBehindProgramFailure,
  decryptionFor,
  readObjectIntoProgram,
  readObjectToFile,
} from '../catalog/objects';
import { removeOnExit } from '../cleanup';
import type { Config } from '../config';
import { ConfigError, errorMessage, IntegrityError, PostgresError, UsageError } from '../errors';
import { type ServerInfo, serverInfo } from '../pg/server';
import { parseBackupLabel, parseWalRanges, TarScanner } from '../pg/tar';
import { findPgBinary, pgEnv, refuseOlderClient, toolMajorVersion, withClient } from '../pg/tools';
import { startTool, ToolExitError } from '../stream/process';
import type { Vault } from '../vault';
import { formatLsn, parseLsn, segmentOfLsn } from '../wal/naming';
import { type ObjectSource, probeTargets, runBackup, toolVersions } from './run';

export interface BaseBackupOptions {
  readonly schedule: Schedule;
  readonly now?: Date;
  /**
   * `--incremental`: an incremental base backup (PostgreSQL 17+) of the newest base backup; refused
   * in one line where it cannot be. Without it, BASE_INCREMENTAL decides (a full where it cannot be).
   */
  readonly incremental?: boolean;
  /** Told why this backup is a full one when an incremental was asked for or configured. */
  readonly note?: (line: string) => void;
  /** A full one whatever BASE_INCREMENTAL says: the retry after the server could not take the incremental. */
  readonly fullOnly?: boolean;
}

/** What the server must allow before pg_basebackup is worth starting. */
export interface PhysicalPrerequisites {
  readonly walLevel: string;
  readonly maxWalSenders: number;
  readonly segmentBytes: number;
  /** Tablespaces other than pg_default and pg_global. */
  readonly extraTablespaces: readonly string[];
  /** Sum of pg_database_size, for progress and the S3 part size. */
  readonly sizeBytes: number;
  /** summarize_wal (PostgreSQL 17+; undefined before), which incremental base backups need. */
  readonly summarizeWal?: string;
}

/** Manifests of PostgreSQL 13 and newer carry WAL-Ranges, which is where the stop LSN comes from. */
const MIN_SERVER_MAJOR = 13;

/** backup_label is a few hundred bytes; the manifest's WAL-Ranges and checksum sit in its last lines. */
const LABEL_BYTES = 64 * 1024;
const MANIFEST_TAIL_BYTES = 64 * 1024;

const WAL_SEGMENT_IN_TAR = /^pg_wal\/[0-9A-F]{24}$/;

export async function physicalPrerequisites(config: Config): Promise<PhysicalPrerequisites> {
  return withClient(config.pg, config.pg.database ?? 'postgres', async (c) => {
    const settings = await c.query<{ name: string; setting: string }>(
      `SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'max_wal_senders', 'wal_segment_size', 'summarize_wal')`,
    );
    const byName = new Map(settings.rows.map((r) => [r.name, r.setting]));
    const spaces = await c.query<{ spcname: string }>(
      `SELECT spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1`,
    );
    const size = await c.query<{ n: string }>(
      'SELECT sum(pg_database_size(oid))::text AS n FROM pg_database',
    );
    return {
      walLevel: byName.get('wal_level') ?? 'unknown',
      maxWalSenders: Number(byName.get('max_wal_senders') ?? 0),
      // pg_settings reports it in bytes from PostgreSQL 11 on.
      segmentBytes: Number(byName.get('wal_segment_size') ?? 16 * 1024 * 1024),
      extraTablespaces: spaces.rows.map((r) => r.spcname),
      sizeBytes: Number(size.rows[0]?.n ?? 0),
      summarizeWal: byName.get('summarize_wal'),
    };
  });
}

/** Refuses, with one line saying what to change, a server pgvault cannot take a base backup of. */
export function assertBaseBackupPossible(server: ServerInfo, pre: PhysicalPrerequisites): void {
  if (server.major < MIN_SERVER_MAJOR) {
    throw new PostgresError(
      `base backups need PostgreSQL ${MIN_SERVER_MAJOR} or newer (the server is ${server.version}): older servers send no backup manifest; use \`pgvault backup full\``,
    );
  }
  if (pre.walLevel === 'minimal') {
    throw new PostgresError(
      'wal_level is minimal, which allows no base backup or WAL archiving; set wal_level = replica in postgresql.conf and restart the server',
    );
  }
  if (pre.maxWalSenders < 1) {
    throw new PostgresError(
      'max_wal_senders is 0, so pg_basebackup cannot connect; set max_wal_senders = 10 (or at least 1) and restart the server',
    );
  }
  if (pre.extraTablespaces.length > 0) {
    throw new PostgresError(
      `the server has tablespaces beyond pg_default and pg_global (${pre.extraTablespaces.join(', ')}); pg_basebackup cannot stream several tablespaces to one stream, so pgvault backup base does not support them yet: move them into pg_default (ALTER TABLE/INDEX ... SET TABLESPACE pg_default) or use \`pgvault backup full\``,
    );
  }
}

/**
 * `backup base`: `pg_basebackup -Ft -D - -X fetch` streamed through the one data path into every
 * target as a single tar object. The WAL needed to make it consistent is inside the tar (fetch), so
 * the backup restores on its own; the stop LSN and timeline come from the stream itself.
 *
 * With Patroni it always reads the leader, whatever BACKUP_FROM says (index backups follow it). A standby cannot write the backup-end WAL record nor switch segments, so its
 * backup stops at its replay position with no WAL record after it in the tar: recovery to the
 * backup's end ('immediate', as `verify restore` does) then needs the next record from the archive,
 * which the leader has archived only once that segment is complete. Tested on PostgreSQL 15 with
 * Patroni: a standby's base backup of an idle cluster failed verify restore ("recovery ended before
 * configured recovery target was reached") and passed only when the leader had written after it.
 */
export async function backupBase(vault: Vault, options: BaseBackupOptions): Promise<ManifestBody> {
  const { config } = vault;
  const pgBasebackup = findPgBinary('pg_basebackup', config.pgBinDir);
  // The checks wait on the network and on programs starting: all at once, as for full backups.
  // The programs start first, so they run while this process loads the PostgreSQL client.
  const [toolMajor, tools, , server, pre] = await Promise.all([
    toolMajorVersion(pgBasebackup),
    toolVersions(pgBasebackup, config.compression),
    probeTargets(vault),
    serverInfo(config.pg),
    physicalPrerequisites(config),
  ]);
  assertBaseBackupPossible(server, pre);
  refuseOlderClient('pg_basebackup', { path: pgBasebackup, major: toolMajor }, server, config.pgBinDir);
  const wanted =
    options.incremental === true
      ? 'explicit'
      : config.baseIncremental && options.fullOnly !== true
        ? 'setting'
        : 'no';
  const bases =
    wanted === 'no'
      ? []
      : (await vault.catalog.list('base')).filter((e) => e.manifest.physical !== undefined);
  const decision = chooseIncrementalParent({
    wanted,
    chainMax: config.incrementalChainMax,
    server,
    summarizeWal: pre.summarizeWal,
    bases: bases.map((e) => e.manifest),
  });
  if (decision.note !== undefined) options.note?.(decision.note);
  let parent = bases.find((e) => e.manifest.id === decision.parentId);
  const gap = parent === undefined ? undefined : await summariesMissing(config, parent.manifest);
  if (parent !== undefined && gap !== undefined) {
    if (wanted === 'explicit') throw incrementalImpossible(parent.manifest.id, gap);
    options.note?.(`full base backup: BASE_INCREMENTAL is set, but ${gap}`);
    parent = undefined;
  }
  // The server's backup_manifest of this backup, written aside as the tar streams past, then stored
  // as an object of its own: an incremental of this backup reads it instead of the whole tar.
  const own = await mkdtemp(join(tmpdir(), 'pgvault-server-manifest-'));
  const forgetOwn = removeOnExit(own);
  const ownManifestFile = join(own, 'backup_manifest');
  let parentManifest: Awaited<ReturnType<typeof fetchServerManifest>> | undefined;
  try {
    parentManifest =
      parent === undefined ? undefined : await fetchServerManifest(vault, parent, options.note);
  } catch (err) {
    await rm(own, { recursive: true, force: true });
    forgetOwn();
    throw err;
  }

  let scanner: TarScanner | undefined;
  const seen: StreamFacts = { walSegments: 0 };
  const source: ObjectSource = {
    part: '',
    kind: 'base',
    format: 'tar',
    label: 'pg_basebackup',
    sizeHint: pre.sizeBytes,
    open() {
      // A replication connection: the password reaches pg_basebackup as PGPASSWORD, never in argv.
      const proc = startTool(
        pgBasebackup,
        [
          '--format=tar',
          '--pgdata=-',
          '--wal-method=fetch',
          '--checkpoint=fast',
          '--label=pgvault',
          '--no-password',
          ...(parentManifest ? [`--incremental=${parentManifest.file}`] : []),
        ],
        { env: pgEnv(config.pg), label: 'pg_basebackup', stdin: 'ignore', bufferOutput: true },
      );
      scanner = new TarScanner({
        label: 'pg_basebackup output',
        capture: {
          backup_label: { headBytes: LABEL_BYTES },
          backup_manifest: { tailBytes: MANIFEST_TAIL_BYTES, sha256: true, toFile: ownManifestFile },
        },
        onEntry: (entry) => {
          const isWal = WAL_SEGMENT_IN_TAR.test(entry.name);
          if (isWal) seen.walSegments++;
          // WAL files and the manifest are sent only after the server has stopped the backup.
          if (seen.stopSeenAt === undefined && (isWal || entry.name === 'backup_manifest'))
            seen.stopSeenAt = new Date();
        },
      });
      const tar = scanner;
      proc.stdout.pipe(tar);
      proc.stdout.on('error', (err) => tar.destroy(err));
      // A stream that failed midway (bad tar, a target gave up) no longer reads pg_basebackup's
      // stdout; stop it, or it would wait on a full pipe and the backup would never settle.
      tar.once('close', () => {
        if (!tar.readableEnded && proc.child.exitCode === null && proc.child.signalCode === null)
          proc.child.kill('SIGTERM');
      });
      return { source: tar, upstream: [proc.exited] };
    },
  };

  const serverManifestSource: ObjectSource = {
    part: SERVER_MANIFEST_PART,
    kind: 'server-manifest',
    format: 'json',
    label: 'backup_manifest',
    // Opened once the tar is stored (sources other than `small` ones go one after another).
    open() {
      const member = scanner?.member('backup_manifest');
      if (member === undefined || member.sha256 === undefined) {
        throw new PostgresError(
          "pg_basebackup's output ended without backup_manifest; the backup is incomplete, run it again (and check the server log)",
        );
      }
      const sha256 = member.sha256;
      return {
        source: { path: ownManifestFile, size: member.size },
        upstream: [],
        // The raw digest is the one physical.serverManifestSha256 records: every read checks it.
        finish: () => ({ rawSha256: sha256 }),
      };
    },
  };

  try {
    return await runBackup(vault, {
      type: 'base',
      schedule: options.schedule,
      server,
      tools,
      // The manifest object after the tar, before the backup's own manifest: a run that stops in
      // between leaves no manifest, so no backup (its objects are a failed run's, removed as such).
      sources: [source, serverManifestSource],
      now: options.now,
      physical: () => physicalFromStream(scanner, pre.segmentBytes, seen),
      incrementalOf: parent?.manifest.id,
    });
  } catch (err) {
    // The server decides last: summaries missing in a way the check above cannot see (another
    // timeline's, say). A scheduled incremental takes a full instead; one asked for is refused.
    if (parent === undefined || !serverLacksSummaries(err)) throw err;
    const gap = `the server lacks the WAL summaries since ${parent.manifest.id} started (${errorMessage(err)})`;
    if (wanted === 'explicit') throw incrementalImpossible(parent.manifest.id, gap);
    options.note?.(`full base backup: BASE_INCREMENTAL is set, but ${gap}`);
    return backupBase(vault, { ...options, fullOnly: true });
  } finally {
    await parentManifest?.remove();
    await rm(own, { recursive: true, force: true });
    forgetOwn();
  }
}

/**
 * Why the server cannot take an incremental of `parent`, when that shows before trying: an
 * incremental needs WAL summaries from the parent's start on. Missing when the oldest summary on the
 * parent's timeline begins after that start (summarize_wal was turned on later, or
 * wal_summary_keep_time removed them), or when there is none on that timeline yet and the parent's
 * first segment is gone from pg_wal (nothing can summarize it any more). Undefined when they may
 * cover it, or the server does not let this user look: the server decides then.
 */
export async function summariesMissing(
  config: Config,
  parent: Pick<ManifestBody, 'id' | 'physical'>,
): Promise<string | undefined> {
  const physical = parent.physical;
  if (physical === undefined) return undefined;
  const seen = await withClient(config.pg, config.pg.database ?? 'postgres', async (c) => {
    try {
      const r = await c.query<{ first: string | null; kept: boolean }>(
        `SELECT (SELECT min(start_lsn)::text FROM pg_available_wal_summaries() WHERE tli = $1) AS first,
                EXISTS (SELECT 1 FROM pg_ls_waldir() WHERE name = $2) AS kept`,
        [physical.timeline, physical.startWal],
      );
      return r.rows[0];
    } catch {
      // Not allowed to this user (pg_monitor): pg_basebackup finds out.
      return undefined;
    }
  });
  if (seen === undefined) return undefined;
  const why = 'summarize_wal was off then, or wal_summary_keep_time has removed them';
  if (seen.first === null) {
    if (seen.kept) return undefined;
    return `the server has no WAL summaries on timeline ${physical.timeline} and no longer holds ${physical.startWal}, where ${parent.id} started: ${why}`;
  }
  if (parseLsn(seen.first) <= parseLsn(physical.startLsn)) return undefined;
  return `the server's WAL summaries on timeline ${physical.timeline} begin at ${seen.first}, after ${parent.id} started (${physical.startLsn}): ${why}`;
}

function incrementalImpossible(parentId: string, why: string): UsageError {
  return new UsageError(
    `--incremental cannot be taken of ${parentId}: ${why}; take a full base backup: pgvault backup base`,
  );
}

/** pg_basebackup refused by the server for want of WAL summaries (in the error or its causes). */
function serverLacksSummaries(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof ToolExitError && /WAL summaries are required/.test(e.stderr)) return true;
  }
  return false;
}

/** The name part of a base backup's server manifest object: `{id}.server-manifest.json[.zst][.enc]`. */
export const SERVER_MANIFEST_PART = 'server-manifest';

/** PostgreSQL's first major with incremental base backups (pg_basebackup --incremental). */
export const MIN_INCREMENTAL_MAJOR = 17;

export interface IncrementalChoice {
  /** The base backup to be incremental to; undefined: a full one. */
  readonly parentId?: string;
  /** Why a full one was taken though an incremental was configured (said in the output). */
  readonly note?: string;
}

/**
 * Whether this base backup is incremental, and to what: the newest base backup of the same system,
 * unless its chain already holds `chainMax` incrementals (then a full starts a new chain). Refuses,
 * in one line, what `--incremental` (wanted 'explicit') cannot do; BASE_INCREMENTAL ('setting') takes
 * a full instead where the server is too old or there is nothing to be incremental to, and says so.
 */
export function chooseIncrementalParent(input: {
  readonly wanted: 'explicit' | 'setting' | 'no';
  readonly chainMax: number;
  readonly server: Pick<ServerInfo, 'major' | 'version' | 'systemIdentifier'>;
  readonly summarizeWal: string | undefined;
  /** Base backups of the cluster, newest first. */
  readonly bases: readonly (ChainLink & {
    readonly server: { readonly systemIdentifier: string };
    readonly physical?: unknown;
  })[];
}): IncrementalChoice {
  const { wanted, server } = input;
  if (wanted === 'no') return {};
  if (server.major < MIN_INCREMENTAL_MAJOR) {
    if (wanted === 'explicit') {
      throw new UsageError(
        `--incremental needs PostgreSQL ${MIN_INCREMENTAL_MAJOR} or newer (the server is ${server.version}); take a full base backup: pgvault backup base`,
      );
    }
    return {
      note: `full base backup: BASE_INCREMENTAL is set, but incremental base backups need PostgreSQL ${MIN_INCREMENTAL_MAJOR} or newer (the server is ${server.version})`,
    };
  }
  if (input.summarizeWal !== 'on') {
    throw new ConfigError(
      `incremental base backups need summarize_wal = on (the server has ${input.summarizeWal ?? 'no such setting'}); run ALTER SYSTEM SET summarize_wal = on and SELECT pg_reload_conf() on the server, then take a full base backup to start the chain`,
    );
  }
  const bases = input.bases.filter(
    (b) => b.physical !== undefined && b.server.systemIdentifier === server.systemIdentifier,
  );
  const newest = bases[0];
  if (newest === undefined) {
    if (wanted === 'explicit') {
      throw new UsageError(
        `--incremental needs an earlier base backup of this server to be incremental to, and there is none; take a full one first: pgvault backup base`,
      );
    }
    return {
      note: 'full base backup: BASE_INCREMENTAL is set, but there is no earlier base backup to be incremental to',
    };
  }
  let depth: number;
  try {
    depth = incrementalsInChain(
      newest.id,
      input.bases.map((manifest) => ({ manifest })),
    );
  } catch (err) {
    return { note: `full base backup: the chain of ${newest.id} is broken (${errorMessage(err)})` };
  }
  if (depth >= input.chainMax) {
    return {
      note: `full base backup: the chain of ${newest.id} already holds ${depth} incremental(s) (INCREMENTAL_CHAIN_MAX=${input.chainMax}), so a new chain starts`,
    };
  }
  return { parentId: newest.id };
}

/**
 * The server's backup_manifest of a stored base backup, which pg_basebackup --incremental sends,
 * in a private temporary folder. Read from the backup's own `server-manifest` object (a few MB at
 * most, whatever the size of the tar); only a backup taken before pgvault stored that object has
 * it read out of its tar, which reads the whole tar (said through `note`). Checked like any restore:
 * the sha256 of the stored bytes, then of the manifest itself against the one recorded when the
 * backup was taken (physical.serverManifestSha256).
 */
export async function fetchServerManifest(
  vault: Vault,
  entry: CatalogEntry,
  note?: (line: string) => void,
): Promise<{ file: string; remove(): Promise<void> }> {
  const { manifest } = entry;
  const own = manifest.objects.find((o) => o.kind === 'server-manifest');
  const object = own ?? manifest.objects.find((o) => o.kind === 'base');
  if (object === undefined) throw new IntegrityError(`backup ${manifest.id} lists no base backup object`);
  if (own === undefined) {
    note?.(
      `backup ${manifest.id} has no server manifest object of its own (taken by an older pgvault): reading its backup_manifest out of its base backup tar, which reads the whole tar; the backups taken from now on store it apart`,
    );
  }
  const dir = await mkdtemp(join(tmpdir(), 'pgvault-parent-'));
  const remove = () => rm(dir, { recursive: true, force: true });
  const file = join(dir, 'backup_manifest');
  try {
    let lastError: unknown;
    for (const target of entry.targets) {
      const spec = {
        target,
        object,
        compression: manifest.compression.algorithm,
        threads: vault.config.parallelJobs,
        encryption: decryptionFor(manifest, vault.config.encryption.passphrase),
      };
      if (own !== undefined) {
        await rm(file, { force: true });
        try {
          await readObjectToFile(spec, file);
          lastError = undefined;
          break;
        } catch (err) {
          lastError = err;
          continue;
        }
      }
      const tar = startTool('tar', ['-x', '-i', '-f', '-', '-C', dir, 'backup_manifest'], {
        label: 'tar -x backup_manifest',
        stdout: 'ignore',
      });
      const read = readObjectIntoProgram(spec, tar.stdin);
      const [fetched, extracted] = await Promise.allSettled([read, tar.exited]);
      if (fetched.status === 'fulfilled' && extracted.status === 'fulfilled') {
        lastError = undefined;
        break;
      }
      lastError =
        fetched.status === 'rejected'
          ? fetched.reason
          : ((await corruptionBehindProgramFailure(
              target,
              object,
              (extracted as PromiseRejectedResult).reason,
              fetched,
            )) ?? (extracted as PromiseRejectedResult).reason);
    }
    if (lastError !== undefined) throw lastError;
    const bytes = await readFile(file);
    const expected = manifest.physical?.serverManifestSha256;
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (expected !== undefined && actual !== expected) {
      throw new IntegrityError(
        `the server manifest of ${manifest.id} does not match the one recorded when it was taken (sha256 ${actual}, expected ${expected}); take a full base backup (pgvault backup base without --incremental)`,
      );
    }
    return { file, remove };
  } catch (err) {
    await remove();
    throw err;
  }
}

/** What the stream showed besides the captured members. */
export interface StreamFacts {
  /** WAL segment files inside the tar (pg_wal/...). */
  walSegments: number;
  /** When the first member sent after the backup's stop went past. */
  stopSeenAt?: Date;
}

/** The manifest's physical block, from backup_label and the server manifest seen in the stream. */
export function physicalFromStream(
  scanner: TarScanner | undefined,
  segmentBytes: number,
  seen: StreamFacts,
): PhysicalInfo {
  const labelMember = scanner?.member('backup_label');
  const manifestMember = scanner?.member('backup_manifest');
  if (!scanner?.complete || labelMember === undefined || manifestMember === undefined) {
    throw new PostgresError(
      `pg_basebackup's output ended without ${labelMember === undefined ? 'backup_label' : manifestMember === undefined ? 'backup_manifest' : 'the end-of-archive marker'}; the backup is incomplete, run it again (and check the server log)`,
    );
  }
  const label = parseBackupLabel(labelMember.head.toString('utf8'));
  const ranges = parseWalRanges(manifestMember.tail.toString('utf8'));
  if (label === undefined || ranges === undefined) {
    throw new PostgresError(
      `cannot read ${label === undefined ? 'backup_label' : 'the WAL-Ranges of backup_manifest'} in pg_basebackup's output; the backup cannot be used for recovery`,
    );
  }
  // PostgreSQL lists the ranges newest timeline first; the backup ends on the newest one.
  const last = ranges.reduce((a, b) => (b.timeline > a.timeline ? b : a));
  const stop = parseLsn(last.endLsn);
  const start = parseLsn(label.startLsn);
  // The last segment needed holds the byte before the stop LSN (PostgreSQL's XLByteToPrevSeg).
  const lastNeeded = stop > start ? stop - 1n : stop;
  return {
    timeline: label.startTimeline,
    startLsn: formatLsn(start),
    stopLsn: formatLsn(stop),
    startWal: label.startWal,
    stopWal: segmentOfLsn(last.timeline, lastNeeded, segmentBytes),
    checkpointLsn: label.checkpointLsn,
    walIncluded: seen.walSegments > 0,
    segmentBytes,
    serverManifestSha256: manifestMember.sha256,
    stopTime: (seen.stopSeenAt ?? manifestMember.seenAt).toISOString(),
  };
}
