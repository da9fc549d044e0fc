import type { TempCluster } from '../../core/pg/cluster';

/**
 * Temporary databases pgvault left behind (restore test, verify restore, verify indexes and the drill
 * all name theirs pgvault_...): the verify and drill tests expect none after each run.
 */
export async function temporaryDatabasesLeft(cluster: TempCluster): Promise<string[]> {
  const rows = await cluster.query<{ datname: string }>(
    "SELECT datname FROM pg_database WHERE datname LIKE 'pgvault\\_%' ORDER BY 1",
  );
  return rows.map((r) => r.datname);
}
