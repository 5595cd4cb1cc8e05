#!/usr/bin/env bash
# Profile of the gateway on one path under load: the gateway (threads = 1)
# pinned to core 1 with its echo instance, the load generator on core 0.
#   perf  (default): `perf record` call graphs of the gateway process, then
#                    the top of `perf report` and CPU time per request
#                    (`perf stat`);
#   heap:  allocations per request, counted by valgrind's DHAT over a short,
#          fixed number of requests, on one connection (slow: the gateway
#          runs under valgrind).
# Installs linux-perf / valgrind from Debian when missing. Loopback only.
# Writes its reports to target/profile/.
#
# Usage: bash loadtest/scripts/profile.sh [perf|heap] [allowed|403|429] [h1|h2]
# Env: DURATION (10s), CONNS (64), REQUESTS (heap: 2000), GATEWAY (the
# gateway binary; default: this build's).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-perf}
PATH_=${2:-allowed}
PROTO=${3:-h1}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
REQUESTS=${REQUESTS:-2000}
case $MODE in
    perf) command -v perf >/dev/null || { apt-get update -qq; apt-get install -y -qq linux-perf; } ;;
    heap) command -v valgrind >/dev/null || { apt-get update -qq; apt-get install -y -qq valgrind; } ;;
    *) echo "usage: profile.sh [perf|heap] [allowed|403|429] [h1|h2]" >&2; exit 2 ;;
esac
source loadtest/scripts/lib.sh
out=target/profile
mkdir -p "$out"
cat > "$work/gateway.toml" <<TOML
[gateway]
listen = "127.0.0.1:18643"
admin_listen = "127.0.0.1:18644"
self_signed_cert_path = "$work/ca.pem"
threads = 1
TOML
path_functions_toml >> "$work/gateway.toml"
url="https://127.0.0.1:18643/2023-03-30/functions/$(path_function "$PATH_")/invocations"
extra=(); [ "$PROTO" = h2 ] && extra=(--http2)
tag="$MODE-$PATH_-$PROTO"

if [ "$MODE" = perf ]; then
    start_gateway "$work/gateway.toml" "${GATEWAY:-$T/gateway}"
    "${LT[@]}" --url "$url" --cacert "$work/ca.pem" -c "$CONNS" -d 2s "${extra[@]}" >/dev/null   # warm up
    "${LT[@]}" --url "$url" --cacert "$work/ca.pem" -c "$CONNS" -d "$DURATION" "${extra[@]}" --json > "$work/load.json" &
    load=$!
    perf stat -e task-clock,context-switches -p "$GW_PID" -o "$work/stat.txt" -- sleep 4 &
    stat=$!
    perf record -e cpu-clock -F 999 -g --call-graph dwarf,16384 -p "$GW_PID" -o "$out/$tag.data" -- sleep 4 2>/dev/null
    wait "$stat" "$load"
    rps=$(field rps < "$work/load.json")
    cat "$work/stat.txt"
    # (Virtual machines often have no hardware counters: CPU time, not
    # instructions, per request.)
    awk -v rps="$rps" '/task-clock/ {gsub(",","",$1); printf "gateway CPU per request: %.1f µs (at %.0f requests/s)\n", $1*1000/(rps*4), rps}' "$work/stat.txt"
    # (Whole reports to files first: `head` on a pipe would fail the script.)
    perf report -i "$out/$tag.data" --no-children --percent-limit 0.7 --stdio > "$out/$tag.txt" 2>/dev/null
    perf report -i "$out/$tag.data" --no-children --sort dso,symbol --percent-limit 0.3 --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' > "$out/$tag-flat.txt" || true
    head -60 "$out/$tag-flat.txt"
    echo "by library:"
    perf report -i "$out/$tag.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' || true
    echo "call graphs: $out/$tag.txt; raw: perf report -i $out/$tag.data" >&2
else
    # Two runs, N and 2N requests: the difference is what N requests cost,
    # start-up and warm-up excluded.
    for n in "$REQUESTS" $((2 * REQUESTS)); do
        RUST_LOG=warn valgrind --tool=dhat --dhat-out-file="$out/$tag-$n.dhat.json" \
            "${GATEWAY:-$T/gateway}" --config "$work/gateway.toml" 2> "$work/gateway.log" &
        GW_PID=$!
        for _ in $(seq 1 600); do grep -q "fngate listening" "$work/gateway.log" && break; sleep 0.1; done
        "$T/loadtest" --url "$url" --cacert "$work/ca.pem" -c 1 -d 600s --requests 200 "${extra[@]}" >/dev/null
        "$T/loadtest" --url "$url" --cacert "$work/ca.pem" -c 1 -d 600s --requests "$n" "${extra[@]}" >/dev/null
        kill -INT "$GW_PID"; wait "$GW_PID" || true
    done
    python3 - "$out/$tag-$REQUESTS.dhat.json" "$out/$tag-$((2 * REQUESTS)).dhat.json" "$REQUESTS" <<'PY'
import json, sys
def totals(path):  # DHAT: "tbk" total blocks, "tb" total bytes
    d = json.load(open(path))
    return sum(p["tbk"] for p in d["pps"]), sum(p["tb"] for p in d["pps"])
(k1, b1), (k2, b2), n = totals(sys.argv[1]), totals(sys.argv[2]), int(sys.argv[3])
print(f"heap allocations per request: {(k2 - k1) / n:.1f} blocks, {(b2 - b1) / n:.0f} bytes")
PY
    echo "by call site: load $out/$tag-$((2 * REQUESTS)).dhat.json in DHAT's viewer (dh_view.html, shipped with valgrind)" >&2
fi
