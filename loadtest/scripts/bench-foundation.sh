#!/usr/bin/env bash
# Benchmark for the core request path (issue 2):
#  1. warm synchronous invocations of the native echo function through fngate
#     (HTTPS, TLS 1.3, HTTP/1.1 keep-alive) versus calling the echo function
#     directly (plain HTTP/1.1 keep-alive), same machine, alternating rounds;
#  2. cold-start latency (first invocation) of the native and the Python function.
# Client pinned to core 0, server side (gateway + instance, or echo alone) to core 1.
# Writes loadtest/results/foundation.md. Loopback only.
#
# Env: ROUNDS (3), DURATION (10s), CONNS (64), COLD_SAMPLES (5).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
COLD_SAMPLES=${COLD_SAMPLES:-5}
OUT=loadtest/results/foundation.md

source loadtest/scripts/lib.sh

DIRECT=127.0.0.1:18081
"${CORE1[@]}" "$T/fngate-echo" --standalone "$DIRECT" 2>/dev/null &
pids+=($!)

{
    echo '[gateway]'
    echo 'listen = "127.0.0.1:18443"'
    echo 'admin_listen = "127.0.0.1:19464"'
    echo "self_signed_cert_path = \"$work/ca.pem\""
    echo '[[functions]]'
    echo 'name = "echo"'
    echo "command = [\"$T/fngate-echo\"]"
    echo 'instance_concurrency = 100'
    for i in $(seq 1 "$COLD_SAMPLES"); do
        echo "[[functions]]"
        echo "name = \"cold-native-$i\""
        echo "command = [\"$T/fngate-echo\"]"
        echo "[[functions]]"
        echo "name = \"cold-python-$i\""
        echo "command = [\"python3\", \"$PWD/config/functions/hello.py\"]"
    done
} > "$work/gateway.toml"
start_gateway "$work/gateway.toml"
GW_URL=https://127.0.0.1:18443/2023-03-30/functions

# Cold starts: each function is invoked once, so each sample is a first invocation.
cold_native=(); cold_python=()
for i in $(seq 1 "$COLD_SAMPLES"); do
    cold_native+=("$("${LT[@]}" --url "$GW_URL/cold-native-$i/invocations" --cacert "$work/ca.pem" -c 1 --requests 1 -d 30s --json | field p50_ms)")
    cold_python+=("$("${LT[@]}" --url "$GW_URL/cold-python-$i/invocations" --cacert "$work/ca.pem" -c 1 --requests 1 -d 30s --json | field p50_ms)")
done

# Warm: one untimed pass to start the instance, then alternating rounds.
"${LT[@]}" --url "$GW_URL/echo/invocations" --cacert "$work/ca.pem" -c "$CONNS" -d 2s --json >/dev/null
direct=(); gateway=()
for r in $(seq 1 "$ROUNDS"); do
    direct+=("$("${LT[@]}" --url "http://$DIRECT/invoke" -c "$CONNS" -d "$DURATION" --warmup 1s --json)")
    gateway+=("$("${LT[@]}" --url "$GW_URL/echo/invocations" --cacert "$work/ca.pem" -c "$CONNS" -d "$DURATION" --warmup 1s --json)")
    echo "round $r: direct ${direct[-1]}" >&2
    echo "round $r: gateway ${gateway[-1]}" >&2
done

python3 - "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" \
    "$(printf '%s\n' "${direct[@]}")" "$(printf '%s\n' "${gateway[@]}")" \
    "${cold_native[*]}" "${cold_python[*]}" <<'PY'
import json, statistics, sys, datetime
out, rounds, duration, conns, cores, d, g, cn, cp = sys.argv[1:]
d = [json.loads(l) for l in d.splitlines()]
g = [json.loads(l) for l in g.splitlines()]
cn = [float(x) for x in cn.split()]
cp = [float(x) for x in cp.split()]
sys.path.insert(0, "loadtest/scripts")
from summary import med, rng
for r in d + g:
    bad = sum(v for k, v in r["statuses"].items() if k != "200") + r["errors"]
    assert bad == 0, f"non-200 answers in a benchmark round: {r}"
lines = [
    "# Foundation benchmark (issue 2)",
    "",
    f"Produced by `loadtest/scripts/bench-foundation.sh` on {datetime.date.today()} ({cores} cores).",
    f"Closed loop, {conns} HTTP/1.1 keep-alive connections, {duration} per round after 1 s warm-up,",
    f"{rounds} alternating rounds (direct, gateway, direct, ...); medians with min-max.",
    "Client (`loadtest`, 1 thread) pinned to core 0; server side pinned to core 1",
    "(direct: the echo process alone; gateway: fngate with its embedded worker and the echo instance).",
    "",
    "| path | requests/s | p50 ms | p99 ms |",
    "|---|---|---|---|",
    f"| echo called directly (plain HTTP) | {med(d,'rps'):.0f} ({rng(d,'rps','.0f')}) | {med(d,'p50_ms'):.2f} | {med(d,'p99_ms'):.2f} ({rng(d,'p99_ms','.2f')}) |",
    f"| echo through fngate (HTTPS, TLS 1.3) | {med(g,'rps'):.0f} ({rng(g,'rps','.0f')}) | {med(g,'p50_ms'):.2f} | {med(g,'p99_ms'):.2f} ({rng(g,'p99_ms','.2f')}) |",
    "",
    f"Ratio fngate / direct: requests/s {med(g,'rps')/med(d,'rps'):.2f}x, p99 {med(g,'p99_ms')/med(d,'p99_ms'):.2f}x.",
    "",
    "Cold start (first invocation through fngate, HTTPS, one sample per fresh function):",
    "",
    "| function | median ms | min-max ms |",
    "|---|---|---|",
    f"| native echo | {statistics.median(cn):.1f} | {min(cn):.1f}-{max(cn):.1f} |",
    f"| Python (stdlib http.server) | {statistics.median(cp):.1f} | {min(cp):.1f}-{max(cp):.1f} |",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
