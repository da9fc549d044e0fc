import { IntegrityError } from '../errors';

/**
 * Chains of incremental base backups (PostgreSQL 17's pg_basebackup --incremental): each incremental
 * names its parent in its manifest (`incrementalOf`, the parent's backup id); a chain is a full base
 * backup and the incrementals that follow it, each of the one before. The catalog derives chains
 * from manifests only; these functions work on any list of backups (what the catalog listed, what
 * retention plans over), so they are pure and unit-tested alone.
 */

/** What a chain needs of a backup: its id and, for an incremental, its parent's id. */
export interface ChainLink {
  readonly id: string;
  readonly incrementalOf?: string;
}

/**
 * The chain that restores `id`: the full first, `id` last. Refuses (IntegrityError, one line naming
 * the member) when a member is not among `backups`, or the links loop.
 */
export function chainOf<T extends { readonly manifest: ChainLink }>(id: string, backups: readonly T[]): T[] {
  const byId = new Map(backups.map((b) => [b.manifest.id, b]));
  const chain: T[] = [];
  let current: string | undefined = id;
  let child: string | undefined;
  while (current !== undefined) {
    const entry = byId.get(current);
    if (entry === undefined) {
      throw new IntegrityError(
        child === undefined
          ? `backup ${current} is not in the catalog`
          : `the chain of ${id} is broken: ${current}, the parent of ${child}, is missing (no manifest); nothing was restored; restore an older complete chain (see \`pgvault restore list\`) and take a full base backup`,
      );
    }
    if (chain.includes(entry)) throw new IntegrityError(`the chain of ${id} loops at ${current}`);
    chain.unshift(entry);
    child = current;
    current = entry.manifest.incrementalOf;
  }
  return chain;
}

/** How many incrementals lead from the full to `id` (0 for a full). */
export function incrementalsInChain(
  id: string,
  backups: readonly { readonly manifest: ChainLink }[],
): number {
  return chainOf(id, backups).length - 1;
}

/** "full X + incr Y + incr Z" for the restore's output. */
export function describeChain(chain: readonly { readonly manifest: ChainLink }[]): string {
  return chain.map((e, i) => `${i === 0 ? 'full' : 'incr'} ${e.manifest.id}`).join(' + ');
}

/**
 * Every id that the backups in `keep` need to be restored: each one and its whole chain. Members
 * missing from `backups` are simply not added (verify all reports broken chains).
 */
export function chainClosure(
  keep: Iterable<string>,
  backups: readonly { readonly manifest: ChainLink }[],
): Set<string> {
  const byId = new Map(backups.map((b) => [b.manifest.id, b.manifest]));
  const needed = new Set<string>();
  for (const id of keep) {
    let current: string | undefined = id;
    while (current !== undefined && !needed.has(current)) {
      needed.add(current);
      current = byId.get(current)?.incrementalOf;
    }
  }
  return needed;
}

/** One problem per broken chain among `backups`: a parent missing, or a parent that is not a base backup. */
export function chainProblems(
  backups: readonly { readonly manifest: ChainLink & { readonly type?: string } }[],
): { readonly id: string; readonly problem: string }[] {
  const byId = new Map(backups.map((b) => [b.manifest.id, b.manifest]));
  const problems: { id: string; problem: string }[] = [];
  for (const { manifest } of backups) {
    const parentId = manifest.incrementalOf;
    if (parentId === undefined) continue;
    const parent = byId.get(parentId);
    if (parent === undefined) {
      problems.push({ id: manifest.id, problem: `its parent ${parentId} is missing (no manifest)` });
    } else if (parent.type !== undefined && parent.type !== 'base') {
      problems.push({
        id: manifest.id,
        problem: `its parent ${parentId} is a ${parent.type} backup, not a base backup`,
      });
    } else if (parentId === manifest.id) {
      problems.push({ id: manifest.id, problem: 'it names itself as its parent' });
    }
  }
  return problems;
}
