/**
 * A boot phase: a name, a timeout and a function. The runner prints one
 * console line per phase, `cairn: <name> ok (<ms> ms)` or
 * `cairn: <name> FAILED: <why>`, and goes on with the next phase: a failed
 * phase never stops the boot, so a node with a bad config stays reachable.
 *
 * Each phase gets an AbortSignal that the runner aborts when its time is up:
 * the work a timed-out phase left pending must check it (or hand it to the
 * commands it runs) so that it does not go on behind the boot's back.
 */
import type { Logger } from './log.js';

export interface Phase<C> {
  name: string;
  timeoutMs: number;
  run: (ctx: C, signal: AbortSignal) => Promise<void | string>;
}

export interface PhaseResult {
  name: string;
  ok: boolean;
  ms: number;
  /** When it started, on the boot clock (ms since the kernel started; see timeline.ts). */
  startMs?: number;
  /** Why it failed, or what it noted. */
  detail?: string;
}

export function phase<C>(name: string, timeoutMs: number, run: (ctx: C, signal: AbortSignal) => Promise<void | string>): Phase<C> {
  return { name, timeoutMs, run };
}

/** The error a phase's signal is aborted with when its time is up. */
export class PhaseTimeout extends Error {
  constructor(readonly ms: number) {
    super(`did not finish within ${ms} ms`);
    this.name = 'PhaseTimeout';
  }
}

/** Runs `run` with a signal that is aborted after `ms`; rejects with PhaseTimeout then, whether or not `run` noticed. */
export function runWithTimeout<T>(run: (signal: AbortSignal) => Promise<T>, ms: number): Promise<T> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new PhaseTimeout(ms);
      controller.abort(err);
      reject(err);
    }, ms);
  });
  let work: Promise<T>;
  try {
    work = run(controller.signal);
  } catch (e) {
    work = Promise.reject(e);
  }
  // What a cancelled phase throws later is its own business, not an unhandled rejection.
  work.catch(() => undefined);
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

export async function runPhases<C>(
  phases: Phase<C>[],
  ctx: C,
  log: Logger,
  onResult?: (results: PhaseResult[]) => void,
  clock?: () => number,
): Promise<PhaseResult[]> {
  const results: PhaseResult[] = [];
  for (const p of phases) {
    const start = performance.now();
    const startMs = clock?.();
    try {
      const note = await runWithTimeout((signal) => p.run(ctx, signal), p.timeoutMs);
      const ms = Math.round(performance.now() - start);
      results.push({ name: p.name, ok: true, ms, startMs, detail: note || undefined });
      log.info(`${p.name} ok (${ms} ms)${note ? `: ${note}` : ''}`);
    } catch (e) {
      const ms = Math.round(performance.now() - start);
      const why = (e instanceof Error ? e.message : String(e)).split('\n')[0]!;
      results.push({ name: p.name, ok: false, ms, startMs, detail: why });
      log.info(`${p.name} FAILED: ${why}`);
    }
    onResult?.(results);
  }
  return results;
}
