import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Target } from '../../core/storage/s3';
import { walNodeOf } from '../../core/wal/push';
import { PatroniCluster } from '../helpers/patroni';
import { type S3TestServer, startS3Server } from '../helpers/s3-server';
import { BIN, CLUSTER_NAME, giveToServer, startWalFixture, type WalFixture, walKeyPath } from './wal-fixture';

/*
 * WAL across failover, first part: the same archive_command on every node, archive_mode=always on
 * the standby. The same segment from two nodes with the same bytes succeeds; different bytes under
 * one name fail loudly (segment, node, timeline), keep the archived object, and alert once.
 */

describe('the node a WAL file comes from (walNodeOf)', () => {
  it('is PGHOST:PGPORT and the data directory; a socket PGHOST gives the host name', () => {
    expect(
      walNodeOf('/srv/pg2/pg_wal/000000020000000000000003', { PGHOST: 'db2.internal', PGPORT: '5433' }),
    ).toBe('db2.internal:5433 (data directory /srv/pg2)');
    expect(walNodeOf('/srv/pg2/pg_wal/000000020000000000000003', { PGHOST: '/run/postgresql' })).toBe(
      `${hostname()} (data directory /srv/pg2)`,
    );
    expect(walNodeOf('/tmp/copies/000000020000000000000003', {})).toBe(hostname());
  });
});

describe('one segment name, different content from another node', () => {
  let fx: WalFixture;
  let alertLog: string;

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgvault-wal-alert-'));
    alertLog = join(dir, 'alerts.log');
    // archive_command unset: the test pushes by hand, as each node's archiver would.
    fx = await startWalFixture(
      { ALERT_COMMAND: `echo "$PGVAULT_ALERT_TITLE" >> ${alertLog}` },
      { archiveCommand: '' },
    );
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
  });

  it('fails with segment, node and timeline on one line, keeps the stored object, and alerts once across retries', async () => {
    // Prepare: the segment archived from this node, then "another node" (its own pg_wal, its own
    // .ready, as PostgreSQL leaves it) holding different bytes under the same name.
    const [name] = await fx.makeSegments(1);
    const first = fx.pgvault(['backup', 'wal', `pg_wal/${name}`]);
    expect(first.code, first.stderr).toBe(0);
    const objectPath = walKeyPath(fx.vaultDir, name!);
    const stored = readFileSync(objectPath);
    const otherData = join(fx.work, 'node2');
    const otherWal = join(otherData, 'pg_wal');
    mkdirSync(join(otherWal, 'archive_status'), { recursive: true });
    const changed = readFileSync(join(fx.cluster.dataDir, 'pg_wal', name!));
    changed[5000] = changed[5000]! ^ 0xff;
    writeFileSync(join(otherWal, name!), changed);
    writeFileSync(join(otherWal, 'archive_status', `${name}.ready`), '');

    // Act: PostgreSQL retries a failed archive_command; three tries.
    const tries = [1, 2, 3].map(() => fx.pgvault(['backup', 'wal', `pg_wal/${name}`], { cwd: otherData }));

    // Assess
    for (const r of tries) {
      expect(r.code).toBe(3);
      const lines = r.stderr.trimEnd().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(`WAL file ${name} is already archived with different content`);
      expect(lines[0]).toContain(`node ${hostname()} (data directory ${otherData}), timeline 1`);
    }
    expect(Buffer.compare(readFileSync(objectPath), stored)).toBe(0);
    expect(readFileSync(alertLog, 'utf8')).toBe(
      `WAL conflict: ${name} differs between nodes (pgvault backup wal)\n`,
    );
    // The same bytes from "another node" still succeed (a standby with archive_mode=always).
    writeFileSync(join(otherWal, name!), readFileSync(join(fx.cluster.dataDir, 'pg_wal', name!)));
    const same = fx.pgvault(['backup', 'wal', `pg_wal/${name}`, '--json'], { cwd: otherData });
    expect(same.code, same.stderr).toBe(0);
    expect(JSON.parse(same.stdout)).toMatchObject({ ok: true, name, storedIn: [] });
  });
});

