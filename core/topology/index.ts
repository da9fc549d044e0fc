import type { Config, PatroniConfig, PgConnection } from '../config';
import { PgVaultError } from '../errors';
import {
  isRunning,
  leader,
  nodeFailureReason,
  noReplicaReason,
  replicaCandidates,
  type Topology,
  type TopologyNode,
} from './choose';
import { readPatroniConfig, readPatroniTopology, TopologyError } from './patroni';

export * from './choose';
export { type PatroniDynamicConfig, readPatroniConfig, readPatroniTopology, TopologyError } from './patroni';

/*
 * The topology: which nodes the cluster has and which one each connection goes to. single-node is
 * one node, PGHOST/PGPORT, and costs nothing (no connection, no HTTP). patroni asks the REST API
 * (core/topology/patroni.ts) once per process, when a command first connects.
 */

/** The cluster's nodes. single-node: the configured server, without connecting to it. */
export async function readTopology(
  config: Pick<Config, 'pg' | 'patroni'> & { readonly patroniName?: string },
): Promise<Topology> {
  if (config.patroni) return readPatroniTopology(config.patroni);
  const host = config.pg.host ?? process.env.PGHOST ?? 'localhost';
  const port = config.pg.port ?? (Number(process.env.PGPORT) || 5432);
  return {
    mode: 'single-node',
    // PATRONI_NAME: the server is that Patroni member (pgvault on a node, PGHOST its own server).
    nodes: [
      { name: config.patroniName ?? `${host}:${port}`, role: 'leader', state: 'configured', host, port },
    ],
  };
}

/** A connection to one node: the settings of `conn` with the node's host and port, no routing left. */
export function nodeConnection(conn: PgConnection, node: Pick<TopologyNode, 'host' | 'port'>): PgConnection {
  const { PGHOSTADDR: _dialled, ...libpq } = conn.libpq ?? {};
  const { patroni: _routing, ...rest } = conn;
  return { ...rest, host: node.host, port: node.port, libpq };
}

/** The node a connection was routed to, with the cluster it was found in. */
export interface RoutedNode {
  readonly node: TopologyNode;
  readonly topology: Topology;
}

/** One resolution per Patroni config per process: every connection of a command goes to the same leader. */
const routes = new WeakMap<PatroniConfig, Promise<RoutedNode>>();
const settled = new WeakMap<PatroniConfig, RoutedNode>();

function describe(nodes: readonly TopologyNode[]): string {
  return nodes.length === 0 ? 'no members' : nodes.map((n) => `${n.name} ${n.role} ${n.state}`).join(', ');
}

/** The leader of the cluster a Patroni config names, asked once per process. */
export function routeToLeader(patroni: PatroniConfig): Promise<RoutedNode> {
  let route = routes.get(patroni);
  if (route === undefined) {
    route = readPatroniTopology(patroni).then((topology) => {
      const node = leader(topology);
      if (node === undefined) {
        throw new TopologyError(
          `the Patroni cluster${topology.scope ? ` ${topology.scope}` : ''} has no running leader (${describe(topology.nodes)}, per ${topology.source}); retry once Patroni has elected one`,
        );
      }
      const routed = { node, topology };
      settled.set(patroni, routed);
      return routed;
    });
    routes.set(patroni, route);
    // A failed look-up is not kept: the next connection asks again.
    route.catch(() => routes.delete(patroni));
  }
  return route;
}

/**
 * Where a connection goes. Without routing (single-node, or a connection to a chosen node) it is
 * `conn` itself, at no cost; DEPLOYMENT_MODE=patroni: the leader's host and port, so that after a
 * failover pgvault follows without a change of PGHOST.
 */
export async function resolveConnection(conn: PgConnection): Promise<PgConnection> {
  if (conn.patroni === undefined) return conn;
  const { node } = await routeToLeader(conn.patroni);
  return nodeConnection(conn, node);
}

/**
 * resolveConnection for synchronous callers (the environment of pg_dump & co.), once a connection
 * of this process has resolved the route. Throws when none has: the caller must resolve first.
 */
