/**
 * Which commands record a lifecycle event (core/events.ts), and of which kind. No imports: the CLI
 * asks this after every command, including `backup wal` and `restore wal`, which PostgreSQL runs once
 * per WAL segment and which record nothing, so they never load core/events.
 */

export type LifecycleKind = 'backup' | 'restore' | 'verification' | 'drill' | 'retention' | 'report';

/** The commands that record their outcome, and the kind of event each sends. */
const COMMAND_KINDS: Readonly<Record<string, LifecycleKind>> = {
  'backup full': 'backup',
  'backup base': 'backup',
  'backup config': 'backup',
  'backup indexes': 'backup',
  'backup retention': 'retention',
  'restore full': 'restore',
  'restore partial': 'restore',
  'restore pitr': 'restore',
  'restore globals': 'restore',
  'restore indexes': 'restore',
  'restore validate': 'restore',
  'restore test': 'restore',
  'verify file': 'verification',
  'verify restore': 'verification',
  'verify all': 'verification',
  'verify indexes': 'verification',
  'verify wal': 'verification',
  'verify sizes': 'verification',
  'verify capacity': 'verification',
  'verify report': 'report',
  drill: 'drill',
};

/** Whether a command records its outcome (`backup wal` and `restore wal`, run per WAL file, do not). */
export function lifecycleKindOf(commandPath: string): LifecycleKind | undefined {
  return COMMAND_KINDS[commandPath];
}
