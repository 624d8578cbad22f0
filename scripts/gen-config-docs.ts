// Writes docs/config.md from config/schema.json.
import { writeFileSync } from 'node:fs';
import { renderConfigDocs } from '../src/config/docs.js';

writeFileSync(new URL('../docs/config.md', import.meta.url), renderConfigDocs());
console.log('docs/config.md written');
