import { describe, expect, it } from 'vitest';
import { batchesFor } from '../../core/wal/spool';

const names = (n: number) =>
  Array.from({ length: n }, (_, i) => `0000000100000000000000${(i + 16).toString(16).toUpperCase()}`);
const never = () => false;
const all = () => true;

describe('how the uploader batches the files due', () => {
  it('deals a short backlog across every lane, so the lanes finish files oldest first', () => {
    const waiting = names(10);

    const batches = batchesFor(waiting, all, 4, 4, never);

    expect(batches).toEqual([
      [waiting[0], waiting[4], waiting[8]],
      [waiting[1], waiting[5], waiting[9]],
      [waiting[2], waiting[6]],
      [waiting[3], waiting[7]],
    ]);
  });

  it('caps a batch at an even share over all lanes and at 16 files', () => {
    const waiting = names(200);

    expect(batchesFor(waiting, all, 4, 4, never).map((b) => b.length)).toEqual([16, 16, 16, 16]);
    expect(batchesFor(names(12), all, 1, 4, never).map((b) => b.length)).toEqual([3]);
  });

  it('lines a lane freed later up behind the files in flight, not beside them', () => {
    // The first lane holds the 1st, 5th, 9th ... file (10 of 40); the next free lane starts at the
    // 2nd and takes its share of the 30 left (8).
    const waiting = names(40);
    const inFlight = new Set(batchesFor(waiting, all, 1, 4, never).flat());

    const [next] = batchesFor(waiting, (n) => !inFlight.has(n), 1, 4, never);

    expect(next).toEqual(Array.from({ length: 8 }, (_, i) => waiting[1 + 4 * i]));
  });

  it('sends a file that failed before on its own, so it cannot fail the others again', () => {
    const waiting = names(3);

    expect(batchesFor(waiting, all, 3, 2, (n) => n === waiting[0])).toEqual([
      [waiting[0]],
      [waiting[1]],
      [waiting[2]],
    ]);
    expect(batchesFor(waiting, all, 1, 2, (n) => n === waiting[1])).toEqual([[waiting[1]]]);
  });

  it('starts nothing without a free lane or a file due', () => {
    expect(batchesFor(names(5), all, 0, 4, never)).toEqual([]);
    expect(batchesFor(names(5), () => false, 4, 4, never)).toEqual([]);
  });
});
