/** Reads what the first stage recorded about this boot (/run/cairn/boot.env). */
import { readFileSync } from 'node:fs';
import type { BootInfo } from './context.js';

export function parseBootEnv(text: string): BootInfo {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
  }
  const mode = env.CAIRN_BOOT_MODE;
  const tries = env.CAIRN_BOOT_TRIES_LEFT;
  return {
    mode: mode === 'state' || mode === 'live' || mode === 'net' ? mode : '',
    version: env.CAIRN_BOOT_VERSION ?? '',
    triesLeft: tries && /^\d+$/.test(tries) ? Number(tries) : undefined,
    stateDevice: env.CAIRN_STATE_DEVICE || undefined,
    ...(env.CAIRN_STATE_READONLY === '1' ? { stateReadOnly: true } : {}),
  };
}

export function readBootInfo(path: string): BootInfo {
  try {
    return parseBootEnv(readFileSync(path, 'utf8'));
  } catch {
    return { mode: '', version: '' };
  }
}
