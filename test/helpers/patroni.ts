import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { Client } from 'pg';
import { expect } from 'vitest';
import { chownToServerUser, serverOsUser } from '../../core/pg/cluster';
import { type CliRun, runPgvault } from './cli';
import { testPort } from './ports';

/*
 * A real Patroni cluster for tests: one etcd (Debian's etcd-server, 3.4) and two or three PostgreSQL
 * nodes run by Debian's patroni (3.0), all on 127.0.0.1, free ports, one temp directory. Every
 * process runs in its own process group; stop() (and, if the test process dies first, an exit hook)
 * ends the groups and any postmaster left behind. Start one cluster per test file (about 8 s).
 */

export const PATRONI_BIN = '/usr/bin/patroni';
export const ETCD_BIN = '/usr/bin/etcd';
/** The superuser pgvault connects as, and the REST API's user for switchover and failover. */
export const SUPERUSER = 'postgres';
export const SUPERUSER_PASSWORD = 'pgvault-test-superuser';
export const API_USER = 'patroni';
export const API_PASSWORD = 'pgvault-test-api';

/** A member as `GET /cluster` reports it. */
export interface ClusterMember {
  readonly name: string;
  readonly role: string;
  readonly state: string;
  readonly host: string;
  readonly port: number;
  readonly api_url?: string;
  readonly timeline?: number;
  readonly lag?: number | string;
}

export interface PatroniNode {
  readonly name: string;
  readonly pgPort: number;
  readonly apiPort: number;
  readonly apiUrl: string;
  readonly dataDir: string;
  readonly configFile: string;
  readonly logFile: string;
  proc?: ChildProcess;
}

export interface PatroniClusterOptions {
  /** Members (2 or 3). @default 2 */
  readonly nodes?: number;
  /** Patroni scope (the cluster's name in the DCS). @default 'pgvault-test' */
  readonly scope?: string;
  /** Extra postgresql.parameters for every node (Patroni's dynamic configuration at bootstrap). */
  readonly parameters?: Readonly<Record<string, string | number>>;
  /** Patroni's synchronous_mode. @default false */
  readonly synchronousMode?: boolean;
  /**
   * The REST APIs on https, with a certificate for 127.0.0.1 signed by a test CA (`caFile`), as
   * restapi.certfile/keyfile. @default false
   */
  readonly tls?: boolean;
  /**
   * Extra lines of every member's `bootstrap:` section, indented by two spaces (a custom bootstrap
   * method: `  method: pgvault` and its section). @default none
   */
  readonly bootstrapYaml?: string;
  /** Patroni's log.level for every member (INFO shows which replica method built a member). @default 'WARNING' */
  readonly logLevel?: string;
}

/** What one member added with addNode() gets besides the cluster's configuration. */
export interface PatroniMemberOptions {
  /** Extra lines of its `postgresql:` section, indented by two spaces (create_replica_methods & co). */
  readonly postgresqlYaml?: string;
  /** Its Patroni log.level. @default the cluster's */
  readonly logLevel?: string;
}

function findServerBinDir(): string {
  for (const major of ['17', '16', '15']) {
    const dir = `/usr/lib/postgresql/${major}/bin`;
    if (existsSync(join(dir, 'postgres'))) return dir;
  }
  throw new Error('no PostgreSQL server binaries under /usr/lib/postgresql/*/bin');
}

/** Whether this machine can run the Patroni tests (Debian's patroni and etcd-server installed). */
export function patroniAvailable(): boolean {
  return existsSync(PATRONI_BIN) && existsSync(ETCD_BIN);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` every 100 ms until it is true (a throw counts as false); fails naming `what` after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** One HTTP request to a Patroni REST API; resolves with the status and the body (never throws on status). */
export function apiRequest(
  url: string,
  method = 'GET',
  body?: unknown,
  timeoutMs = 3_000,
  ca?: Buffer,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = (url.startsWith('https:') ? httpsRequest : request)(
      url,
      {
        method,
        timeout: timeoutMs,
        ...(ca ? { ca } : {}),
        auth: method === 'GET' ? undefined : `${API_USER}:${API_PASSWORD}`,
        headers: data
          ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }
          : {},
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          text += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out`)));
    req.on('error', reject);
    req.end(data);
  });
}

