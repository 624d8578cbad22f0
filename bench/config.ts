// Config throughput: validate + merge of a realistic 100-line site config,
// against a baseline measured in the same run (a plain YAML parse of the
// same text with js-yaml's default schema, which any config reader must do). Prints figures; asserts nothing.
import { readFileSync } from 'node:fs';
import jsyaml from 'js-yaml';
import { mergeConfig, readConfig } from '../src/config/read.js';
import { readCmdline } from '../src/config/cmdline.js';
import type { JsonObject } from '../src/config/types.js';

const text = readFileSync(new URL('./fixtures/site-config.yaml', import.meta.url), 'utf8');
const image = readConfig('hostname: cairn\ncairn:\n  ntp_servers: [pool.ntp.org]\n', 'image.yaml').config;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);

function rate(fn: () => void): number {
  for (let i = 0; i < 200; i++) fn(); // warm up
  let n = 0;
  const start = process.hrtime.bigint();
  const end = start + BigInt(SECONDS * 1e9);
  let now = start;
  while (now < end) {
    for (let i = 0; i < 50; i++) fn();
    n += 50;
    now = process.hrtime.bigint();
  }
  return n / (Number(now - start) / 1e9);
}

const baseline = rate(() => jsyaml.load(text));
const full = rate(() => {
  const r = readConfig(text, 'site.yaml');
  if (r.diagnostics.length) throw new Error('bench config must be valid');
  mergeConfig(mergeConfig(image as JsonObject, readCmdline('console=ttyS0 cairn.hostname=x').config as JsonObject), r.config as JsonObject);
});

console.log(`config lines:                ${text.split('\n').length}`);
console.log(`baseline (YAML parse only):  ${baseline.toFixed(0)} configs/s`);
console.log(`validate + merge:            ${full.toFixed(0)} configs/s  (goal: >= 2000)`);
console.log(`ratio to baseline:           ${(full / baseline).toFixed(2)}x`);
