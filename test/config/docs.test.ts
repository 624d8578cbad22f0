import t from 'tap';
import { readFileSync } from 'node:fs';
import { renderConfigDocs } from '../../src/config/docs.js';
import { configSchema } from '../../src/config/schema.js';

t.test('docs/config.md is what the schema renders (run `npm run docs` after changing the schema)', async (t) => {
  const onDisk = readFileSync(new URL('../../docs/config.md', import.meta.url), 'utf8');
  t.equal(onDisk, renderConfigDocs());
});

t.test('every key of the schema is documented', async (t) => {
  const docs = renderConfigDocs();
  const system = configSchema.$defs.system!.properties!;
  for (const key of [...Object.keys(configSchema.properties ?? {}).filter((k) => k !== 'k3os'), ...Object.keys(system).map((k) => `cairn.${k}`)]) {
    t.ok(docs.includes(`| \`${key}\` |`), key);
  }
});