/** Every process group started by any PatroniCluster of this test process, for the exit hook. */
const liveGroups = new Set<number>();
const liveDataDirs = new Set<string>();
let exitHookInstalled = false;

function postmasterPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone.
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pgid of liveGroups) signal(-pgid, 'SIGKILL');
    // Patroni starts the postmaster in a session of its own: it outlives Patroni's group.
    for (const dir of liveDataDirs) {
      const pid = postmasterPid(dir);
      if (pid !== undefined) signal(pid, 'SIGQUIT');
    }
  });
}

export class PatroniCluster {
  readonly nodes: PatroniNode[] = [];
  etcdProc?: ChildProcess;
  /** Milliseconds from the first process started to a leader with streaming replicas. */
  startupMs = 0;
  /** With `tls`: the CA file that signed the REST APIs' certificate (PATRONI_CACERT). */
  caFile?: string;
  private ca?: Buffer;
  private options: PatroniClusterOptions = {};

  private constructor(
    readonly dir: string,
    readonly scope: string,
    readonly etcdClientPort: number,
    readonly etcdPeerPort: number,
  ) {}

  /** The comma-separated PATRONI_URL of every member's REST API. */
  get patroniUrl(): string {
    return this.nodes.map((n) => n.apiUrl).join(',');
  }

