import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { PNG } from 'pngjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../core/config';
import { collectReport, writeReport } from '../../core/report/collect';
import { openVault, type Vault } from '../../core/vault';
import { recordingReporter, tempDir } from '../helpers/vault';
import { DAY, HOUR, storeDrill, storeHistory } from './report-fixture';

/**
 * The report as an operator sees it: collected from a real catalog on a file target, stored under
 * {cluster}/reports/, and opened in headless Chromium (Debian's chromium package). The screenshot
 * is decoded and its pixels counted: a failing report shows the failure red, a healthy one none of it,
 * and both show the size chart's line colour (a blank or unstyled page has neither).
 */
const CHROMIUM = '/usr/bin/chromium';
const FAIL_RED = [198, 40, 40]; // #c62828
const OK_GREEN = [46, 125, 50]; // #2e7d32
const CHART_BLUE = [31, 111, 235]; // #1f6feb, the first size series

let work: Awaited<ReturnType<typeof tempDir>>;
const NOW = new Date();

function vaultAt(dir: string, extra: Record<string, string> = {}): Vault {
  return openVault(parseConfig({ BACKUP_DIR: dir, CLUSTER_NAME: 'main', ...extra }), recordingReporter());
}

/** Renders the page in headless Chromium and returns the decoded screenshot. */
function screenshot(htmlPath: string): PNG {
  const profile = mkdtempSync(join(tmpdir(), 'pgvault-chromium-'));
  const png = join(profile, 'shot.png');
  try {
    const r = spawnSync(
      CHROMIUM,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // Nothing may be fetched: any host name fails to resolve.
        '--host-resolver-rules=MAP * ~NOTFOUND',
        `--user-data-dir=${join(profile, 'data')}`,
        `--screenshot=${png}`,
        '--window-size=1200,1600',
        pathToFileURL(htmlPath).href,
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    expect(existsSync(png), `chromium wrote no screenshot: ${r.stderr}`).toBe(true);
    return PNG.sync.read(readFileSync(png));
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

function countColour(png: PNG, [r, g, b]: number[]): number {
  let n = 0;
  for (let i = 0; i < png.data.length; i += 4) {
    if (
      Math.abs(png.data[i]! - r!) <= 2 &&
      Math.abs(png.data[i + 1]! - g!) <= 2 &&
      Math.abs(png.data[i + 2]! - b!) <= 2
    )
      n++;
  }
  return n;
}

/** Pixels of the colour in the top `rows` rows only. */
function countColourInRows(png: PNG, colour: number[], rows: number): number {
  const top = new PNG({ width: png.width, height: rows });
  png.data.copy(top.data, 0, 0, png.width * rows * 4);
  return countColour(top, colour);
}

beforeAll(async () => {
  expect(existsSync(CHROMIUM), 'install chromium (apt-get install chromium)').toBe(true);
  work = await tempDir('pgvault-report-');
});

afterAll(async () => {
  await work?.remove();
});

describe('verify report rendered in Chromium', () => {
  it('shows a failing cluster in red, failures first, with the size chart drawn', async () => {
    // Prepare: ten nights of backups, the last one shrunk, a failed restore test, a full disk (1%).
    const dir = join(work.path, 'failing');
    const vault = vaultAt(dir, { ALERT_CAPACITY_PERCENT: '1' });
    await storeHistory(vault.targets, 'main', NOW, { days: 10, shrinkLast: true });
    await storeDrill(vault.targets, 'main', {
      kind: 'verify-restore',
      backupId: 'full-daily-20260212-020000',
      startedAt: new Date(NOW.getTime() - HOUR).toISOString(),
      finishedAt: new Date(NOW.getTime() - HOUR + 120_000).toISOString(),
      ok: false,
      error: 'row count of public.orders differs: 1200 in the backup, 0 restored',
    });

    // Act
    const { data, alerts } = await collectReport(vault, NOW);
    const stored = await writeReport(vault, data);
    const shot = screenshot(stored[0]!.html);

    // Assess: the stored files.
    expect(stored).toHaveLength(1);
    expect(stored[0]!.html).toMatch(
      new RegExp(`^${dir}/main/reports/report-\\d{8}-\\d{6}-[0-9a-f]{8}\\.html$`),
    );
    expect(readFileSync(stored[0]!.markdown, 'utf8')).toContain('## Failing');
    const json = JSON.parse(readFileSync(stored[0]!.json, 'utf8'));
    expect(json.format).toBe('pgvault-report/1');
    expect(alerts.map((a) => a.kind).sort()).toEqual(['capacity', 'drill-failed', 'size-shrink']);
    expect(json.failing.map((a: { kind: string }) => a.kind)).toEqual([
      'drill-failed',
      'capacity',
      'size-shrink',
    ]);
    // Assess: the rendering. The red header band is at the top, the failures right under it.
    expect(shot.width).toBe(1200);
    expect(countColourInRows(shot, FAIL_RED, 60)).toBeGreaterThan(1200 * 40);
    expect(countColour(shot, OK_GREEN)).toBeLessThan(countColour(shot, FAIL_RED));
    expect(countColour(shot, CHART_BLUE)).toBeGreaterThan(500);
  });

  it('shows a healthy cluster without any failure red', async () => {
    // Prepare
    const dir = join(work.path, 'healthy');
    const vault = vaultAt(dir, { ALERT_CAPACITY_PERCENT: '100' });
    await storeHistory(vault.targets, 'main', NOW, { days: 10 });
    await storeDrill(vault.targets, 'main', {
      kind: 'drill',
      backupId: 'full-daily-20260212-020000',
      startedAt: new Date(NOW.getTime() - DAY / 2).toISOString(),
      finishedAt: new Date(NOW.getTime() - DAY / 2 + 600_000).toISOString(),
      ok: true,
      rtoMs: 600_000,
      rpoMs: 3 * HOUR,
    });

    // Act
    const { data, alerts } = await collectReport(vault, NOW);
    const stored = await writeReport(vault, data);
    const again = await writeReport(vault, data);
    const shot = screenshot(stored[0]!.html);

    // Assess
    expect(alerts).toEqual([]);
    expect(data.rto).toMatchObject({ latestMinutes: 10, ok: true });
    expect(data.rpo.ok).toBe(true);
    expect(again[0]!.html).not.toBe(stored[0]!.html);
    expect(again[0]!.html).toMatch(/-[0-9a-f]{8}\.html$/);
    expect(countColour(shot, FAIL_RED)).toBe(0);
    expect(countColourInRows(shot, OK_GREEN, 60)).toBeGreaterThan(1200 * 40);
    expect(countColour(shot, CHART_BLUE)).toBeGreaterThan(500);
  });
});
