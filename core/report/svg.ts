/**
 * Inline SVG charts for the report: pure functions from numbers to markup, no script, no fonts or
 * anything fetched, so the page renders the same from a file, an email attachment or an S3 console.
 */

export const COLORS = {
  fail: '#c62828',
  warn: '#b45309',
  ok: '#2e7d32',
  chart: '#1f6feb',
  grid: '#d0d7de',
  text: '#24292f',
  muted: '#57606a',
} as const;

/** Series colours; red is kept for failures only. */
export const PALETTE = [
  '#1f6feb',
  '#8250df',
  '#0f766e',
  '#9a6700',
  '#bf3989',
  '#57606a',
  '#0550ae',
  '#6e7781',
];

export function esc(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function n(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

export interface LinePoint {
  /** ms since the epoch */
  readonly x: number;
  readonly y: number;
  readonly flagged?: boolean;
  readonly label?: string;
}

export interface LineSeries {
  readonly name: string;
  readonly points: readonly LinePoint[];
}

function dateLabel(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Lines over time, one per series; flagged points drawn as large red dots. */
export function lineChart(options: {
  readonly series: readonly LineSeries[];
  readonly yFormat: (v: number) => string;
  readonly width?: number;
  readonly height?: number;
  readonly title: string;
}): string {
  const width = options.width ?? 960;
  const height = options.height ?? 300;
  const pad = { left: 80, right: 20, top: 20, bottom: 40 };
  const all = options.series.flatMap((s) => s.points);
  if (all.length === 0) return `<p class="muted">No data for ${esc(options.title)}.</p>`;
  let minX = Math.min(...all.map((p) => p.x));
  let maxX = Math.max(...all.map((p) => p.x));
  if (minX === maxX) {
    minX -= 43_200_000;
    maxX += 43_200_000;
  }
  const maxY = Math.max(1, ...all.map((p) => p.y)) * 1.1;
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const px = (x: number) => pad.left + ((x - minX) / (maxX - minX)) * plotW;
  const py = (y: number) => pad.top + plotH - (y / maxY) * plotH;
  const parts: string[] = [];
  for (let i = 0; i <= 4; i++) {
    const v = (maxY * i) / 4;
    const y = py(v);
    parts.push(
      `<line x1="${pad.left}" y1="${n(y)}" x2="${width - pad.right}" y2="${n(y)}" stroke="${COLORS.grid}" stroke-width="1"/>`,
      `<text x="${pad.left - 6}" y="${n(y + 4)}" text-anchor="end" font-size="11" fill="${COLORS.muted}">${esc(options.yFormat(v))}</text>`,
    );
  }
  parts.push(
    `<text x="${pad.left}" y="${height - 12}" font-size="11" fill="${COLORS.muted}">${dateLabel(minX)}</text>`,
    `<text x="${width - pad.right}" y="${height - 12}" text-anchor="end" font-size="11" fill="${COLORS.muted}">${dateLabel(maxX)}</text>`,
  );
  options.series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length]!;
    const pts = [...s.points].sort((a, b) => a.x - b.x);
    if (pts.length > 1) {
      parts.push(
        `<polyline class="series" fill="none" stroke="${color}" stroke-width="3" points="${pts.map((p) => `${n(px(p.x))},${n(py(p.y))}`).join(' ')}"/>`,
      );
    }
    for (const p of pts) {
      parts.push(
        p.flagged
          ? `<circle class="flagged" cx="${n(px(p.x))}" cy="${n(py(p.y))}" r="9" fill="${COLORS.fail}"><title>${esc(p.label ?? '')}</title></circle>`
          : `<circle cx="${n(px(p.x))}" cy="${n(py(p.y))}" r="4" fill="${color}"><title>${esc(p.label ?? '')}</title></circle>`,
      );
    }
  });
  const legend = options.series
    .map(
      (s, i) =>
        `<span class="legend"><span class="swatch" style="background:${PALETTE[i % PALETTE.length]}"></span>${esc(s.name)}</span>`,
    )
    .join(' ');
  return `<figure><svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${esc(options.title)}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${parts.join('')}</svg><figcaption>${legend}</figcaption></figure>`;
}

