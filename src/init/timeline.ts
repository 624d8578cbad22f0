/**
 * The boot as a timeline, on one clock: milliseconds since the kernel
 * started (the clock of /proc/uptime). The first stage records its own
 * times in /run/cairn/boot.env; the init adds when its process started,
 * when its code was loaded, each phase and each service's first start.
 * `cairn status --plot FILE` and `bench/boot --plot DIR` draw it as an SVG
 * chart, as `systemd-analyze plot` does.
 */
import { readFileSync } from 'node:fs';
import type { PhaseResult } from './phase.js';
import type { ServiceState } from './supervisor.js';

export interface TimelineSpan {
  name: string;
  startMs: number;
  endMs: number;
  ok?: boolean;
}

export interface BootTimeline {
  /** The first stage's start: what the kernel took before it. */
  stage1StartMs?: number;
  /** When the first stage had found the system (mounted the medium or the state partition). */
  stage1FoundMs?: number;
  /** When it switched root. */
  stage1EndMs?: number;
  /** When the init's process started (node starting up). */
  initStartMs?: number;
  /** When the init's code had loaded and its first line ran. */
  initReadyMs?: number;
  phases: TimelineSpan[];
  /** Each service's first start (a point in time; a bar to the end of the chart). */
  services: { name: string; startMs: number }[];
  completeMs?: number;
}

/** The times of a boot outside its phases and services, as status.json keeps them. */
export type BootTimes = Omit<BootTimeline, 'phases' | 'services'>;

/** The timeline of a node's status: its times, its phases, its services' first starts. */
export function timelineOf(st: { times?: BootTimes; phases: PhaseResult[]; services: ServiceState[] }): BootTimeline {
  return {
    ...st.times,
    phases: st.phases.filter((p) => p.startMs !== undefined).map((p) => ({ name: p.name, startMs: p.startMs!, endMs: p.startMs! + p.ms, ok: p.ok })),
    services: st.services.filter((s) => s.firstStartMs !== undefined).map((s) => ({ name: s.name, startMs: s.firstStartMs! })),
  };
}

/** A clock on the /proc/uptime time axis, read once and advanced with the monotonic clock. */
export function bootClock(procDir = '/proc'): () => number {
  let base = 0;
  try {
    base = Number(readFileSync(`${procDir}/uptime`, 'utf8').split(/\s+/)[0]) * 1000;
  } catch {
    // not on Linux (tests): the clock starts at 0
  }
  const t0 = performance.now();
  return () => Math.round(base + performance.now() - t0);
}

/** When this process started, in ms since boot (field 22 of /proc/self/stat, in clock ticks of 1/100 s). */
export function processStartMs(procDir = '/proc', pid: number | 'self' = 'self'): number | undefined {
  try {
    const stat = readFileSync(`${procDir}/${pid}/stat`, 'utf8');
    // the command name is in parentheses and may hold spaces: count fields after the last ')'
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[19]);
    return Number.isFinite(ticks) ? ticks * 10 : undefined;
  } catch {
    return undefined;
  }
}

/** The first stage's times from boot.env's CAIRN_STAGE1_* lines (seconds of /proc/uptime). */
export function stage1Times(bootEnv: string): Pick<BootTimeline, 'stage1StartMs' | 'stage1FoundMs' | 'stage1EndMs'> {
  const get = (key: string) => {
    const m = new RegExp(`^${key}=(\\d+(?:\\.\\d+)?)$`, 'm').exec(bootEnv);
    return m ? Math.round(Number(m[1]) * 1000) : undefined;
  };
  return { stage1StartMs: get('CAIRN_STAGE1_START'), stage1FoundMs: get('CAIRN_STAGE1_FOUND'), stage1EndMs: get('CAIRN_STAGE1_END') };
}

interface Row {
  label: string;
  startMs: number;
  endMs: number;
  kind: 'kernel' | 'stage1' | 'node' | 'phase' | 'failed' | 'service';
}

