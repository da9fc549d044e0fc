import { describe, expect, it } from 'vitest';
import { ToolExitError } from '../../core/stream/process';

describe('pg_dump cancelled on a hot standby', () => {
  it('says it was a recovery conflict and what to set, not the COPY it was running', () => {
    // Prepare: pg_dump 15's stderr when replay cancels its COPY on a standby.
    const stderr = [
      'pg_dump: error: Dumping the contents of table "orders" failed: PQgetResult() failed.',
      'pg_dump: detail: Error message from server: ERROR:  canceling statement due to conflict with recovery',
      'DETAIL:  User was holding a relation lock for too long.',
      'pg_dump: detail: Command was: COPY public.orders (id, item) TO stdout;',
      '',
    ].join('\n');

    // Act
    const err = new ToolExitError('pg_dump of shop', 1, null, stderr);

    // Assess
    expect(err.message).toBe(
      "pg_dump of shop failed with exit code 1: canceling statement due to conflict with recovery (User was holding a relation lock for too long): the replica's WAL replay needed what the dump was reading; set hot_standby_feedback = on and raise max_standby_streaming_delay on the replicas (Patroni: postgresql.parameters), or back up from the leader (BACKUP_FROM=leader)",
    );
  });

  it('other failures keep their last line', () => {
    const err = new ToolExitError('pg_dump of shop', 1, null, 'pg_dump: error: connection failed\n');
    expect(err.message).toBe('pg_dump of shop failed with exit code 1: pg_dump: error: connection failed');
  });

  it('a failed query: the reason, not the query pg_dump echoes after it', () => {
    const err = new ToolExitError(
      'pg_dump of app',
      1,
      null,
      'pg_dump: error: query failed: ERROR:  deadlock detected\nDETAIL:  Process 1 waits for AccessShareLock on relation 16390 of database 16384; blocked by process 2.\nProcess 2 waits for AccessExclusiveLock on relation 16386 of database 16384; blocked by process 1.\npg_dump: detail: Query was: LOCK TABLE public.marker IN ACCESS SHARE MODE\n',
    );
    expect(err.message).toBe(
      'pg_dump of app failed with exit code 1: pg_dump: error: query failed: ERROR:  deadlock detected',
    );
  });
});
