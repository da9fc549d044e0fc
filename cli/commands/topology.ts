import { formatBytes } from '../../core/format';
import { planTopology } from '../../core/topology';
import { emit, type GlobalOptions, readConfig, table } from '../output';

/** `pgvault topology`: the cluster's nodes and what pgvault does with each (core/topology). */
export async function topologyCommand(opts: GlobalOptions) {
  const plan = await planTopology(readConfig(opts));
  const lag = (n: (typeof plan.nodes)[number]) =>
    [
      n.lagBytes !== undefined ? formatBytes(n.lagBytes) : n.role === 'leader' ? '-' : 'unknown',
      ...(n.lagSeconds !== undefined ? [`${n.lagSeconds} s`] : []),
    ].join(', ');
  const limit =
    'bytes' in plan.replicaMaxLag ? formatBytes(plan.replicaMaxLag.bytes) : `${plan.replicaMaxLag.seconds} s`;
  emit(opts, { ok: true, ...plan }, () =>
    [
      plan.mode === 'patroni'
        ? `Patroni cluster ${plan.scope ?? '(scope unknown)'} per ${plan.source}; BACKUP_FROM=${plan.backupFrom}, REPLICA_MAX_LAG ${limit}`
        : 'single-node (PGHOST/PGPORT); set DEPLOYMENT_MODE=patroni and PATRONI_URL for a Patroni cluster',
      '',
      table(
        ['node', 'role', 'state', 'host:port', 'timeline', 'lag', 'pgvault uses it for'],
        plan.nodes.map((n) => [
          n.self ? `${n.name} (this host)` : n.name,
          n.role,
          n.state,
          `${n.host}:${n.port}`,
          n.timeline === undefined ? '-' : String(n.timeline),
          lag(n),
          n.uses.length > 0 ? n.uses.join(', ') : `nothing${n.skipped ? ` (${n.skipped})` : ''}`,
        ]),
      ),
      ...(plan.self !== undefined && !plan.nodes.some((n) => n.self)
        ? [
            '',
            `PATRONI_NAME=${plan.self} names no member of this cluster; set it to this node's patroni.yml \`name\``,
          ]
        : []),
    ].join('\n'),
  );
  return plan;
}
