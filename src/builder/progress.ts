/**
 * Build progress on stderr: on a terminal a bar per long stage
 * (cli-progress), otherwise one line per stage with its duration.
 */
import cliProgress from 'cli-progress';

export interface StageProgress {
  /** fraction in [0, 1]; detail is a short word on what happens now. */
  update(fraction: number, detail?: string): void;
}

export interface StageOutcome {
  name: string;
  seconds: number;
  cached: boolean;
  detail?: string;
}

export interface Reporter {
  /** Runs one stage; `fn` returns whether its result came from the cache. */
  stage<T>(name: string, fn: (p: StageProgress) => Promise<{ value: T; cached: boolean; detail?: string }>, opts?: { long?: boolean }): Promise<T>;
  log(line: string): void;
  readonly outcomes: StageOutcome[];
}

export function createReporter(opts: { tty?: boolean; quiet?: boolean; write?: (s: string) => void } = {}): Reporter {
  const write = opts.write ?? ((s: string) => process.stderr.write(s));
  const tty = opts.tty ?? Boolean(process.stderr.isTTY);
  const outcomes: StageOutcome[] = [];
  const log = (line: string) => {
    if (!opts.quiet) write(`${line}\n`);
  };
  return {
    outcomes,
    log,
    async stage(name, fn, stageOpts = {}) {
      const start = performance.now();
      let bar: cliProgress.SingleBar | undefined;
      if (tty && stageOpts.long && !opts.quiet) {
        bar = new cliProgress.SingleBar(
          {
            format: `${name.padEnd(10)} [{bar}] {percentage}% {detail}`,
            hideCursor: true,
            clearOnComplete: true,
            stream: process.stderr,
            barsize: 30,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(1000, 0, { detail: '' });
      }
      const progress: StageProgress = {
        update(fraction, detail) {
          bar?.update(Math.round(Math.max(0, Math.min(1, fraction)) * 1000), { detail: detail ?? '' });
        },
      };
      try {
        const { value, cached, detail } = await fn(progress);
        bar?.stop();
        const seconds = (performance.now() - start) / 1000;
        outcomes.push({ name, seconds, cached, detail });
        log(`stage ${name}: ${cached ? 'cached' : 'done'} in ${seconds.toFixed(1)}s${detail ? ` (${detail})` : ''}`);
        return value;
      } catch (err) {
        bar?.stop();
        log(`stage ${name}: failed after ${((performance.now() - start) / 1000).toFixed(1)}s`);
        throw err;
      }
    },
  };
}
