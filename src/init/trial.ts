/**
 * The init's side of the boot state (src/boot/state.ts), on a boot from the
 * state partition:
 * - as the boot starts: a trial that is not the version booted and has no
 *   tries left was rolled back; it is recorded (the upgrade record, the boot
 *   history, `cairn status`, the node label cairn.io/rollback) and cleared.
 * - on a trial boot: the hardware watchdog is armed (the driver for the
 *   machine's watchdog is loaded; softdog when it has none) and fed from the
 *   init's event loop, so that a hang resets the machine, and a deadline
 *   (cairn_deadline, default DEFAULT_DEADLINE_S) reboots it when k3s is not
 *   healthy by then: each reboot spends a try.
 * - once the boot is good: the trial becomes the active version, the one it
 *   replaced the fallback, the watchdog is disarmed and the deadline dropped.
 */
import { closeSync, existsSync, openSync, readFileSync, writeSync } from 'node:fs';
import { at, type NodeContext } from './context.js';
import { readJson, writeJsonAtomic, UPGRADE_PATH, type UpgradeRecord } from './status.js';
import { DEFAULT_DEADLINE_S, GRUBENV, onBoot, promote, readState, writeState, type BootState } from '../boot/state.js';

const FEED_MS = 5_000;

export interface TrialGuard {
  version: string;
  deadlineAt: number;
  watchdog?: string;
  /** Ends the guard: the boot became good (disarm) or the init is rebooting anyway. */
  end(): void;
}

/** Loads the watchdog driver for this machine's hardware, else softdog; returns the device or undefined. */
export async function armableWatchdog(ctx: NodeContext): Promise<string | undefined> {
  const dev = at(ctx, '/dev/watchdog');
  if (existsSync(dev)) return dev;
  const script = [
    'for a in $(cat /sys/bus/pci/devices/*/modalias /sys/bus/platform/devices/*/modalias /sys/bus/acpi/devices/*/modalias 2>/dev/null); do modprobe -R "$a" 2>/dev/null; done | sort -u |',
    'while read -r m; do case "$(modinfo -n "$m" 2>/dev/null)" in */drivers/watchdog/*) modprobe "$m" && echo "$m" ;; esac; done',
  ].join(' ');
  const r = await ctx.exec('sh', ['-c', script], { timeoutMs: 20_000 });
  const loaded = r.stdout.trim().split('\n').filter(Boolean);
  if (loaded.length) ctx.log.debug(`watchdog: loaded ${loaded.join(', ')}`);
  if (!existsSync(dev)) await ctx.exec('modprobe', ['softdog'], { timeoutMs: 10_000 });
  for (let i = 0; i < 20 && !existsSync(dev); i++) await new Promise((r) => setTimeout(r, 100));
  return existsSync(dev) ? dev : undefined;
}

/** The armed watchdog's driver name, as the kernel reports it. */
function watchdogName(ctx: NodeContext): string {
  try {
    return readFileSync(at(ctx, '/sys/class/watchdog/watchdog0/identity'), 'utf8').trim() || 'watchdog';
  } catch {
    return 'watchdog';
  }
}

/**
 * Reads the boot state as the boot starts, records a rollback, and on a
 * trial boot arms the watchdog and the deadline (`onExpire` reboots).
 * Returns a line for the mounts phase and the guard of a trial.
 */
