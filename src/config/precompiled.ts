/**
 * The config validator compiled when the image is built: the init bundle
 * (src/builder/stages/init.ts) replaces this module with ajv's standalone
 * code for config/schema.json, so a node does not compile the schema at
 * every boot (seconds on a small board). Outside the bundle there is none,
 * and configValidator() compiles the schema itself.
 */
import type { ValidateFunction } from 'ajv/dist/2020.js';

export const precompiledValidator: ValidateFunction | undefined = undefined;
