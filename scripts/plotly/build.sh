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
./node_modules/.bin/esbuild entry.js --bundle --minify --format=iife --global-name=Plotly --target=es2016 \
  --define:global=window --define:define.amd=false --loader:.css=empty --legal-comments=eof \
  --banner:js="/* plotly.js $version (MIT, https://github.com/plotly/plotly.js): core with the scatter, bar and heatmap traces, built for collapsewatch by scripts/plotly/build.sh */" \
  --log-level=warning --outfile="$out"
echo "wrote $out ($(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16))"
