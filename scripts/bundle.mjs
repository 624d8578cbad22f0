// Bundles the cairn CLI into one file with esbuild.
import { readFileSync } from 'node:fs';
import { build } from 'esbuild';

const pkg = JSON.parse(readFileSync('package.json', 'utf8'));

await build({
  entryPoints: ['src/cli/main.ts'],
  outfile: 'dist/cairn.js',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  packages: 'external',
  sourcemap: 'linked',
  logLevel: 'warning',
  define: { 'process.env.CAIRN_VERSION': JSON.stringify(pkg.version) },
});
