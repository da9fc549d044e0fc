import { isIP } from 'node:net';
import { z } from 'zod';
import type { CatalogEntry } from '../core/catalog/catalog';
import { errorMessage, UsageError } from '../core/errors';
import { PG_SECRET_SETTING, SECRET_ARN_PATTERN } from '../core/pg/credentials-secret';
import { pickDatabaseObject } from '../core/restore/fetch';
import { parseRecoveryTarget } from '../core/restore/pitr';
import { openVault, type Vault } from '../core/vault';
import {
  type ClusterEntry,
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
 *
 * Full, partial and PITR restores take a `target`: another server to restore into instead of the
 * cluster's own (`PGHOST`), e.g. `{"target": {"host": "restore-db.internal", "port": 5432, "database":
 * "postgres", "credentialsSecretArn": "arn:aws:secretsmanager:...:secret:restore-db-AbCdEf"}}`.
 * `database` there is where pgvault connects on that server (PGDATABASE, default postgres), not the
 * database restored into. Host, port and database go to the task as PGHOST, PGPORT and PGDATABASE; the
 * credentials never travel in the payload or the RunTask call: the task reads the secret named in
 * PGVAULT_PG_SECRET_ARN itself (core/pg/credentials-secret.ts), and only the secrets listed for the
 * cluster (`restoreTargets` of the deployment config) are accepted, which are all its role may read.
 * Without `credentialsSecretArn` the task uses the cluster's restore credentials.
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

/** A DNS host name (RFC 1123 labels) or an IPv4/IPv6 address: what PGHOST may name here. */
const HOST_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;
function isHostName(v: string): boolean {
  if (isIP(v) !== 0) return true;
  if (v.length > 253) return false;
  const labels = (v.endsWith('.') ? v.slice(0, -1) : v).split('.');
  // A name of digits and dots only is a malformed address, not a host name.
  return labels.every((l) => HOST_LABEL.test(l)) && !labels.every((l) => /^\d+$/.test(l));
}

const credentialsInPayload = z.never({
  error:
    'credentials never go in the payload; store them in a Secrets Manager secret listed in the cluster\'s restoreTargets and name it in "target.credentialsSecretArn"',
});

const targetSchema = z.strictObject({
  host: z
    .string({ error: 'use the host name or IP address of the server to restore into' })
    .refine(
      isHostName,
      'not a host name or IP address (letters, digits, "-" and "." only; or an IPv4/IPv6 address)',
    ),
  port: z
    .number({ error: 'use a port number, 1 to 65535' })
    .int('use a port number, 1 to 65535')
    .min(1, 'use a port number, 1 to 65535')
    .max(65535, 'use a port number, 1 to 65535')
    .optional(),
  database: pgName(63).optional(),
  credentialsSecretArn: z
    .string()
    .regex(
      SECRET_ARN_PATTERN,
      'use the complete ARN of a Secrets Manager secret (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX)',
    )
    .optional(),
  user: credentialsInPayload.optional(),
  username: credentialsInPayload.optional(),
  password: credentialsInPayload.optional(),
});

export type RestoreTarget = z.infer<typeof targetSchema>;

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
      target: targetSchema.optional(),
    }),
    z.strictObject({
      type: z.literal('partial'),
      ...common,
      backup: backupRef.optional(),
      table: pgName(127).optional(),
      schema: pgName(63).optional(),
      clean: z.boolean().optional(),
      target: targetSchema.optional(),
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
      target: targetSchema.optional(),
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
  /** The server restored into, when the payload named one (no credentials). */
  readonly target?: { readonly host: string; readonly port: number; readonly database: string };
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
 * The task's variables for a restore into another server: PGHOST, PGPORT, PGDATABASE over the
 * cluster's, and PGVAULT_PG_SECRET_ARN when the target has its own credentials, which must be one of
 * the cluster's restore target secrets. The server is a plain single node: a Patroni or Citus
 * setting of the cluster is blanked (ECS overrides cannot remove a variable). No secret value.
 */
export function targetEnvironment(cluster: ClusterEntry, target: RestoreTarget): Record<string, string> {
  const arn = target.credentialsSecretArn;
  if (arn !== undefined && !(cluster.restoreTargetSecretArns ?? []).includes(arn)) {
    const listed = cluster.restoreTargetSecretArns ?? [];
    throw invalid(
      'target.credentialsSecretArn',
      `${arn} is not a restore target secret of cluster ${cluster.name} (${listed.length === 0 ? 'it has none' : `it has ${listed.length}`}); add it to the cluster's restoreTargets in the deployment config and deploy, or name one of those`,
    );
  }
  return {
    PGHOST: target.host,
    PGPORT: String(target.port ?? 5432),
    PGDATABASE: target.database ?? 'postgres',
    DEPLOYMENT_MODE: 'single-node',
    // The REST API's secret too (the task definition's PATRONI_SECRET_ARN): nothing to read for a plain server.
    ...(cluster.patroniUrl !== undefined ? { PATRONI_URL: '', PATRONI_SECRET_ARN: '' } : {}),
    ...(cluster.citusCoordinator !== undefined ? { CITUS_COORDINATOR: '' } : {}),
    ...(arn !== undefined ? { [PG_SECRET_SETTING]: arn } : {}),
  };
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
  const to = 'target' in payload ? payload.target : undefined;
  const environment = to === undefined ? undefined : targetEnvironment(cluster, to);
  const config = await clusterConfig(cluster, { withKey: false, readsBackups: true });
  const backupId = await resolveBackup(openVault(config, logReporter), payload);
  const argv = restoreArgv(backupId === undefined ? payload : { ...payload, backup: backupId });
  const target =
    environment === undefined
      ? undefined
      : { host: environment.PGHOST!, port: Number(environment.PGPORT), database: environment.PGDATABASE! };
  const startedAt = new Date();
  let started: RestoreResult;
  try {
    started = await startPgvaultTask(cluster, {
      argv,
      startedBy: 'pgvault-restore',
      definition: 'restore',
      environment,
    });
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
    // Where the data goes, when not into the cluster's own server (no credentials).
    ...(target !== undefined ? { details: { target } } : {}),
  });
  return { taskArn: started.taskArn, command: started.command, ...(target !== undefined ? { target } : {}) };
};
