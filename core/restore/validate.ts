import type { StoredObject } from '../catalog/manifest';
import type { Config } from '../config';
import { ValidationError } from '../errors';
import { exactRowCounts } from '../pg/server';
import { withClient } from '../pg/tools';
import type { Vault } from '../vault';
import { openBackup, pickDatabaseObject } from './fetch';

export interface TableCheck {
  readonly schema: string;
  readonly table: string;
  readonly expected?: number;
  readonly actual?: number;
}

export interface ValidationReport {
  readonly database: string;
  readonly ok: boolean;
  readonly tablesChecked: number;
  readonly rowsChecked: number;
  /** Tables whose row count differs, or that are missing on either side. */
  readonly mismatches: readonly TableCheck[];
  /** Why no counts were compared (a manifest without counts), if so. */
  readonly note?: string;
}

/**
 * Row counts of every table in the database against the counts recorded in the backup: a table the
 * manifest lists that the database lacks, or holds with another count, is a mismatch.
 */
export async function compareWithManifest(
  config: Config,
  database: string,
  object: StoredObject,
  only?: (t: { schema: string; table: string }) => boolean,
): Promise<ValidationReport> {
  const expected = (object.tables ?? []).filter((t) => (only ? only(t) : true));
  if (object.tables === undefined) {
    return {
      database,
      ok: true,
      tablesChecked: 0,
      rowsChecked: 0,
      mismatches: [],
      note: 'the backup recorded no row counts',
    };
  }
  const actual = (await exactRowCounts(config.pg, database, { jobs: config.parallelJobs })).filter((t) =>
    only ? only(t) : true,
  );
  const key = (t: { schema: string; table: string }) => `${t.schema}\u0000${t.table}`;
  const actualByKey = new Map(actual.map((t) => [key(t), t.rows]));
  const mismatches: TableCheck[] = [];
  for (const t of expected) {
    const got = actualByKey.get(key(t));
    if (got !== t.rows) mismatches.push({ schema: t.schema, table: t.table, expected: t.rows, actual: got });
    actualByKey.delete(key(t));
  }
  // A restore of part of a backup whose manifest lists none of the tables it restored has checked
  // nothing: that is a failure, not "0 tables match".
  if (only && expected.length === 0) {
    for (const t of actual) mismatches.push({ schema: t.schema, table: t.table, actual: t.rows });
  }
  return {
    database,
    ok: mismatches.length === 0,
    tablesChecked: expected.length,
    rowsChecked: expected.reduce((n, t) => n + t.rows, 0),
    mismatches,
  };
}

export interface HealthReport {
  readonly database: string;
  readonly serverVersion: string;
  readonly sizeBytes: number;
  readonly invalidIndexes: readonly string[];
}

/** Connectivity and basic health: the database answers, and no index is left invalid. */
export async function databaseHealth(config: Config, database: string): Promise<HealthReport> {
  return withClient(config.pg, database, async (c) => {
    const v = await c.query<{ version: string; size: string }>(
      `SELECT current_setting('server_version') AS version, pg_database_size(current_database())::text AS size`,
    );
    const bad = await c.query<{ name: string }>(
      `SELECT n.nspname || '.' || c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid ORDER BY 1`,
    );
    return {
      database,
      serverVersion: v.rows[0]!.version,
      sizeBytes: Number(v.rows[0]!.size),
      invalidIndexes: bad.rows.map((r) => r.name),
    };
  });
}

export interface RestoreValidation {
  readonly health: HealthReport;
  readonly against?: string;
  readonly report?: ValidationReport;
}

/**
 * `restore validate <database> [--against <backup>]`. Without --against, the newest full backup
 * holding a database of the same name is the reference, when there is one.
 */
export async function validateDatabase(
  vault: Vault,
  database: string,
  options: { against?: string; from?: string } = {},
): Promise<RestoreValidation> {
  const { config } = vault;
  const health = await databaseHealth(config, database);
  let entry = options.against ? await vault.catalog.resolve(options.against) : undefined;
  if (!entry) {
    const wanted = options.from ?? database;
    entry = (await vault.catalog.list('full')).find((e) =>
      e.manifest.objects.some((o) => o.database === wanted),
    );
  }
  if (!entry) return { health };
  const manifest = await openBackup(entry, config);
  const object = pickDatabaseObject(manifest, {
    named: entry.namedObject,
    from: options.from,
    target: database,
  });
  const report = await compareWithManifest(config, database, object);
  return { health, against: manifest.id, report };
}

/** Throws a ValidationError naming the first mismatches. */
export function assertValid(report: ValidationReport): void {
  if (report.ok) return;
  const shown = report.mismatches
    .slice(0, 5)
    .map((m) => `${m.schema}.${m.table}: expected ${m.expected ?? 'absent'}, found ${m.actual ?? 'missing'}`)
    .join('; ');
  throw new ValidationError(
    `database "${report.database}" differs from the backup in ${report.mismatches.length} table(s): ${shown}`,
  );
}