export function resolvedConnection(conn: PgConnection): PgConnection {
  if (conn.patroni === undefined) return conn;
  const routed = settled.get(conn.patroni);
  if (routed === undefined) {
    throw new PgVaultError(
      'internal: a PostgreSQL tool was started before the Patroni leader was looked up; report this as a pgvault bug',
    );
  }
  return nodeConnection(conn, routed.node);
}

/** The node connections of `conn` went to, when they were routed (patroni) and have been. */
export function routedNode(conn: PgConnection): RoutedNode | undefined {
  return conn.patroni === undefined ? undefined : settled.get(conn.patroni);
}

/**
 * The server a connection goes to, for messages: host:port, or with Patroni the member it was routed
 * to (`node1 (10.0.0.1:5432, Patroni leader)`), or `the Patroni leader` before the look-up.
 */
export function serverLabel(conn: PgConnection): string {
  if (conn.patroni === undefined) return `${conn.host ?? 'localhost'}:${conn.port ?? 5432}`;
  const routed = settled.get(conn.patroni);
  if (routed === undefined) return 'the Patroni leader (PATRONI_URL)';
  return `${routed.node.name} (${routed.node.host}:${routed.node.port}, Patroni leader)`;
}

/** Forgets the route (a long-running command that lost its leader asks again). */
export function forgetRoute(conn: PgConnection): void {
  if (conn.patroni === undefined) return;
  routes.delete(conn.patroni);
  settled.delete(conn.patroni);
}

/**
 * Seconds a replica's replay is behind: 0 when it has replayed all it received, else the age of the
 * last transaction it replayed (PostgreSQL's own measure; an idle leader makes it an overestimate).
 */
async function replayDelaySeconds(conn: PgConnection): Promise<number | undefined> {
  const { withClient } = require('../pg/tools') as typeof import('../pg/tools');
  return withClient(conn, conn.database ?? 'postgres', async (c) => {
    const r = await c.query<{ s: string | null }>(
      `SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL
                   WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
                   ELSE ceil(extract(epoch FROM now() - pg_last_xact_replay_timestamp())) END::text AS s`,
    );
    const s = r.rows[0]?.s;
    return s === null || s === undefined ? undefined : Number(s);
  });
}

/**
 * With REPLICA_MAX_LAG in seconds, Patroni's bytes do not say it (and a replica that receives but
 * does not replay shows 0 bytes): each running replica is asked its replay delay. Bytes limits ask
 * nothing.
 */
export async function withReplayDelays(
  config: Pick<Config, 'pg' | 'replicaMaxLag'>,
  topology: Topology,
): Promise<Topology> {
  if (!('seconds' in config.replicaMaxLag) || topology.mode !== 'patroni') return topology;
  const nodes = await Promise.all(
    topology.nodes.map(async (node) => {
      if ((node.role !== 'replica' && node.role !== 'sync_standby') || !isRunning(node)) return node;
      const { lagSeconds: _unknown, ...rest } = node;
      const seconds = await replayDelaySeconds(nodeConnection(config.pg, node)).catch(() => undefined);
      // Not answering: as Patroni says (the backup's probe then finds it unreachable and skips it).
      return seconds === undefined ? node : { ...rest, lagSeconds: seconds };
    }),
  );
  return { ...topology, nodes };
}

/** What pgvault does with a node, for `pgvault topology`. */
export interface NodePlan {
  readonly node: TopologyNode;
  /** connects (every connection goes here), backups (full backups read here), none. */
  readonly uses: readonly string[];
}

/** Whether a node can be connected to at all now (its PostgreSQL runs). */
export function reachable(node: TopologyNode): boolean {
  return isRunning(node) || node.state === 'configured';
}

/** The node a backup read from, as its manifest records it (`node`). */
export interface SourceNode {
  readonly host: string;
  readonly port: number;
  /** Patroni's member name. */
  readonly name?: string;
  /** leader, sync_standby or replica (at the time the backup started). */
  readonly role?: string;
  /** Patroni's scope. */
  readonly scope?: string;
  readonly timeline?: number;
}

