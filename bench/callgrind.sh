#!/usr/bin/env bash
# Instructions per proxied request, in user space, of the data plane's request path:
#
#   bash bench/callgrind.sh [MODELGW_BINARY ...]
#   CALLGRIND_VARIANTS="plain keyed" bash bench/callgrind.sh [MODELGW_BINARY ...]
#
# CALLGRIND_VARIANTS (default `plain`) lists the gateway configurations measured, each on its
# own control plane, for each binary:
#   plain — a key without limits, traces off;
#   keyed — a key with every limit set (10^12 in each window and measure: enforced, never
#           reached; its answers must carry the key's x-ratelimit-* headers) on a gateway that
#           records request traces, metadata only (they must reach the control plane, and none
#           may be admitted without a budget grant or dropped). Issue #14's cost of both;
#   limits — the key's limits alone; traces — the gateway's traces alone (its key unlimited).
#
# CALLGRIND_THREADS=1 also prints each thread's instructions per request (valgrind's
# --separate-threads; threads numbered in start order: the serving thread `modelgw-worker-0` is
# the request path, the others the runtime the control-plane client runs on, the log writer…).
#
# CALLGRIND_OUT_DIR=dir keeps the callgrind files there (callgrind.bin<i>.<requests>) for a look
# with `callgrind_annotate`: the per-function difference of the two runs is where a request's
# instructions go.
#
# For each binary (default: the release build), one data plane with one serving thread runs
# under valgrind's callgrind in front of a mock Azure region (`modelgw mock-azure`), with a
# control plane on SQLite; it serves N1 requests in one run and N2 in another, and
# (Ir(N2) − Ir(N1)) / (N2 − N1) leaves out start-up, snapshot apply and shutdown. Instruction
# counts do not depend on machine noise, so two binaries compare in one run (BENCHMARKS.md).
# Everything listens on 127.0.0.1; every process is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/modelgw/target}"
OHA="$HOME/.cache/modelgw/tools/bin/oha"
N1="${CALLGRIND_N1:-500}"
N2="${CALLGRIND_N2:-2500}"
command -v valgrind >/dev/null || { echo "callgrind: valgrind is not installed" >&2; exit 1; }
[ -x "$OHA" ] || { echo "callgrind: run bench/run.sh once (it installs oha)" >&2; exit 1; }
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
    echo "callgrind: no ready line in $file" >&2
    cat "${file%.out}.err" >&2 || true
    return 1
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

# Prints the value of metric $2 (no labels) in the scrape at URL $1; 0 when absent.
metric() {
    curl -sf "$1" | awk -v name="$2" '$1 == name { print $2; found = 1 } END { if (!found) print 0 }'
}

