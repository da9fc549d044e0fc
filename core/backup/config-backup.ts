import type { CatalogEntry } from '../catalog/catalog';
import type { ManifestBody } from '../catalog/manifest';
import { errorMessage } from '../errors';
import { listDatabases, serverInfo } from '../pg/server';
import { findPgBinary, pgEnv, withClient } from '../pg/tools';
import { openBackup, readBackupObject } from '../restore/fetch';
import { startTool } from '../stream/process';
import { readPatroniConfig, readPatroniTopology, type TopologyNode } from '../topology';
import type { Vault } from '../vault';
import { inMemorySource, type ObjectSource, probeTargets, runBackup } from './run';
import { type TarFile, tarArchive } from './tar';

/**
 * `backup config`: what it takes to rebuild the server around the data: settings that differ from
 * the defaults, the configuration files, pg_hba rules, roles and tablespaces, and every database's
 * extensions with their versions, as one tar archive. With DEPLOYMENT_MODE=patroni, two more objects:
 * Patroni's dynamic configuration as `GET /config` returned it (`patroni-config`) and the members
 * with their roles, states and timelines as `GET /cluster` described them (`patroni-members`), read
 * through core/topology (same URLs, auth, TLS and timeout as routing).
 */
export async function backupConfig(vault: Vault, options: { now?: Date } = {}): Promise<ManifestBody> {
  const { config } = vault;
  await probeTargets(vault);
  const server = await serverInfo(config.pg);
  const files = await collectConfigFiles(vault);
  const archive = tarArchive(files, options.now);
  const patroni = config.patroni ? await patroniSources(config.patroni) : [];
  return runBackup(vault, {
    type: 'config',
    schedule: 'manual',
    server,
    tools: {},
    now: options.now,
    sources: [inMemorySource('config', 'tar', 'server configuration', archive), ...patroni],
  });
}

/** The Patroni objects of a config backup: GET /config unchanged, and the members with their roles. */
async function patroniSources(patroni: NonNullable<Vault['config']['patroni']>): Promise<ObjectSource[]> {
  const [dynamic, topology] = await Promise.all([readPatroniConfig(patroni), readPatroniTopology(patroni)]);
  const members = {
    ...(topology.scope !== undefined ? { scope: topology.scope } : {}),
    source: topology.source,
    members: topology.nodes,
  };
  return [
    {
      ...inMemorySource('patroni-config', 'json', 'Patroni dynamic configuration', Buffer.from(dynamic.text)),
      part: 'patroni-config',
    },
    {
      ...inMemorySource(
        'patroni-members',
        'json',
        'Patroni members and roles',
        Buffer.from(`${JSON.stringify(members, null, 2)}\n`),
      ),
      part: 'patroni-members',
    },
  ];
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

/** What a config backup recorded of its Patroni cluster (`restore list <backup>` shows it). */
export interface PatroniRecord {
  /** GET /config as stored. */
  readonly config?: unknown;
  /** The members with their roles at backup time. */
  readonly members?: { scope?: string; source?: string; members: TopologyNode[] };
}

/**
 * The Patroni objects of a config backup, read back (digests checked) after its manifest is
 * verified; undefined for a backup without them.
 */
export async function readPatroniRecord(
  vault: Vault,
  entry: CatalogEntry,
): Promise<PatroniRecord | undefined> {
  const objects = entry.manifest.objects.filter(
    (o) => o.kind === 'patroni-config' || o.kind === 'patroni-members',
  );
  if (objects.length === 0) return undefined;
  await openBackup(entry, vault.config);
  const record: { config?: unknown; members?: PatroniRecord['members'] } = {};
  for (const object of objects) {
    const chunks: Buffer[] = [];
    for await (const chunk of await readBackupObject(vault, entry, object)) chunks.push(chunk as Buffer);
    const value = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (object.kind === 'patroni-config') record.config = value;
    else record.members = value as PatroniRecord['members'];
  }
  return record;
}
