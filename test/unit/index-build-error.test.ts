import { describe, expect, it } from 'vitest';
import { explainBuildError } from '../../core/restore/indexes';

/**
 * restore indexes with an index backup taken before backups recorded each index's extensions: the
 * build's error names the CREATE EXTENSION to run, as the up-front check does for newer backups.
 */
describe('explainBuildError', () => {
  it('names CREATE EXTENSION vector for a missing hnsw or ivfflat access method, vector type or opclass', () => {
    for (const error of [
      'access method "hnsw" does not exist',
      'access method "ivfflat" does not exist',
      'type "vector" does not exist',
      'operator class "vector_cosine_ops" does not exist for access method "hnsw"',
    ]) {
      expect(explainBuildError(error, 'shop'), error).toBe(
        `${error}; extension "vector" is missing in "shop": run CREATE EXTENSION vector; there, then restore indexes again`,
      );
    }
  });

  it('says an extension is missing for another access method, and leaves other errors as they are', () => {
    expect(explainBuildError('access method "rum" does not exist', 'app')).toContain(
      'the extension that provides "rum" is missing in "app"',
    );
    expect(explainBuildError('relation "public.t" does not exist', 'app')).toBe(
      'relation "public.t" does not exist',
    );
  });
});
