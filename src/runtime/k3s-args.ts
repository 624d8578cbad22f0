/**
 * k3s' command line from the node's config: a pure function.
 *
 * - server by default; agent when `server_url` and `token` are set;
 *   a first `k3s_args` entry of `server` or `agent` decides it outright.
 * - `server_url` → --server, labels → --node-label, taints → --node-taint,
 *   plus cairn's own labels cairn.io/version, cairn.io/mode and, after a
 *   rollback, cairn.io/rollback=<the version given up>; `k3s_args`
 *   are passed on after cairn's.
 * - secrets never go on the command line (anyone can read /proc/<pid>/cmdline):
 *   the config's `token` and any `--token`/`-t`/`--agent-token` in `k3s_args`
 *   become files that k3s reads (--token-file, --agent-token-file), and a
 *   --datastore-endpoint with a password goes to k3s' environment
 *   (K3S_DATASTORE_ENDPOINT; /proc/<pid>/environ is root's alone).
 * - the kubeconfig is written mode 0600.
 * What is shown of it (logs, `cairn status`) goes through redactK3sArgs and
 * redactEnv first.
 */
import type { CairnConfig } from '../config/types.js';
import { toLabelValue } from '../config/labels.js';
import { isSecretEnvName, REDACTED, redactK3sArgs, redactUrlCredentials } from '../config/secrets.js';
import { AGENT_TOKEN_FILE, TOKEN_FILE } from './paths.js';

export interface K3sSecretFile {
  /** The path k3s is told (on the node). */
  path: string;
  value: string;
}

export interface K3sInvocation {
  mode: 'server' | 'agent';
  args: string[];
  env: Record<string, string>;
  /** Files to write (0600, root-only folder) before k3s starts. */
  secrets: K3sSecretFile[];
}

/** One redaction for k3s' arguments wherever they are shown (logs, `cairn status`, `cairn config show`). */
export { redactK3sArgs };

/** Go's flag package (which k3s' CLI uses) takes -name and --name alike, with the value after `=` or as the next argument. */
function flagName(arg: string): { name: string; value?: string } | undefined {
  const m = /^--?([A-Za-z0-9][\w-]*)(?:=([\s\S]*))?$/.exec(arg);
  if (!m) return undefined;
  return { name: m[1]!, value: m[2] };
}

const TOKEN_NAMES: Record<string, 'token' | 'agentToken'> = { t: 'token', token: 'token', 'agent-token': 'agentToken' };

/** Pure: `k3s_args` with the tokens taken out, and the tokens (the last of each kind wins, as in k3s). */
export function extractTokens(args: string[]): { args: string[]; token?: string; agentToken?: string; datastoreEndpoint?: string } {
  const out: string[] = [];
  const found: { token?: string; agentToken?: string; datastoreEndpoint?: string } = {};
  for (let i = 0; i < args.length; i++) {
    const f = flagName(args[i]!);
    const kind = f ? TOKEN_NAMES[f.name] : undefined;
    const isEndpoint = f?.name === 'datastore-endpoint';
    if (!f || (!kind && !isEndpoint)) {
      out.push(args[i]!);
      continue;
    }
    let value = f.value;
    let next = false;
    if (value === undefined && i + 1 < args.length) {
      value = args[i + 1];
      next = true;
    }
    if (value === undefined) {
      out.push(args[i]!);
      continue;
    }
    if (isEndpoint && !hasCredentials(value)) {
      out.push(args[i]!);
      continue;
    }
    if (next) i++;
    if (kind) found[kind] = value;
    else found.datastoreEndpoint = value;
  }
  return { args: out, ...found };
}

/** A URL (or a list of them) with a password in it: scheme://user:password@host. */
function hasCredentials(value: string): boolean {
  return /[a-z][\w+.-]*:\/\/[^/@\s]*:[^@\s]*@/i.test(value);
}

/** Environment variables with secrets hidden, for `cairn status`: secret-named ones (TOKEN, PASSWORD, SECRET, KEY) and the passwords in URLs. */
export function redactEnv(env: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, isSecretEnvName(k) ? REDACTED : redactUrlCredentials(v)]));
}

export function k3sInvocation(config: CairnConfig, opts: { version: string; bootMode: string; rollback?: string }): K3sInvocation {
  const sys = config.cairn ?? {};
  const extracted = extractTokens([...(sys.k3s_args ?? [])]);
  const extra = extracted.args;
  let mode: 'server' | 'agent' = sys.server_url && sys.token ? 'agent' : 'server';
  if (extra[0] === 'server' || extra[0] === 'agent') mode = extra.shift() as 'server' | 'agent';
  const args: string[] = [mode];
  const secrets: K3sSecretFile[] = [];
  const env: Record<string, string> = { ...(sys.environment ?? {}) };
  if (sys.server_url) args.push('--server', sys.server_url);
  const token = extracted.token ?? sys.token;
  if (token) {
    args.push('--token-file', TOKEN_FILE);
    secrets.push({ path: TOKEN_FILE, value: token });
  }
  if (extracted.agentToken) {
    args.push('--agent-token-file', AGENT_TOKEN_FILE);
    secrets.push({ path: AGENT_TOKEN_FILE, value: extracted.agentToken });
  }
  if (extracted.datastoreEndpoint) env.K3S_DATASTORE_ENDPOINT = extracted.datastoreEndpoint;
  if (mode === 'server') args.push('--write-kubeconfig-mode', '0600');
  const labels: Record<string, string> = { ...(sys.labels ?? {}), 'cairn.io/version': toLabelValue(opts.version), 'cairn.io/mode': toLabelValue(opts.bootMode || 'unknown') };
  // the last trial that did not come up, so that a fleet's rollout can see where it stopped
  if (opts.rollback) labels['cairn.io/rollback'] = toLabelValue(opts.rollback);
  for (const [k, v] of Object.entries(labels)) args.push('--node-label', `${k}=${v}`);
  for (const t of sys.taints ?? []) args.push('--node-taint', t);
  args.push(...extra);
  return { mode, args, env, secrets };
}
