#!/usr/bin/env bash
# Rebuilds static/vendor/plotly-collapsewatch.min.js from the npm registry: plotly.js and esbuild at the
# versions package-lock.json pins, installed in a temporary directory, bundled from entry.js. Only needed
# to change the bundle (another plotly.js version, another trace type); set-up uses the committed file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../../static/vendor/plotly-collapsewatch.min.js"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$here/entry.js" "$work/"
cd "$work"
npm ci --no-audit --no-fund --ignore-scripts --silent
# esbuild's binary comes from its platform package (installed without scripts above)
version="$(node -p 'require("plotly.js/package.json").version')"
licenses="${out%.min.js}.LICENSES.txt"
./node_modules/.bin/esbuild entry.js --bundle --minify --format=iife --global-name=Plotly --target=es2016 \
  --define:global=window --define:define.amd=false --loader:.css=empty --legal-comments=eof \
  --banner:js="/* plotly.js $version, Copyright (c) Plotly, Inc., MIT license: core with the scatter, bar and heatmap traces, built for collapsewatch by scripts/plotly/build.sh; the license of every bundled package is in $(basename "$licenses") */" \
  --metafile=meta.json --log-level=warning --outfile="$out"
# every package with code in the bundle: its name, version, license and license text
node -e '
const fs = require("fs"), path = require("path");
const output = Object.values(require("./meta.json").outputs).find((o) => o.entryPoint);
const inputs = Object.entries(output.inputs).filter(([, v]) => v.bytesInOutput > 0).map(([f]) => f);
const dirs = new Set(inputs.map((f) => f.match(/^node_modules\/((?:@[^/]+\/)?[^/]+)/)).filter(Boolean).map((m) => m[1]));
const parts = [...dirs].sort().map((name) => {
  const dir = path.join("node_modules", name), meta = require("./" + path.join(dir, "package.json"));
  const file = fs.readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f));
  const text = file ? fs.readFileSync(path.join(dir, file), "utf8").trim() : `(no license file; package.json says ${meta.license})`;
  return `${name} ${meta.version} (${meta.license ?? "see below"})\n\n${text}\n`;
});
fs.writeFileSync(process.argv[1], `Packages bundled in plotly-collapsewatch.min.js\n\n${parts.join("\n" + "-".repeat(72) + "\n\n")}`);
' "$licenses"
echo "wrote $out ($(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16)) and $(basename "$licenses")"
