/**
 * k3s' command line from the node's config: a pure function.
 *
 * - server by default; agent when `server_url` and `token` are set;
 *   a first `k3s_args` entry of `server` or `agent` decides it outright.
 * - `server_url` → --server, `token` → --token, labels → --node-label,
 *   taints → --node-taint, plus cairn's own labels cairn.io/version and
 *   cairn.io/mode; `k3s_args` are passed on after cairn's.
 * - the kubeconfig is written mode 0600.
 */
import type { CairnConfig } from '../config/types.js';

export interface K3sInvocation {
  mode: 'server' | 'agent';
  args: string[];
  env: Record<string, string>;
}

export function k3sInvocation(config: CairnConfig, opts: { version: string; bootMode: string }): K3sInvocation {
  const sys = config.cairn ?? {};
  const extra = [...(sys.k3s_args ?? [])];
  let mode: 'server' | 'agent' = sys.server_url && sys.token ? 'agent' : 'server';
  if (extra[0] === 'server' || extra[0] === 'agent') mode = extra.shift() as 'server' | 'agent';
  const args: string[] = [mode];
  if (sys.server_url) args.push('--server', sys.server_url);
  if (sys.token) args.push('--token', sys.token);
  if (mode === 'server') args.push('--write-kubeconfig-mode', '0600');
  const labels: Record<string, string> = { ...(sys.labels ?? {}), 'cairn.io/version': opts.version, 'cairn.io/mode': opts.bootMode || 'unknown' };
  for (const [k, v] of Object.entries(labels)) args.push('--node-label', `${k}=${v}`);
  for (const t of sys.taints ?? []) args.push('--node-taint', t);
  args.push(...extra);
  const env: Record<string, string> = { ...(sys.environment ?? {}) };
  return { mode, args, env };
}

/** The arguments with secrets hidden, for logs and `cairn status`. */
export function redactArgs(args: string[]): string[] {
  return args.map((a, i) => (args[i - 1] === '--token' || args[i - 1] === '--agent-token' ? '<redacted>' : a.replace(/^(--(agent-)?token=).*/, '$1<redacted>')));
}
