#!/usr/bin/env bash
# The admin API against its own OpenAPI document: schemathesis (every check, every phase,
# stateful included) drives a real control plane — the `modelgw` binary on a temporary SQLite
# database with a generated admin token — and fails on any response the document does not
# allow, and on any request the document calls valid that the API refuses (or the reverse).
#
# Usage: tests/schemathesis/run.sh [path/to/modelgw]   (default: $CARGO_TARGET_DIR/debug/modelgw)
# Needs python3 with venv; schemathesis is installed into a cached virtualenv.
# MODELGW_SCHEMATHESIS_EXAMPLES sets the examples per operation and phase (default 30).
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${MODELGW_CACHE:-$HOME/.cache/modelgw}"
SCHEMATHESIS_VERSION="4.32.5"
EXAMPLES="${MODELGW_SCHEMATHESIS_EXAMPLES:-30}"
BIN="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/modelgw/target}/debug/modelgw}"
[ -x "$BIN" ] || { echo "schemathesis: no modelgw binary at $BIN" >&2; exit 1; }

VENV="$CACHE/venv-schemathesis-$SCHEMATHESIS_VERSION"
if ! "$VENV/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK="$(mktemp -d)"
CP_PID=""
cleanup() {
  if [ -n "$CP_PID" ]; then kill "$CP_PID" 2>/dev/null || true; wait "$CP_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A fresh admin token (64 hex characters) and database for this run only.
TOKEN="mgwadm_st_$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
mkfifo "$WORK/stdout"
# No Azure credential and no instance metadata service here: discoveries start (202) and
# fail in the background with a per-scope error, which is what the document says.
env -u MODELGW_MASTER_KEY -u MODELGW_MASTER_KEY_FILE \
  MODELGW_DATABASE_URL="sqlite://$WORK/modelgw.db" \
  MODELGW_ADMIN_ADDR=127.0.0.1:0 MODELGW_GRPC_ADDR=127.0.0.1:0 MODELGW_METRICS_ADDR=127.0.0.1:0 \
  MODELGW_ADMIN_TOKEN="$TOKEN" MODELGW_LOG_FORMAT=text NO_COLOR=1 RUST_LOG="${RUST_LOG:-error}" \
  "$BIN" control-plane >"$WORK/stdout" 2>"$WORK/control-plane.log" &
CP_PID=$!
ADMIN=""
exec 3<"$WORK/stdout"
while IFS= read -r -t 60 line <&3; do
  case "$line" in
    "modelgw control-plane ready:"*)
      ADMIN="$(sed -n 's/.* admin=\([^ ]*\).*/\1/p' <<<"$line")"
      break ;;
  esac
done
if [ -z "$ADMIN" ]; then
  echo "schemathesis: the control plane did not get ready" >&2
  cat "$WORK/control-plane.log" >&2
  exit 1
fi
# Keep draining its stdout so it never blocks on a full pipe.
cat <&3 >/dev/null &

echo "schemathesis $SCHEMATHESIS_VERSION: every check, $EXAMPLES examples per operation, against $ADMIN"
st() {
  "$VENV/bin/schemathesis" --config-file tests/schemathesis/schemathesis.toml run \
    "$ADMIN/api/v1/openapi.json" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$EXAMPLES" \
    --header "Authorization: Bearer $TOKEN" \
    --generation-database none \
    --no-color "$@"
}
status=0
st || status=$?
# Schemathesis leaves out the operation that serves the document it reads (GET
# /api/v1/openapi.json) unless it is named; it is part of the contract too.
st --include-operation-id get_openapi_document || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis failed (exit $status); the control plane's log:" >&2
  tail -n 50 "$WORK/control-plane.log" >&2
fi
exit "$status"