measure() {
    local bin="$1" tag="$2" variant="$3"
    local api_key="azkey-callgrind-0001" token="mgwadm_callgrind_0123456789abcdef_$$"

    MODELGW_MOCK_API_KEY="$api_key" "$bin" mock-azure --region "East US" \
        --deployment gpt-4o-mini >"$TMP/mock.$tag.out" 2>"$TMP/mock.$tag.err" &
    PIDS+=($!)
    local mock_url
    mock_url="$(ready_field "$TMP/mock.$tag.out" url)"
    # A quota the run never reaches, advertised in full x-ratelimit-* headers: the gateway's
    # quota estimate does its work on every answer, and no request is held back (the mock's
    # default headers say 1,000 requests a minute, which the two runs exceed). Binaries from
    # before the mock's quota control (issue #18) answer 404 and keep the default.
    curl -s -o /dev/null -X POST "$mock_url/_mock/quota" -H "Content-Type: application/json" \
        -d '{"requests_per_sec":1000000,"tokens_per_sec":1000000000,"window_ms":60000,"headers":"full"}' \
        || true

    # A plaintext distribution port: the measurement is the request path, and binaries from
    # before the port's TLS (which ignore these variables) speak plaintext anyway.
    MODELGW_DATABASE_URL="sqlite://$TMP/cp-$tag.db" MODELGW_ADMIN_ADDR=127.0.0.1:0 \
        MODELGW_GRPC_ADDR=127.0.0.1:0 MODELGW_METRICS_ADDR=127.0.0.1:0 \
        MODELGW_ADMIN_TOKEN="$token" RUST_LOG=warn MODELGW_INSECURE_GRPC=true \
        "$bin" control-plane >"$TMP/cp.$tag.out" 2>"$TMP/cp.$tag.err" &
    PIDS+=($!)
    local admin grpc
    admin="$(ready_field "$TMP/cp.$tag.out" admin)"
    grpc="$(ready_field "$TMP/cp.$tag.out" grpc)"
    local api=(curl -sf -H "Authorization: Bearer $token" -H "Content-Type: application/json")
    local endpoint gateway key
    endpoint="$("${api[@]}" -X POST "$admin/api/v1/inference-endpoints" -d "{\"name\":\"eus\",\
\"platform\":\"azure_openai\",\"endpoint\":\"$mock_url\",\"deployment\":\"gpt-4o-mini\",\
\"model_name\":\"gpt-4o-mini\",\"model_version\":\"2024-07-18\",\"region\":\"East US\",\
\"api_key\":\"$api_key\"}" | json_field id)"
    local traces="" limits="" has_limits=false has_traces=false
    case "$variant" in keyed | limits) has_limits=true ;; esac
    case "$variant" in keyed | traces) has_traces=true ;; esac
    if $has_limits; then
        local l=1000000000000
        local w="{\"requests\":$l,\"prompt_tokens\":$l,\"completion_tokens\":$l,\"total_tokens\":$l}"
        limits=",\"limits\":{\"per_minute\":$w,\"per_hour\":$w,\"per_day\":$w}"
    fi
    if $has_traces; then
        traces=',"traces":{"enabled":true,"capture_payload":false}'
    fi
    gateway="$("${api[@]}" -X POST "$admin/api/v1/gateways" -d "{\"name\":\"chat\",\
\"endpoints\":[{\"endpoint_id\":\"$endpoint\",\"enabled\":true,\"priority\":0,\"weight\":1}]$traces}" \
        | json_field id)"
    key="$("${api[@]}" -X POST "$admin/api/v1/gateways/$gateway/keys" -d "{\"name\":\"bench\"$limits}" \
        | json_field key)"

    local body='{"messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
    local totals=()
    for n in "$N1" "$N2"; do
        local out="$TMP/callgrind.$tag.$n"
        MODELGW_WORKERS=1 MODELGW_GATEWAY_ADDR=127.0.0.1:0 MODELGW_NODE_ID="cg-$tag-$n" \
            MODELGW_METRICS_ADDR=127.0.0.1:0 \
            MODELGW_ALLOW_LOOPBACK_UPSTREAMS=true MODELGW_INSECURE_CONTROL_PLANE=true \
            MODELGW_CONTROL_PLANE_URL="$grpc" \
            valgrind --tool=callgrind --callgrind-out-file="$out" \
            --separate-threads="$([ -n "${CALLGRIND_THREADS:-}" ] && echo yes || echo no)" \
            "$bin" data-plane \
            >"$TMP/dp.$tag.$n.out" 2>"$TMP/dp.$tag.$n.err" &
        local dp_pid=$!
        PIDS+=("$dp_pid")
        local url metrics
        url="$(ready_field "$TMP/dp.$tag.$n.out" gateway)"
        metrics="$(ready_field "$TMP/dp.$tag.$n.out" metrics)"
        for _ in $(seq 1 600); do
            curl -sf "$url/readyz" >/dev/null && break
            sleep 0.1
        done
        # Budget grants follow the snapshot; the same pause in every run, so it cancels out.
        sleep 2
        local chat_url="$url/openai/deployments/chat/chat/completions?api-version=2024-10-21"
        # One request first: its answer says whether the key's limits apply.
        curl -sf -o /dev/null -D "$TMP/headers.$tag.$n" -H "api-key: $key" \
            -H "Content-Type: application/json" -d "$body" "$chat_url" \
            || { echo "callgrind: the first request failed ($variant)" >&2; exit 1; }
        if $has_limits; then
            grep -qi '^x-ratelimit-limit-requests: 1000000000000' "$TMP/headers.$tag.$n" \
                || { echo "callgrind: $variant answer without the key's x-ratelimit headers:" >&2; cat "$TMP/headers.$tag.$n" >&2; exit 1; }
        elif grep -qi '^x-ratelimit-limit-requests: 1000000000000' "$TMP/headers.$tag.$n"; then
            # (The mock region's own x-ratelimit-* headers pass through for a key without limits.)
            echo "callgrind: $variant answer with a key's x-ratelimit headers:" >&2; cat "$TMP/headers.$tag.$n" >&2; exit 1
        fi
        "$OHA" --no-tui -n "$n" -c 4 -m POST -H "api-key: $key" -T application/json -d "$body" \
            "$chat_url" >"$TMP/oha.$tag.$n" 2>&1
        grep -q '\[200\] '"$n"' responses' "$TMP/oha.$tag.$n" \
            || { echo "callgrind: not every request answered 200:" >&2; cat "$TMP/oha.$tag.$n" >&2; exit 1; }
        # Time for the last traces to ship (every second); the same in every run.
        sleep 3
        if $has_limits || $has_traces; then
            local open dropped queued
            open="$(metric "$metrics" modelgw_key_limit_fail_open_admissions_total)"
            dropped="$(metric "$metrics" modelgw_traces_dropped_total)"
            queued="$(metric "$metrics" modelgw_traces_queued)"
            [ "$open" = 0 ] && [ "$dropped" = 0 ] && [ "$queued" = 0 ] || {
                echo "callgrind: $variant run not as configured: $open admitted fail-open, $dropped traces dropped, $queued queued" >&2
                exit 1
            }
        fi
        kill -TERM "$dp_pid"
        wait "$dp_pid" 2>/dev/null || true
        if [ -n "${CALLGRIND_OUT_DIR:-}" ]; then
            mkdir -p "$CALLGRIND_OUT_DIR"
            cp "$out"* "$CALLGRIND_OUT_DIR/"
        fi
        local total=0 file ir
        for file in "$out" "$out"-*; do
            [ -f "$file" ] || continue
            # (With --separate-threads, `$out` itself holds no events.)
            ir="$(callgrind_annotate "$file" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)" || true
            total=$((total + ${ir:-0}))
            [ "$file" = "$out" ] || echo "${file##*-} ${ir:-0}" >>"$TMP/threads.$tag.$n"
        done
        totals+=("$total")
    done
    if [ -n "${CALLGRIND_THREADS:-}" ]; then
        # Per thread: (Ir(N2) − Ir(N1)) / (N2 − N1).
        join "$TMP/threads.$tag.$N1" "$TMP/threads.$tag.$N2" | while read -r thread a b; do
            printf '%s\t%s\tthread %s\tinstructions/request=%s\n' "$tag" "$variant" "$thread" \
                $(( (b - a) / (N2 - N1) ))
        done
    fi
    local stored=""
    if $has_traces; then
        local cp_metrics
        cp_metrics="$(ready_field "$TMP/cp.$tag.out" metrics)"
        for _ in $(seq 1 50); do
            stored="$(metric "$cp_metrics" modelgw_traces_stored_total)"
            [ "$stored" -ge $((N1 + N2 + 2)) ] && break
            sleep 0.2
        done
        [ "$stored" -ge $((N1 + N2 + 2)) ] || {
            echo "callgrind: the control plane stored $stored traces of $((N1 + N2 + 2)) requests" >&2
            exit 1
        }
        stored="$(printf '\ttraces stored=%s' "$stored")"
    fi
    local per=$(( (totals[1] - totals[0]) / (N2 - N1) ))
    printf '%s\t%s\t%s\tinstructions/request=%s\t(Ir %s requests: %s, %s requests: %s)%s\n' \
        "$tag" "$variant" "$bin" "$per" "$N1" "${totals[0]}" "$N2" "${totals[1]}" "$stored"
}

i=0
for bin in "$@"; do
    for variant in ${CALLGRIND_VARIANTS:-plain}; do
        case "$variant" in
            plain | keyed | limits | traces) ;;
            *) echo "callgrind: unknown variant $variant (plain, keyed, limits, traces)" >&2; exit 1 ;;
        esac
        measure "$bin" "bin$i-$variant" "$variant"
    done
    i=$((i + 1))
done