function sourceNode(node: TopologyNode, topology: Topology): SourceNode {
  return {
    host: node.host,
    port: node.port,
    name: node.name,
    role: node.role,
    ...(topology.scope !== undefined ? { scope: topology.scope } : {}),
    ...(node.timeline !== undefined ? { timeline: node.timeline } : {}),
  };
}

/** The manifest's record of the node `conn`'s connections were routed to (patroni), else undefined. */
export function routedSourceNode(conn: PgConnection): SourceNode | undefined {
  const routed = routedNode(conn);
  return routed === undefined ? undefined : sourceNode(routed.node, routed.topology);
}

/** Where a backup reads from: the connection, the node for its manifest, and what was tried first. */
export interface ReadSource<T> {
  readonly conn: PgConnection;
  /** Undefined without a topology to name (single-node): the manifest records PGHOST/PGPORT. */
  readonly node?: SourceNode;
  /** What `probe` returned on that node. */
  readonly probed: T;
}

/**
 * The node a backup reads from (BACKUP_FROM): with DEPLOYMENT_MODE=patroni and BACKUP_FROM=replica,
 * the best healthy replica (sync standby first, lag under REPLICA_MAX_LAG), the next when `probe`
 * cannot reach it, and the leader last, with a warning that says why. `probe` (a first query) runs
 * on the node chosen and its answer is returned. Without Patroni: config.pg, probed.
 */
export async function chooseReadSource<T>(
  config: Pick<Config, 'pg' | 'patroni' | 'backupFrom' | 'replicaMaxLag'>,
  probe: (conn: PgConnection) => Promise<T>,
  warn: (line: string) => void,
  /** Members not to read from (a retry's failed node), by name, with why. */
  exclude: ReadonlyMap<string, string> = new Map(),
): Promise<ReadSource<T>> {
  if (config.patroni === undefined) return { conn: config.pg, probed: await probe(config.pg) };
  const topology = await withReplayDelays(config, await readPatroniTopology(config.patroni));
  const found = leader(topology);
  const theLeader = found !== undefined && !exclude.has(found.name) ? found : undefined;
  const skipped: string[] = [];
  if (found !== undefined && theLeader === undefined)
    skipped.push(`${found.name}: ${exclude.get(found.name)}`);
  if (config.backupFrom === 'replica') {
    const all = replicaCandidates(topology, config.replicaMaxLag);
    const choice = {
      candidates: all.candidates.filter((n) => !exclude.has(n.name)),
      rejected: [
        ...all.candidates
          .filter((n) => exclude.has(n.name))
          .map((node) => ({ node, reason: exclude.get(node.name)! })),
        ...all.rejected,
      ],
    };
    if (choice.candidates.length === 0 || choice.rejected.length > 0) skipped.push(noReplicaReason(choice));
    for (const node of choice.candidates) {
      const conn = nodeConnection(config.pg, node);
      try {
        return { conn, node: sourceNode(node, topology), probed: await probe(conn) };
      } catch (err) {
        if (!(err instanceof PgVaultError)) throw err;
        skipped.push(`${node.name}: ${err.message}`);
      }
    }
  }
  if (theLeader === undefined) {
    throw new TopologyError(
      `the Patroni cluster${topology.scope ? ` ${topology.scope}` : ''} has no ${found === undefined ? 'running leader' : 'other leader'}${skipped.length > 0 ? ` and no usable replica (${skipped.join('; ')})` : ''} (${describe(topology.nodes)}, per ${topology.source}); retry once Patroni has elected one`,
    );
  }
  if (config.backupFrom === 'replica') {
    warn(
      `backing up from the leader ${theLeader.name} (${theLeader.host}:${theLeader.port}), not a replica: ${skipped.join('; ')}`,
    );
  }
  const conn = nodeConnection(config.pg, theLeader);
  return { conn, node: sourceNode(theLeader, topology), probed: await probe(conn) };
}

