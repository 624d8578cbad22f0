/**
 * A boot phase: a name, a timeout and a function. The runner prints one
 * console line per phase, `cairn: <name> ok (<ms> ms)` or
 * `cairn: <name> FAILED: <why>`, and goes on with the next phase: a failed
 * phase never stops the boot, so a node with a bad config stays reachable.
 */
import type { Logger } from './log.js';

export interface Phase<C> {
  name: string;
  timeoutMs: number;
  run: (ctx: C) => Promise<void | string>;
}

export interface PhaseResult {
  name: string;
  ok: boolean;
  ms: number;
  /** Why it failed, or what it noted. */
  detail?: string;
}

export function phase<C>(name: string, timeoutMs: number, run: (ctx: C) => Promise<void | string>): Phase<C> {
  return { name, timeoutMs, run };
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export async function runPhases<C>(phases: Phase<C>[], ctx: C, log: Logger, onResult?: (results: PhaseResult[]) => void): Promise<PhaseResult[]> {
  const results: PhaseResult[] = [];
  for (const p of phases) {
    const start = performance.now();
    try {
      const note = await withTimeout(p.run(ctx), p.timeoutMs);
      const ms = Math.round(performance.now() - start);
      results.push({ name: p.name, ok: true, ms, detail: note || undefined });
      log.info(`${p.name} ok (${ms} ms)${note ? `: ${note}` : ''}`);
    } catch (e) {
      const ms = Math.round(performance.now() - start);
      const why = (e instanceof Error ? e.message : String(e)).split('\n')[0]!;
      results.push({ name: p.name, ok: false, ms, detail: why });
      log.info(`${p.name} FAILED: ${why}`);
    }
    onResult?.(results);
  }
  return results;
}
