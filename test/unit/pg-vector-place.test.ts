import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NO_PGVECTOR_LINE, type OtherMajorRoot } from '../helpers/pg-other';
import { hostServerMajor, vectorPlace, vectorPlaceHere, vectorPlaceLine } from '../helpers/pg-vector';

/**
 * Where the pgvector checks run (test/helpers/pg-vector.ts), on fake /usr/lib/postgresql and
 * /usr/share/postgresql folders: the host's server when its major has vector.control, else the
 * other major's root when it has pgvector, else nowhere (and only then the skip line).
 */
let dir: string;
let lib: string;
let share: string;

/** A server major installed on the fake host: bin/initdb (executable or not), and its extension folder. */
function server(major: number, options: { vector?: boolean; initdb?: boolean } = {}): void {
  const bin = join(lib, String(major), 'bin');
  mkdirSync(bin, { recursive: true });
  if (options.initdb !== false) writeFileSync(join(bin, 'initdb'), '#!/bin/sh\n', { mode: 0o755 });
  else writeFileSync(join(bin, 'pg_dump'), '#!/bin/sh\n', { mode: 0o755 });
  const extension = join(share, String(major), 'extension');
  mkdirSync(extension, { recursive: true });
  writeFileSync(join(extension, 'plpgsql.control'), '');
  if (options.vector) writeFileSync(join(extension, 'vector.control'), "default_version = '0.8.0'\n");
}

const trixie: OtherMajorRoot = {
  root: '/var/cache/pgvault-ci/pg-other-trixie',
  release: 'trixie',
  major: 17,
  pgvector: true,
};
const bookworm: OtherMajorRoot = {
  root: '/var/cache/pgvault-ci/pg-other-bookworm',
  release: 'bookworm',
  major: 15,
  pgvector: false,
};

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'pgvault-vector-place-'));
  lib = join(dir, 'lib');
  share = join(dir, 'share');
  mkdirSync(lib);
  mkdirSync(share);
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('vectorPlace', () => {
  it('Debian 13 with postgresql-17-pgvector on the host (bookworm root without it): the host, PostgreSQL 17', () => {
    server(17, { vector: true });

    const place = vectorPlace({ lib, share, other: bookworm });

    expect(place).toEqual({ where: 'host', major: 17 });
    expect(vectorPlaceLine(place)).toContain("this host's PostgreSQL 17");
  });

  it('Debian 12 (no pgvector for the host’s 15) with the trixie root: the root, PostgreSQL 17', () => {
    server(15);

    const place = vectorPlace({ lib, share, other: trixie });

    expect(place).toEqual({ where: 'root', major: 17, other: trixie });
    expect(vectorPlaceLine(place)).toContain(`PostgreSQL 17 in the other major's root ${trixie.root}`);
  });

  it('the host first when both have it', () => {
    server(17, { vector: true });

    expect(vectorPlace({ lib, share, other: trixie })).toEqual({ where: 'host', major: 17 });
  });

  it('Debian 13 before .ci/run installed pgvector (bookworm root): nowhere, and the line says what to install', () => {
    server(17);

    const place = vectorPlace({ lib, share, other: bookworm });

    expect(place).toBeUndefined();
    expect(vectorPlaceLine(place)).toBe(NO_PGVECTOR_LINE);
    expect(NO_PGVECTOR_LINE).toContain('postgresql-<major>-pgvector');
  });

  it('nowhere in CI is a failure naming what to install, not a skip; outside CI, undefined', () => {
    server(17);

    expect(() => vectorPlaceHere({ lib, share, other: bookworm }, { CI: 'true' })).toThrow(
      `CI: ${NO_PGVECTOR_LINE}`,
    );
    expect(vectorPlaceHere({ lib, share, other: bookworm }, {})).toBeUndefined();
    expect(vectorPlaceHere({ lib, share, other: trixie }, { CI: 'true' })).toMatchObject({ where: 'root' });
  });

  it('no root built and no pgvector on the host: nowhere', () => {
    server(15);

    expect(vectorPlace({ lib, share, other: undefined })).toBeUndefined();
  });

  it('the host server is the newest major with initdb, the one TempCluster starts: pgvector of an older or client-only major does not count', () => {
    server(15, { vector: true });
    server(17);
    server(18, { initdb: false, vector: true });

    expect(hostServerMajor(lib)).toBe(17);
    expect(vectorPlace({ lib, share, other: bookworm })).toBeUndefined();
    expect(vectorPlace({ lib, share, other: trixie })).toEqual({ where: 'root', major: 17, other: trixie });
  });

  it('no server on the host at all: the root when it has pgvector', () => {
    expect(hostServerMajor(join(dir, 'missing'))).toBeUndefined();
    expect(vectorPlace({ lib: join(dir, 'missing'), share, other: trixie })).toMatchObject({ where: 'root' });
  });
});