  node(name: string): PatroniNode {
    const n = this.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no Patroni member ${name}`);
    return n;
  }

  /** The environment pgvault needs to back up this cluster (plus what the caller adds). */
  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      DEPLOYMENT_MODE: 'patroni',
      PATRONI_URL: this.patroniUrl,
      PGUSER: SUPERUSER,
      PGPASSWORD: SUPERUSER_PASSWORD,
      PGSSLMODE: 'disable',
      ...(this.caFile ? { PATRONI_CACERT: this.caFile } : {}),
      ...extra,
    };
  }

  static async start(options: PatroniClusterOptions = {}): Promise<PatroniCluster> {
    if (!patroniAvailable()) {
      throw new Error(
        `the Patroni tests need ${PATRONI_BIN} and ${ETCD_BIN}: apt-get install patroni etcd-server (.ci/run does)`,
      );
    }
    installExitHook();
    const t0 = Date.now();
    const dir = await mkdtemp(join(tmpdir(), 'pgvault-patroni-'));
    await chownToServerUser(dir);
    const cluster = new PatroniCluster(
      dir,
      options.scope ?? 'pgvault-test',
      await testPort(),
      await testPort(),
    );
    cluster.options = options;
    try {
      cluster.startEtcd();
      if (options.tls) cluster.makeCertificates();
      const binDir = findServerBinDir();
      const count = options.nodes ?? 2;
      for (let i = 1; i <= count; i++) {
        const name = `node${i}`;
        const pgPort = await testPort();
        const apiPort = await testPort();
        const node: PatroniNode = {
          name,
          pgPort,
          apiPort,
          apiUrl: `${options.tls ? 'https' : 'http'}://127.0.0.1:${apiPort}`,
          dataDir: join(dir, name),
          configFile: join(dir, `${name}.yml`),
          logFile: join(dir, `${name}.log`),
        };
        writeFileSync(node.configFile, cluster.configText(node, binDir, options));
        await chownToServerUser(node.configFile);
        cluster.nodes.push(node);
        liveDataDirs.add(node.dataDir);
      }
      await cluster.waitForEtcd();
      // The first node bootstraps alone, so that it is the leader; the others clone from it.
      cluster.startNode('node1');
      await cluster.waitListed('node1');
      for (const n of cluster.nodes.slice(1)) cluster.startNode(n.name);
      await cluster.waitHealthy({ timeoutMs: 60_000 });
      cluster.startupMs = Date.now() - t0;
      return cluster;
    } catch (err) {
      await cluster.stop();
      throw err;
    }
  }

  private configText(
    node: PatroniNode,
    binDir: string,
    options: PatroniClusterOptions,
    member: PatroniMemberOptions = {},
  ): string {
    const params = {
      wal_level: 'replica',
      hot_standby: 'on',
      max_wal_senders: 10,
      max_replication_slots: 10,
      wal_keep_size: '128MB',
      fsync: 'off',
      ...options.parameters,
    };
    const paramLines = Object.entries(params)
      .map(([k, v]) => `        ${k}: ${JSON.stringify(String(v))}`)
      .join('\n');
    const socketDir = join(this.dir, 'sockets');
    const tls = this.caFile
      ? `  certfile: ${join(this.dir, 'api.crt')}\n  keyfile: ${join(this.dir, 'api.key')}\n`
      : '';
    const ctl = this.caFile ? `ctl:\n  cacert: ${this.caFile}\n` : '';
    return `scope: ${this.scope}
name: ${node.name}
log:
  level: ${member.logLevel ?? options.logLevel ?? 'WARNING'}
restapi:
  listen: 127.0.0.1:${node.apiPort}
  connect_address: 127.0.0.1:${node.apiPort}
  authentication:
    username: ${API_USER}
    password: ${API_PASSWORD}
${tls}${ctl}etcd3:
  hosts: 127.0.0.1:${this.etcdClientPort}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: ${options.synchronousMode ? 'true' : 'false'}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
${paramLines}
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
${options.bootstrapYaml ? `${options.bootstrapYaml.trimEnd()}\n` : ''}postgresql:
  listen: 127.0.0.1:${node.pgPort}
  connect_address: 127.0.0.1:${node.pgPort}
  data_dir: ${node.dataDir}
  bin_dir: ${binDir}
  pgpass: ${join(this.dir, `${node.name}.pgpass`)}
  authentication:
    superuser:
      username: ${SUPERUSER}
      password: ${SUPERUSER_PASSWORD}
    replication:
      username: replicator
      password: replicator-secret
    rewind:
      username: ${SUPERUSER}
      password: ${SUPERUSER_PASSWORD}
  pg_hba:
    - local all all trust
    - host replication all 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
  parameters:
    unix_socket_directories: ${JSON.stringify(socketDir)}
${member.postgresqlYaml ? `${member.postgresqlYaml.trimEnd()}\n` : ''}`;
  }

  /**
   * Adds a member to the running cluster (node3, node4, ...) with its own extra configuration and
   * starts it; it creates its replica as its create_replica_methods say. Does not wait: follow it
   * with waitHealthy().
   */
  async addNode(member: PatroniMemberOptions = {}): Promise<PatroniNode> {
    const name = `node${this.nodes.length + 1}`;
    const apiPort = await testPort();
    const node: PatroniNode = {
      name,
      pgPort: await testPort(),
      apiPort,
      apiUrl: `${this.caFile ? 'https' : 'http'}://127.0.0.1:${apiPort}`,
      dataDir: join(this.dir, name),
      configFile: join(this.dir, `${name}.yml`),
      logFile: join(this.dir, `${name}.log`),
    };
    writeFileSync(node.configFile, this.configText(node, findServerBinDir(), this.options, member));
    await chownToServerUser(node.configFile);
    this.nodes.push(node);
    liveDataDirs.add(node.dataDir);
    this.startNode(name);
    return node;
  }

  /** A test CA and a certificate for 127.0.0.1 it signs, readable by the postgres OS user. */
  private makeCertificates(): void {
    const at = (f: string) => join(this.dir, f);
    const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
    openssl([
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=pgvault test CA',
      '-keyout',
      at('ca.key'),
      '-out',
      at('ca.crt'),
    ]);
    openssl([
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=127.0.0.1',
      '-keyout',
      at('api.key'),
      '-out',
      at('api.csr'),
    ]);
    writeFileSync(at('api.ext'), 'subjectAltName = IP:127.0.0.1\n');
    openssl([
      'x509',
      '-req',
      '-in',
      at('api.csr'),
      '-CA',
      at('ca.crt'),
      '-CAkey',
      at('ca.key'),
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      at('api.ext'),
      '-out',
      at('api.crt'),
    ]);
    const user = serverOsUser();
    if (user) for (const f of ['api.key', 'api.crt', 'ca.crt']) chownSync(at(f), user.uid, user.gid);
    this.caFile = at('ca.crt');
    this.ca = readFileSync(this.caFile);
  }

  /** A request to a member's REST API, trusting the test CA. */
  api(
    url: string,
    method = 'GET',
    body?: unknown,
    timeoutMs = 3_000,
  ): Promise<{ status: number; body: string }> {
    return apiRequest(url, method, body, timeoutMs, this.ca);
  }

  private spawnGroup(file: string, args: string[], logFile: string): ChildProcess {
    const fd = openSync(logFile, 'a');
    const child = spawn(file, args, { detached: true, stdio: ['ignore', fd, fd], cwd: this.dir });
    closeSync(fd);
    if (child.pid !== undefined) liveGroups.add(child.pid);
    child.on('exit', () => {
      if (child.pid !== undefined) liveGroups.delete(child.pid);
    });
    return child;
  }

  private startEtcd(): void {
    const client = `http://127.0.0.1:${this.etcdClientPort}`;
    const peer = `http://127.0.0.1:${this.etcdPeerPort}`;
    this.etcdProc = this.spawnGroup(
      ETCD_BIN,
      [
        '--name=etcd1',
        `--data-dir=${join(this.dir, 'etcd')}`,
        `--listen-client-urls=${client}`,
        `--advertise-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=etcd1=${peer}`,
        '--log-level=warn',
      ],
      join(this.dir, 'etcd.log'),
    );
  }

  private async waitForEtcd(): Promise<void> {
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        const r = await apiRequest(`http://127.0.0.1:${this.etcdClientPort}/health`);
        if (r.status === 200) return;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) throw new Error(`etcd did not start: ${this.logTail('etcd.log')}`);
      await sleep(100);
    }
  }

  /** Waits until a member is listed by `GET /cluster` (it holds the initialize key when it is the first). */
  private async waitListed(name: string): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        if ((await this.members()).some((m) => m.name === name)) return;
      } catch {
        // Its API is not up yet.
      }
      if (Date.now() > deadline) throw new Error(`${name} did not start: ${this.logTail(`${name}.log`)}`);
      await sleep(100);
    }
  }

  /** Starts (or restarts) a member's Patroni, as the postgres OS user. */
  startNode(name: string): void {
    const node = this.node(name);
    const [file, args] =
      serverOsUser() === undefined
        ? [PATRONI_BIN, [node.configFile]]
        : ['runuser', ['-u', 'postgres', '--', PATRONI_BIN, node.configFile]];
    node.proc = this.spawnGroup(file, args, node.logFile);
  }

  /** Stops a member cleanly (Patroni stops its PostgreSQL); resolves when both are gone. */
  async stopNode(name: string): Promise<void> {
    const node = this.node(name);
    await this.endGroup(node.proc, 'SIGTERM', 30_000);
    await this.killPostmaster(node, 'SIGQUIT');
  }

  /** Crashes a member: kill -9 of Patroni and of its postmaster, no shutdown of any kind. */
  async killNode(name: string): Promise<void> {
    const node = this.node(name);
    const pid = postmasterPid(node.dataDir);
    await this.endGroup(node.proc, 'SIGKILL', 10_000);
    if (pid !== undefined) signal(pid, 'SIGKILL');
    await this.waitGone(pid, 10_000);
  }

  /**
   * Freezes a member's Patroni (SIGSTOP to its process group): its REST API stops answering and its
   * member key expires after the TTL, while its PostgreSQL (a session of its own) goes on running.
   */
  pauseNode(name: string): void {
    const pid = this.node(name).proc?.pid;
    if (pid !== undefined) signal(-pid, 'SIGSTOP');
  }

  /** Undoes pauseNode (SIGCONT). */
  resumeNode(name: string): void {
    const pid = this.node(name).proc?.pid;
    if (pid !== undefined) signal(-pid, 'SIGCONT');
  }

  private async killPostmaster(node: PatroniNode, sig: NodeJS.Signals): Promise<void> {
    const pid = postmasterPid(node.dataDir);
    if (pid === undefined) return;
    signal(pid, sig);
    await this.waitGone(pid, 15_000);
  }

  private async waitGone(pid: number | undefined, timeoutMs: number): Promise<void> {
    if (pid === undefined) return;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      if (Date.now() > deadline) {
        signal(pid, 'SIGKILL');
        return;
      }
      await sleep(100);
    }
  }

  private async endGroup(
    proc: ChildProcess | undefined,
    sig: NodeJS.Signals,
    timeoutMs: number,
  ): Promise<void> {
    if (proc?.pid === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    signal(-proc.pid, sig);
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs).unref());
    if ((await Promise.race([exited, timer])) === 'timeout') {
      signal(-proc.pid, 'SIGKILL');
      await exited;
    }
  }

  /** `GET /cluster` from the first member whose API answers. */
  async members(): Promise<ClusterMember[]> {
    let last: unknown;
    for (const n of this.nodes) {
      try {
        const r = await this.api(`${n.apiUrl}/cluster`);
        if (r.status === 200) return (JSON.parse(r.body) as { members: ClusterMember[] }).members;
        last = new Error(`${n.apiUrl}/cluster answered ${r.status}`);
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }

  async leader(): Promise<ClusterMember> {
    const leader = (await this.members()).find((m) => m.role === 'leader');
    if (!leader) throw new Error('the cluster has no leader');
    return leader;
  }

  /**
   * Waits until there is a running leader and `replicas` members (default: every other started
   * member) streaming from it, per the leader's own pg_stat_replication (`GET /patroni`).
   */
  async waitHealthy(
    options: { timeoutMs?: number; replicas?: number; leader?: string } = {},
  ): Promise<ClusterMember> {
    const want = options.replicas ?? this.nodes.filter((n) => n.proc && n.proc.exitCode === null).length - 1;
    const deadline = Date.now() + (options.timeoutMs ?? 60_000);
    let seen = '';
    for (;;) {
      try {
        const members = await this.members();
        seen = JSON.stringify(members);
        const leader = members.find((m) => m.role === 'leader' && m.state === 'running');
        if (leader && (options.leader === undefined || leader.name === options.leader)) {
          const status = await this.api(`${this.node(leader.name).apiUrl}/patroni`);
          const info = JSON.parse(status.body) as { replication?: { state: string }[] };
          const streaming = (info.replication ?? []).filter((r) => r.state === 'streaming').length;
          const replicasRunning = members.filter(
            (m) => m.role !== 'leader' && (m.state === 'running' || m.state === 'streaming'),
          ).length;
          if (streaming >= want && replicasRunning >= want) return leader;
        }
      } catch (err) {
        seen = String(err);
      }
      if (Date.now() > deadline) {
        throw new Error(
          `Patroni cluster not healthy in time (want a leader${options.leader ? ` ${options.leader}` : ''} and ${want} streaming replicas); last seen: ${seen}; ${this.nodes.map((n) => `${n.name}: ${this.logTail(`${n.name}.log`)}`).join(' | ')}`,
        );
      }
      await sleep(250);
    }
  }

  /** A planned switchover (`POST /switchover`) to `candidate` (default: a replica); waits until it streams again. */
  async switchover(candidate?: string): Promise<ClusterMember> {
    const leader = await this.leader();
    const to = candidate ?? this.nodes.find((n) => n.name !== leader.name)!.name;
    const r = await this.api(
      `${this.node(leader.name).apiUrl}/switchover`,
      'POST',
      { leader: leader.name, candidate: to },
      30_000,
    );
    if (r.status !== 200) throw new Error(`switchover to ${to} refused: ${r.status} ${r.body}`);
    return this.waitHealthy({ leader: to, timeoutMs: 60_000 });
  }

  /** A manual failover (`POST /failover`) to `candidate`; waits for the new leader (replicas as running). */
  async failover(candidate: string): Promise<ClusterMember> {
    const api = this.nodes.find((n) => n.name === candidate)!.apiUrl;
    const r = await this.api(`${api}/failover`, 'POST', { candidate }, 30_000);
    if (r.status !== 200) throw new Error(`failover to ${candidate} refused: ${r.status} ${r.body}`);
    return this.waitHealthy({ leader: candidate, timeoutMs: 60_000 });
  }

  /** Waits until every running replica has replayed the leader's WAL up to now (what the leader wrote is readable there). */
  async waitReplayed(timeoutMs = 30_000): Promise<void> {
    const leader = await this.leader();
    const [{ lsn }] = (await this.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn', {
      node: leader.name,
    })) as [{ lsn: string }];
    const replicas = (await this.members()).filter((m) => m.name !== leader.name && m.state !== 'stopped');
    const deadline = Date.now() + timeoutMs;
    for (const r of replicas) {
      for (;;) {
        let done = false;
        try {
          const [row] = await this.query<{ done: boolean }>(
            `SELECT pg_last_wal_replay_lsn() >= '${lsn}'::pg_lsn AS done`,
            { node: r.name },
          );
          done = row?.done === true;
        } catch (err) {
          // A member stopped a moment ago (stopNode, killNode) stays listed, as it last was, until
          // its key's TTL runs out: one whose Patroni has exited, or that is no longer listed as
          // running, is not waited for.
          const proc = this.node(r.name).proc;
          const exited = proc === undefined || proc.exitCode !== null || proc.signalCode !== null;
          const now = (await this.members()).find((m) => m.name === r.name);
          if (exited || now === undefined || now.state === 'stopped') break;
          if (Date.now() > deadline) throw err;
        }
        if (done) break;
        if (Date.now() > deadline) throw new Error(`${r.name} did not replay up to ${lsn} in time`);
        await sleep(100);
      }
    }
  }

  /** A SQL query on a member (default: the leader), as the superuser; the rows. */
  async query<T = Record<string, unknown>>(
    sql: string,
    options: { node?: string; database?: string } = {},
  ): Promise<T[]> {
    const name = options.node ?? (await this.leader()).name;
    const node = this.node(name);
    const client = new Client({
      host: '127.0.0.1',
      port: node.pgPort,
      user: SUPERUSER,
      password: SUPERUSER_PASSWORD,
      database: options.database ?? 'postgres',
    });
    await client.connect();
    try {
      return (await client.query(sql)).rows as T[];
    } finally {
      await client.end();
    }
  }

  /**
   * pgvault (the worktree's built CLI) against this cluster, run in `vault.work`: its config file as
   * `--config` (if it has one), and env() with the vault's environment and then `extra` on top.
   */
  pgvault(vault: VaultConfig, args: string[], extra: NodeJS.ProcessEnv = {}): Promise<CliRun> {
    const argv = vault.configFile === undefined ? args : ['--config', vault.configFile, ...args];
    return runPgvault(argv, this.env({ ...vault.env, ...extra }), vault.work);
  }

  /** Switches WAL on the leader and waits until the segment it completed is archived; its name. */
  async switchAndWaitArchived(timeoutMs = 60_000): Promise<string> {
    const [row] = await this.query<{ name: string }>('SELECT pg_walfile_name(pg_switch_wal() - 1) AS name');
    const name = row!.name;
    for (const deadline = Date.now() + timeoutMs; ; ) {
      const [a] = await this.query<{ last: string | null }>(
        'SELECT last_archived_wal AS last FROM pg_stat_archiver',
      );
      if ((a?.last ?? '') >= name) return name;
      if (Date.now() > deadline) throw new Error(`segment ${name} was not archived in time`);
      await sleep(200);
    }
  }

  private logTail(file: string): string {
    try {
      return readFileSync(join(this.dir, file), 'utf8').trim().split('\n').slice(-5).join(' / ');
    } catch {
      return '(no log)';
    }
  }

  /**
   * Ends every member and etcd (no clean shutdown: the files are thrown away), removes the directory.
   * Safe to call twice and after a failed start.
   */
  async stop(): Promise<void> {
    await Promise.all(
      this.nodes.map(async (n) => {
        await this.endGroup(n.proc, 'SIGKILL', 10_000);
        await this.killPostmaster(n, 'SIGQUIT');
      }),
    );
    await this.endGroup(this.etcdProc, 'SIGKILL', 10_000);
    for (const n of this.nodes) liveDataDirs.delete(n.dataDir);
    try {
      rmSync(this.dir, { recursive: true, force: true });
    } catch {
      // Best effort: a file held by a process that is still exiting.
    }
  }
}

