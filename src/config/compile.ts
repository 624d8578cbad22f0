/**
 * The ajv compiler for config/schema.json. Outside the image: the cairn CLI
 * compiles the schema when it first validates, and the image builder makes
 * the standalone validator from it (src/builder/stages/init.ts). The
 * node's bundles carry that validator instead and replace this module with
 * a stub (precompiledValidatorPlugin): ajv's compiler never loads at boot.
 */
import { Ajv2020, type CodeOptions, type ValidateFunction } from 'ajv/dist/2020.js';
import { CONFIG_FORMATS } from './formats.js';

/** The ajv instance for config/schema.json; `code` makes standalone code (src/builder/stages/init.ts). */
export function makeAjv(code?: CodeOptions): Ajv2020 {
  const ajv = new Ajv2020({ allErrors: true, strict: true, verbose: true, ...(code ? { code } : {}) });
  ajv.addKeyword({ keyword: 'x-expected', schemaType: 'string' });
  ajv.addKeyword({ keyword: 'x-secret', schemaType: 'boolean' });
  // cloud-init's shapes: read by the normaliser, no meaning to validation
  ajv.addKeyword({ keyword: 'x-split', schemaType: 'string' });
  ajv.addKeyword({ keyword: 'x-false-empty', schemaType: 'boolean' });
  ajv.addKeyword({ keyword: 'x-argv-items', schemaType: 'boolean' });
  ajv.addKeyword({ keyword: 'x-name-items', schemaType: 'string' });
  ajv.addKeyword({ keyword: 'x-not-applied', schemaType: 'object' });
  ajv.addKeyword({ keyword: 'x-single-line', schemaType: 'boolean' });
  for (const [name, format] of Object.entries(CONFIG_FORMATS)) ajv.addFormat(name, format);
  return ajv;
}

export function compileConfigSchema(schema: object): ValidateFunction {
  return makeAjv().compile(schema);
}
