import { type ClusterConfig, type DeployConfig, DeployConfigError } from './config';

/**
 * Which fleet stack holds each cluster. A cluster's resources carry fixed names (task families, schedule
 * and alarm names), and the fleet stacks deploy independently: a cluster that moved from one stack to
 * another would be created in its new stack while its old stack still holds the same names. So the stack
 * of a cluster depends on that cluster alone, never on the clusters around it in the list:
 *
 * - `shard` on the cluster: that stack, `<stackName>-Fleet<shard>`;
 * - otherwise, with `fleet.layout: 'name'` (the default): a hash of the cluster's name over `fleet.shards`
 *   stacks (jump consistent hash: raising `shards` from n to m moves only the clusters that land in the
 *   new stacks n+1..m);
 * - with `fleet.layout: 'position'` (deployments made before shards existed): the i-th cluster of the list
 *   (from 0) in stack i/12 + 1, as those builds placed it. Removing a cluster from the middle then moves
 *   the later ones, as it always did; pin them with `shard` (infra/README.md "Fleet stacks").
 *
 * A stack holds at most CLUSTERS_PER_FLEET_STACK clusters; a layout that would put more in one refuses
 * synth with one line naming the stack and a stack with room.
 */

/**
 * Clusters per fleet stack. A cluster brings at most 38 resources (two task definitions with their task
 * and execution roles and policies, nine schedules, eleven alarms with the two heartbeats, and with
 * `walReceive` a receiver task definition, its roles and policies, service, access point and alarm); 12 of
 * them are 456, 457 with the stack's dashboard and metadata: a margin under CloudFormation's 500. A
 * constant, not derived from the config, so switching an option never moves a cluster to another stack.
 */
export const CLUSTERS_PER_FLEET_STACK = 12;

/** Name of the n-th fleet stack (from 1) of a deployment. */
export function fleetStackName(deployment: string, n: number): string {
  return `${deployment}-Fleet${n}`;
}

const MASK64 = (1n << 64n) - 1n;

/** FNV-1a, 64 bits, of the UTF-8 bytes of `text`. */
function fnv1a64(text: string): bigint {
  let hash = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(text, 'utf8')) {
    hash ^= BigInt(byte);
    hash = (hash * 0x100000001b3n) & MASK64;
  }
  return hash;
}

/** Lamping and Veach's jump consistent hash: a bucket in [0, buckets) for a 64-bit key. */
function jumpHash(key: bigint, buckets: number): number {
  let b = -1;
  let j = 0;
  let k = key;
  while (j < buckets) {
    b = j;
    k = (k * 2862933555777941757n + 1n) & MASK64;
    j = Math.floor((b + 1) * (2 ** 31 / (Number(k >> 33n) + 1)));
  }
  return b;
}

/**
 * The fleet stack number (from 1) the name layout gives a cluster named `name` among `shards` stacks.
 * Never change this function: every deployed cluster's stack depends on it (a test pins its values).
 */
export function shardOfName(name: string, shards: number): number {
  return jumpHash(fnv1a64(name), shards) + 1;
}

/** The fleet stack number (from 1) of each cluster, before the per-stack limit is checked. */
export function shardOf(c: DeployConfig, cluster: ClusterConfig, index: number): number {
  if (cluster.shard !== undefined) return cluster.shard;
  if (c.fleet.layout === 'position') return Math.floor(index / CLUSTERS_PER_FLEET_STACK) + 1;
  return shardOfName(cluster.name, c.fleet.shards);
}

/** One fleet stack of the layout: its number and its clusters, sorted by name. */
export interface FleetShard {
  readonly shard: number;
  readonly clusters: readonly ClusterConfig[];
}

/**
 * The fleet stacks of a configuration, by number, each with its clusters sorted by name (so the list's
 * order changes no template). Only stacks that hold a cluster are returned. Throws DeployConfigError
 * (one line) when a stack would hold more than CLUSTERS_PER_FLEET_STACK clusters.
 */
export function fleetLayout(c: DeployConfig): FleetShard[] {
  const byShard = new Map<number, ClusterConfig[]>();
  c.clusters.forEach((cluster, i) => {
    const shard = shardOf(c, cluster, i);
    const list = byShard.get(shard) ?? [];
    list.push(cluster);
    byShard.set(shard, list);
  });
  const shards = [...byShard.keys()].sort((a, b) => a - b);
  for (const shard of shards) {
    const clusters = byShard.get(shard)!;
    if (clusters.length <= CLUSTERS_PER_FLEET_STACK) continue;
    const pinned = clusters.filter((cl) => cl.shard === shard).length;
    const names = clusters.map((cl) => cl.name).sort();
    const shown =
      names.length > 6 ? `${names.slice(0, 6).join(', ')} and ${names.length - 6} more` : names.join(', ');
    let room = 1;
    while ((byShard.get(room)?.length ?? 0) >= CLUSTERS_PER_FLEET_STACK) room++;
    const cause =
      c.fleet.layout === 'position' || pinned === clusters.length
        ? ''
        : ` (fleet.shards is ${c.fleet.shards}${pinned ? `; ${pinned} of them pinned with "shard"` : ''})`;
    throw new DeployConfigError(
      `pgvault deploy config: fleet stack ${fleetStackName(c.stackName, shard)} would hold ${clusters.length} clusters` +
        `${cause}, more than the ${CLUSTERS_PER_FLEET_STACK} a fleet stack holds: ${shown}; ` +
        `give the clusters you are adding "shard": ${room} (${fleetStackName(c.stackName, room)} has room)` +
        (c.fleet.layout === 'name'
          ? `, or raise fleet.shards before the first deployment; a deployment made before fleet shards keeps its stacks with fleet.layout "position" (infra/README.md "Fleet stacks")`
          : ''),
    );
  }
  return shards.map((shard) => ({
    shard,
    clusters: [...byShard.get(shard)!].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
  }));
}
