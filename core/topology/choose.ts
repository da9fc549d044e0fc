import type { LagLimit } from '../config';
import { StorageError } from '../errors';
import { formatBytes } from '../format';

/*
 * The cluster's nodes as pgvault sees them, and the pure rules that choose among them. No I/O here:
 * core/topology/patroni.ts reads the nodes, core/topology/index.ts ties both to the config.
 */

/** leader: the read-write node; sync_standby: a synchronous replica (Patroni's sync or quorum standby). */
export type NodeRole = 'leader' | 'sync_standby' | 'replica' | 'standby_leader' | 'unknown';

export interface TopologyNode {
  /** Patroni's member name; single-node: host:port. */
  readonly name: string;
  readonly role: NodeRole;
  /** As Patroni reports it: running, streaming, stopped, starting, crashed, ...; single-node: `configured`. */
  readonly state: string;
  readonly host: string;
  readonly port: number;
  readonly timeline?: number;
  /** Bytes of WAL behind the leader (Patroni's `lag`); undefined for the leader and when unknown. */
  readonly lagBytes?: number;
  /** Seconds behind the leader, when known (0 when no WAL is outstanding). */
  readonly lagSeconds?: number;
  /** The member's REST API (Patroni's api_url). */
  readonly apiUrl?: string;
}

export interface Topology {
  readonly mode: 'single-node' | 'patroni';
  /** Patroni's scope (the cluster's name in its DCS). */
  readonly scope?: string;
  readonly nodes: readonly TopologyNode[];
  /** The REST API URL that answered (without credentials). */
  readonly source?: string;
}

/** Patroni's role words (3.x /cluster; `master` and `primary` of older and newer versions) as ours. */
export function normalizeRole(role: string | undefined): NodeRole {
  switch ((role ?? '').toLowerCase()) {
    case 'leader':
    case 'master':
    case 'primary':
      return 'leader';
    case 'sync_standby':
    case 'quorum_standby':
      return 'sync_standby';
    case 'replica':
      return 'replica';
    case 'standby_leader':
      return 'standby_leader';
    default:
      return 'unknown';
  }
}

/** Whether a node's PostgreSQL is up: Patroni says `running` or (3.1 and later, replicas) `streaming`. */
export function isRunning(node: TopologyNode): boolean {
  return node.state === 'running' || node.state === 'streaming';
}

/** The read-write node: the running leader (a standby cluster's standby_leader otherwise). */
export function leader(topology: Pick<Topology, 'nodes'>): TopologyNode | undefined {
  const running = topology.nodes.filter(isRunning);
  return running.find((n) => n.role === 'leader') ?? running.find((n) => n.role === 'standby_leader');
}

/** Why a replica is not read from, or undefined when it may be. */
export function replicaRejection(node: TopologyNode, maxLag: LagLimit): string | undefined {
  if (node.role !== 'replica' && node.role !== 'sync_standby') return `it is not a replica (${node.role})`;
  if (!isRunning(node)) return `it is ${node.state}`;
  if ('bytes' in maxLag) {
    if (node.lagBytes === undefined) return 'its lag is unknown';
    if (node.lagBytes > maxLag.bytes)
      return `it lags ${formatBytes(node.lagBytes)}, over REPLICA_MAX_LAG (${formatBytes(maxLag.bytes)})`;
    return undefined;
  }
  const seconds = node.lagSeconds ?? (node.lagBytes === 0 ? 0 : undefined);
  if (seconds === undefined) return 'its lag in seconds is unknown';
  if (seconds > maxLag.seconds) return `it lags ${seconds} s, over REPLICA_MAX_LAG (${maxLag.seconds} s)`;
  return undefined;
}

export interface ReplicaChoice {
  /** The replicas that may be read from, best first: sync standbys, then the least lag, then by name. */
  readonly candidates: readonly TopologyNode[];
  /** Every other non-leader node, with why it is not a candidate. */
  readonly rejected: readonly { readonly node: TopologyNode; readonly reason: string }[];
}

/** Every replica that may be read from (healthy, lag under maxLag), best first, and why the others may not. */
export function replicaCandidates(topology: Pick<Topology, 'nodes'>, maxLag: LagLimit): ReplicaChoice {
  const candidates: TopologyNode[] = [];
  const rejected: { node: TopologyNode; reason: string }[] = [];
  for (const node of topology.nodes) {
    if (node.role === 'leader' || node.role === 'standby_leader') continue;
    const reason = replicaRejection(node, maxLag);
    if (reason === undefined) candidates.push(node);
    else rejected.push({ node, reason });
  }
  const rank = (n: TopologyNode) => (n.role === 'sync_standby' ? 0 : 1);
  candidates.sort(
    (a, b) =>
      rank(a) - rank(b) ||
      (a.lagBytes ?? 0) - (b.lagBytes ?? 0) ||
      (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  return { candidates, rejected };
}

/** The replica to read from: the first of replicaCandidates, or undefined. */
export function bestReplica(topology: Pick<Topology, 'nodes'>, maxLag: LagLimit): TopologyNode | undefined {
  return replicaCandidates(topology, maxLag).candidates[0];
}

/** One line saying why no replica is used, for the warning of a backup that falls back to the leader. */
export function noReplicaReason(choice: ReplicaChoice): string {
  if (choice.rejected.length === 0) return 'the cluster has no replica';
  return choice.rejected.map((r) => `${r.node.name}: ${r.reason}`).join('; ');
}

/**
 * Why a backup's reading failed because of the node it read from, in a few words, or undefined when
 * the failure is not the node's (a storage target, a bad setting, a tool missing): a recovery
 * conflict that cancelled pg_dump's query, the server shutting down, restarting or crashing, the
 * connection lost. Read from the error's message, a tool's stderr, PostgreSQL's SQLSTATE or the
 * socket's code, through the chain of causes; a StorageError is never the node's.
 */
export function nodeFailureReason(err: unknown): string | undefined {
  for (let e = err, depth = 0; e !== null && e !== undefined && depth < 5; depth++) {
    // A storage target's failure (its socket reset too) is not the node's: another node would not help.
    if (e instanceof StorageError) return undefined;
    const x = e as { message?: unknown; stderr?: unknown; code?: unknown; cause?: unknown };
    const text = `${typeof x.message === 'string' ? x.message : ''}\n${typeof x.stderr === 'string' ? x.stderr : ''}`;
    const code = typeof x.code === 'string' ? x.code : '';
    if (/conflict with recovery/i.test(text)) return 'a recovery conflict cancelled its query';
    if (/cannot connect to PostgreSQL/.test(text)) return 'it cannot be connected to';
    // pg_dump takes only ACCESS SHARE locks: on a standby, a deadlock is one with WAL replay.
    if (/deadlock detected/i.test(text) || code === '40P01') return 'a deadlock cancelled its query';
    if (/terminating connection due to administrator command/i.test(text) || code === '57P01') {
      return 'its server was shut down or restarted';
    }
    if (
      /terminating connection because of crash|unexpected postmaster exit/i.test(text) ||
      code === '57P02'
    ) {
      return 'its server crashed';
    }
    if (/the database system is (shutting down|starting up|in recovery mode|not yet accepting)/i.test(text)) {
      return 'its server is restarting';
    }
    if (code === '57P03') return 'its server is restarting';
    if (
      /server closed the connection unexpectedly|connection terminated unexpectedly|could not receive data from server|no connection to the server|connection to server .* (failed|lost)|SSL SYSCALL error/i.test(
        text,
      ) ||
      ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH'].includes(code)
    ) {
      return 'the connection to it was lost';
    }
    e = x.cause;
  }
  return undefined;
}
