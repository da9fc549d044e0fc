import { Annotations } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';
import { dstNote, EVENTBRIDGE_SCHEDULER_DST } from '../core/schedule-dst';
import type { DeployConfig, ScheduleName } from './config';

/**
 * One line per configured schedule with a run time in an hour the deployment's time zone skips or
 * repeats in the coming year, saying what EventBridge Scheduler does with it (skips the run in a
 * skipped hour, runs it once in a repeated one). Synth prints them as warnings (stack.ts).
 */
export function scheduleDstNotes(
  config: DeployConfig,
  from = new Date(),
): Array<{ name: ScheduleName; line: string }> {
  const notes: Array<{ name: ScheduleName; line: string }> = [];
  for (const [name, expression] of Object.entries(config.schedules) as Array<[ScheduleName, string | null]>) {
    if (expression === null) continue;
    if (name === 'baseWeekly' && !config.physicalBackups) continue;
    const line = dstNote(
      `schedules.${name} '${expression}'`,
      expression,
      config.timeZone,
      EVENTBRIDGE_SCHEDULER_DST,
      from,
    );
    if (line) notes.push({ name, line });
  }
  return notes;
}

/** The notes as synth warnings on `scope` (one per schedule, `pgvault:scheduleDst:<name>`). */
export function warnScheduleDst(scope: IConstruct, config: DeployConfig, from = new Date()): void {
  for (const { name, line } of scheduleDstNotes(config, from))
    Annotations.of(scope).addWarningV2(`pgvault:scheduleDst:${name}`, line);
}
