import { spawn } from 'node:child_process';
import { resolve } from 'node:path';

/** The built CLI's entry (npm test builds dist/ before vitest runs). */
export const PGVAULT_CLI = resolve(__dirname, '../../bin/pgvault.js');

export interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs the built `pgvault` CLI as a user would, with exactly the environment given (nothing of the
 * test process's leaks in), and collects its exit code and output.
 */
export function runPgvault(args: readonly string[], env: NodeJS.ProcessEnv, cwd: string): Promise<CliRun> {
  return runProgram(process.execPath, [PGVAULT_CLI, ...args], env, cwd);
}

/** Runs a program with exactly the environment given and collects its exit code and output. */
export function runProgram(
  file: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  cwd: string,
): Promise<CliRun> {
  return new Promise((done) => {
    const child = spawn(file, [...args], { env, cwd });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}
