/**
 * Which values of a config are secrets, so that they never reach the
 * console, logs, `cairn status` or error messages:
 *
 *   - keys marked `x-secret` in the schema (password, token, Wi-Fi passphrases)
 *   - `environment` entries whose name contains TOKEN, PASSWORD, SECRET or KEY
 *   - tokens among `k3s_args` (see redactK3sArgs)
 *   - the password part of URLs (`postgres://user:PASSWORD@host`), in any string
 *
 * Pure: plain values in, plain values out.
 */
import { configSchema, looseKey, resolveSchema, spellings, type SchemaNode } from './schema.js';
import { isObject } from './types.js';

export const REDACTED = '<redacted>';

const SECRET_ENV_NAME = /TOKEN|PASSWORD|SECRET|KEY/i;

/** An environment variable whose value is a secret, judged by its name (K3S_TOKEN, DB_PASSWORD, AWS_SECRET_ACCESS_KEY...). */
export function isSecretEnvName(name: string): boolean {
  return SECRET_ENV_NAME.test(name);
}

/** scheme://user:PASSWORD@ (the password may hold '@' and ':', not '/'). */
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/[^\s/:@]*):[^\s/]*@/gi;

/** The string with the password of every URL in it replaced: `postgres://u:<redacted>@db/k3s`. */
export function redactUrlCredentials(s: string): string {
  return s.replace(URL_CREDENTIALS, `$1:${REDACTED}@`);
}

/** k3s flags whose value is a secret as a whole, by name. */
const SECRET_FLAGS = new Set(['token', 't', 'agent-token', 'etcd-s3-secret-key', 'vpn-auth']);
/** k3s parses Go flags: one dash or two, for long and short names alike (`-token X`, `--t=X`). */
function isSecretFlag(arg: string): boolean {
  const m = /^--?([^-][\s\S]*)$/.exec(arg);
  return m !== null && SECRET_FLAGS.has(m[1]!);
}
const FLAG_WITH_VALUE = /^(--?[A-Za-z0-9][A-Za-z0-9-]*)(=|\s+)([\s\S]*)$/;

/**
 * A copy of a k3s argument list that can be shown: the values of `--token`,
 * `-t`, `--agent-token`, `--etcd-s3-secret-key` and `--vpn-auth` (as
 * `--flag=X`, `--flag X` in one argument, or `--flag` followed by X; with
 * one dash or two, `-token X` and `--t X` too, as Go's flag parsing takes
 * them) become <redacted>, and so does the password of any URL (`--datastore-endpoint
 * postgres://user:pass@host` shows `postgres://user:<redacted>@host`).
 */
export function redactK3sArgs(args: readonly string[]): string[] {
  const out: string[] = [];
  let hideNext = false;
  for (const arg of args) {
    if (hideNext) {
      out.push(REDACTED);
      hideNext = false;
      continue;
    }
    const m = FLAG_WITH_VALUE.exec(arg);
    if (isSecretFlag(m ? m[1]! : arg)) {
      if (m) out.push(`${m[1]!}${m[2]!}${REDACTED}`);
      else {
        out.push(arg);
        hideNext = true;
      }
      continue;
    }
    out.push(redactUrlCredentials(arg));
  }
  return out;
}

/** A path into a config value: keys as written (any spelling) and list indexes. */
export type ValuePath = (string | number)[];

/** Called for each secret string: its path, the value, and the value as it may be shown. Returns what to put in its place. */
export type OnSecret = (path: ValuePath, value: string, shown: string) => string;

const system = configSchema.$defs.system!.properties!;
const K3S_ARGS = system.k3s_args!;
const ENVIRONMENT = system.environment!;

function childSchema(schema: SchemaNode, key: string): SchemaNode | undefined {
  if (schema.properties) {
    const canonical = Object.hasOwn(schema.properties, key) ? key : spellings(schema.properties).get(looseKey(key));
    if (canonical) return schema.properties[canonical];
  }
  return typeof schema.additionalProperties === 'object' ? schema.additionalProperties : undefined;
}

function visit(value: unknown, schemaIn: SchemaNode | undefined, path: ValuePath, on: OnSecret): unknown {
  if (typeof value === 'string') {
    if (schemaIn && resolveSchema(schemaIn)['x-secret']) return on(path, value, REDACTED);
    // A single argument where a list is expected (a one-item list to the reader).
    const shown = schemaIn === K3S_ARGS ? redactK3sArgs([value])[0]! : redactUrlCredentials(value);
    return shown === value ? value : on(path, value, shown);
  }
  if (Array.isArray(value)) {
    const at = (i: number): ValuePath => [...path, i];
    if (schemaIn === K3S_ARGS && value.every((v) => typeof v === 'string')) {
      const shown = redactK3sArgs(value as string[]);
      return value.map((v, i) => (shown[i] === v ? v : on(at(i), v as string, shown[i]!)));
    }
    const schema = schemaIn ? resolveSchema(schemaIn) : undefined;
    // A secret key given twice (a list where one string belongs) is still a secret.
    const items = schema?.['x-secret'] ? schemaIn : schema?.items;
    return value.map((v, i) => visit(v, items, at(i), on));
  }
  if (isObject(value)) {
    const schema = schemaIn ? resolveSchema(schemaIn) : undefined;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      let next: unknown;
      if (schemaIn === ENVIRONMENT && typeof v === 'string' && isSecretEnvName(k)) next = on([...path, k], v, REDACTED);
      else {
        const child = schema ? childSchema(schema, k) : undefined;
        // A map where a list of maps is expected is a one-item list (as the reader takes it).
        const resolved = child ? resolveSchema(child) : undefined;
        next = visit(v, resolved?.type === 'array' && isObject(v) ? resolved.items : child, [...path, k], on);
      }
      Object.defineProperty(out, k, { value: next, enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return value;
}

/**
 * Walks a config value (canonical keys, or keys as written in any of their
 * lenient spellings) and replaces every secret string with what `on` returns.
 */
export function mapSecrets(value: unknown, on: OnSecret): unknown {
  return visit(value, configSchema, [], on);
}

/** The paths of every secret in a config value. */
export function findSecrets(value: unknown): ValuePath[] {
  const found: ValuePath[] = [];
  mapSecrets(value, (path, v) => {
    found.push(path);
    return v;
  });
  return found;
}
