import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

/** Azurite's well-known development account (public, documented by Microsoft; not a secret). */
export const AZURITE_ACCOUNT = 'devstoreaccount1';
export const AZURITE_KEY =
  'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface AzuriteServer {
  /** The blob service URL: http://127.0.0.1:PORT/devstoreaccount1 */
  readonly endpoint: string;
  /** A container that exists. */
  readonly container: string;
  readonly account: string;
  readonly accountKey: string;
  /** A connection string for the development account at this server. */
  readonly connectionString: string;
  stop(): Promise<void>;
}

// From test/helpers, or from dist/test/helpers when built (bench/storage-targets.ts).
const BIN = [
  join(__dirname, '..', '..', 'node_modules', '.bin', 'azurite-blob'),
  join(__dirname, '..', '..', '..', 'node_modules', '.bin', 'azurite-blob'),
].find((path) => existsSync(path))!;
// Generous: on a loaded 2-core CI machine Azurite's own module loading has taken over 20 s.
const START_TIMEOUT_MS = 90_000;

/**
 * Starts Azurite's blob service (npm package azurite) in a child process on a free port of 127.0.0.1
 * (port 0; the port is read from its start-up line), storing into a fresh temp directory, and creates
 * one container. stop() kills it and removes the directory.
 */
export async function startAzurite(container = 'pgvault-test'): Promise<AzuriteServer> {
  const directory = await mkdtemp(join(tmpdir(), 'pgvault-azurite-'));
  const child = spawn(
    BIN,
    [
      '--blobHost',
      '127.0.0.1',
      '--blobPort',
      '0',
      '--location',
      directory,
      '--silent',
      '--skipApiVersionCheck',
      '--loose',
      '--disableTelemetry',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        child.kill('SIGTERM');
        const killTimer = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(killTimer);
      }
      await rm(directory, { recursive: true, force: true });
    })();
    return stopped;
  };
  let port: number;
  try {
    port = await readPort(child);
  } catch (err) {
    await stop();
    throw err;
  }
  const endpoint = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
  const connectionString = `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=${endpoint};`;
  try {
    const { BlobServiceClient } = await import('@azure/storage-blob');
    await BlobServiceClient.fromConnectionString(connectionString).getContainerClient(container).create();
  } catch (err) {
    await stop();
    throw err;
  }
  return { endpoint, container, account: AZURITE_ACCOUNT, accountKey: AZURITE_KEY, connectionString, stop };
}

function readPort(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    const output: string[] = [];
    const timer = setTimeout(() => {
      reject(new Error(`azurite-blob did not start in time: ${output.join(' | ')}`));
    }, START_TIMEOUT_MS);
    const lines = createInterface({ input: child.stdout! });
    child.stderr!.on('data', (data: Buffer) => output.push(data.toString()));
    lines.on('line', (line) => {
      output.push(line);
      const match = /successfully listens on http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`azurite-blob exited (${code ?? signal}) before listening: ${output.join(' | ')}`));
    });
  });
}
