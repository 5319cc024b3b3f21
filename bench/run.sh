#!/usr/bin/env bash
# The Model Gateway performance benchmark, in one command:
#
#   bash bench/run.sh [--quick] [--duration SECS] [--rounds N] [--only load,stream,…,flood]
#                     [--report PATH | --no-report] [--modelgw BINARY]
#
# `--modelgw BINARY` measures that binary instead of the fresh build (a later flag overrides
# the one this script passes), e.g. a release build of an older commit for a before/after.
#
# Results go into BENCHMARKS.md (between its bench markers) unless another --report PATH or
# --no-report (print only) is given.
#
# Installs what is missing (nginx with the echo module from Debian, oha from crates.io),
# builds modelgw and the benchmark in release mode and runs it. Everything listens on
# 127.0.0.1; every process the benchmark starts is stopped when it ends. See BENCHMARKS.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS="$HOME/.cache/modelgw/tools"
OHA="$TOOLS/bin/oha"
ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so

# 1. nginx + echo module (the fake Azure upstream and the nginx baseline).
if ! command -v nginx >/dev/null 2>&1 || [ ! -f "$ECHO_MODULE" ]; then
    echo "bench: installing nginx-light and libnginx-mod-http-echo" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-http-echo >/dev/null
fi

# 2. oha, the load generator.
if [ ! -x "$OHA" ]; then
    echo "bench: installing oha into $TOOLS" >&2
    cargo install oha --locked --version 1.16.0 --root "$TOOLS"
fi

# 3. Many connections at once (1,000 open streams, 64-connection load through two hops).
# Inherited by every process the benchmark starts. A sandbox may cap the hard limit below
# 65536; its maximum then (the benchmark needs a few thousand).
if ! ulimit -n 65536 2>/dev/null; then
    ulimit -n "$(ulimit -Hn)"
    echo "bench: open-file limit capped at $(ulimit -n) (could not raise it to 65536)" >&2
fi

# 4. Release builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/modelgw/target}"
cargo build --release --locked -p modelgw -p modelgw-bench

# 5. Run.
export MODELGW_BENCH_COMMAND="bash bench/run.sh${*:+ $*}"
exec "$CARGO_TARGET_DIR/release/modelgw-bench" \
    --modelgw "$CARGO_TARGET_DIR/release/modelgw" \
    --oha "$OHA" \
    --report BENCHMARKS.md \
    "$@"
