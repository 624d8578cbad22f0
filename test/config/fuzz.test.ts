// Feeds thousands of mutated configs (seeded, so every run sees the same
// ones) and checks that reading never throws and that every rejection is
// located inside the input and explained, schema errors with their key path.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { readConfig } from '../../src/config/read.js';
import { readCmdline } from '../../src/config/cmdline.js';
import { K3OS_SAMPLE } from '../support/shared.js';

const SEED = Number(process.env.CAIRN_FUZZ_SEED ?? 20261122);
const COUNT = Number(process.env.CAIRN_FUZZ_COUNT ?? 2500);

/** mulberry32: a small, well-known seeded PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const corpus = [
  readFileSync(K3OS_SAMPLE),
  Buffer.from(
    'cairn:\n  network:\n    interfaces:\n      eth0:\n        addresses: [10.1.0.5/24]\n        gateway: 10.1.0.1\n        routes: [{to: default, via: 10.1.0.1}]\n        vlan: {id: 7, link: eth1}\n  install: {device: /dev/sda, silent: true}\nwrite_files:\n- path: /etc/x\n  encoding: b64\n  content: aGVsbG8=\n  permissions: "0600"\n',
  ),
];
const snippets = ['- ', ': ', '{', '}', '[', ']', '&a ', '*a', '!!binary ', '"', "'", '\t', '\n  ', '---\n', '? ', '|\n', '>-\n', '#', '0755', 'true', '~', '<<: *a\n', '\u00e9', '\u0000', '\ufeff'];

/**
 * Problems of a whole document, which have no key path: the bytes, the YAML
 * syntax, the top level, the limits. Every other problem (every schema
 * error) names the key it is about.
 */
const DOCUMENT_LEVEL =
  /^(invalid YAML|the file holds binary data|the file is not UTF-8|the file is \d+ bytes|the file is empty|expected a map of keys|the file holds more than one YAML document|a key appears twice|nesting is deeper than|the document expands to more than)/;

function mutate(src: Buffer, rnd: () => number): Buffer {
  let buf = Buffer.from(src);
  const n = 1 + Math.floor(rnd() * 4);
  for (let i = 0; i < n; i++) {
    const at = Math.floor(rnd() * (buf.length + 1));
    switch (Math.floor(rnd() * 7)) {
      case 0: // flip a byte
        if (buf.length) buf[Math.min(at, buf.length - 1)] = Math.floor(rnd() * 256);
        break;
      case 1: // insert a YAML-significant snippet
        buf = Buffer.concat([buf.subarray(0, at), Buffer.from(snippets[Math.floor(rnd() * snippets.length)]!), buf.subarray(at)]);
        break;
      case 2: // delete a run of bytes
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + Math.floor(rnd() * 20))]);
        break;
      case 3: {
        // duplicate a line
        const lines = buf.toString('latin1').split('\n');
        const k = Math.floor(rnd() * lines.length);
        lines.splice(k, 0, lines[k]!);
        buf = Buffer.from(lines.join('\n'), 'latin1');
        break;
      }
      case 4: {
        // swap two lines
        const lines = buf.toString('latin1').split('\n');
        const a = Math.floor(rnd() * lines.length);
        const b = Math.floor(rnd() * lines.length);
        [lines[a], lines[b]] = [lines[b]!, lines[a]!];
        buf = Buffer.from(lines.join('\n'), 'latin1');
        break;
      }
      case 5: // truncate
        buf = buf.subarray(0, at);
        break;
      default: {
        // change indentation of a line
        const lines = buf.toString('latin1').split('\n');
        const k = Math.floor(rnd() * lines.length);
        lines[k] = (rnd() < 0.5 ? ' ' : '') + lines[k]!.replace(/^ /, rnd() < 0.5 ? '' : '   ');
        buf = Buffer.from(lines.join('\n'), 'latin1');
      }
    }
  }
  return buf;
}

t.test(`${COUNT} mutated configs (seed ${SEED}): no crash, every rejection located`, async (t) => {
  const rnd = prng(SEED);
  let rejected = 0;
  let failures = 0;
  for (let i = 0; i < COUNT; i++) {
    const input = mutate(corpus[i % corpus.length]!, rnd);
    let result;
    const cmdline = i % 10 === 9 ? input.toString('latin1').replace(/\n/g, ' ').replace(/(^| )/g, '$1cairn.') : undefined;
    try {
      result = cmdline !== undefined ? readCmdline(cmdline) : readConfig(input, `case-${i}.yaml`);
    } catch (e) {
      failures++;
      if (failures <= 5) t.fail(`case ${i} threw: ${(e as Error).stack}\n--- input ---\n${input.toString('latin1')}`);
      continue;
    }
    const errs = result.diagnostics.filter((d) => d.severity === 'error');
    if (errs.length) rejected++;
    const lines = cmdline !== undefined ? [cmdline] : input.toString('utf8').split('\n');
    for (const d of result.diagnostics) {
      const problem = !(d.line >= 1 && d.col >= 1 && d.message.length > 0 && d.file)
        ? 'diagnostic without a location or message'
        : d.line > lines.length || d.col > lines[d.line - 1]!.length + 1
          ? `located outside the input (it has ${lines.length} lines; that line has ${lines[d.line - 1]?.length ?? 0} characters)`
          : d.path === '' && !DOCUMENT_LEVEL.test(d.message)
            ? 'a problem with a key but without its key path'
            : undefined;
      if (problem) {
        failures++;
        if (failures <= 5) t.fail(`case ${i}: ${problem}: ${JSON.stringify(d)}\n--- input ---\n${cmdline ?? input.toString('latin1')}`);
      }
    }
  }
  t.equal(failures, 0, 'no crash and no unlocated diagnostic');
  t.ok(rejected > COUNT / 10, `mutations are rejected often enough to matter (${rejected} of ${COUNT})`);
});