/** A node for messages: `node2 (10.0.0.2:5432, replica)`. */
function nodeLabel(node: SourceNode): string {
  return `${node.name ?? `${node.host}:${node.port}`} (${node.host}:${node.port}${node.role ? `, ${node.role}` : ''})`;
}

/**
 * A backup's read (`run`) on the node chooseReadSource picks, retried once on the next candidate
 * (the next replica, else the leader; the topology asked again) when it failed because of that node
 * (a replica restarted, promoted away, its query cancelled by a recovery conflict, the connection
 * lost: nodeFailureReason). `run` must leave nothing that looks complete when it fails (runBackup
 * removes what it wrote). A warning says why the backup moved and where. Without Patroni, for a
 * failure that is not the node's, or with no candidate left, the first failure is the error, as it was.
 */
export async function readWithRetry<T, R>(
  config: Pick<Config, 'pg' | 'patroni' | 'backupFrom' | 'replicaMaxLag'>,
  probe: (conn: PgConnection) => Promise<T>,
  warn: (line: string) => void,
  run: (source: ReadSource<T>) => Promise<R>,
  first?: ReadSource<T>,
): Promise<R> {
  const source = first ?? (await chooseReadSource(config, probe, warn));
  try {
    return await run(source);
  } catch (err) {
    const why = nodeFailureReason(err);
    const failed = source.node;
    if (config.patroni === undefined || why === undefined || failed?.name === undefined) throw err;
    const exclude = new Map([[failed.name, `failed mid-backup (${why})`]]);
    // Its own warnings (the leader, not a replica) would repeat the line below.
    const choose = async () => {
      const source = await chooseReadSource(config, probe, () => {}, exclude);
      // A replica Patroni is promoting leads in /cluster before its new timeline shows: read it
      // once promoted, so the manifest's timeline is the one its data is on.
      const now = source.node;
      if (
        failed.role === 'leader' &&
        now?.role === 'leader' &&
        failed.timeline !== undefined &&
        now.timeline !== undefined &&
        now.timeline <= failed.timeline
      ) {
        throw new TopologyError(
          `${now.name} leads but has not finished its promotion (timeline ${now.timeline})`,
        );
      }
      return source;
    };
    let next: ReadSource<T>;
    try {
      next = await choose();
    } catch (firstTry) {
      // No candidate left: the first failure says what happened and what to set. A leader that
      // failed is the exception: Patroni promotes a replica once the leader key expires (ttl),
      // so the retry waits for another node to lead, for that long and no longer.
      if (failed.role !== 'leader' || !(firstTry instanceof PgVaultError)) throw err;
      // A leader that still answers did not fail over (its session was ended, say): no wait.
      if (
        await probe(source.conn).then(
          () => true,
          () => false,
        )
      )
        throw err;
      const waited = await awaitOtherLeader(config.patroni, choose, (line) =>
        warn(`${nodeLabel(failed)} failed mid-backup (${why}); ${line}`),
      );
      if (waited === undefined) throw err;
      next = waited;
    }
    warn(
      `${nodeLabel(failed)} failed mid-backup (${why}); retrying once on ${nodeLabel(next.node ?? { host: next.conn.host ?? '', port: next.conn.port ?? 5432 })}`,
    );
    return run(next);
  }
}

/** Patroni's ttl and loop_wait (its defaults, 30 and 10 s, when /config does not say). */
async function leaderTimings(patroni: PatroniConfig): Promise<{ ttl: number; loopWait: number }> {
  const seconds = (v: unknown, fallback: number) =>
    typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : fallback;
  try {
    const parsed = JSON.parse((await readPatroniConfig(patroni)).text) as {
      ttl?: unknown;
      loop_wait?: unknown;
    };
    return { ttl: seconds(parsed.ttl, 30), loopWait: seconds(parsed.loop_wait, 10) };
  } catch {
    return { ttl: 30, loopWait: 10 };
  }
}

