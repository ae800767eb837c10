// Builds the command wall's page bundle (dist/index.html, dist/app.js, dist/app.css) from
// src/ and the npm packages pinned in package-lock.json, with esbuild.
//
//   node build.mjs           write dist/
//   node build.mjs --check   build into memory and fail if dist/ differs (CI: the committed
//                            bundle must be what the sources and the lockfile make)
//
// The output is deterministic for the same sources and package versions, so the committed
// bundle can be checked byte for byte.

import * as esbuild from 'esbuild';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const check = process.argv.includes('--check');

const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: { app: 'src/main.js' },
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['chrome100', 'firefox100', 'safari15'],
  legalComments: 'eof',
  charset: 'utf8',
  // Leaflet's CSS names marker images the wall never uses (it draws its own markers).
  loader: { '.png': 'empty', '.svg': 'empty' },
  outdir: 'dist',
  write: false,
  logLevel: 'warning',
});

const outputs = new Map();
for (const f of result.outputFiles) outputs.set(f.path.slice(dist.length + 1), Buffer.from(f.contents));
outputs.set('index.html', await readFile(join(here, 'src/index.html')));

let stale = [];
for (const [name, bytes] of outputs) {
  const path = join(dist, name);
  if (check) {
    const old = await readFile(path).catch(() => null);
    if (!old || !old.equals(bytes)) stale.push(name);
  } else {
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, bytes);
  }
}
if (check) {
  if (stale.length) {
    console.error(`web/dist is stale (${stale.join(', ')}): run \`npm ci && npm run build\` in dashboard-ws/web and commit dist/`);
    process.exit(1);
  }
  console.log(`web/dist matches the sources and the lockfile (${[...outputs.keys()].join(', ')})`);
} else {
  for (const [name, bytes] of outputs) console.log(`dist/${name} ${bytes.length} bytes`);
}
