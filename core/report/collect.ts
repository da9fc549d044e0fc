import { redactAlert } from '../alert/notify';
import { brokenNewestBackups, thresholdAlerts, thresholdInputsFrom } from '../alert/thresholds';
import type { Alert } from '../alert/types';
import type { CatalogEntry } from '../catalog/catalog';
import { formatStamp } from '../catalog/naming';
import { listDrillRecords, putNew, uniqueSuffix } from '../catalog/records';
import { errorMessage, StorageError } from '../errors';
import { repositoryOf, targetsHolding } from '../storage';
import type { StorageTarget } from '../storage/target';
import type { Vault } from '../vault';
import { placementGaps } from '../verify/all';
import { verifyCapacity } from '../verify/capacity';
import { analyseSizes } from '../verify/sizes';
import { verifyWalArchive } from '../wal/archive';
import { renderHtml } from './html';
import { renderMarkdown } from './markdown';
import { buildReportData, type ReportData, type RepositoryRow } from './model';

/**
 * The report's I/O: reading the facts from the targets (once: the catalog, the WAL archive, the
 * listing for capacity, the drill records) and storing the rendered report under
 * `{cluster}/reports/` in every target. Rendering itself is pure (html.ts, markdown.ts).
 */

export const REPORTS_FOLDER = 'reports';

export async function collectReport(
  vault: Vault,
  now = new Date(),
): Promise<{ data: ReportData; alerts: Alert[] }> {
  const { config } = vault;
  const entries = await vault.catalog.list();
  const [wal, capacity, drills, broken] = await Promise.all([
    verifyWalArchive(vault, now),
    verifyCapacity(vault, now),
    listDrillRecords(vault),
    // Newer backups whose data is gone: a failing check, and not the newest backup of their type.
    brokenNewestBackups(vault, entries),
  ]);
  const inputs = thresholdInputsFrom({
    cluster: config.clusterName,
    now,
    entries,
    broken,
    wal,
    capacity,
    sizes: analyseSizes(config.clusterName, entries, config.alerts.shrinkPercent),
    drills,
  });
  const repositories = config.repositories
    ? repositoryRows(vault.targets, entries, vault.catalog.unreachable)
    : undefined;
  // A repository nobody could list, or one lacking what it should hold, is a failing check of its own:
  // the report never says "every check passes" about a copy it could not see.
  const alerts = [
    ...thresholdAlerts(inputs, config.alerts),
    ...repositoryAlerts(config.clusterName, repositories, now),
  ].map((a) => redactAlert(a, config));
  const data = buildReportData({
    now,
    targets: vault.targets.map((t) => t.location),
    ...(repositories ? { repositories } : {}),
    entries: entries.filter((e) => !broken.some((b) => b.id === e.manifest.id)),
    wal,
    inputs,
    alerts,
    limits: config.alerts,
  });
  return { data, alerts };
}

/** The failing checks of the repository rows: unreachable (critical), lacking backups it holds (warning). */
function repositoryAlerts(cluster: string, rows: readonly RepositoryRow[] | undefined, now: Date): Alert[] {
  return (rows ?? []).flatMap((r): Alert[] => {
    const name = `repo${r.repository} (${r.location})`;
    if (r.unreachable !== undefined) {
      return [
        {
          kind: 'repository',
          severity: 'critical',
          cluster,
          title: 'repository unreachable',
          what: `${name} could not be listed: ${r.unreachable}; its copies are unknown`,
          since: now.toISOString(),
          sinceKind: 'checked',
          nextStep: 'pgvault repo list',
          hint: "check the repository's endpoint and credentials, then run pgvault verify all",
        },
      ];
    }
    if (r.missing.length === 0) return [];
    return [
      {
        kind: 'repository',
        severity: 'warning',
        cluster,
        title: 'repository lacks backups',
        what: `${name} lacks ${r.missing.length} backup(s) it should hold: ${r.missing.join(', ')}`,
        since: now.toISOString(),
        sinceKind: 'checked',
        nextStep: `pgvault repo sync --to ${r.repository}`,
      },
    ];
  });
}

/** Per repository: what it has of the catalog, and what it should hold but lacks. */
function repositoryRows(
  targets: readonly StorageTarget[],
  entries: readonly CatalogEntry[],
  unreachable: ReadonlyMap<StorageTarget, string>,
): RepositoryRow[] {
  const gaps = placementGaps(
    targets.filter((t) => !unreachable.has(t)),
    entries,
  );
  return targets.flatMap((target) => {
    const repo = repositoryOf(target);
    if (repo === undefined) return [];
    const here = entries.filter((e) => e.targets.includes(target));
    const newest: Record<string, string> = {};
    for (const e of here) {
      const kind = `${e.manifest.type}${e.manifest.schedule ? `:${e.manifest.schedule}` : ''}`;
      newest[kind] ??= e.manifest.id;
    }
    return [
      {
        repository: repo.n,
        type: target.kind,
        location: target.location,
        holds: repo.holds,
        backups: here.length,
        storedBytes: here.reduce((n, e) => n + e.manifest.storedSize, 0),
        newest,
        missing: gaps.filter((g) => g.target === target.location).map((g) => g.backup!),
        ...(unreachable.has(target) ? { unreachable: unreachable.get(target)! } : {}),
      },
    ];
  });
}

export interface StoredReport {
  readonly target: string;
  /** Where to open it: a file path for a file target, an s3:// URL otherwise. */
  readonly html: string;
  readonly markdown: string;
  readonly json: string;
}

function whereIs(target: StorageTarget, key: string): string {
  const root = (target as { root?: unknown }).root;
  return target.kind === 'file' && typeof root === 'string' ? `${root}/${key}` : `${target.location}/${key}`;
}

/**
 * Stores the three renderings in every target as `report-YYYYMMDD-HHMMSS-<8 hex>.{html,md,json}`:
 * the random suffix keeps two reports of the same second (two hosts, two runs) apart, and each file
 * is written create-only, so a report never replaces another's. A target that fails is warned about;
 * the command fails only when no target took the report.
 */
export async function writeReport(vault: Vault, data: ReportData): Promise<StoredReport[]> {
  const files = {
    html: renderHtml(data),
    md: renderMarkdown(data),
    json: `${JSON.stringify(data, null, 2)}\n`,
  };
  const folder = `${vault.config.clusterName}/${REPORTS_FOLDER}`;
  const stamp = formatStamp(new Date(data.generatedAt));
  const base = `${folder}/report-${stamp}-${uniqueSuffix()}`;
  const stored: StoredReport[] = [];
  const failures: string[] = [];
  // Several repositories: the ones whose REPO<n>_HOLDS takes reports.
  for (const target of targetsHolding(vault.targets, 'reports')) {
    try {
      // JSON last: like a manifest, it marks the report complete.
      await putNew(target, `${base}.html`, files.html);
      await putNew(target, `${base}.md`, files.md);
      await putNew(target, `${base}.json`, files.json);
      stored.push({
        target: target.location,
        html: whereIs(target, `${base}.html`),
        markdown: whereIs(target, `${base}.md`),
        json: whereIs(target, `${base}.json`),
      });
    } catch (err) {
      failures.push(`${target.location}: ${errorMessage(err)}`);
      vault.reporter.warn(`report not stored in ${target.location}: ${errorMessage(err)}`);
    }
  }
  if (stored.length === 0) throw new StorageError(`the report could not be stored: ${failures.join('; ')}`);
  return stored;
}
