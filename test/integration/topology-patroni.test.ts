import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PatroniCluster } from '../helpers/patroni';

describe('topology with a real Patroni cluster', () => {
  let cluster: PatroniCluster;
  beforeAll(async () => {
    cluster = await PatroniCluster.start();
    console.log(`patroni cluster up in ${cluster.startupMs} ms`);
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('switches over', async () => {
    const before = await cluster.leader();
    expect(before.name).toBe('node1');
    const t = Date.now();
    const after = await cluster.switchover();
    console.log(`switchover in ${Date.now() - t} ms`);
    expect(after.name).toBe('node2');
    console.log(JSON.stringify(await cluster.members()));
  });
});
