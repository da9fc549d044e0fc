import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { freePort } from '../../core/pg/cluster';

/*
 * Ports for servers a test starts itself and that bind later (etcd, Patroni's REST API, the
 * PostgreSQL Patroni runs). A port picked with bind(0) comes from the kernel's ephemeral range,
 * which every outgoing connection on the host also draws from, and another test worker may be
 * handed the same number a moment later: between the pick and the child's bind someone else can
 * hold it ("Address already in use", seen in CI). So these come from below the ephemeral range,
 * where no outgoing connection lands, from a slice of their own per test worker, so that two
 * workers never hand out the same number; each is still checked free before it is returned
 * (a server left over from a killed run may hold one).
 */

const SLICE = 1_000;
const SLICES = 8;
let next = -1;

/** The low end of the kernel's ephemeral port range (32768 when it cannot be read). */
function ephemeralLow(): number {
  try {
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/);
    const n = Number(low);
    return Number.isInteger(n) && n > 0 ? n : 32_768;
  } catch {
    return 32_768;
  }
}

function bindable(port: number, host: string): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolvePromise(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolvePromise(true)));
  });
}

const SOCKET_DIRECTORIES = ['/var/run/postgresql', '/run/postgresql', '/tmp'];

/**
 * A port free now on 127.0.0.1 and on every address, with no PostgreSQL socket lock of its number,
 * from this worker's own slice below the ephemeral range. Falls back to freePort() when the
 * ephemeral range starts too low to leave room for the slices.
 */
export async function testPort(): Promise<number> {
  const base = ephemeralLow() - SLICES * SLICE;
  if (base < 10_000) return freePort();
  const worker = Number(process.env.VITEST_POOL_ID ?? process.env.VITEST_WORKER_ID ?? process.pid);
  const start = base + ((Number.isFinite(worker) ? worker : process.pid) % SLICES) * SLICE;
  if (next < 0) next = Math.floor(Math.random() * SLICE);
  for (let tried = 0; tried < SLICE; tried++) {
    const port = start + (next++ % SLICE);
    if (SOCKET_DIRECTORIES.some((d) => existsSync(join(d, `.s.PGSQL.${port}.lock`)))) continue;
    if (!(await bindable(port, '0.0.0.0'))) continue;
    if (!(await bindable(port, '127.0.0.1'))) continue;
    return port;
  }
  throw new Error(`no free port in ${start}..${start + SLICE - 1}: stop what holds them and retry`);
}
