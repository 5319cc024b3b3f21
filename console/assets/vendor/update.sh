#!/usr/bin/env bash
# Re-vendors the console's browser dependencies at the versions package.json pins: downloads
# each package from the npm registry (`npm pack`, which checks the registry's integrity hash),
# and copies the minified file and licence here. Commit the result; the build never runs npm.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version() { node -e "console.log(require('$here/package.json').dependencies['$1'])"; }
htmx="$(version htmx.org)"
sse="$(version htmx-ext-sse)"
cd "$work"
npm pack --silent "htmx.org@$htmx" "htmx-ext-sse@$sse" >/dev/null
mkdir htmx sse
tar xzf "htmx.org-$htmx.tgz" -C htmx
tar xzf "htmx-ext-sse-$sse.tgz" -C sse
rm -f "$here"/htmx-*.min.js
cp htmx/package/dist/htmx.min.js "$here/htmx-$htmx.min.js"
cp htmx/package/LICENSE "$here/htmx.LICENSE"
cp sse/package/dist/sse.min.js "$here/htmx-ext-sse-$sse.min.js"
cp sse/package/LICENSE "$here/htmx-ext-sse.LICENSE"
echo "vendored htmx $htmx and htmx-ext-sse $sse; update the file names in console/src/assets.rs"