describe('one segment name, different content from another node, asynchronous archiving (the uploader)', () => {
  let fx: WalFixture;
  let alertLog: string;

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgvault-wal-alert-async-'));
    alertLog = join(dir, 'alerts.log');
    fx = await startWalFixture(
      {
        ARCHIVE_ASYNC: 'true',
        ARCHIVE_TIMEOUT: '20',
        ALERT_COMMAND: `echo "$PGVAULT_ALERT_TITLE" >> ${alertLog}`,
      },
      { archiveCommand: '' },
    );
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
  });

  it('fails each try with segment, node and timeline, keeps the stored object, and the uploader alerts once', async () => {
    // Prepare
    const [name] = await fx.makeSegments(1);
    const first = fx.pgvault(['backup', 'wal', `pg_wal/${name}`]);
    expect(first.code, first.stderr).toBe(0);
    const objectPath = walKeyPath(fx.vaultDir, name!);
    const stored = readFileSync(objectPath);
    const otherData = join(fx.work, 'node2-async');
    const otherWal = join(otherData, 'pg_wal');
    mkdirSync(join(otherWal, 'archive_status'), { recursive: true });
    const changed = readFileSync(join(fx.cluster.dataDir, 'pg_wal', name!));
    changed[5000] = changed[5000]! ^ 0xff;
    writeFileSync(join(otherWal, name!), changed);
    writeFileSync(join(otherWal, 'archive_status', `${name}.ready`), '');

    // Act
    const tries = [1, 2].map(() => fx.pgvault(['backup', 'wal', `pg_wal/${name}`], { cwd: otherData }));

    // Assess
    for (const r of tries) {
      expect(r.code).not.toBe(0);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain(`WAL file ${name} is already archived with different content`);
      expect(r.stderr).toContain(`node ${hostname()} (data directory ${otherData}), timeline 1`);
    }
    expect(Buffer.compare(readFileSync(objectPath), stored)).toBe(0);
    expect(readFileSync(alertLog, 'utf8')).toBe(
      `WAL conflict: ${name} differs between nodes (pgvault backup wal)\n`,
    );
  }, 90_000);
});

