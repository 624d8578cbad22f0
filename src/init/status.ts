/**
 * The node's status, as `cairn status` shows it: version, services, phase
 * timings, config problems and the boot history. Kept in
 * /run/cairn/status.json (rewritten atomically on every change); the boot
 * history persists in /var/lib/cairn/boot-history.json.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from './apply/files.js';
import type { Diagnostic } from '../config/diagnostics.js';
import type { PhaseResult } from './phase.js';
import type { ServiceState } from './supervisor.js';
import type { BootState } from '../boot/state.js';
import type { BootTimes } from './timeline.js';

export const UPGRADE_PATH = '/var/lib/cairn/upgrade.json';

/** The last upgrade: written by `cairn upgrade` when it stages a version, by the init when the trial ends. */
export interface UpgradeRecord {
  version: string;
  from: string;
  stagedAt: string;
  outcome: 'staged' | 'good' | 'rolled-back';
  endedAt?: string;
  /** For a rollback: why, in a line. */
  reason?: string;
}

export const STATUS_PATH = '/run/cairn/status.json';
export const HISTORY_PATH = '/var/lib/cairn/boot-history.json';
const HISTORY_KEEP = 20;

export interface BootRecord {
  version: string;
  mode: string;
  startedAt: string;
  /** booting → good, or failed when a later boot finds it never became good. */
  result: 'booting' | 'good' | 'failed';
  goodAt?: string;
}

export interface NodeStatus {
  version: string;
  bootMode: string;
  hostname?: string;
  bootedAt: string;
  bootComplete: boolean;
  phases: PhaseResult[];
  services: ServiceState[];
  /** The first stage's and the init's own times, on the boot clock (timeline.ts). */
  times?: BootTimes;
  /** How node started the init: from its startup snapshot or from init.js (startup-snapshot.ts). */
  initFrom?: 'snapshot' | 'script';
  configProblems: Diagnostic[];
  history: BootRecord[];
  /** k3s' arguments and its environment from the config, secrets redacted. */
  k3s?: { mode: 'server' | 'agent'; args: string[]; env?: Record<string, string> };
  /** The boot state on a state-partition boot: versions, the trial, what this boot was. */
  boot?: { state?: BootState; kind: string; trialDeadline?: string; watchdog?: string };
  /** The last upgrade and its outcome (also in /var/lib/cairn/upgrade.json). */
  upgrade?: UpgradeRecord;
  /** Set when the init started to shut down (what `cairn poweroff`/`reboot` wait for). */
  shutdown?: { action: 'poweroff' | 'reboot'; at: string };
  updatedAt: string;
}

export function writeJsonAtomic(path: string, value: unknown, mode = 0o644): void {
  writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`, { mode });
}

export function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

export class StatusStore {
  readonly status: NodeStatus;
  private services: () => ServiceState[] = () => [];

  constructor(
    private readonly root: string,
    init: { version: string; bootMode: string },
  ) {
    this.status = {
      version: init.version,
      bootMode: init.bootMode,
      bootedAt: new Date().toISOString(),
      bootComplete: false,
      phases: [],
      services: [],
      configProblems: [],
      history: [],
      updatedAt: new Date().toISOString(),
    };
  }

  watchServices(list: () => ServiceState[]): void {
    this.services = list;
  }

  update(change: Partial<NodeStatus> = {}): void {
    Object.assign(this.status, change, { services: this.services(), updatedAt: new Date().toISOString() });
    try {
      writeJsonAtomic(join(this.root, STATUS_PATH), this.status);
    } catch {
      // /run not writable (tests without it): the in-memory status still counts
    }
  }

  /** Records this boot in the history; an earlier boot still "booting" never became good. */
  startBoot(): void {
    const path = join(this.root, HISTORY_PATH);
    const history = (readJson<BootRecord[]>(path) ?? []).map((r) => (r.result === 'booting' ? { ...r, result: 'failed' as const } : r));
    history.push({ version: this.status.version, mode: this.status.bootMode, startedAt: this.status.bootedAt, result: 'booting' });
    this.saveHistory(history.slice(-HISTORY_KEEP));
  }

  markGood(): void {
    const history = [...this.status.history];
    const last = history[history.length - 1];
    if (last) history[history.length - 1] = { ...last, result: 'good', goodAt: new Date().toISOString() };
    this.saveHistory(history);
  }

  private saveHistory(history: BootRecord[]): void {
    try {
      writeJsonAtomic(join(this.root, HISTORY_PATH), history);
    } catch {
      // /var full or missing: the history is kept in the status only
    }
    this.update({ history });
  }
}
