import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BIN,
  CLUSTER_NAME,
  openWithoutPgvault,
  sha256,
  startWalFixture,
  type WalFixture,
  walKeyPath,
} from './wal-fixture';

/**
 * `wal receive` as the Fargate service runs it: pg_receivewal through a slot, each completed
 * segment pushed and removed locally, status lines with the lag, a clean stop on SIGTERM.
 */
let fx: WalFixture;
let receiver: ChildProcess | undefined;

beforeAll(async () => {
  // No archive_command: the only copy of the WAL is what wal receive stores.
  fx = await startWalFixture({}, { archiveCommand: '' });
});

afterAll(async () => {
  receiver?.kill('SIGKILL');
  await fx?.stop();
});

describe('wal receive', () => {
  it('stores every completed segment through a replication slot, reports its lag and stops cleanly on SIGTERM (exit 0)', async () => {
    // Prepare
    const statuses: Array<Record<string, unknown>> = [];
    const heartbeat = join(fx.vaultDir, '..', 'receiver.alive');
    const args = ['wal', 'receive', '--slot', 'pgvault_test', '--json', '--heartbeat', heartbeat];
    receiver = spawn(BIN, ['--config', fx.configFile, ...args], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: '/root',
        PGHOST: fx.cluster.host,
        PGPORT: String(fx.cluster.port),
        PGUSER: fx.cluster.superuser,
        PGDATABASE: 'postgres',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    receiver.stderr!.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    createInterface({ input: receiver.stdout! }).on('line', (line) => statuses.push(JSON.parse(line)));
    const exited = new Promise<number | null>((resolve) => receiver!.once('exit', (code) => resolve(code)));
    const deadline = Date.now() + 30_000;
    while (statuses.length === 0 && Date.now() < deadline) await sleep(50);

    // Act
    const names = await fx.makeSegments(3);
    const stagingDir = join(fx.vaultDir, '.pgvault-receive', 'walt');
    while (!names.every((n) => existsSync(walKeyPath(fx.vaultDir, n))) && Date.now() < deadline)
      await sleep(100);
    const slots = await fx.cluster.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots');
    // The health check's file: rewritten every 10 s once pg_receivewal has streamed for 5 s.
    while (!existsSync(heartbeat) && Date.now() < deadline + 15_000) await sleep(200);
    const beating = existsSync(heartbeat);
    // WAL written after the last switch: pg_receivewal holds it in a .partial segment when stopped.
    await fx.cluster.query('CREATE TABLE IF NOT EXISTS after_switch AS SELECT 1 AS v');
    receiver.kill('SIGTERM');
    const code = await exited;

    // Assess
    expect(statuses.length, stderr).toBeGreaterThan(0);
    expect(slots.map((s) => s.slot_name)).toContain('pgvault_test');
    for (const name of names) {
      expect(existsSync(walKeyPath(fx.vaultDir, name)), `${name}\n${stderr}`).toBe(true);
      expect(sha256(openWithoutPgvault(walKeyPath(fx.vaultDir, name), fx.keyFile))).toBe(
        sha256(readFileSync(join(fx.cluster.dataDir, 'pg_wal', name))),
      );
    }
    const left = readdirSync(stagingDir).filter((f) => /^[0-9A-F]{24}$/.test(f));
    expect(left).toEqual([]);
    const last = statuses[statuses.length - 1]!;
    expect(last).toMatchObject({ slot: 'pgvault_test' });
    expect(typeof last.lagBytes).toBe('number');
    // A stop (an ECS deployment's SIGTERM) is the receiver's normal end: exit 0, no alert.
    expect(`exit ${code}`, stderr).toBe('exit 0');
    // Its twice-a-second sleeps leave no listener behind (they piled up on the stop signal before).
    expect(stderr).not.toContain('MaxListenersExceededWarning');
    expect(beating, stderr).toBe(true);
    expect(existsSync(heartbeat)).toBe(false);
    // No partial segment reached the archive (a .partial stays in staging for the next run).
    const archived = readdirSync(join(fx.vaultDir, CLUSTER_NAME, 'wal'), { recursive: true }).map(String);
    expect(archived.filter((f) => f.includes('partial'))).toEqual([]);
  });
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
