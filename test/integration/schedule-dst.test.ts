import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPgvault } from '../helpers/cli';
import { tempDir } from '../helpers/vault';

/**
 * Issue 12 (DST): `backup schedule` prints the crontab for this host, whose cron runs in the host's
 * time zone. A job in an hour the zone skips or repeats gets one line saying what cron does with it.
 */
let work: Awaited<ReturnType<typeof tempDir>>;
let configFile: string;
beforeAll(async () => {
  work = await tempDir();
  configFile = `${work.path}/pgvault.env`;
  writeFileSync(configFile, `BACKUP_DIR=${work.path}/backups\nCLUSTER_NAME=main\n`, { mode: 0o600 });
});
afterAll(async () => {
  await work?.remove();
});

const schedule = (tz: string) =>
  runPgvault(
    ['--config', configFile, 'backup', 'schedule', '--json'],
    { PATH: process.env.PATH, HOME: work.path, TZ: tz },
    work.path,
  );

describe('backup schedule in a time zone with daylight saving time', () => {
  it('Europe/Berlin: the 02:00 daily backup is in the skipped and the repeated hour, and the crontab says what cron does', async () => {
    const run = await schedule('Europe/Berlin');

    expect(`exit ${run.code}`, run.stderr).toBe('exit 0');
    const out = JSON.parse(run.stdout) as { dst: string[]; crontab: string };
    expect(out.dst).toHaveLength(1);
    expect(out.dst[0]).toMatch(
      /^backup full daily \('0 2 \* \* \*'\) \(Europe\/Berlin\): 02:00 does not exist on \d{4}-03-\d\d \(02:00–03:00 is skipped\): cron runs it right after the change; 02:00 happens twice on \d{4}-10-\d\d \(02:00–03:00 is repeated\): cron runs it once$/,
    );
    expect(out.crontab).toContain(`# DST: ${out.dst[0]}\n`);
  });

  it('UTC: nothing to say', async () => {
    const run = await schedule('UTC');

    expect(`exit ${run.code}`, run.stderr).toBe('exit 0');
    const out = JSON.parse(run.stdout) as { dst: string[]; crontab: string };
    expect(out.dst).toEqual([]);
    expect(out.crontab).not.toContain('# DST');
  });
});