/** The rows of the chart, in time order: the kernel, the first stage, the init's start, each phase, each service. */
export function timelineRows(t: BootTimeline): Row[] {
  const rows: Row[] = [];
  const end = Math.max(t.completeMs ?? 0, ...t.phases.map((p) => p.endMs), ...t.services.map((s) => s.startMs), t.initReadyMs ?? 0, t.stage1EndMs ?? 0);
  if (t.stage1StartMs !== undefined) rows.push({ label: 'kernel', startMs: 0, endMs: t.stage1StartMs, kind: 'kernel' });
  if (t.stage1StartMs !== undefined && t.stage1FoundMs !== undefined) rows.push({ label: 'first stage: find the system', startMs: t.stage1StartMs, endMs: t.stage1FoundMs, kind: 'stage1' });
  const s1 = t.stage1FoundMs ?? t.stage1StartMs;
  if (s1 !== undefined && t.stage1EndMs !== undefined) rows.push({ label: 'first stage: mount it, switch root', startMs: s1, endMs: t.stage1EndMs, kind: 'stage1' });
  if (t.initStartMs !== undefined && t.initReadyMs !== undefined) rows.push({ label: 'init: node starts, loads the init', startMs: t.initStartMs, endMs: t.initReadyMs, kind: 'node' });
  for (const p of t.phases) rows.push({ label: p.name, startMs: p.startMs, endMs: p.endMs, kind: p.ok === false ? 'failed' : 'phase' });
  for (const s of t.services) rows.push({ label: `service ${s.name}`, startMs: s.startMs, endMs: end, kind: 'service' });
  return rows;
}

const COLOURS: Record<Row['kind'], string> = {
  kernel: '#9e9e9e',
  stage1: '#f0a040',
  node: '#5c8fd6',
  phase: '#4caf50',
  failed: '#e53935',
  service: '#c9b3e6',
};

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** The timeline as an SVG chart: one row per span, an axis in seconds, the boot-complete time marked. */
export function renderBootSvg(t: BootTimeline, title = 'cairn boot'): string {
  const rows = timelineRows(t);
  const endMs = Math.max(1000, ...rows.map((r) => r.endMs), t.completeMs ?? 0);
  const seconds = Math.ceil(endMs / 1000);
  const pxPerS = seconds > 60 ? 20 : 40;
  const left = 260;
  const rowH = 20;
  const top = 50;
  const width = left + seconds * pxPerS + 40;
  const height = top + rows.length * rowH + 40;
  const x = (ms: number) => left + (ms / 1000) * pxPerS;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  const complete = t.completeMs !== undefined ? `: boot complete at ${(t.completeMs / 1000).toFixed(1)} s` : '';
  out.push(`<text x="10" y="20" font-size="15" font-weight="bold">${esc(title)}${esc(complete)}</text>`);
  const step = seconds > 120 ? 10 : seconds > 30 ? 5 : 1;
  for (let s = 0; s <= seconds; s += step) {
    out.push(`<line x1="${x(s * 1000)}" y1="${top - 8}" x2="${x(s * 1000)}" y2="${height - 30}" stroke="#e0e0e0"/>`);
    out.push(`<text x="${x(s * 1000)}" y="${top - 12}" text-anchor="middle" fill="#555">${s} s</text>`);
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const w = Math.max(1, x(r.endMs) - x(r.startMs));
    const dur = r.kind === 'service' ? `from ${(r.startMs / 1000).toFixed(1)} s` : `${((r.endMs - r.startMs) / 1000).toFixed(2)} s`;
    out.push(`<text x="${left - 8}" y="${y + 14}" text-anchor="end">${esc(r.label)}</text>`);
    out.push(`<rect class="${r.kind}" x="${x(r.startMs).toFixed(1)}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${COLOURS[r.kind]}"><title>${esc(r.label)}: ${dur}</title></rect>`);
    out.push(`<text x="${(x(r.startMs) + (r.kind === 'service' ? 4 : w + 4)).toFixed(1)}" y="${y + 14}" fill="#333">${dur}</text>`);
  });
  if (t.completeMs !== undefined) {
    out.push(`<line x1="${x(t.completeMs)}" y1="${top - 4}" x2="${x(t.completeMs)}" y2="${height - 30}" stroke="#000" stroke-dasharray="4 3"/>`);
  }
  const legend: [Row['kind'], string][] = [['kernel', 'kernel'], ['stage1', 'first stage'], ['node', 'init start'], ['phase', 'phase'], ['failed', 'failed phase'], ['service', 'service running']];
  legend.forEach(([k, label], i) => {
    const lx = 10 + i * 130;
    out.push(`<rect x="${lx}" y="${height - 20}" width="12" height="12" fill="${COLOURS[k]}"/><text x="${lx + 16}" y="${height - 10}">${label}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
