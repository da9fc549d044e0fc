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