export async function beginStateBoot(ctx: NodeContext, onExpire: (why: string) => void): Promise<{ line: string; guard?: TrialGuard }> {
  if (ctx.boot.mode !== 'state' || !ctx.boot.version) return { line: '' };
  const envPath = at(ctx, GRUBENV);
  const state = readState(envPath);
  if (!state) {
    ctx.status.update({ boot: { kind: 'unknown' } });
    return { line: `no boot state in ${GRUBENV}` };
  }
  const { event, state: next } = onBoot(state, ctx.boot.version);
  let line = '';
  if (next !== state) writeState(envPath, next);
  if (event.kind === 'rollback') {
    const reason = `version ${event.failed} did not come up within its tries; back on ${event.version}`;
    ctx.log.info(`upgrade: ${reason}`);
    const rec = readJson<UpgradeRecord>(at(ctx, UPGRADE_PATH));
    const updated: UpgradeRecord = { ...(rec && rec.version === event.failed ? rec : { version: event.failed, from: event.version, stagedAt: '' }), outcome: 'rolled-back', endedAt: new Date().toISOString(), reason };
    try {
      writeJsonAtomic(at(ctx, UPGRADE_PATH), updated);
    } catch (e) {
      ctx.log.info(`upgrade: the record could not be written: ${(e as Error).message}`);
    }
    ctx.status.update({ upgrade: updated });
    line = `rolled back from ${event.failed}`;
    ctx.rollbackFrom = event.failed;
  } else {
    const rec = readJson<UpgradeRecord>(at(ctx, UPGRADE_PATH));
    if (rec) ctx.status.update({ upgrade: rec });
  }
  if (event.kind === 'fallback') line = `the active version ${event.active} is not bootable: running the fallback`;
  ctx.status.update({ boot: { state: next, kind: event.kind } });
  if (event.kind !== 'trial') return { line };

  const seconds = next.deadline ?? DEFAULT_DEADLINE_S;
  const deadlineAt = Date.now() + seconds * 1000;
  let fd: number | undefined;
  let feed: NodeJS.Timeout | undefined;
  const dev = await armableWatchdog(ctx).catch(() => undefined);
  if (dev) {
    try {
      fd = openSync(dev, 'w');
      feed = setInterval(() => {
        try {
          writeSync(fd!, 'k');
        } catch {
          // the device went away: nothing to feed
        }
      }, FEED_MS);
    } catch (e) {
      ctx.log.info(`trial: ${dev} could not be armed: ${(e as Error).message}`);
    }
  } else {
    ctx.log.info('trial: this machine has no watchdog; a hang of this trial is not caught');
  }
  const timer = setTimeout(() => onExpire(`version ${ctx.boot.version} is not healthy after ${seconds} s of its trial: rebooting (${event.triesLeft} tries left)`), seconds * 1000);
  const watchdog = fd !== undefined ? watchdogName(ctx) : undefined;
  const guard: TrialGuard = {
    version: ctx.boot.version,
    deadlineAt,
    watchdog,
    end() {
      clearTimeout(timer);
      if (feed) clearInterval(feed);
      if (fd !== undefined) {
        try {
          writeSync(fd, 'V'); // the magic close: disarm
          closeSync(fd);
        } catch {
          // already closed
        }
        fd = undefined;
      }
    },
  };
  ctx.status.update({ boot: { state: next, kind: 'trial', trialDeadline: new Date(deadlineAt).toISOString(), ...(watchdog ? { watchdog } : {}) } });
  return { line: `trial boot of ${ctx.boot.version} (${event.triesLeft} tries left), healthy by ${seconds} s${watchdog ? `, watchdog ${watchdog} armed` : ''}`, guard };
}

/**
 * After a good boot of `booted`: the trial becomes active, the one it
 * replaced the fallback; the upgrade record says good. Returns the version
 * promoted, if any.
 */
export function commitGoodBoot(ctx: NodeContext, guard?: TrialGuard): string | undefined {
  guard?.end();
  if (ctx.boot.mode !== 'state' || !ctx.boot.version) return undefined;
  const envPath = at(ctx, GRUBENV);
  const state = readState(envPath);
  if (!state) return undefined;
  const next: BootState = promote(state, ctx.boot.version);
  if (next === state) return undefined;
  writeState(envPath, next);
  const rec = readJson<UpgradeRecord>(at(ctx, UPGRADE_PATH));
  if (rec && rec.version === ctx.boot.version) {
    const updated: UpgradeRecord = { ...rec, outcome: 'good', endedAt: new Date().toISOString() };
    try {
      writeJsonAtomic(at(ctx, UPGRADE_PATH), updated);
    } catch {
      // /var full: the boot state is what counts
    }
    ctx.status.update({ upgrade: updated });
  }
  ctx.status.update({ boot: { state: next, kind: 'active' } });
  return ctx.boot.version;
}
