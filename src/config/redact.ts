/**
 * Hides secrets before a config is shown (`cairn config show`): keys marked
 * `x-secret` in the schema, secret-named `environment` entries, tokens among
 * `k3s_args`, and URL passwords. What counts as a secret is in secrets.ts.
 */
import { mapSecrets, REDACTED, redactK3sArgs } from './secrets.js';

export { REDACTED, redactK3sArgs };

/** A copy of a config with passwords, tokens, Wi-Fi passphrases and other secrets replaced by <redacted>. */
export function redact<T>(config: T): T {
  return mapSecrets(config, (_path, _value, shown) => shown) as T;
}
