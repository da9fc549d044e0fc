import { Catalog } from './catalog/catalog';
import type { Config } from './config';
import { createTargets } from './storage';
import type { StorageTarget } from './storage/target';

/**
 * Where core reports what it is doing. The CLI renders it on a terminal (progress on stderr) or
 * keeps quiet for --json; Lambda handlers log it. Core never prints by itself.
 */
export interface Reporter {
  info(line: string): void;
  warn(line: string): void;
  /** Bytes done of an optional total for a named step; called often, render sparingly. */
  progress(label: string, done: number, total?: number): void;
}

export const silentReporter: Reporter = { info: () => {}, warn: () => {}, progress: () => {} };

/** Everything a command needs: the validated config, its targets and the catalog over them. */
export interface Vault {
  readonly config: Config;
  readonly targets: readonly StorageTarget[];
  readonly catalog: Catalog;
  readonly reporter: Reporter;
}

export function openVault(config: Config, reporter: Reporter = silentReporter): Vault {
  const targets = createTargets(config);
  return {
    config,
    targets,
    catalog: new Catalog(targets, config.clusterName, config.backupDir, (line) => reporter.warn(line)),
    reporter,
  };
}

/** The encryption parameters for new objects, or undefined when ENCRYPTION is off. */
export function newObjectEncryption(config: Config): { passphrase: string; iterations: number } | undefined {
  const enc = config.encryption;
  return enc.enabled && enc.passphrase !== undefined
    ? { passphrase: enc.passphrase, iterations: enc.iterations }
    : undefined;
}
