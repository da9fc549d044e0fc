import { syncRepositories } from '../../core/catalog/sync';
import { UsageError } from '../../core/errors';
import { repositoryOf } from '../../core/storage';
import { emit, formatBytes, type GlobalOptions, table, vaultFor } from '../output';

/** `pgvault repo list`: the repositories in read order, what each holds and keeps. */
export async function repoListCommand(opts: GlobalOptions) {
  const vault = vaultFor(opts);
  const rows = vault.targets.map((target, i) => {
    const repo = repositoryOf(target);
    const r = (repo?.config ?? vault.config).retention;
    return {
      repository: repo?.n ?? i + 1,
      type: target.kind,
      location: target.location,
      holds: repo?.holds ?? ['full', 'base', 'wal', 'config', 'indexes', 'reports'],
      retention: r,
    };
  });
  emit(opts, { ok: true, repositories: rows }, () =>
    table(
      ['repo', 'type', 'location', 'holds', 'retention'],
      rows.map((r) => [
        String(r.repository),
        r.type,
        r.location,
        r.holds.join(','),
        `${r.retention.days}d ${r.retention.weeks}w ${r.retention.months}m, config ${r.retention.configCount}, indexes ${r.retention.indexesCount}, WAL ${r.retention.walDays}d`,
      ]),
    ),
  );
  return rows;
}

function repoNumber(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[1-9]$/.test(value)) throw new UsageError(`${flag} ${value}: give a repository number, 1 to 9`);
  return Number(value);
}

/** `pgvault repo sync [--from N] [--to M] [--dry-run]`. */
export async function repoSyncCommand(
  opts: GlobalOptions & { from?: string; to?: string; dryRun?: boolean },
) {
  const result = await syncRepositories(vaultFor(opts), {
    from: repoNumber('--from', opts.from),
    to: repoNumber('--to', opts.to),
    dryRun: opts.dryRun === true,
  });
  const ok = result.failed.length === 0;
  emit(opts, { ok, ...result }, () =>
    [
      result.copied.length === 0
        ? 'every repository holds what it should; nothing to copy'
        : table(
            ['from', 'to', 'kind', 'name', 'objects', 'size'],
            result.copied.map((c) => [
              `repo${c.from}`,
              `repo${c.to}`,
              c.kind,
              c.name,
              String(c.objects),
              formatBytes(c.bytes),
            ]),
          ),
      `${result.dryRun ? 'would copy' : 'copied'}: ${result.copied.filter((c) => c.kind === 'backup').length} backup(s), ${result.copied.filter((c) => c.kind !== 'backup').length} other object(s)`,
      ...result.failed.map((f) => `failed repo${f.from} → repo${f.to} ${f.name}: ${f.error}`),
    ].join('\n'),
  );
  if (!ok) {
    const first = result.failed[0]!;
    process.stderr.write(
      `pgvault: ${result.failed.length} item(s) not copied (first: ${first.name} repo${first.from} → repo${first.to}: ${first.error}); fix it and run repo sync again\n`,
    );
    // A corrupt source object (not copied) is an integrity fault: exit 3, as verify's.
    process.exitCode = result.failed.some((f) => f.integrity) ? 3 : 1;
  }
  return result;
}
