#!/usr/bin/env bash
# System calls, context switches and user/system CPU per proxied request of the data plane:
#
#   N=20000 OUT=/tmp/syscalls bash bench/syscalls.sh MODELGW_BINARY [MODELGW_BINARY ...]
#
# For each binary: a mock Azure region, a control plane on SQLite and one data plane (default
# serving threads); oha sends 3,000 warm-up requests, then three rounds of N requests over 64
# connections while `perf stat -p` counts the data plane's system calls (per-syscall
# tracepoints) and context switches. Counts of system calls do not depend on machine noise, so
# binaries compare in one run (alternate them: A B A B). Results: $OUT/<bin>.r<round>.perf and
# $OUT/summary (utime/stime ticks before and after each round). Loopback only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/modelgw/target}"
OHA="$HOME/.cache/modelgw/tools/bin/oha"
N="${N:-20000}"
OUT="${OUT:-$(mktemp -d)}"; mkdir -p "$OUT"
[ -x "$OHA" ] || { echo "syscalls: run bench/run.sh once (it installs oha)" >&2; exit 1; }
if [ "$#" -eq 0 ]; then
    cargo build --release --locked -p modelgw
    set -- "$CARGO_TARGET_DIR/release/modelgw"
fi

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# Waits for `modelgw <component> ready:` in $1 and prints the value of field $2.
ready_field() {
    local file="$1" key="$2"
    for _ in $(seq 1 600); do
        if grep -q " ready:" "$file" 2>/dev/null; then
            grep " ready:" "$file" | head -n1 | tr ' ' '\n' | sed -n "s/^$key=//p"
            return 0
        fi
        sleep 0.1
    done
    echo "syscalls: no ready line in $file" >&2
    cat "${file%.out}.err" >&2 || true
    return 1
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

measure() {
    local bin="$1" tag="$2"
    local api_key="azkey-syscalls-0001" token="mgwadm_syscalls_0123456789abcdef_$$"

    MODELGW_MOCK_API_KEY="$api_key" "$bin" mock-azure --region "East US" \
        --deployment gpt-4o-mini >"$TMP/mock.$tag.out" 2>"$TMP/mock.$tag.err" &
    local mock_pid=$!
    PIDS+=("$mock_pid")
    local mock_url
    mock_url="$(ready_field "$TMP/mock.$tag.out" url)"

    # A plaintext distribution port: the measurement is the request path, and binaries from
    # before the port's TLS (which ignore these variables) speak plaintext anyway.
    MODELGW_DATABASE_URL="sqlite://$TMP/cp-$tag.db" MODELGW_ADMIN_ADDR=127.0.0.1:0 \
        MODELGW_GRPC_ADDR=127.0.0.1:0 MODELGW_METRICS_ADDR=127.0.0.1:0 \
        MODELGW_ADMIN_TOKEN="$token" RUST_LOG=warn MODELGW_INSECURE_GRPC=true \
        "$bin" control-plane >"$TMP/cp.$tag.out" 2>"$TMP/cp.$tag.err" &
    local cp_pid=$!
    PIDS+=("$cp_pid")
    local admin grpc
    admin="$(ready_field "$TMP/cp.$tag.out" admin)"
    grpc="$(ready_field "$TMP/cp.$tag.out" grpc)"
    local api=(curl -sf -H "Authorization: Bearer $token" -H "Content-Type: application/json")
    local endpoint gateway key
    endpoint="$("${api[@]}" -X POST "$admin/api/v1/inference-endpoints" -d "{\"name\":\"eus\",\
\"platform\":\"azure_openai\",\"endpoint\":\"$mock_url\",\"deployment\":\"gpt-4o-mini\",\
\"model_name\":\"gpt-4o-mini\",\"model_version\":\"2024-07-18\",\"region\":\"East US\",\
\"api_key\":\"$api_key\"}" | json_field id)"
    gateway="$("${api[@]}" -X POST "$admin/api/v1/gateways" -d "{\"name\":\"chat\",\
\"endpoints\":[{\"endpoint_id\":\"$endpoint\",\"enabled\":true,\"priority\":0,\"weight\":1}]}" \
        | json_field id)"
    key="$("${api[@]}" -X POST "$admin/api/v1/gateways/$gateway/keys" -d '{"name":"bench"}' \
        | json_field key)"

    local body='{"messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
    MODELGW_GATEWAY_ADDR=127.0.0.1:0 MODELGW_NODE_ID="ps-$tag" \
        MODELGW_ALLOW_LOOPBACK_UPSTREAMS=true MODELGW_INSECURE_CONTROL_PLANE=true \
        MODELGW_CONTROL_PLANE_URL="$grpc" MODELGW_METRICS_ADDR="${DP_METRICS:-127.0.0.1:0}" \
        "$bin" data-plane >"$TMP/dp.$tag.out" 2>"$TMP/dp.$tag.err" &
    local dp_pid=$!
    PIDS+=("$dp_pid")
    local url
    url="$(ready_field "$TMP/dp.$tag.out" gateway)"
    for _ in $(seq 1 600); do
        curl -sf "$url/readyz" >/dev/null && break
        sleep 0.1
    done
    local target="$url/openai/deployments/chat/chat/completions?api-version=2024-10-21"
    "$OHA" --no-tui -n 3000 -c 64 -m POST -H "api-key: $key" -T application/json -d "$body" "$target" >/dev/null 2>&1
    for round in 1 2 3; do
        perf stat -x, -o "$OUT/$tag.r$round.perf" -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_futex,syscalls:sys_enter_accept4,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_clock_gettime,syscalls:sys_enter_timerfd_settime,syscalls:sys_enter_close,syscalls:sys_enter_setsockopt,syscalls:sys_enter_connect,syscalls:sys_enter_socket -p "$dp_pid" &
        local perf_pid=$!
        sleep 0.3
        local before after
        before="$(awk "{print \$14, \$15}" /proc/$dp_pid/stat)"
        "$OHA" --no-tui -n "$N" -c 64 -m POST -H "api-key: $key" -T application/json -d "$body" "$target" >"$OUT/$tag.r$round.oha" 2>&1
        after="$(awk "{print \$14, \$15}" /proc/$dp_pid/stat)"
        kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
        grep -q '\['"200"'\] '"$N"' responses' "$OUT/$tag.r$round.oha" || { echo "not all 200" >&2; cat "$OUT/$tag.r$round.oha" >&2; }
        echo "$tag round $round before=($before) after=($after)" >> "$OUT/summary"
    done
    # Nothing of this binary keeps running into the next one's rounds.
    kill -TERM "$dp_pid" "$cp_pid" "$mock_pid" 2>/dev/null || true
    wait "$dp_pid" "$cp_pid" "$mock_pid" 2>/dev/null || true
}

i=0
for bin in "$@"; do
    measure "$bin" "bin$i"
    i=$((i + 1))
done
