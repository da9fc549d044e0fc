import { errorMessage } from '../errors';
import { nodeConnection, reachable, readTopology, type TopologyNode } from '../topology';
import type { Vault } from '../vault';
import type { WalGapReport } from '../wal/archive';
import { segmentName, segmentNumber, timelineOf } from '../wal/naming';

/**
 * Who could fill a hole in the WAL archive: every node of the topology (Patroni's members, or the
 * configured server) is asked whether its pg_wal still holds the missing segments
 * (`pg_ls_waldir()`, superuser or pg_monitor). A node that has them fills the hole with `pgvault wal
 * backfill` in its data directory; when none has them, the hole is permanent, and `verify wal`
 * says so. Asked only when there are holes: a clean archive costs no connection.
 */

export interface WalHoleHolder {
  readonly node: string;
  readonly host: string;
  readonly port: number;
  readonly role: string;
  /** How many of the hole's segments its pg_wal holds. */
  readonly has: number;
}

export interface WalHoleHolders {
  readonly from: string;
  readonly to: string;
  readonly count: number;
  /** Nodes whose pg_wal holds some of the hole's segments. */
  readonly holders: readonly WalHoleHolder[];
  /** Nodes asked that hold none. */
  readonly asked: readonly string[];
  /** Nodes that could not be asked, and why. */
  readonly unreachable: readonly { readonly node: string; readonly reason: string }[];
}

/** Segments asked for per hole at most (a hole longer than this is reported on its first ones). */
const MAX_ASKED = 1024;

function namesOf(gap: WalGapReport, segmentBytes: number): string[] {
  if (gap.from.endsWith('.history')) return [gap.from];
  const timeline = timelineOf(gap.from);
  const first = segmentNumber(gap.from, segmentBytes);
  const last = segmentNumber(gap.to, segmentBytes);
  const names: string[] = [];
  for (let n = first; n <= last && names.length < MAX_ASKED; n++)
    names.push(segmentName(timeline, n, segmentBytes));
  return names;
}

async function walFilesOn(vault: Vault, node: TopologyNode, names: readonly string[]): Promise<Set<string>> {
  const { withClient } = require('../pg/tools') as typeof import('../pg/tools');
  const conn = nodeConnection(vault.config.pg, node);
  return withClient(conn, vault.config.pg.database ?? 'postgres', async (c) => {
    const r = await c.query<{ name: string }>(
      'SELECT name FROM pg_ls_waldir() WHERE name = ANY($1::text[])',
      [names],
    );
    return new Set(r.rows.map((row) => row.name));
  });
}

export async function findHoleHolders(
  vault: Vault,
  gaps: readonly WalGapReport[],
  segmentBytes: number,
): Promise<{ holes: WalHoleHolders[]; skipped?: string }> {
  if (gaps.length === 0) return { holes: [] };
  let nodes: readonly TopologyNode[];
  try {
    nodes = (await readTopology(vault.config)).nodes;
  } catch (err) {
    return { holes: [], skipped: `the nodes could not be listed (${errorMessage(err)})` };
  }
  const wanted = gaps.map((g) => namesOf(g, segmentBytes));
  const all = [...new Set(wanted.flat())];
  const answers = await Promise.all(
    nodes.map(async (node) => {
      if (!reachable(node)) return { node, error: `it is ${node.state}` };
      try {
        return { node, files: await walFilesOn(vault, node, all) };
      } catch (err) {
        return { node, error: errorMessage(err).split('\n')[0]! };
      }
    }),
  );
  const holes = gaps.map((gap, i) => {
    const names = wanted[i]!;
    const holders: WalHoleHolder[] = [];
    const asked: string[] = [];
    const unreachable: { node: string; reason: string }[] = [];
    for (const a of answers) {
      if ('error' in a) {
        unreachable.push({ node: a.node.name, reason: a.error! });
        continue;
      }
      const has = names.filter((n) => a.files!.has(n)).length;
      if (has > 0)
        holders.push({ node: a.node.name, host: a.node.host, port: a.node.port, role: a.node.role, has });
      else asked.push(a.node.name);
    }
    return { from: gap.from, to: gap.to, count: gap.count, holders, asked, unreachable };
  });
  return { holes };
}

/** The line after a GAP line: who can fill it, or that nobody can. */
export function describeHoleHolders(hole: WalHoleHolders): string {
  const others = [
    ...(hole.asked.length > 0 ? [`asked ${hole.asked.join(', ')}`] : []),
    ...hole.unreachable.map((u) => `${u.node} not asked: ${u.reason}`),
  ].join('; ');
  if (hole.holders.length === 0)
    return `  no node has it in pg_wal${others ? ` (${others})` : ' (no node could be asked)'}: the hole cannot be backfilled; take a new base backup after it`;
  const who = hole.holders
    .map(
      (h) =>
        `${h.node} (${h.host}:${h.port}, ${h.role}) has ${h.has === hole.count ? 'all' : h.has} of ${hole.count}`,
    )
    .join('; ');
  return `  can be filled: ${who} in pg_wal: run pgvault wal backfill in its data directory${others ? ` (${others})` : ''}`;
}

/** What to append to verify wal's failure line: who can fill the holes, or that none can ('' when not asked). */
export function holesSummary(holes: readonly WalHoleHolders[]): string {
  if (holes.length === 0) return '';
  const fillable = holes.filter((h) => h.holders.length > 0);
  if (fillable.length > 0)
    return `; ${fillable.map((h) => `${h.from} is still in the pg_wal of ${h.holders.map((x) => x.node).join(', ')}`).join('; ')}: run pgvault wal backfill in that node's data directory before PostgreSQL recycles it`;
  const asked = [
    ...new Set(holes.flatMap((h) => [...h.asked, ...h.unreachable.map((u) => `${u.node} (not reachable)`)])),
  ];
  return `; no node has them in its pg_wal (asked ${asked.join(', ') || 'none reachable'})`;
}
