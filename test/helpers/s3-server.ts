import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export interface S3TestServer {
  /** http://127.0.0.1:PORT */
  readonly endpoint: string;
  /** A bucket that exists on the server. */
  readonly bucket: string;
  /** Static credentials s3rver accepts (its defaults). */
  readonly credentials: { readonly accessKeyId: string; readonly secretAccessKey: string };
  readonly region: string;
  stop(): Promise<void>;
}

// Beside this file, or in the sources when built into dist/test/helpers (bench/storage-targets.ts).
const CHILD_SCRIPT = [
  join(__dirname, 's3rver-child.js'),
  join(__dirname, '..', '..', '..', 'test', 'helpers', 's3rver-child.js'),
].find((path) => existsSync(path))!;
// Generous: a loaded 2-core CI machine can be slow to start a child node process.
const START_TIMEOUT_MS = 90_000;

/**
 * Starts s3rver in a child process (see s3rver-child.js for why not in-process) on a free port of
 * 127.0.0.1, storing into a fresh temp directory with one bucket. stop() kills it and removes the directory.
 */
export async function startS3Server(bucket = 'pgvault-test'): Promise<S3TestServer> {
  const directory = await mkdtemp(join(tmpdir(), 'pgvault-s3rver-'));
  const child = spawn(process.execPath, [CHILD_SCRIPT, directory, bucket], {
    env: { ...process.env, NODE_OPTIONS: '--openssl-legacy-provider' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let port: number;
  try {
    port = await readPort(child);
  } catch (err) {
    child.kill('SIGKILL');
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  let stopped: Promise<void> | undefined;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    region: 'us-east-1',
    stop() {
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
    },
  };
}

function readPort(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const lines = createInterface({ input: child.stdout! });
    const timer = setTimeout(
      () => fail(new Error(`s3rver did not start within ${START_TIMEOUT_MS} ms`)),
      START_TIMEOUT_MS,
    );
    function fail(err: Error) {
      clearTimeout(timer);
      lines.close();
      reject(err);
    }
    lines.once('line', (line) => {
      clearTimeout(timer);
      lines.close();
      try {
        const { port } = JSON.parse(line) as { port: number };
        resolve(port);
      } catch {
        reject(new Error(`s3rver printed ${JSON.stringify(line)} instead of its port`));
      }
    });
    child.once('error', fail);
    child.once('exit', (code, signal) =>
      fail(new Error(`s3rver exited before listening (code ${code}, signal ${signal}): ${stderr.trim()}`)),
    );
  });
}
