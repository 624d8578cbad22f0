/**
 * The string formats config/schema.json names beyond JSON Schema's own: an
 * IP address, a CIDR block, a route's destination. One module, so that the
 * validator compiled at build time (src/config/precompiled.ts) and the one
 * compiled at run time check the same thing.
 */
import { isIP } from 'node:net';

export function isCidr(s: string): boolean {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(s);
  if (!m) return false;
  const family = isIP(m[1]!);
  const bits = Number(m[2]);
  return (family === 4 && bits <= 32) || (family === 6 && bits <= 128);
}

export const CONFIG_FORMATS = {
  ip: { type: 'string', validate: (s: string) => isIP(s) !== 0 },
  cidr: { type: 'string', validate: isCidr },
  'route-to': { type: 'string', validate: (s: string) => s === 'default' || isCidr(s) },
} as const;
