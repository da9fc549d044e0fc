import type { CatalogEntry } from '../catalog/catalog';
import { chainOf } from '../catalog/chain';
import { IntegrityError } from '../errors';
import type { Vault } from '../vault';
import { openBackup } from './fetch';

/**
 * The chain that restores a base backup, checked before anything is written anywhere: [entry] for a
 * full one; for an incremental, the full and every incremental up to it (core/catalog/chain.ts),
 * each with a manifest (its key checked like any restore's) and all its objects stored (one stat
 * each). A missing member is refused in one line naming it (IntegrityError); a corrupt one is found
 * when it is read (the sha256 of its stored bytes), still before the target is touched (see
 * stageBaseChain in ./sandbox.ts).
 */
export async function resolveBaseChain(vault: Vault, entry: CatalogEntry): Promise<CatalogEntry[]> {
  if (entry.manifest.incrementalOf === undefined) return [entry];
  const listed = await vault.catalog.list('base');
  const chain = chainOf(entry.manifest.id, [
    entry,
    ...listed.filter((e) => e.manifest.id !== entry.manifest.id),
  ]);
  const problems = await vault.catalog.missingObjectsOf(chain);
  const checked: CatalogEntry[] = [];
  for (const [i, member] of chain.entries()) {
    const problem = problems[i];
    if (problem !== undefined) {
      throw new IntegrityError(
        `the chain of ${entry.manifest.id} is broken: member ${member.manifest.id} is not whole (${problem}); nothing was restored`,
      );
    }
    if (member.manifest.physical === undefined || member.manifest.type !== 'base') {
      throw new IntegrityError(
        `the chain of ${entry.manifest.id} is broken: member ${member.manifest.id} is not a base backup; nothing was restored`,
      );
    }
    await openBackup(member, vault.config);
    checked.push((await vault.catalog.whole(member)) ?? member);
  }
  return checked;
}
