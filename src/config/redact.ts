/** Hides secrets (keys marked `x-secret` in the schema) before a config is shown. */
import { configSchema, resolveSchema, type SchemaNode } from './schema.js';
import { isObject } from './types.js';

export const REDACTED = '<redacted>';

function redactValue(value: unknown, schemaIn: SchemaNode | undefined): unknown {
  if (!schemaIn) return value;
  const schema = resolveSchema(schemaIn);
  if (schema['x-secret']) return REDACTED;
  if (Array.isArray(value)) return value.map((v) => redactValue(v, schema.items));
  if (isObject(value)) {
    const extra = typeof schema.additionalProperties === 'object' ? schema.additionalProperties : undefined;
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redactValue(v, schema.properties?.[k] ?? extra)]));
  }
  return value;
}

/** A copy of a (folded) config with passwords, tokens and Wi-Fi passphrases replaced by <redacted>. */
export function redact<T>(config: T): T {
  return redactValue(config, configSchema) as T;
}
