import type { Compression } from '../config';
import { compressionExtension } from '../stream/compress';

/**
 * Object naming. Names follow the backup guide's `{type}-{schedule}-{timestamp}.{ext}` under the
 * catalog layout of DESIGN.md: `{cluster}/{type}/{schedule}/{id}.{part}.{ext}`. A backup is one id
 * with several objects (one per database, plus globals) and one manifest, written last.
 */

export const SCHEDULES = ['daily', 'weekly', 'monthly', 'manual'] as const;
export type Schedule = (typeof SCHEDULES)[number];

export const BACKUP_TYPES = ['full', 'base', 'config', 'indexes'] as const;
export type BackupType = (typeof BACKUP_TYPES)[number];

/** UTC timestamp as in the guide's names: 20260212-020000. */
export function formatStamp(date: Date): string {
  const iso = date.toISOString(); // 2026-02-12T02:00:00.000Z
  return `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}-${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}`;
}

/** Whether backups of a type are taken per schedule (full and base) or on their own (config, indexes). */
export function hasSchedule(type: BackupType): boolean {
  return type === 'full' || type === 'base';
}

/** full-daily-20260212-020000, base-weekly-...; config and indexes carry no schedule (config-20260212-010000). */
export function backupId(type: BackupType, schedule: Schedule, date: Date): string {
  return hasSchedule(type) ? `${type}-${schedule}-${formatStamp(date)}` : `${type}-${formatStamp(date)}`;
}

const ID_PATTERN = /^(full|base|config|indexes)-(?:(daily|weekly|monthly|manual)-)?(\d{8}-\d{6})(?:-(\d+))?$/;

export interface ParsedId {
  readonly type: BackupType;
  readonly schedule?: Schedule;
  readonly stamp: string;
}

export function parseBackupId(id: string): ParsedId | undefined {
  const m = ID_PATTERN.exec(id);
  if (!m) return undefined;
  const type = m[1] as BackupType;
  if (hasSchedule(type) !== (m[2] !== undefined)) return undefined;
  return { type, schedule: m[2] as Schedule | undefined, stamp: m[3]! };
}

/** Folder of a backup's objects, relative to the target root. */
export function backupFolder(cluster: string, type: BackupType, schedule: Schedule): string {
  return hasSchedule(type) ? `${cluster}/${type}/${schedule}` : `${cluster}/${type}`;
}

export function manifestKey(folder: string, id: string): string {
  return `${folder}/${id}.manifest.json`;
}

/**
 * A database name as a file-name part. Plain names stay readable; anything else (dots, slashes,
 * spaces, non-ASCII) is percent-encoded so every name maps to one safe, reversible part.
 */
export function namePart(name: string): string {
  return /^[A-Za-z0-9_-]+$/.test(name)
    ? name
    : encodeURIComponent(name).replace(/[.!'()*~]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export function objectExtension(
  format: 'dump' | 'sql' | 'tar' | 'json',
  compression: Compression,
  encrypted: boolean,
): string {
  return `.${format}${compressionExtension(compression)}${encrypted ? '.enc' : ''}`;
}

/** The suffix every manifest key ends with; listings look for it. */
export const MANIFEST_SUFFIX = '.manifest.json';
