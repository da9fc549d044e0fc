import { describe, expect, it } from 'vitest';
import { ToolExitError } from '../../core/stream/process';

describe('a server error relayed by a tool, ending with its DETAIL line', () => {
  it('says the error, then the detail: not the detail alone', () => {
    // Prepare: pg_basebackup 17's stderr when the server lacks the WAL summaries of an incremental.
    const stderr = [
      'pg_basebackup: error: could not initiate base backup: ERROR:  WAL summaries are required on timeline 1 from 0/700028 to 0/A00028, but the summaries for that timeline and LSN range are incomplete',
      'DETAIL:  The first unsummarized LSN in this range is 0/700028.',
      '',
    ].join('\n');

    // Act
    const err = new ToolExitError('pg_basebackup', 1, null, stderr);

    // Assess
    expect(err.message).toBe(
      'pg_basebackup failed with exit code 1: pg_basebackup: error: could not initiate base backup: ERROR:  WAL summaries are required on timeline 1 from 0/700028 to 0/A00028, but the summaries for that timeline and LSN range are incomplete (DETAIL: The first unsummarized LSN in this range is 0/700028.)',
    );
  });

  it('a HINT after the error too', () => {
    const err = new ToolExitError(
      'pg_basebackup',
      1,
      null,
      'pg_basebackup: error: could not connect: FATAL:  no pg_hba.conf entry for replication connection\nHINT:  Add one.\n',
    );
    expect(err.message).toBe(
      'pg_basebackup failed with exit code 1: pg_basebackup: error: could not connect: FATAL:  no pg_hba.conf entry for replication connection (HINT: Add one.)',
    );
  });
});
