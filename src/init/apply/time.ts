/**
 * The clock: chronyd from the config's ntp_servers, started right after the
 * network. Edge boards often have no battery-backed clock and boot in 1970,
 * when no TLS certificate is valid yet; so when the config fetches anything
 * over https (github:/gitlab:/https SSH keys, https data sources), the boot
 * waits, a bounded time, for chrony to set the clock before it does.
 */
import { mkdirSync } from 'node:fs';
import type { CairnConfig } from '../../config/types.js';
import { at, type NodeContext } from '../context.js';
import { keySource } from './users.js';
import { PROVIDER_URLS } from './metadata.js';
import { applyNtp } from './system.js';

/** How long the boot waits for the clock before it fetches over TLS anyway. */
export const CLOCK_WAIT_MS = 30_000;

/** The https URLs the config fetches at boot (pure). */
export function tlsFetches(config: CairnConfig): string[] {
  const urls: string[] = [];
  for (const s of config.cairn?.data_sources ?? []) urls.push(PROVIDER_URLS[s] ?? s);
  for (const k of config.ssh_authorized_keys ?? []) {
    const src = keySource(k);
    if ('url' in src) urls.push(src.url);
  }
  return urls.filter((u) => u.startsWith('https://'));
}

/** Starts chronyd (once): it sets the clock on its first measurements (`makestep 1 -1`) and keeps it right. */
export async function startChrony(ctx: NodeContext): Promise<void> {
  await applyNtp(ctx);
  if (ctx.services.get('chronyd')) return;
  // /run/chrony is left to chronyd: it makes it with the owner and mode its command socket needs.
  mkdirSync(at(ctx, '/var/lib/chrony'), { recursive: true });
  ctx.services.start({ name: 'chronyd', command: at(ctx, '/usr/sbin/chronyd'), args: ['-d', '-f', at(ctx, '/etc/chrony/chrony.conf')] });
}

const synced = new WeakMap<NodeContext, boolean>();

/**
 * Waits until chrony reports the clock synchronised, at most `waitMs`;
 * true when it is. Asked once per boot: a second call answers at once.
 */
export async function waitForClock(ctx: NodeContext, waitMs = CLOCK_WAIT_MS): Promise<boolean> {
  const known = synced.get(ctx);
  if (known !== undefined) return known;
  const end = Date.now() + waitMs;
  let ok = false;
  for (;;) {
    // One try: exit 0 once chronyd has set the clock and is synchronised.
    const r = await ctx.exec('chronyc', ['-n', 'waitsync', '1'], { timeoutMs: 5000 });
    if (r.code === 0) {
      ok = true;
      break;
    }
    if (Date.now() + 1000 > end) break;
    await new Promise((res) => setTimeout(res, 1000));
  }
  synced.set(ctx, ok);
  return ok;
}

/** The time phase: chronyd, and when the boot fetches over TLS, a clock that is set before it does. */
export async function syncTime(ctx: NodeContext, waitMs = CLOCK_WAIT_MS): Promise<string> {
  await startChrony(ctx);
  const urls = tlsFetches(ctx.config);
  if (!urls.length) return 'chronyd started';
  if (await waitForClock(ctx, waitMs)) return `clock synchronised before fetching ${urls.length} https URL${urls.length === 1 ? '' : 's'}`;
  throw new Error(`the clock is not synchronised after ${Math.round(waitMs / 1000)} s (check ntp_servers and the network); https fetches may fail on certificate dates`);
}
