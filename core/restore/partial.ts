import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { UsageError } from '../errors';
import { readArchiveToc, type TocEntry } from '../pg/archive';
import { withClient } from '../pg/tools';
import type { Vault } from '../vault';
import { runPgRestore } from './database';
import { fetchToLocalFile, openDatabaseBackup } from './fetch';
import { compareWithManifest, type ValidationReport } from './validate';

export type PartialKind = 'table' | 'schema';

export interface PartialRestoreOptions {
  readonly from?: string;
  /** Target database (must exist); the source's name when absent. */
  readonly database?: string;
  /** Drop what is there first (in the same transaction as the restore). */
  readonly clean?: boolean;
  readonly noOwner?: boolean;
  readonly noAcl?: boolean;
}

export interface PartialRestoreResult {
  readonly backupId: string;
  readonly kind: PartialKind;
  readonly name: string;
  readonly database: string;
  readonly entries: number;
  readonly durationMs: number;
  readonly validation: ValidationReport;
}

/** Objects that belong to a table: created on it, or hanging off something that is. */
const TABLE_PARTS = new Set([
  'TABLE DATA',
  'INDEX',
  'CONSTRAINT',
  'FK CONSTRAINT',
  'CHECK CONSTRAINT',
  'TRIGGER',
  'RULE',
  'POLICY',
  'ROW SECURITY',
  'DEFAULT',
  'COMMENT',
  'ACL',
  'SECURITY LABEL',
  'SEQUENCE',
  'SEQUENCE OWNED BY',
  'SEQUENCE SET',
  'STATISTICS',
  'INDEX ATTACH',
]);

/** Splits `schema.table` (either part may be "quoted"); a bare name is looked up in every schema. */
export function parseQualifiedName(input: string): { schema?: string; name: string } {
  const parts: string[] = [];
  let i = 0;
  while (i < input.length) {
    if (input[i] === '"') {
      let j = i + 1;
      let part = '';
      for (; j < input.length; j++) {
        if (input[j] === '"' && input[j + 1] === '"') {
          part += '"';
          j++;
        } else if (input[j] === '"') break;
        else part += input[j];
      }
      parts.push(part);
      i = j + 2;
    } else {
      const dot = input.indexOf('.', i);
      const end = dot === -1 ? input.length : dot;
      parts.push(input.slice(i, end));
      i = end + 1;
    }
  }
  if (parts.length === 1) return { name: parts[0]! };
  if (parts.length === 2) return { schema: parts[0]!, name: parts[1]! };
  throw new UsageError(`${input} is not a table name; use table or schema.table`);
}

/** The archive entries a table restore needs: the table, its data, and everything hanging off it. */
export function selectTableEntries(
  entries: readonly TocEntry[],
  schema: string | undefined,
  name: string,
  part?: BackupPart,
): TocEntry[] {
  const tables = entries.filter(
    (e) => e.desc === 'TABLE' && e.tag === name && (schema === undefined || e.namespace === schema),
  );
  if (tables.length === 0) {
    const where = schema ? `${schema}.${name}` : name;
    throw new UsageError(`table ${where} is not in ${describePart(part)}`);
  }
  if (tables.length > 1) {
    throw new UsageError(
      `table ${name} exists in several schemas (${tables.map((t) => t.namespace).join(', ')}); name it as schema.${name}`,
    );
  }
  const selected = new Set<number>([tables[0]!.dumpId]);
  const byId = new Map(entries.map((e) => [e.dumpId, e]));
  // Serial columns: the sequence exists apart from the table, tied to it by SEQUENCE OWNED BY.
  const grow = () => {
    let added = false;
    for (const e of entries) {
      if (selected.has(e.dumpId) || !TABLE_PARTS.has(e.desc)) continue;
      if (e.dependencies.some((d) => selected.has(d))) {
        selected.add(e.dumpId);
        added = true;
        if (e.desc === 'SEQUENCE OWNED BY') {
          for (const d of e.dependencies) if (byId.get(d)?.desc === 'SEQUENCE') selected.add(d);
        }
      }
    }
    return added;
  };
  while (grow()) {}
  return entries.filter((e) => selected.has(e.dumpId));
}

