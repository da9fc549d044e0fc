import { createHash, randomBytes } from 'node:crypto';
import { utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { MANIFEST_FORMAT, type ManifestBody, sealManifest } from '../../core/catalog/manifest';
import { type BackupType, backupFolder, backupId, type Schedule } from '../../core/catalog/naming';
import type { DrillRecord } from '../../core/catalog/records';
import { drillRecordKey } from '../../core/catalog/records';
import type { StorageTarget } from '../../core/storage/target';

/**
 * A catalog with history, stored through the real targets: manifests and objects of the sizes and
 * dates a test needs (weeks of nightly backups cannot be taken for real in a test). File objects get
 * the backup's time as their modification time, as they would have had.
 */

export interface PlannedBackup {
  readonly type: BackupType;
  readonly schedule?: Schedule;
  readonly at: Date;
  /** database name → raw (dumped) bytes; for base/config/indexes the one object's raw bytes under '-'. */
  readonly databases: Record<string, number>;
  /** stored / raw, default 0.25 */
  readonly ratio?: number;
}

export async function storeBackup(
  targets: readonly StorageTarget[],
  cluster: string,
  plan: PlannedBackup,
): Promise<ManifestBody> {
  const schedule = plan.schedule ?? 'daily';
  const id = backupId(plan.type, schedule, plan.at);
  const folder = backupFolder(cluster, plan.type, schedule);
  const ratio = plan.ratio ?? 0.25;
  const objects: ManifestBody['objects'] = [];
  for (const [database, raw] of Object.entries(plan.databases)) {
    const stored = Math.max(1, Math.round(raw * ratio));
    const bytes = randomBytes(stored);
    const kind = plan.type === 'full' ? 'database' : plan.type === 'base' ? 'base' : plan.type;
    const format = plan.type === 'full' ? 'dump' : plan.type === 'indexes' ? 'sql' : 'tar';
    const key = `${folder}/${id}${plan.type === 'full' ? `.${database}` : ''}.${format}.zst`;
    for (const t of targets) await t.putBytes(key, bytes);
    objects.push({
      key,
      kind,
      format,
      ...(plan.type === 'full' ? { database } : {}),
      rawSize: raw,
      storedSize: stored,
      sha256: createHash('sha256').update(bytes).digest('hex'),
    });
  }
  const finished = new Date(plan.at.getTime() + 60_000);
  const body: ManifestBody = {
    format: MANIFEST_FORMAT,
    id,
    type: plan.type,
    ...(plan.type === 'full' || plan.type === 'base' ? { schedule } : {}),
    cluster,
    node: { host: 'db1', port: 5432 },
    server: { version: '15.8', versionNum: 150008, systemIdentifier: '7345000000000000001' },
    tools: { pg_dump: '15.8' },
    startedAt: plan.at.toISOString(),
    finishedAt: finished.toISOString(),
    durationMs: 60_000,
    compression: { algorithm: 'zstd' },
    encryption: null,
    objects,
    rawSize: objects.reduce((n, o) => n + o.rawSize, 0),
    storedSize: objects.reduce((n, o) => n + o.storedSize, 0),
  };
  const manifestKey = `${folder}/${id}.manifest.json`;
  for (const t of targets) {
    await t.putBytes(manifestKey, await sealManifest(body, undefined));
    await backdate(t, [...objects.map((o) => o.key), manifestKey], finished);
  }
  return body;
}

export async function storeDrill(
  targets: readonly StorageTarget[],
  cluster: string,
  record: Omit<DrillRecord, 'format' | 'host'>,
): Promise<void> {
  const full: DrillRecord = { format: 'pgvault-drill/1', host: 'db1', ...record };
  const key = drillRecordKey(cluster, full);
  for (const t of targets) {
    await t.putBytes(key, `${JSON.stringify(full, null, 2)}\n`);
    await backdate(t, [key], new Date(record.finishedAt));
  }
}

/** Sets a file object's modification time (a cloud object keeps the time it was written). */
async function backdate(target: StorageTarget, keys: readonly string[], at: Date): Promise<void> {
  const root = (target as { root?: unknown }).root;
  if (target.kind !== 'file' || typeof root !== 'string') return;
  for (const key of keys) await utimes(join(root, ...key.split('/')), at, at);
}

export const DAY = 86_400_000;
export const HOUR = 3_600_000;

/** Nightly full backups of `app` (growing) and `crm`, one config per night, over `days` days before `now`. */
export async function storeHistory(
  targets: readonly StorageTarget[],
  cluster: string,
  now: Date,
  options: { days: number; shrinkLast?: boolean; lastAgeHours?: number },
): Promise<void> {
  for (let d = options.days - 1; d >= 0; d--) {
    const at = new Date(now.getTime() - d * DAY - (options.lastAgeHours ?? 2) * HOUR);
    const last = d === 0;
    const app = last && options.shrinkLast ? 2_000_000 : 8_000_000 + (options.days - d) * 100_000;
    await storeBackup(targets, cluster, {
      type: 'full',
      schedule: 'daily',
      at,
      databases: { app, crm: 3_000_000 },
    });
    await storeBackup(targets, cluster, {
      type: 'config',
      at: new Date(at.getTime() - HOUR),
      databases: { '-': 40_000 },
      ratio: 0.3,
    });
  }
}