/** Vertical bars with an optional dashed target line; bars over the target are red. */
export function barChart(options: {
  readonly bars: readonly { readonly label: string; readonly value: number; readonly title?: string }[];
  readonly target?: number;
  readonly yFormat: (v: number) => string;
  readonly width?: number;
  readonly height?: number;
  readonly title: string;
}): string {
  if (options.bars.length === 0) return `<p class="muted">No data for ${esc(options.title)}.</p>`;
  const width = options.width ?? 960;
  const height = options.height ?? 240;
  const pad = { left: 80, right: 20, top: 20, bottom: 40 };
  const maxY = Math.max(1e-9, options.target ?? 0, ...options.bars.map((b) => b.value)) * 1.15;
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const slot = plotW / options.bars.length;
  const barW = Math.max(4, Math.min(60, slot * 0.7));
  const py = (y: number) => pad.top + plotH - (y / maxY) * plotH;
  const parts: string[] = [
    `<line x1="${pad.left}" y1="${n(py(0))}" x2="${width - pad.right}" y2="${n(py(0))}" stroke="${COLORS.grid}"/>`,
    `<text x="${pad.left - 6}" y="${n(py(maxY / 1.15) + 4)}" text-anchor="end" font-size="11" fill="${COLORS.muted}">${esc(options.yFormat(maxY / 1.15))}</text>`,
  ];
  options.bars.forEach((b, i) => {
    const x = pad.left + i * slot + (slot - barW) / 2;
    const over = options.target !== undefined && b.value > options.target;
    parts.push(
      `<rect class="${over ? 'over' : 'bar'}" x="${n(x)}" y="${n(py(b.value))}" width="${n(barW)}" height="${n(py(0) - py(b.value))}" fill="${over ? COLORS.fail : COLORS.ok}"><title>${esc(b.title ?? `${b.label}: ${options.yFormat(b.value)}`)}</title></rect>`,
    );
    if (options.bars.length <= 12) {
      parts.push(
        `<text x="${n(x + barW / 2)}" y="${height - 22}" text-anchor="middle" font-size="10" fill="${COLORS.muted}">${esc(b.label)}</text>`,
      );
    }
  });
  if (options.target !== undefined) {
    const y = py(options.target);
    parts.push(
      `<line class="target" x1="${pad.left}" y1="${n(y)}" x2="${width - pad.right}" y2="${n(y)}" stroke="${COLORS.text}" stroke-width="2" stroke-dasharray="6 4"/>`,
      `<text x="${width - pad.right}" y="${n(y - 5)}" text-anchor="end" font-size="11" fill="${COLORS.text}">target ${esc(options.yFormat(options.target))}</text>`,
    );
  }
  return `<figure><svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${esc(options.title)}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${parts.join('')}</svg></figure>`;
}

/** A horizontal gauge: the used percentage with the alert threshold marked. */
export function gauge(options: {
  readonly percent: number;
  readonly threshold: number;
  readonly width?: number;
}): string {
  const width = options.width ?? 600;
  const height = 28;
  const used = Math.max(0, Math.min(100, options.percent));
  const over = options.percent >= options.threshold;
  const tx = (width * options.threshold) / 100;
  return `<svg xmlns="http://www.w3.org/2000/svg" class="gauge" role="img" aria-label="${n(options.percent)}% used" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}"><rect x="0" y="4" width="${width}" height="20" fill="#eaeef2"/><rect class="${over ? 'over' : 'used'}" x="0" y="4" width="${n((width * used) / 100)}" height="20" fill="${over ? COLORS.fail : COLORS.chart}"/><line x1="${n(tx)}" y1="0" x2="${n(tx)}" y2="${height}" stroke="${COLORS.text}" stroke-width="2" stroke-dasharray="3 2"/></svg>`;
}
