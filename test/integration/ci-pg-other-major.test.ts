import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/vault';

/**
 * .ci/pg-other-major's bookkeeping, with a stand-in debootstrap on PATH (the real one takes minutes):
 * built once, found again at once, never a half-built root taken for a finished one.
 */
const SCRIPT = resolve(__dirname, '..', '..', '.ci', 'pg-other-major');
const release = /^VERSION_CODENAME=(\w+)/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1];
const other = release === 'bookworm' ? { name: 'trixie', major: 17 } : { name: 'bookworm', major: 15 };

let work: Awaited<ReturnType<typeof tempDir>>;
let fakeBin: string;

beforeAll(async () => {
  work = await tempDir('pgvault-ci-other-');
  fakeBin = join(work.path, 'bin');
  mkdirSync(fakeBin);
  // Lays down what the script checks (the major's programs, pgvector, a postgres user), counts its
  // calls in $FAKE_LOG, and fails while $FAKE_FAIL names a file that exists.
  writeFileSync(
    join(fakeBin, 'debootstrap'),
    `#!/bin/bash
set -e
echo "$*" >>"$FAKE_LOG"
dir=\${@: -2:1}
mkdir -p "$dir/usr/lib/postgresql/${other.major}/bin" "$dir/usr/share/postgresql/${other.major}/extension" "$dir/etc" "$dir/proc"
if [ -n "$FAKE_FAIL" ] && [ -e "$FAKE_FAIL" ]; then echo "E: Tried to extract package" >&2; exit 1; fi
for t in initdb pg_ctl postgres pg_dump pg_restore pg_basebackup pg_receivewal psql pg_verifybackup; do
  printf '#!/bin/sh\\n' >"$dir/usr/lib/postgresql/${other.major}/bin/$t"; chmod +x "$dir/usr/lib/postgresql/${other.major}/bin/$t"
done
: >"$dir/usr/share/postgresql/${other.major}/extension/vector.control"
echo 'postgres:x:100:102::/var/lib/postgresql:/bin/bash' >"$dir/etc/passwd"
`,
    { mode: 0o755 },
  );
});

afterAll(async () => {
  await work?.remove();
});

function build(cache: string, extra: Record<string, string> = {}) {
  const r = spawnSync('bash', [SCRIPT], {
    encoding: 'utf8',
    env: {
      PATH: `${fakeBin}:${process.env.PATH}`,
      PGVAULT_CI_CACHE: cache,
      PGVAULT_CI_MIRROR: 'http://mirror.invalid/debian',
      FAKE_LOG: join(cache, 'calls.log'),
      ...extra,
    },
  });
  const calls = existsSync(join(cache, 'calls.log'))
    ? readFileSync(join(cache, 'calls.log'), 'utf8').trim().split('\n').length
    : 0;
  return { ...r, calls };
}

describe.skipIf(release !== 'bookworm' && release !== 'trixie')('.ci/pg-other-major', () => {
  it('builds the root once, with its marker, then finds it without building again', () => {
    const cache = join(work.path, 'once');
    const first = build(cache);
    expect(first.status, first.stderr).toBe(0);
    const root = join(cache, `pg-other-${other.name}`);
    expect(first.stdout.trim().split('\n').at(-1)).toBe(root);
    expect(readFileSync(join(root, '.pgvault-root'), 'utf8')).toMatch(
      new RegExp(`^format=1 release=${other.name} major=${other.major} packages=postgresql-${other.major},`),
    );
    const second = build(cache);
    expect(second.status).toBe(0);
    expect(second.stdout.trim()).toBe(root);
    expect(second.calls).toBe(1);
    expect(readdirSync(cache).filter((n) => n.includes('.build.'))).toEqual([]);
  });

  it('a failed debootstrap is tried once more, and when it fails again leaves no root and no build folder', () => {
    const cache = join(work.path, 'failing');
    mkdirSync(cache);
    const fail = join(cache, 'fail');
    writeFileSync(fail, '');
    const r = build(cache, { FAKE_FAIL: fail });
    expect(r.status).toBe(1);
    expect(r.calls).toBe(2);
    expect(r.stderr).toContain('debootstrap failed twice');
    expect(existsSync(join(cache, `pg-other-${other.name}`))).toBe(false);
    expect(readdirSync(cache).filter((n) => n.includes('.build.'))).toEqual([]);
  });

  it('a root without its marker (an interrupted build) or with another format is built again; stale build folders go', () => {
    const cache = join(work.path, 'interrupted');
    const root = join(cache, `pg-other-${other.name}`);
    mkdirSync(join(root, 'usr'), { recursive: true });
    mkdirSync(join(cache, `pg-other-${other.name}.build.AbC123`, 'rootfs'), { recursive: true });
    const r = build(cache);
    expect(r.status, r.stderr).toBe(0);
    expect(r.calls).toBe(1);
    expect(existsSync(join(root, '.pgvault-root'))).toBe(true);
    expect(readdirSync(cache).filter((n) => n.includes('.build.'))).toEqual([]);

    writeFileSync(join(root, '.pgvault-root'), `format=0 release=${other.name}\n`);
    const again = build(cache);
    expect(again.status, again.stderr).toBe(0);
    expect(again.calls).toBe(2);
    expect(readFileSync(join(root, '.pgvault-root'), 'utf8')).toMatch(/^format=1 /);
  });
});
