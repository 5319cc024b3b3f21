#!/usr/bin/env bash
# The Grafana dashboard (deploy/grafana/modelgw-dashboard.json) against Grafana's own schema:
# the `@grafana/schema` package (the TypeScript types Grafana generates from its CUE schema of
# dashboards and panel plugins) and `tsc`. schema-check.mjs writes the JSON as typed object
# literals — the dashboard as a `Dashboard`, each panel with its plugin's `Options` — so a
# property the schema does not have, a missing required one or a value outside its union fails.
# A known-bad copy (a legend placement Grafana does not have) must fail too: the check cannot
# pass by resolving nothing.
#
# That every query names a metric the processes expose is checked over real processes by
# tests/e2e/tests/metrics_dashboard.rs (with gridPos, ids and datasources).
#
# Usage: tests/grafana/run.sh [dashboard.json]
# Needs node and npm (installed with apt-get when missing); @grafana/schema and typescript are
# installed once into a cached prefix, then the check runs offline.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${MODELGW_CACHE:-$HOME/.cache/modelgw}"
SCHEMA_VERSION="13.2.3"
TYPESCRIPT_VERSION="5.9.3"
PREFIX="$CACHE/tools/grafana-schema-$SCHEMA_VERSION-typescript-$TYPESCRIPT_VERSION"
DASHBOARD="${1:-deploy/grafana/modelgw-dashboard.json}"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -f "$PREFIX/node_modules/@grafana/schema/package.json" ] \
  || [ ! -f "$PREFIX/node_modules/typescript/bin/tsc" ]; then
  echo "installing @grafana/schema@$SCHEMA_VERSION and typescript@$TYPESCRIPT_VERSION into $PREFIX"
  mkdir -p "$PREFIX"
  npm install --prefix "$PREFIX" --no-audit --no-fund --no-save --loglevel=error \
    "@grafana/schema@$SCHEMA_VERSION" "typescript@$TYPESCRIPT_VERSION"
fi

WORK="$(mktemp -d "$PREFIX/check.XXXXXX")" # inside the prefix: `tsc` finds node_modules above it
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/tsconfig.json" <<'JSON'
{
  "compilerOptions": {
    "strict": true,
    "noEmit": true,
    "module": "esnext",
    "moduleResolution": "bundler",
    "target": "es2022",
    "skipLibCheck": true,
    "types": []
  },
  "files": ["dashboard.ts"]
}
JSON
check() {
  node tests/grafana/schema-check.mjs "$1" "$WORK/dashboard.ts" \
    && node "$PREFIX/node_modules/typescript/bin/tsc" -p "$WORK"
}

# Negative control first.
sed '0,/"placement": "bottom"/s//"placement": "left"/' "$DASHBOARD" >"$WORK/bad.json"
if check "$WORK/bad.json" >"$WORK/bad.log" 2>&1; then
  echo "grafana schema check: a dashboard with legend placement \"left\" passed; the check checks nothing" >&2
  exit 1
fi
grep -q 'LegendPlacement' "$WORK/bad.log" || {
  echo "grafana schema check: the known-bad dashboard failed for another reason:" >&2
  cat "$WORK/bad.log" >&2
  exit 1
}

check "$DASHBOARD"
echo "grafana schema check: $DASHBOARD is a valid dashboard for @grafana/schema $SCHEMA_VERSION"