/** The archive entries of a schema: the schema itself (unless it already exists), and everything in it. */
export function selectSchemaEntries(
  entries: readonly TocEntry[],
  schema: string,
  schemaExists: boolean,
  part?: BackupPart,
): TocEntry[] {
  const own = entries.filter(
    (e) =>
      e.namespace === schema ||
      (!schemaExists && e.desc === 'SCHEMA' && e.tag === schema) ||
      ((e.desc === 'ACL' || e.desc === 'COMMENT') && e.tag === `SCHEMA ${schema}` && !schemaExists),
  );
  if (own.length === 0)
    throw new UsageError(`schema ${schema} is not in (or holds nothing in) ${describePart(part)}`);
  return own;
}

/** The database of a backup a partial restore reads, for messages. */
export interface BackupPart {
  readonly database: string;
  readonly backupId: string;
}

/** What was searched, and where to see what it holds: `restore list <backup>` shows each database's tables. */
function describePart(part: BackupPart | undefined): string {
  return part
    ? `database "${part.database}" of backup ${part.backupId}; list its tables with \`pgvault restore list ${part.backupId}\``
    : 'this backup; list its tables with `pgvault restore list <backup>`';
}

/**
 * `restore partial <backup> table|schema <name> [database]`: only the chosen objects, restored
 * in one transaction into an existing database. Refuses to overwrite what is there unless --clean.
 */
export async function restorePartial(
  vault: Vault,
  ref: string,
  kind: PartialKind,
  name: string,
  options: PartialRestoreOptions = {},
): Promise<PartialRestoreResult> {
  const { config, reporter } = vault;
  const started = Date.now();
  const { entry, manifest, object } = await openDatabaseBackup(vault, ref, {
    from: options.from,
    target: options.database,
  });
  const database = options.database ?? object.database!;
  const copy = await fetchToLocalFile(entry, object, config, reporter);
  try {
    const { entries } = await readArchiveToc(copy.path);
    const source = { database: object.database!, backupId: manifest.id };
    let selected: TocEntry[];
    let inScope: (t: { schema: string; table: string }) => boolean;
    if (kind === 'table') {
      const q = parseQualifiedName(name);
      selected = selectTableEntries(entries, q.schema, q.name, source);
      const table = selected.find((e) => e.desc === 'TABLE')!;
      const schema = table.namespace ?? 'public';
      if (!options.clean && (await relationExists(vault, database, schema, q.name))) {
        throw new UsageError(
          `table ${schema}.${q.name} already exists in "${database}"; drop or rename it first, or pass --clean to replace it`,
        );
      }
      inScope = (t) => t.schema === schema && t.table === q.name;
    } else {
      const state = await schemaState(vault, database, name);
      if (state.relations > 0 && !options.clean) {
        throw new UsageError(
          `schema ${name} already holds ${state.relations} relation(s) in "${database}"; drop it first, or pass --clean to replace its objects`,
        );
      }
      selected = selectSchemaEntries(entries, name, state.exists, source);
      inScope = (t) => t.schema === name;
    }
    const listFile = join(dirname(copy.path), 'restore.list');
    await writeFile(
      listFile,
      `${selected.map((e) => `${e.dumpId}; ${e.desc} ${e.namespace ?? '-'} ${e.tag.replace(/\n/g, ' ')}`).join('\n')}\n`,
    );
    reporter.info(
      `restoring ${kind} ${name} (${selected.length} archive entries) from ${manifest.id} into "${database}"`,
    );
    await runPgRestore(config, {
      file: copy.path,
      database,
      listFile,
      clean: options.clean,
      singleTransaction: true,
      noOwner: options.noOwner,
      noAcl: options.noAcl,
    });
    const validation = await compareWithManifest(config, database, object, inScope);
    return {
      backupId: manifest.id,
      kind,
      name,
      database,
      entries: selected.length,
      durationMs: Date.now() - started,
      validation,
    };
  } finally {
    await copy.remove();
  }
}

async function relationExists(
  vault: Vault,
  database: string,
  schema: string,
  name: string,
): Promise<boolean> {
  return withClient(vault.config.pg, database, async (c) => {
    const r = await c.query(
      `SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
      [schema, name],
    );
    return (r.rowCount ?? 0) > 0;
  });
}

async function schemaState(
  vault: Vault,
  database: string,
  schema: string,
): Promise<{ exists: boolean; relations: number }> {
  return withClient(vault.config.pg, database, async (c) => {
    const r = await c.query<{ exists: boolean; n: string }>(
      `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS exists,
              (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1)::text AS n`,
      [schema],
    );
    return { exists: r.rows[0]!.exists, relations: Number(r.rows[0]!.n) };
  });
}
