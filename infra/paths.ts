import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/**
 * The repository root: the nearest folder above this file with pgvault's package.json. Works from the
 * sources (infra/) and from the bundle cdk.json runs (node_modules/.cache/pgvault-cdk/).
 */
export function repoRoot(from: string = __dirname): string {
  let dir = from;
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && existsSync(join(dir, 'cdk.json'))) {
      if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'pgvault') return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`pgvault: no repository root above ${from}`);
    dir = parent;
  }
}
