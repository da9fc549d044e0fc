import { z } from 'zod';
import type { CatalogEntry } from '../core/catalog/catalog';
import { errorMessage, UsageError } from '../core/errors';
import { pickDatabaseObject } from '../core/restore/fetch';
import { parseRecoveryTarget } from '../core/restore/pitr';
import { openVault, type Vault } from '../core/vault';
import {
  clusterConfig,
  clusterNameSchema,
  findCluster,
  InvalidPayloadError,
  logReporter,
  parsePayload,
  recordFailure,
  recordOutcome,
  startPgvaultTask,
} from './env';

/**
 * restore: invoked by hand (`aws lambda invoke --function-name <restore> --payload '{...}' out.json`).
 * Validates the payload, maps it to the `pgvault restore ...` command a user would type, starts the
 * restore task definition with it and returns the task's ARN. A bad payload is refused with one line
 * naming the field, and no task is started; so is a backup the catalog does not have (`latest` is
 * resolved to the id it means now, so the command returned names the backup restored).
 *
 *   {"type": "full",    "cluster": "main", "backup": "latest", "database": "app", "targetDatabase": "app_copy", "clean": false}
 *   {"type": "partial", "cluster": "main", "backup": "latest", "database": "app", "table": "sales.orders"}
 *   {"type": "pitr",    "cluster": "main", "backup": "auto", "database": "app", "time": "2026-02-12 10:30:00"}
 *   {"type": "test",    "cluster": "main", "backup": "full-daily-20260212-020000"}
 *
 * `database` (or its synonym `from`) is the database inside the backup, `targetDatabase` the one to
 * restore into (default: the same name).
 */

const ID = /^(full|base|config|indexes)-((daily|weekly|monthly|manual)-)?\d{8}-\d{6}(-\d+)?$/;
const backupRef = z
  .string()
  .refine((v) => v === 'latest' || ID.test(v), 'use a backup id (full-daily-20260212-020000) or "latest"');
const pitrBackupRef = z
  .string()
  .refine(
    (v) => v === 'latest' || v === 'auto' || ID.test(v),
    'use a base backup id (base-weekly-20260209-030000), "latest" or "auto"',
  );
/** A PostgreSQL name as an argument: never one commander could take for an option. */
const pgName = (max: number) =>
  z
    .string()
    .min(1)
    .refine((v) => Buffer.byteLength(v) <= max, `longer than ${max} bytes`)
    .refine((v) => !v.startsWith('-'), 'must not start with "-"')
    // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point.
    .refine((v) => !/[\u0000-\u001f]/.test(v), 'must not contain control characters');

const common = {
  cluster: clusterNameSchema,
  database: pgName(63).optional(),
  from: pgName(63).optional(),
  targetDatabase: pgName(63).optional(),
};

const payloadSchema = z.discriminatedUnion(
  'type',
  [
    z.strictObject({
      type: z.literal('full'),
      ...common,
      backup: backupRef.optional(),
      clean: z.boolean().optional(),
    }),
    z.strictObject({
      type: z.literal('partial'),
      ...common,
      backup: backupRef.optional(),
      table: pgName(127).optional(),
      schema: pgName(63).optional(),
      clean: z.boolean().optional(),
    }),
    z.strictObject({
      type: z.literal('pitr'),
      ...common,
      backup: pitrBackupRef.optional(),
      time: z.string().min(1).optional(),
      lsn: z.string().min(1).optional(),
      xid: z.union([z.string().min(1), z.number().int().nonnegative()]).optional(),
      name: z.string().min(1).optional(),
      immediate: z.literal(true).optional(),
    }),
    z.strictObject({
      type: z.literal('test'),
      cluster: clusterNameSchema,
      backup: backupRef.optional(),
      database: pgName(63).optional(),
      from: pgName(63).optional(),
    }),
  ],
  { error: 'use one of full, partial, pitr, test' },
);

export type RestorePayload = z.infer<typeof payloadSchema>;

export interface RestoreResult {
  readonly taskArn: string;
  /** The pgvault arguments the task runs. */
  readonly command: readonly string[];
}

const invalid = (field: string, why: string) =>
  new InvalidPayloadError(`invalid payload: "${field}": ${why}`);

/** The database inside the backup: `database` or `from` (the CLI's word), not two different ones. */
function sourceDatabase(p: { database?: string; from?: string }): string | undefined {
  if (p.database !== undefined && p.from !== undefined && p.database !== p.from)
    throw invalid('from', `names ${p.from} but "database" names ${p.database}; give one of them`);
  return p.database ?? p.from;
}