describe('one segment name, different content from another node, in S3 (s3rver)', () => {
  let s3: S3TestServer;
  let fx: WalFixture;
  let env: Record<string, string>;
  let bucket: S3Target;
  const PREFIX = 'two-nodes';

  beforeAll(async () => {
    s3 = await startS3Server('pgvault-two-nodes');
    env = {
      AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    };
    fx = await startWalFixture(
      {
        CLOUD_PROVIDER: 's3',
        CLOUD_BUCKET: s3.bucket,
        CLOUD_PREFIX: PREFIX,
        S3_ENDPOINT: s3.endpoint,
        LOCAL_COPY: 'false',
      },
      { archiveCommand: '' },
    );
    bucket = new S3Target({
      bucket: s3.bucket,
      prefix: PREFIX,
      region: s3.region,
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    await s3?.stop();
  });

  /** The CLI without blocking this process (s3rver lives in it). */
  function run(
    args: string[],
    cwd: string,
  ): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(BIN, ['--config', fx.configFile, ...args], {
        cwd,
        env: { PATH: process.env.PATH ?? '', HOME: '/root', ...env },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => {
        stdout += c.toString();
      });
      child.stderr.on('data', (c: Buffer) => {
        stderr += c.toString();
      });
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  it('fails with segment, node and timeline, and the object in the bucket is unchanged', async () => {
    // Prepare
    const [name] = await fx.makeSegments(1);
    const first = await run(['backup', 'wal', `pg_wal/${name}`], fx.cluster.dataDir);
    expect(first.code, first.stderr).toBe(0);
    const key = `${CLUSTER_NAME}/wal/${name!.slice(0, 8)}/${name!.slice(0, 16)}/${name}.zst.enc`;
    const stored = await bucket.getBytes(key);
    const otherData = join(fx.work, 's3-node2');
    const otherWal = join(otherData, 'pg_wal');
    mkdirSync(join(otherWal, 'archive_status'), { recursive: true });
    const changed = readFileSync(join(fx.cluster.dataDir, 'pg_wal', name!));
    changed[7000] = changed[7000]! ^ 0xff;
    writeFileSync(join(otherWal, name!), changed);
    writeFileSync(join(otherWal, 'archive_status', `${name}.ready`), '');

    // Act
    const r = await run(['backup', 'wal', `pg_wal/${name}`], otherData);

    // Assess
    expect(r.code).toBe(3);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`WAL file ${name} is already archived with different content in s3://`);
    expect(lines[0]).toContain(`node ${hostname()} (data directory ${otherData}), timeline 1`);
    expect(Buffer.compare(await bucket.getBytes(key), stored)).toBe(0);
  });
});

describe('Patroni, archive_mode=always on both nodes, one archive', () => {
  let cluster: PatroniCluster;
  let work: string;
  let configFile: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'pgvault-wal-two-nodes-'));
    chmodSync(work, 0o755);
    const vaultDir = join(work, 'vault');
    mkdirSync(vaultDir, { mode: 0o700 });
    configFile = join(work, 'pgvault.env');
    writeFileSync(configFile, `BACKUP_DIR=${vaultDir}\nCLUSTER_NAME=ha\nCOMPRESSION=zstd\n`, { mode: 0o600 });
    giveToServer(vaultDir);
    giveToServer(configFile);
    cluster = await PatroniCluster.start({
      scope: 'wal-always',
      parameters: {
        archive_mode: 'always',
        archive_command: `${BIN} --config ${configFile} backup wal %p`,
        archive_timeout: 0,
      },
    });
  }, 180_000);

  afterAll(async () => {
    await cluster?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  async function archiver(node: string) {
    const [row] = await cluster.query<{
      archived: string;
      failed: string;
      last: string | null;
      error: string | null;
    }>(
      'SELECT archived_count AS archived, failed_count AS failed, last_archived_wal AS last, last_failed_wal AS error FROM pg_stat_archiver',
      { node },
    );
    return {
      archived: Number(row!.archived),
      failed: Number(row!.failed),
      last: row!.last,
      lastFailed: row!.error,
    };
  }

  it('both nodes archive every segment into one archive without a failure, and verify wal is clean', async () => {
    // Prepare
    const leader = (await cluster.leader()).name;
    const replica = cluster.nodes.map((n) => n.name).find((n) => n !== leader)!;
    const replicaBefore = await archiver(replica);

    // Act: writes and three segment switches on the leader.
    await cluster.query('CREATE TABLE IF NOT EXISTS t (id serial, note text)');
    let lastName = '';
    for (let i = 0; i < 3; i++) {
      await cluster.query("INSERT INTO t (note) SELECT repeat('x', 200) FROM generate_series(1, 500)");
      const [row] = await cluster.query<{ name: string }>(
        'SELECT pg_walfile_name(pg_switch_wal() - 1) AS name',
      );
      lastName = row!.name;
    }
    await cluster.waitReplayed();
    // Both archivers reach the last switched segment (the replica's once it has received it).
    const deadline = Date.now() + 60_000;
    let states = { leader: await archiver(leader), replica: await archiver(replica) };
    while (Date.now() < deadline) {
      states = { leader: await archiver(leader), replica: await archiver(replica) };
      if ((states.leader.last ?? '') >= lastName && (states.replica.last ?? '') >= lastName) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    const verify = spawnSync(BIN, ['--config', configFile, 'verify', 'wal', '--json'], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '', HOME: '/root' },
      timeout: 120_000,
    });

    // Assess
    expect(states.leader.failed, JSON.stringify(states)).toBe(0);
    expect(states.replica.failed, JSON.stringify(states)).toBe(0);
    expect(states.leader.last! >= lastName, JSON.stringify(states)).toBe(true);
    expect(states.replica.last! >= lastName, JSON.stringify(states)).toBe(true);
    expect(states.replica.archived).toBeGreaterThan(replicaBefore.archived);
    expect(verify.status, verify.stderr).toBe(0);
    const report = JSON.parse(verify.stdout);
    expect(report.ok).toBe(true);
    expect(report.timelines[0]).toMatchObject({ timeline: 1, gaps: [] });
  }, 180_000);
});
