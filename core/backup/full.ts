import { basename } from 'node:path';
import type { ManifestBody } from '../catalog/manifest';
import { namePart, type Schedule } from '../catalog/naming';
import type { Compression } from '../config';
import { PostgresError } from '../errors';
import { CustomArchiveScanner } from '../pg/archive';
import { type DatabaseInfo, listDatabases, pickDatabases, type ServerInfo, serverInfo } from '../pg/server';
import { findPgBinary, pgEnv, toolMajorVersion } from '../pg/tools';
import { compressionTool, toolVersion } from '../stream/compress';
import { startTool } from '../stream/process';
import type { Vault } from '../vault';
import { type ObjectSource, runBackup } from './run';

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
  // Independent checks at once: each is a round trip or a program started.
  const [, server, dumpMajor, allDatabases, tools] = await Promise.all([
    Promise.all(vault.targets.map((t) => t.probe())),
    serverInfo(config.pg),
    toolMajorVersion(pgDump),
    listDatabases(config.pg),
    toolVersions(pgDump, config.compression),
  ]);
  assertDumpNotOlder(dumpMajor, server);
  const databases = pickDatabases(allDatabases, options.databases ?? []);
  if (databases.length === 0) throw new PostgresError('the server has no database to back up');

  if (!server.superuser) {
    vault.reporter.warn(
      'not connected as a superuser: roles are saved without their passwords (pg_dumpall --no-role-passwords)',
    );
  }
  const sources: ObjectSource[] = [
    globalsSource(vault, pgDumpAll, server.superuser),
    ...databases.map((db) => databaseSource(vault, pgDump, db)),
  ];
  return runBackup(vault, {
    type: 'full',
    schedule: options.schedule,
    server,
    tools,
    sources,
    now: options.now,
  });
}

/** pg_dump must not be older than the server it reads. */
export function assertDumpNotOlder(dumpMajor: number, server: ServerInfo): void {
  if (dumpMajor < server.major) {
    throw new PostgresError(
      `pg_dump ${dumpMajor} is older than the server (${server.version}); install postgresql-client-${server.major} or set PG_BIN_DIR to its bin directory`,
    );
  }
}

function databaseSource(vault: Vault, pgDump: string, db: DatabaseInfo): ObjectSource {
  return {
    part: namePart(db.name),
    kind: 'database',
    format: 'dump',
    database: db.name,
    databaseInfo: { encoding: db.encoding, collate: db.collate, ctype: db.ctype, sizeBytes: db.sizeBytes },
    sizeHint: db.sizeBytes,
    label: `dump ${db.name}`,
    open() {
      // The database goes by PGDATABASE, not --dbname: a name with '=' would be read as a conninfo.
      const dump = startTool(pgDump, ['--format=custom', '--compress=0'], {
        env: pgEnv({ ...vault.config.pg, database: db.name }),
        label: `pg_dump of ${db.name}`,
        stdin: 'ignore',
        bufferOutput: true,
      });
      const scanner = new CustomArchiveScanner();
      dump.stdout.pipe(scanner);
      dump.stdout.on('error', (err) => scanner.destroy(err));
      // When the pass fails downstream (a target gives up), the scanner is destroyed: close pg_dump's
      // pipe too, so it ends on EPIPE instead of blocking forever on a full pipe.
      scanner.on('close', () => dump.stdout.destroy());
      return {
        source: scanner,
        upstream: [dump.exited],
        finish: () => {
          if (!scanner.complete || scanner.unsupportedReason) {
            vault.reporter.warn(
              `row counts for ${db.name} not recorded (${scanner.unsupportedReason ?? 'archive not fully read'}); validation will compare tables only`,
            );
            return {};
          }
          return {
            tables: scanner.tableRowCounts(),
            tocPatches: scanner.offsetPatches().map((p) => [p.position, p.bytes.toString('hex')]),
          };
        },
      };
    },
  };
}

/** Versions of the programs that wrote the backup, for the manifest. */
async function toolVersions(pgDump: string, compression: Compression): Promise<Record<string, string>> {
  const tools: Record<string, string> = {};
  const dump = await toolVersion(pgDump).catch(() => undefined);
  if (dump) tools.pg_dump = dump;
  const compressor = compressionTool(compression);
  if (compressor !== 'builtin') {
    const v = await toolVersion(compressor.command).catch(() => undefined);
    tools[basename(compressor.command)] = v ?? 'unknown';
  } else if (compression !== 'none') {
    tools[compression] = 'node:zlib';
  }
  return tools;
}

function globalsSource(vault: Vault, pgDumpAll: string, superuser: boolean): ObjectSource {
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
          env: pgEnv({ ...vault.config.pg, database: vault.config.pg.database ?? 'postgres' }),
          label: 'pg_dumpall --globals-only',
        },
      );
      return { source: dump.stdout, upstream: [dump.exited] };
    },
  };
}
