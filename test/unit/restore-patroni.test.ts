import { describe, expect, it } from 'vitest';
import { truthy, withReplication } from '../../core/restore/patroni';

describe("Patroni's method options as restore replica reads them", () => {
  it('reads YAML booleans as Patroni passes them (--replace=True) and a bare flag as yes', () => {
    for (const yes of [true, 'True', 'true', 'yes', 'on', '1']) expect(truthy(yes)).toBe(true);
    for (const no of [undefined, false, 'False', 'false', 'no', 'off', '0', ''])
      expect(truthy(no)).toBe(false);
  });

  it("makes Patroni's --connstring a replication connection, key=value or URI", () => {
    expect(withReplication('dbname=postgres user=replicator host=10.0.0.1 port=5432')).toBe(
      'dbname=postgres user=replicator host=10.0.0.1 port=5432 replication=true',
    );
    expect(withReplication('postgresql://replicator@10.0.0.1:5432/postgres')).toBe(
      'postgresql://replicator@10.0.0.1:5432/postgres?replication=true',
    );
    expect(withReplication('postgres://r@h/p?sslmode=require')).toBe(
      'postgres://r@h/p?sslmode=require&replication=true',
    );
  });
});
