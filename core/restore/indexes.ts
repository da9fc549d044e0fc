import { parseIndexSql } from '../backup/indexes';
import { errorMessage, UsageError } from '../errors';
import { withClient } from '../pg/tools';
import type { Vault } from '../vault';
import { openBackup, readBackupObject } from './fetch';

export interface IndexRebuildResult {
  readonly backupId: string;
  readonly database: string;
  readonly created: readonly string[];
  readonly existing: number;
  readonly reindexed: number;
  readonly failed: ReadonlyArray<{ statement: string; error: string }>;
}

/**
 * `restore indexes <database>`: runs every index definition of the newest index backup that the
 * database lacks (CREATE INDEX IF NOT EXISTS), and with --reindex rebuilds the existing ones too.
 */
export async function restoreIndexes(
  vault: Vault,
  database: string,
  options: { backup?: string; reindex?: boolean } = {},
): Promise<IndexRebuildResult> {
  const entry = await vault.catalog.resolve(options.backup ?? 'latest', 'indexes');
  const manifest = await openBackup(entry, vault.config);
  const object = manifest.objects[0]!;
  const raw = await readBackupObject(vault, entry, object);
  const chunks: Buffer[] = [];
  for await (const c of raw) chunks.push(c as Buffer);
  const statements = parseIndexSql(Buffer.concat(chunks).toString('utf8')).get(database);
  if (!statements) {
    throw new UsageError(
      `index backup ${manifest.id} has no database "${database}"; it was taken before the database existed`,
    );
  }
  return withClient(vault.config.pg, database, async (c) => {
    const created: string[] = [];
    const failed: Array<{ statement: string; error: string }> = [];
    let existing = 0;
    let reindexed = 0;
    for (const statement of statements) {
      const m = /INDEX IF NOT EXISTS (.+?) ON (?:ONLY )?(.+?) USING/.exec(statement);
      const name = m?.[1] ?? statement;
      const schema = /^(.+?)\./.exec(m?.[2] ?? '')?.[1];
      const found = await c.query(
        `SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('i', 'I') AND quote_ident(c.relname) = $1 AND ($2::text IS NULL OR quote_ident(n.nspname) = $2)`,
        [name, schema ?? null],
      );
      if ((found.rowCount ?? 0) > 0) {
        existing++;
        if (options.reindex) {
          await c.query(`REINDEX INDEX ${schema ? `${schema}.` : ''}${name}`);
          reindexed++;
        }
        continue;
      }
      try {
        await c.query(statement);
        created.push(schema ? `${schema}.${name}` : name);
      } catch (err) {
        failed.push({ statement, error: errorMessage(err) });
      }
    }
    return { backupId: manifest.id, database, created, existing, reindexed, failed };
  });
}
