import { existsSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { PostgresError } from '../../core/errors';
import { TempCluster } from '../../core/pg/cluster';

describe('TempCluster', () => {
  const started: TempCluster[] = [];
  afterAll(async () => {
    await Promise.all(started.map((c) => c.stop()));
  });

  it('starts, answers queries through node-postgres and psql, and stop removes its directory', async () => {
    // Prepare
    const cluster = await TempCluster.start();
    started.push(cluster);

    // Act
    const rows = await cluster.query<{ answer: number; user: string }>(
      'SELECT 41 + 1 AS answer, current_user AS user',
    );
    const printed = await cluster.psql("SELECT 'from psql';");

    // Assess
    expect(rows).toEqual([{ answer: 42, user: 'postgres' }]);
    expect(printed.trim()).toBe('from psql');
    expect(cluster.host).toBe('127.0.0.1');
    expect(cluster.connection('x')).toEqual({
      host: '127.0.0.1',
      port: cluster.port,
      user: 'postgres',
      database: 'x',
    });
    expect(existsSync(cluster.dataDir)).toBe(true);

    await cluster.stop();
    expect(existsSync(cluster.baseDir)).toBe(false);
    await expect(cluster.stop()).resolves.toBeUndefined();
    await expect(cluster.query('SELECT 1')).rejects.toThrow(
      /cannot connect to PostgreSQL at 127\.0\.0\.1:\d+ \(ECONNREFUSED\)/,
    );
  });

  it('runs two clusters at once on different ports, with their own settings and superuser', async () => {
    // Prepare
    const [a, b] = await Promise.all([
      TempCluster.start({ settings: { work_mem: '7MB' } }),
      TempCluster.start({ superuser: 'vault_admin' }),
    ]);
    started.push(a, b);

    // Act
    await a.query('CREATE TABLE only_in_a (id int)');
    const inA = await a.query<{ n: string }>(
      "SELECT count(*)::text AS n FROM pg_class WHERE relname = 'only_in_a'",
    );
    const inB = await b.query<{ n: string }>(
      "SELECT count(*)::text AS n FROM pg_class WHERE relname = 'only_in_a'",
    );
    const workMem = await a.query<{ work_mem: string }>('SHOW work_mem');
    const fsync = await a.query<{ fsync: string }>('SHOW fsync');
    const who = await b.query<{ u: string }>('SELECT current_user AS u');

    // Assess
    expect(a.port).not.toBe(b.port);
    expect(inA[0]?.n).toBe('1');
    expect(inB[0]?.n).toBe('0');
    expect(workMem[0]?.work_mem).toBe('7MB');
    expect(fsync[0]?.fsync).toBe('off');
    expect(who[0]?.u).toBe('vault_admin');
  });

  it('reports a psql failure with the server message', async () => {
    const cluster = await TempCluster.start();
    started.push(cluster);
    await expect(cluster.psql('SELECT * FROM no_such_table;')).rejects.toThrow(PostgresError);
    await expect(cluster.psql('SELECT * FROM no_such_table;')).rejects.toThrow(/no_such_table/);
  });

  it('refuses a port that is already taken, with the server log in the message', async () => {
    const first = await TempCluster.start();
    started.push(first);
    await expect(TempCluster.start({ port: first.port })).rejects.toThrow(
      /did not start on 127\.0\.0\.1:\d+[\s\S]*server log/,
    );
  });
});