/** For a test's diagnostics: the server binaries' version line. */
export function serverVersion(): string {
  return execFileSync(join(findServerBinDir(), 'postgres'), ['--version'], { encoding: 'utf8' }).trim();
}

/*
 * The vault a Patroni test backs up to, and how pgvault is told of it: in the environment
 * (vaultEnv) or in a config file that archive_command and the README's patroni.yml snippets name
 * too (vaultConfigFile). PatroniCluster.pgvault() runs the CLI with it.
 */

/** The built CLI's launcher (what archive_command and the README snippets run). */
export const PGVAULT_BIN = resolve(__dirname, '../../bin/pgvault');

export interface VaultConfig {
  /** The test's work folder: pgvault runs there. */
  readonly work: string;
  /** The vault folder (BACKUP_DIR): `<work>/vault`. */
  readonly vaultDir: string;
  /** The config file pgvault is given with --config, if the vault is given that way. */
  readonly configFile?: string;
  /** What every run gets on top of the cluster's environment. */
  readonly env: NodeJS.ProcessEnv;
}

/**
 * A vault folder `<work>/vault` given in the environment: BACKUP_DIR, CLUSTER_NAME, PGDATABASE=postgres,
 * PARALLEL_JOBS=2, then `env` (BACKUP_FROM and such).
 */
