import type { ManifestBody, StoredObject } from '../catalog/manifest';
import { namePart, type Schedule } from '../catalog/naming';
import type { PgConnection } from '../config';
import { PostgresError } from '../errors';
import { type ArchiveScanResult, CustomArchiveScanner, scanFindings } from '../pg/archive';
import { archiveScannerScript, startArchiveScanner } from '../pg/archive-pump';
import { type DatabaseInfo, listDatabases, pickDatabases, type ServerInfo, serverInfo } from '../pg/server';
import { findPgBinary, pgEnv, refuseOlderClient, toolMajorVersion } from '../pg/tools';
import { compressFile } from '../stream/compress';
import { startTool } from '../stream/process';
import { chooseReadSource, readWithRetry } from '../topology';
import type { Vault } from '../vault';
import { type ObjectSource, probeTargets, runBackup, toolVersions } from './run';

export interface FullBackupOptions {
  readonly schedule: Schedule;
  /** Only these databases (--database, repeatable); all non-template databases when empty. */
  readonly databases?: readonly string[];
  readonly now?: Date;
}

/**
 * `backup full`: every database as its own pg_dump custom archive (restorable table by table,
 * in parallel), plus roles and tablespaces from `pg_dumpall --globals-only`.
 */
export async function backupFull(vault: Vault, options: FullBackupOptions): Promise<ManifestBody> {
  const { config } = vault;
  const pgDump = findPgBinary('pg_dump', config.pgBinDir);
  const pgDumpAll = findPgBinary('pg_dumpall', config.pgBinDir);
  // Independent checks at once: each is a round trip or a program started. The programs start
  // first, so they run while this process loads the PostgreSQL client (70 ms).
  // BACKUP_FROM: with Patroni, a healthy replica (else the leader, with a warning); else config.pg.
  const probe = (conn: PgConnection) => Promise.all([serverInfo(conn), listDatabases(conn)]);
  const warn = (line: string) => vault.reporter.warn(line);
  const [dumpMajor, tools, , first] = await Promise.all([
    toolMajorVersion(pgDump),
    toolVersions(pgDump, config.compression),
    probeTargets(vault),
    chooseReadSource(config, probe, warn),
  ]);
  // A replica that fails mid-backup (restarted, a recovery conflict, the connection lost): once more
  // on the next candidate; the failed run removed what it wrote.
  return readWithRetry(
    config,
    probe,
    warn,
    (source) => {
      const [server, allDatabases] = source.probed;
      assertDumpNotOlder(dumpMajor, server, pgDump, config.pgBinDir);
      const databases = pickDatabases(allDatabases, options.databases ?? []);
      if (databases.length === 0) throw new PostgresError('the server has no database to back up');

      if (!server.superuser && source === first) {
        vault.reporter.warn(
          'not connected as a superuser: roles are saved without their passwords (pg_dumpall --no-role-passwords)',
        );
      }
      const sources: ObjectSource[] = [
        globalsSource(vault, source.conn, pgDumpAll, server.superuser),
        ...databases.map((db) => databaseSource(vault, source.conn, pgDump, db)),
      ];
      return runBackup(vault, {
        node: source.node,
        type: 'full',
        schedule: options.schedule,
        server,
        tools,
        sources,
        now: options.now,
      });
    },
    first,
  );
}

/** pg_dump must not be older than the server it reads (ConfigError, exit 2, before anything is written). */
export function assertDumpNotOlder(
  dumpMajor: number,
  server: ServerInfo,
  pgDump = 'pg_dump',
  binDir?: string,
): void {
  refuseOlderClient('pg_dump', { path: pgDump, major: dumpMajor }, server, binDir);
}