/** The `pgvault restore ...` arguments of a validated payload (cli/main.ts's command forms). */
export function restoreArgv(p: RestorePayload): string[] {
  const source = sourceDatabase(p);
  const from = source !== undefined ? ['--from', source] : [];
  switch (p.type) {
    case 'full': {
      const into = p.targetDatabase ?? source;
      return [
        'restore',
        'full',
        p.backup ?? 'latest',
        ...(into ? [into] : []),
        ...from,
        ...(p.clean ? ['--clean'] : []),
      ];
    }
    case 'partial': {
      if ((p.table === undefined) === (p.schema === undefined))
        throw invalid(
          p.table === undefined ? 'table' : 'schema',
          'give either "table" or "schema", one of them',
        );
      const into = p.targetDatabase ?? source;
      return [
        'restore',
        'partial',
        p.backup ?? 'latest',
        ...(p.table !== undefined ? ['table', p.table] : ['schema', p.schema!]),
        ...(into ? [into] : []),
        ...from,
        ...(p.clean ? ['--clean'] : []),
      ];
    }
    case 'pitr': {
      const xid = p.xid === undefined ? undefined : String(p.xid);
      const given = (['time', 'lsn', 'xid', 'name', 'immediate'] as const).filter((k) => p[k] !== undefined);
      if (given.length !== 1) {
        throw invalid(
          given[1] ?? 'time',
          given.length === 0
            ? 'give the recovery target: one of "time", "lsn", "xid", "name" or "immediate": true'
            : `give one recovery target, not ${given.join(' and ')}`,
        );
      }
      try {
        parseRecoveryTarget({ time: p.time, lsn: p.lsn, xid, name: p.name, immediate: p.immediate });
      } catch (err) {
        throw invalid(given[0]!, errorMessage(err));
      }
      const into = p.targetDatabase ?? source;
      if (into === undefined)
        throw invalid(
          'database',
          'name the database to recover (and "targetDatabase" to copy it under another name)',
        );
      const target =
        p.time !== undefined
          ? ['--target-time', p.time]
          : p.lsn !== undefined
            ? ['--target-lsn', p.lsn]
            : xid !== undefined
              ? ['--target-xid', xid]
              : p.name !== undefined
                ? ['--target-name', p.name]
                : ['--immediate'];
      // With a --target option the word after the backup is the database (restore pitr's form).
      return ['restore', 'pitr', p.backup ?? 'auto', into, ...target, ...from];
    }
    case 'test':
      return ['restore', 'test', p.backup ?? 'latest', ...from];
  }
}

/**
 * The backup the task will restore, looked up in the catalog now: an unknown id, a backup of the wrong
 * type or a database the backup does not hold is refused before a task starts, and `latest` becomes the
 * id it means at this moment. Listing manifests needs no key. A PITR `auto` or `latest` is left to the
 * task's planner, which needs the WAL archive to choose.
 */
async function resolveBackup(vault: Vault, p: RestorePayload): Promise<string | undefined> {
  const type = p.type === 'pitr' ? 'base' : 'full';
  const ref = p.backup ?? (p.type === 'pitr' ? 'auto' : 'latest');
  if (p.type === 'pitr' && (ref === 'auto' || ref === 'latest')) return undefined;
  let entry: CatalogEntry;
  try {
    entry = await vault.catalog.resolve(ref, type);
  } catch (err) {
    if (err instanceof UsageError) throw invalid('backup', errorMessage(err));
    throw err;
  }
  const m = entry.manifest;
  if (m.type !== type) {
    throw invalid(
      'backup',
      `${m.id} is a ${m.type} backup; ${p.type === 'pitr' ? 'PITR needs a base backup' : `a ${p.type} restore needs a full backup`}`,
    );
  }
  if (p.type !== 'pitr') {
    const source = sourceDatabase(p);
    try {
      // The CLI's rule (chooseSourceDatabase): "database" (--from), else the target's name, else the
      // one user database. A test without a database tests every database of the backup.
      if (p.type !== 'test' || source !== undefined)
        pickDatabaseObject(m, { from: source, target: p.type === 'test' ? undefined : p.targetDatabase });
    } catch (err) {
      const why = errorMessage(err).replace(
        ' with --from NAME (or pass the path of its object)',
        ' in "database"',
      );
      throw invalid('database', why);
    }
  }
  return m.id;
}

export const handler = async (event: unknown): Promise<RestoreResult> => {
  const payload = parsePayload(payloadSchema, event);
  restoreArgv(payload); // every field checked before anything is read
  const cluster = findCluster(payload.cluster);
  const config = await clusterConfig(cluster, { withKey: false });
  const backupId = await resolveBackup(openVault(config, logReporter), payload);
  const argv = restoreArgv(backupId === undefined ? payload : { ...payload, backup: backupId });
  const startedAt = new Date();
  let started: RestoreResult;
  try {
    started = await startPgvaultTask(cluster, { argv, startedBy: 'pgvault-restore', definition: 'restore' });
  } catch (err) {
    await recordFailure(config, 'restore', {
      kind: 'restore',
      commandPath: `restore ${payload.type}`,
      argv,
      error: err,
      startedAt,
    });
    throw err;
  }
  await recordOutcome(config, 'restore', {
    kind: 'restore',
    outcome: 'started',
    cluster: cluster.name,
    command: argv.join(' '),
    taskArn: started.taskArn,
    startedAt: startedAt.toISOString(),
    ...(backupId !== undefined ? { backupId } : {}),
  });
  return { taskArn: started.taskArn, command: started.command };
};