export function vaultEnv(work: string, clusterName: string, env: NodeJS.ProcessEnv = {}): VaultConfig {
  const vaultDir = join(work, 'vault');
  return {
    work,
    vaultDir,
    env: {
      BACKUP_DIR: vaultDir,
      CLUSTER_NAME: clusterName,
      PGDATABASE: 'postgres',
      PARALLEL_JOBS: '2',
      ...env,
    },
  };
}

/**
 * A vault folder `<work>/vault` (0700) and a config file `<work>/pgvault.env` (0600) with
 * `BACKUP_DIR=<vault>` and then `settings` (values as they stand in the file, quotes included),
 * both the server OS user's and `work` open to it, so that archive_command and Patroni's replica
 * and bootstrap methods (run as postgres) can use them. `env`: what every run gets besides.
 */
export function vaultConfigFile(
  work: string,
  settings: Readonly<Record<string, string>>,
  env: NodeJS.ProcessEnv = {},
): VaultConfig {
  chmodSync(work, 0o755);
  const vaultDir = join(work, 'vault');
  mkdirSync(vaultDir, { mode: 0o700 });
  const configFile = join(work, 'pgvault.env');
  const lines = Object.entries({ BACKUP_DIR: vaultDir, ...settings }).map(([k, v]) => `${k}=${v}\n`);
  writeFileSync(configFile, lines.join(''), { mode: 0o600 });
  giveToServer(vaultDir);
  giveToServer(configFile);
  return { work, vaultDir, configFile, env };
}

