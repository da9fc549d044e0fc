import type { ManifestBody } from '../catalog/manifest';
import { errorMessage } from '../errors';
import { listDatabases, serverInfo } from '../pg/server';
import { findPgBinary, pgEnv, withClient } from '../pg/tools';
import { startTool } from '../stream/process';
import type { Vault } from '../vault';
import { inMemorySource, runBackup } from './run';
import { type TarFile, tarArchive } from './tar';

/**
 * `backup config`: what it takes to rebuild the server around the data: settings that differ from
 * the defaults, the configuration files, pg_hba rules, roles and tablespaces, and every database's
 * extensions with their versions, as one tar archive.
 */
export async function backupConfig(vault: Vault, options: { now?: Date } = {}): Promise<ManifestBody> {
  const { config } = vault;
  await Promise.all(vault.targets.map((t) => t.probe(config.clusterName)));
  const server = await serverInfo(config.pg);
  const files = await collectConfigFiles(vault);
  const archive = tarArchive(files, options.now);
  return runBackup(vault, {
    type: 'config',
    schedule: 'manual',
    server,
    tools: {},
    now: options.now,
    sources: [inMemorySource('config', 'tar', 'server configuration', archive)],
  });
}

function tsv(rows: readonly Record<string, unknown>[]): string {
  if (rows.length === 0) return '';
  const cols = Object.keys(rows[0]!);
  const cell = (v: unknown) =>
    v === null || v === undefined
      ? ''
      : String(v).replace(/[\t\n\\]/g, (c) => (c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\\\'));
  return `${cols.join('\t')}\n${rows.map((r) => cols.map((c) => cell(r[c])).join('\t')).join('\n')}\n`;
}

async function collectConfigFiles(vault: Vault): Promise<TarFile[]> {
  const { config } = vault;
  const files: TarFile[] = [];
  const notes: string[] = [];
  await withClient(config.pg, config.pg.database ?? 'postgres', async (c) => {
    const settings = await c.query(
      `SELECT name, setting, unit, source, sourcefile, sourceline FROM pg_settings
        WHERE source NOT IN ('default', 'override') ORDER BY name`,
    );
    files.push({ name: 'settings.tsv', content: tsv(settings.rows) });
    files.push({
      name: 'settings.conf',
      content: settings.rows
        .filter((r) => r.source === 'configuration file' || r.source === 'command line')
        .map(
          (r) => `${r.name} = '${String(r.setting).replace(/'/g, "''")}'${r.unit ? ` # unit ${r.unit}` : ''}`,
        )
        .join('\n'),
    });
    // Reading the files and the parsed hba rules needs superuser (or pg_read_server_files);
    // without it the archive says so instead of failing the backup.
    for (const [name, setting] of [
      ['postgresql.conf', 'config_file'],
      ['pg_hba.conf', 'hba_file'],
      ['pg_ident.conf', 'ident_file'],
    ] as const) {
      try {
        const r = await c.query<{ text: string }>(
          `SELECT pg_read_file(current_setting('${setting}')) AS text`,
        );
        files.push({ name: `files/${name}`, content: r.rows[0]?.text ?? '' });
      } catch (err) {
        notes.push(`${name}: not readable by this role (${errorMessage(err)})`);
      }
    }
    try {
      const hba = await c.query('SELECT * FROM pg_hba_file_rules ORDER BY line_number');
      files.push({ name: 'pg_hba_rules.tsv', content: tsv(hba.rows) });
    } catch (err) {
      notes.push(`pg_hba_file_rules: not readable by this role (${errorMessage(err)})`);
    }
  });
  const extensions: Record<string, unknown>[] = [];
  for (const db of await listDatabases(config.pg)) {
    await withClient(config.pg, db.name, async (c) => {
      const r = await c.query(
        `SELECT current_database() AS database, e.extname AS extension, e.extversion AS version, n.nspname AS schema
           FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY e.extname`,
      );
      extensions.push(...r.rows);
    });
  }
  files.push({ name: 'extensions.tsv', content: tsv(extensions) });
  const globals = startTool(findPgBinary('pg_dumpall', config.pgBinDir), ['--globals-only'], {
    env: pgEnv({ ...config.pg, database: config.pg.database ?? 'postgres' }),
    label: 'pg_dumpall --globals-only',
  });
  const chunks: Buffer[] = [];
  for await (const chunk of globals.stdout) chunks.push(chunk as Buffer);
  await globals.exited;
  files.push({ name: 'roles.sql', content: Buffer.concat(chunks) });
  if (notes.length > 0) files.push({ name: 'NOTES.txt', content: `${notes.join('\n')}\n` });
  return files;
}
