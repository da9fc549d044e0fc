import { describe, expect, it } from 'vitest';
import { batchesFor } from '../../core/wal/spool';

const names = (n: number) =>
  Array.from({ length: n }, (_, i) => `0000000100000000000000${(i + 16).toString(16).toUpperCase()}`);
const never = () => false;

describe('how the uploader batches the files due', () => {
  it('spreads a short backlog over every free lane, oldest first', () => {
    const due = names(10);

    expect(batchesFor(due, 2, 16, never)).toEqual([due.slice(0, 5), due.slice(5)]);
  });

  it('caps a batch at the limit and at 16 files', () => {
    const due = names(40);

    expect(batchesFor(due, 2, 2, never)).toEqual([due.slice(0, 2), due.slice(2, 6)]);
    expect(batchesFor(due, 2, 64, never).map((b) => b.length)).toEqual([16, 16]);
  });

  it('puts the oldest files in the smallest batches, each next one twice as large', () => {
    const due = names(64);

    const batches = batchesFor(due, 4, 1, never);

    expect(batches.map((b) => b.length)).toEqual([1, 2, 4, 8]);
    expect(batches.flat()).toEqual(due.slice(0, 15));
  });

  it('sends a file that failed before on its own, so it cannot fail the others again', () => {
    const due = names(3);

    expect(batchesFor(due, 2, 16, (n) => n === due[0])).toEqual([[due[0]], [due[1], due[2]]]);
    expect(batchesFor(due, 1, 16, (n) => n === due[1])).toEqual([[due[1]]]);
  });

  it('starts nothing without a free lane', () => {
    expect(batchesFor(names(5), 0, 16, never)).toEqual([]);
  });
});
