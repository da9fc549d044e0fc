import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { OTHER_MAJOR_SKIP_LINE, OtherMajorSession, otherMajor } from '../helpers/pg-other';

/**
 * The other-major harness (test/helpers/pg-other.ts) leaves nothing behind: no mount on the host, no
 * process of its session, no folder, even when a program inside the root would run on.
 */
const other = otherMajor();
if (!other) console.warn(`pg-other-harness.test.ts skipped: ${OTHER_MAJOR_SKIP_LINE}`);

/** Mount points on the host under a folder (/proc/self/mountinfo's fifth field). */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .filter((target) => target.startsWith(`${dir}/`));
}

describe.skipIf(!other)('the other-major harness', { timeout: 180_000 }, () => {
  it('close() stops its servers, kills what still runs inside the root, removes its files; no mount is ever made on the host', async () => {
    // Prepare: a server, and a program inside the root that would run for ten minutes.
    const s = await OtherMajorSession.open(other!);
    const cluster = await s.startCluster();
    const stray = spawn(s.enter, ['client', '/bin/sleep', '600'], { stdio: 'ignore' });
    const strayExit = new Promise((r) => stray.once('exit', r));
    for (let i = 0; i < 50 && s.processes().length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    const inside = s.processes();
    expect(inside.length).toBeGreaterThan(1); // the postmaster and its children, and sleep
    expect(mountsUnder(other!.root)).toEqual([]);
    const [row] = await cluster.query<{ v: string }>("SELECT current_setting('server_version_num') AS v");
    expect(Math.floor(Number(row!.v) / 10000)).toBe(other!.major);

    // Act
    await s.close();

    // Assess
    await strayExit;
    expect(s.processes()).toEqual([]);
    // Each pid seen inside is gone, or no longer this session's process: a zombie not yet reaped by
    // init on a loaded machine, or the number reused by another program (its environment lacks the tag).
    const running = (pid: number) => {
      try {
        if (/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) return false;
        return readFileSync(`/proc/${pid}/environ`).includes(`PGVAULT_OTHER_SESSION=${s.tag}\0`);
      } catch {
        return false; // gone
      }
    };
    expect(inside.filter(running)).toEqual([]);
    expect(existsSync(s.dir)).toBe(false);
    expect(existsSync(cluster.baseDir)).toBe(false);
    expect(mountsUnder(other!.root)).toEqual([]);
  });
});