/** Seconds a promotion may take once Patroni has chosen the new leader (pg_ctl promote, the new timeline). */
export const PROMOTION_GRACE_SECONDS = 15;

/**
 * After the leader failed mid-backup: waits for Patroni to make another member the leader (the old
 * leader key expires within ttl, a replica notices within loop_wait and promotes), asking `choose`
 * every second, at most ttl + loop_wait + PROMOTION_GRACE_SECONDS. Says how long it waits and why.
 * Undefined when no other member leads by then (the same leader back, or none).
 */
async function awaitOtherLeader<T>(
  patroni: PatroniConfig,
  choose: () => Promise<ReadSource<T>>,
  say: (line: string) => void,
): Promise<ReadSource<T> | undefined> {
  const { ttl, loopWait } = await leaderTimings(patroni);
  const bound = ttl + loopWait + PROMOTION_GRACE_SECONDS;
  say(
    `no other node leads yet; waiting up to ${bound} s for Patroni to promote one (ttl ${ttl} s + loop_wait ${loopWait} s + ${PROMOTION_GRACE_SECONDS} s to promote)`,
  );
  const deadline = Date.now() + bound * 1000;
  let last = '';
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 1000));
    try {
      return await choose();
    } catch (err) {
      if (!(err instanceof PgVaultError)) throw err;
      last = err.message;
    }
  }
  say(`no other node led within ${bound} s (${last}); giving up`);
  return undefined;
}

/** What pgvault does with each node, and why a replica is not read from. */
export interface TopologyPlan extends Topology {
  readonly backupFrom: 'replica' | 'leader';
  readonly replicaMaxLag: Config['replicaMaxLag'];
  /** PATRONI_NAME: the member this host runs, when set. */
  readonly self?: string;
  readonly nodes: readonly (TopologyNode & {
    /** The member PATRONI_NAME names (this host). */
    readonly self?: true;
    /** `connections` (every command's, base backups and restores included), `full backups`, `WAL archiving`. */
    readonly uses: readonly string[];
    /** Why a replica is not read from. */
    readonly skipped?: string;
  })[];
}

/**
 * `pgvault topology`: the nodes and what pgvault does with each. Patroni: connections and WAL
 * archiving on the leader (archive_command runs where PostgreSQL leads), full backups on the best
 * replica (BACKUP_FROM=replica) or the leader. No connection to PostgreSQL is made, except to ask
 * replicas their replay delay when REPLICA_MAX_LAG is in seconds.
 */
export async function planTopology(
  config: Pick<Config, 'pg' | 'patroni' | 'backupFrom' | 'replicaMaxLag' | 'patroniName'>,
): Promise<TopologyPlan> {
  const topology = await withReplayDelays(config, await readTopology(config));
  const theLeader = leader(topology) ?? (topology.mode === 'single-node' ? topology.nodes[0] : undefined);
  const choice = replicaCandidates(topology, config.replicaMaxLag);
  const fullFrom =
    topology.mode === 'patroni' && config.backupFrom === 'replica'
      ? (choice.candidates[0] ?? theLeader)
      : theLeader;
  const skipped = new Map(choice.rejected.map((r) => [r.node, r.reason]));
  return {
    ...topology,
    backupFrom: config.backupFrom,
    replicaMaxLag: config.replicaMaxLag,
    ...(config.patroniName !== undefined ? { self: config.patroniName } : {}),
    nodes: topology.nodes.map((node) => {
      const uses = [
        ...(node === theLeader ? ['connections'] : []),
        ...(node === fullFrom ? ['full backups'] : []),
        ...(node === theLeader ? ['WAL archiving'] : []),
      ];
      const reason = skipped.get(node);
      return {
        ...node,
        ...(config.patroniName !== undefined && node.name === config.patroniName
          ? { self: true as const }
          : {}),
        uses,
        ...(reason !== undefined && reason !== `it is not a replica (${node.role})`
          ? { skipped: reason }
          : {}),
      };
    }),
  };
}
