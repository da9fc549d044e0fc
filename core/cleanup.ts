import { rmSync } from 'node:fs';

/**
 * Paths a command is writing that must not outlive it: temp files of atomic writes, staging folders
 * of restores. Removed when the process exits for any reason (an interrupted backup must never leave
 * a half-written file that looks like something).
 */
const pending = new Set<string>();
let hooked = false;

export function removeOnExit(path: string): () => void {
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const p of pending) {
        try {
          rmSync(p, { recursive: true, force: true });
        } catch {
          // Exiting anyway; nothing better to do with a path we cannot remove.
        }
      }
    });
  }
  pending.add(path);
  return () => pending.delete(path);
}

/**
 * Async undo steps for an interrupted command (delete the objects a backup already stored, in
 * every target). The CLI runs them on SIGINT/SIGTERM before exiting; each registration is removed
 * by the function it returns once the step is no longer needed.
 */
const undoSteps = new Set<() => Promise<unknown>>();

export function undoOnInterrupt(step: () => Promise<unknown>): () => void {
  undoSteps.add(step);
  return () => undoSteps.delete(step);
}

export function pendingUndoSteps(): number {
  return undoSteps.size;
}

/** Runs every pending undo step, waiting at most `timeoutMs` in all. */
export async function runUndoSteps(timeoutMs: number): Promise<void> {
  const steps = [...undoSteps];
  undoSteps.clear();
  await Promise.race([
    Promise.allSettled(steps.map((s) => s())),
    new Promise((resolve) => setTimeout(resolve, timeoutMs).unref()),
  ]);
}

/**
 * How a command that runs until stopped (`wal receive`) stops. On SIGTERM/SIGINT the CLI runs it
 * instead of the undo steps and exits 0 when it finished in time: being stopped is that command's
 * normal end (an ECS deployment or scale-in stops the old task with SIGTERM), not a failure to alert on.
 */
let cleanStop: (() => Promise<unknown>) | undefined;

export function stopCleanlyOnInterrupt(stop: () => Promise<unknown>): () => void {
  cleanStop = stop;
  return () => {
    if (cleanStop === stop) cleanStop = undefined;
  };
}

export function hasCleanStop(): boolean {
  return cleanStop !== undefined;
}

/** Runs the registered clean stop: true when it finished within `timeoutMs` without an error. */
export async function runCleanStop(timeoutMs: number): Promise<boolean> {
  const stop = cleanStop;
  if (stop === undefined) return false;
  return Promise.race([
    stop().then(
      () => true,
      () => false,
    ),
    new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref()),
  ]);
}
