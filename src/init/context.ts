/**
 * What every boot phase works with. Paths on the node are always taken
 * through `at(ctx, '/etc/...')`, so that tests run the phases against a
 * folder instead of a machine.
 */
import { join } from 'node:path';
import type { CairnConfig } from '../config/types.js';
import type { Diagnostic } from '../config/diagnostics.js';
import type { Exec } from './exec.js';
import type { Logger } from './log.js';
import type { Supervisor } from './supervisor.js';
import type { StatusStore } from './status.js';
import type { TrialGuard } from './trial.js';

/** What the first stage recorded in /run/cairn/boot.env. */
export interface BootInfo {
  mode: 'state' | 'live' | 'net' | '';
  version: string;
  /** Set on a trial boot of an upgrade: how many tries it has left. */
  triesLeft?: number;
  stateDevice?: string;
  /** The first stage found CAIRN_STATE damaged and mounted it read-only. */
  stateReadOnly?: boolean;
}

export type Fetch = (url: string, opts?: { timeoutMs?: number; headers?: Record<string, string>; method?: 'GET' | 'PUT' }) => Promise<string>;

export interface NodeContext {
  /** "/" on a node; a folder in tests. */
  root: string;
  exec: Exec;
  log: Logger;
  fetch: Fetch;
  /** The kernel command line. */
  cmdline: string;
  boot: BootInfo;
  /** The image's version (release record). */
  version: string;
  config: CairnConfig;
  configProblems: Diagnostic[];
  /** User-data `#!` scripts (paths on the node) that end run_cmd; they run as programs, not through /bin/sh -c. */
  scripts?: string[];
  /** Environment for boot commands and k3s: the config's `environment` over a clean base. */
  env: Record<string, string>;
  services: Supervisor;
  status: StatusStore;
  /** Set during a trial boot of an upgrade until the boot is good (src/init/trial.ts). */
  trial?: TrialGuard;
  /** Set on the boot that follows a rollback: the version given up (its datastore may need the pre-upgrade snapshot). */
  rollbackFrom?: string;
  /** Reboots the node the way `cairn reboot` does (set by the init). */
  reboot?: () => void;
  /** Powers the node off the way `cairn poweroff` does (set by the init). */
  poweroff?: () => void;
  /** false: a source that does not answer at boot is not asked again in the background (tests of the phase alone). */
  retryDataSources?: boolean;
  /** The image's modules-load.d, loading since the etc phase (startImageModules); the modules that did not load. */
  imageModules?: Promise<{ name: string; why: string }[]>;
}

export function at(ctx: { root: string }, path: string): string {
  return join(ctx.root, path);
}

/** A URL as logs show it: without its query and fragment, which may hold a token. */
export function urlForLog(url: string): string {
  return url.replace(/^(https?:\/\/[^?#]*)[?#].*$/s, '$1?...');
}

/** A message with every mention of `url` shown as urlForLog shows it. */
export function withoutQuery(message: string, url: string): string {
  return message.split(url).join(urlForLog(url));
}

/** fetch() with a timeout, as text; throws on HTTP errors. */
export const httpFetch: Fetch = async (url, opts = {}) => {
  const res = await fetch(url, { method: opts.method ?? 'GET', headers: opts.headers, signal: AbortSignal.timeout(opts.timeoutMs ?? 10_000) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.text();
};
