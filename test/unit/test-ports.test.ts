import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { testPort } from '../helpers/ports';

/*
 * The Patroni tests' ports: a child binds them later, so they must not come from the ephemeral range
 * (outgoing connections and other workers' bind(0) draw from it), and a port something holds is
 * never handed out.
 */
describe('testPort', () => {
  const held: Server[] = [];
  afterAll(() => {
    for (const s of held) s.close();
  });

  it('hands out distinct ports below the ephemeral range, never one that is held', async () => {
    // Prepare
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    const first = await testPort();
    const server = createServer();
    await new Promise<void>((ok) => server.listen(first, '127.0.0.1', ok));
    held.push(server);

    // Act
    const more: number[] = [];
    for (let i = 0; i < 1_200; i++) more.push(await testPort());

    // Assess: the slice (1000 ports) wraps around, and the held port is skipped every time.
    expect(first).toBeLessThan(low);
    expect(more.every((p) => p < low && p !== first)).toBe(true);
    expect(new Set(more.slice(0, 999)).size).toBe(999);
  });
});