/** archive_command for every member: the built CLI's `backup wal %p` with the vault's config file. */
export function archiveCommand(vault: VaultConfig): string {
  return `${PGVAULT_BIN} --config ${vault.configFile} backup wal %p`;
}

/** Hands a path and everything below it to the server's OS user (when root). */
export function giveToServer(path: string): void {
  const user = serverOsUser();
  if (user) spawnSync('chown', ['-R', `${user.uid}:${user.gid}`, path]);
}

/** Every file under a cluster's folder in the vault, relative to the vault folder, sorted. */
export function vaultFiles(vault: VaultConfig, clusterName: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name));
      else out.push(relative(vault.vaultDir, join(dir, e.name)));
    }
  };
  walk(join(vault.vaultDir, clusterName));
  return out.sort();
}

/** The command README.md's patroni.yml snippets run. */
export const README_COMMAND = 'pgvault --config /etc/pgvault.env';

/**
 * The YAML of a README.md snippet between `<!-- NAME:start -->` and `<!-- NAME:end -->`, without its
 * first line (which must be `firstLine`); it must run README_COMMAND.
 */
export function readmeSnippet(name: string, firstLine: string): string {
  const text = readFileSync(resolve(__dirname, '../../README.md'), 'utf8');
  const m = new RegExp(
    `<!-- ${name}:start -->\\n\`\`\`yaml\\n([\\s\\S]*?)\`\`\`\\n<!-- ${name}:end -->`,
  ).exec(text);
  if (!m) throw new Error(`README.md has no ${name} snippet`);
  const lines = m[1]!.split('\n');
  expect(lines[0]).toBe(firstLine);
  const rest = lines.slice(1).join('\n');
  expect(rest).toContain(README_COMMAND);
  return rest;
}

/** A README snippet with this machine's pgvault and the vault's config file for /etc/pgvault.env. */
export function onThisMachine(yaml: string, configFile: string): string {
  return yaml.replaceAll(README_COMMAND, `${PGVAULT_BIN} --config ${configFile}`);
}