function databaseSource(vault: Vault, conn: PgConnection, pgDump: string, db: DatabaseInfo): ObjectSource {
  return {
    part: namePart(db.name),
    kind: 'database',
    format: 'dump',
    database: db.name,
    databaseInfo: { encoding: db.encoding, collate: db.collate, ctype: db.ctype, sizeBytes: db.sizeBytes },
    sizeHint: db.sizeBytes,
    label: `dump ${db.name}`,
    open(onProgress) {
      // The database goes by PGDATABASE, not --dbname: a name with '=' would be read as a conninfo.
      const dump = {
        args: ['--format=custom', '--compress=0'],
        env: pgEnv({ ...conn, database: db.name }),
        label: `pg_dump of ${db.name}`,
      };
      const script = archiveScannerScript();
      const { config } = vault;
      const compressor = script
        ? compressFile(
            config.compression,
            { threads: config.parallelJobs, level: config.compressionLevel },
            'pipe',
          )
        : undefined;
      if (script && compressor) {
        // pg_dump → scanner → compressor, program to program: the raw dump never enters this process.
        const scanner = startArchiveScanner(script, compressor.child.stdin!, onProgress);
        const producer = startTool(pgDump, dump.args, {
          ...dump,
          stdin: 'ignore',
          stdout: scanner.input,
          bufferOutput: true,
        });
        // The programs hold their own ends of the two pipes now.
        compressor.child.stdin!.destroy();
        scanner.input.destroy();
        let scanned: ArchiveScanResult | undefined;
        scanner.result.then(
          (r) => {
            scanned = r;
          },
          () => {},
        );
        return {
          source: { encoded: compressor.stdout, rawSize: () => scanned?.bytes ?? 0 },
          upstream: [producer.exited, scanner.exited, scanner.result, compressor.exited],
          finish: () => recordedCounts(vault, db, scanned),
        };
      }
      // No compressor program ('none', gzip without pigz or gzip) or no built scanner: Node reads the
      // dump itself and scans it on the way.
      const producer = startTool(pgDump, dump.args, {
        ...dump,
        stdin: 'ignore',
        bufferOutput: true,
      });
      const scanner = new CustomArchiveScanner();
      producer.stdout.pipe(scanner);
      producer.stdout.on('error', (err) => scanner.destroy(err));
      // When the pass fails downstream (a target gives up), the scanner is destroyed: close pg_dump's
      // pipe too, so it ends on EPIPE instead of blocking forever on a full pipe.
      scanner.on('close', () => producer.stdout.destroy());
      return {
        source: scanner,
        upstream: [producer.exited],
        finish: () => recordedCounts(vault, db, scanFindings(scanner, scanner.bytesSeen)),
      };
    },
  };
}

/** The manifest's row counts and TOC offsets from a scan, or none (with a warning) when it fell short. */
function recordedCounts(
  vault: Vault,
  db: DatabaseInfo,
  scanned: ArchiveScanResult | undefined,
): Pick<StoredObject, 'tables' | 'tocPatches'> {
  if (!scanned?.complete || scanned.unsupportedReason) {
    vault.reporter.warn(
      `row counts for ${db.name} not recorded (${scanned?.unsupportedReason ?? 'archive not fully read'}); validation will compare tables only`,
    );
    return {};
  }
  return { tables: scanned.tables, tocPatches: scanned.tocPatches };
}

function globalsSource(
  vault: Vault,
  conn: PgConnection,
  pgDumpAll: string,
  superuser: boolean,
): ObjectSource {
  return {
    part: 'globals',
    kind: 'globals',
    format: 'sql',
    label: 'roles and tablespaces',
    small: true,
    open() {
      // Role password hashes live in pg_authid, which only a superuser may read.
      const dump = startTool(
        pgDumpAll,
        superuser ? ['--globals-only'] : ['--globals-only', '--no-role-passwords'],
        {
          env: pgEnv({ ...conn, database: vault.config.pg.database ?? 'postgres' }),
          label: 'pg_dumpall --globals-only',
        },
      );
      return { source: dump.stdout, upstream: [dump.exited] };
    },
  };
}
