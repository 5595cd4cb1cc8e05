#!/usr/bin/env bash
# Before/after benchmark of a gateway change: the gateway built from git
# revision BASE ("before") against the working tree ("after"), same run,
# alternating rounds, on the paths of bench-peers.sh: allowed, 403 (a
# VPC-only function called from outside) and 429 (rate-limited), over
# HTTP/1.1 and HTTP/2; plus resident memory with 1,000 idle TLS connections.
# Both gateways run at once (the idle one costs nothing), pinned to core 1
# with their instances; the client on core 0. Loopback only.
# Writes loadtest/results/ab.md.
#
# Usage: bash loadtest/scripts/bench-ab.sh BASE
# Env: ROUNDS (3), DURATION (5s), CONNS (64), THREADS (the gateway's
# `threads`; unset: its default, one per core), UNPIN (1: nothing pinned,
# the client with 2 threads: the two-core layout of bench-peers.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: bench-ab.sh BASE-REVISION}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
OUT=loadtest/results/ab.md
base_rev=$(git rev-parse --short "$BASE")
after_rev="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway sandbox-runtime || echo '+changes')"
ulimit -n "$(ulimit -Hn)"
source loadtest/scripts/lib.sh   # builds the working tree
if [ "${UNPIN:-}" = 1 ]; then place 2; fi

cp "$T/gateway" "$work/gateway-after"
build_base "$BASE" "$work/gateway-before"

F=/2023-03-30/functions
declare -A PORT=([before]=18443 [after]=18444) PID=()
for v in before after; do
    # A directory each: what a gateway keeps beside its config (the task
    # store) must not be shared.
    mkdir -p "$work/$v"
    printf '[gateway]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nself_signed_cert_path = "%s"\n' \
        "${PORT[$v]}" $((PORT[$v] + 1000)) "$work/ca-${PORT[$v]}.pem" > "$work/$v/gateway.toml"
    [ -n "${THREADS:-}" ] && echo "threads = $THREADS" >> "$work/$v/gateway.toml"
    path_functions_toml >> "$work/$v/gateway.toml"
    start_gateway "$work/$v/gateway.toml" "$work/gateway-$v"
    PID[$v]=$GW_PID
done

run() { # VERSION PATH PROTO DURATION
    local fn; fn=$(path_function "$2")
    local extra=(); [ "$3" = h2 ] && extra=(--http2)
    GW_PID=${PID[$1]}
    measure --url "https://127.0.0.1:${PORT[$1]}$F/$fn/invocations" --cacert "$work/ca-${PORT[$1]}.pem" \
        -c "$CONNS" -d "$4" --source 127.0.0.1 "${extra[@]}"
}
for v in before after; do for p in allowed 403 429; do run $v $p h1 1s >/dev/null; done; done   # warm up

results="$work/results.jsonl"
: > "$results"
for r in $(seq 1 "$ROUNDS"); do
    for path in allowed 403 429; do
        for proto in h1 h2; do
            for v in before after; do
                line=$(run "$v" "$path" "$proto" "$DURATION")
                echo "{\"v\":\"$v\",\"path\":\"$path\",\"proto\":\"$proto\",\"r\":$line}" >> "$results"
                echo "round $r $path $proto $v: $line" >&2
            done
        done
    done
done

mem="$work/memory.jsonl"
: > "$mem"
for v in before after; do
    read -r idle held < <(idle_and_held "https://127.0.0.1:${PORT[$v]}$F/echo/invocations" "$work/ca-${PORT[$v]}.pem" "${PID[$v]}")
    echo "{\"v\":\"$v\",\"idle_kb\":$idle,\"held_kb\":$held}" >> "$mem"
    echo "memory $v: $idle kB idle, $held kB with 1000 connections" >&2
done

python3 - "$OUT" "$results" "$mem" "$base_rev" "$after_rev" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" "${UNPIN:-0}" "${THREADS:-default}" <<'PY'
import collections, datetime, json, sys
sys.path.insert(0, "loadtest/scripts")
from summary import cells, med, share
out, results, mem, base_rev, after_rev, rounds, duration, conns, cores, unpin, threads = sys.argv[1:]
placement = ("Nothing pinned: both gateways, their echo instances and the client (2 threads) share the cores"
             if unpin == "1" else "Both gateways pinned to core 1 with their echo instances, the client to core 0")
by = collections.defaultdict(list)
for x in map(json.loads, open(results)):
    by[(x["v"], x["path"], x["proto"])].append(x["r"])
want = {"allowed": "200", "403": "403", "429": "429"}
lines = [
    "# Before/after: one gateway change, same run",
    "",
    f"Produced by `bash loadtest/scripts/bench-ab.sh {base_rev}` on {datetime.date.today()} ({cores} cores):",
    f"**before** = `{base_rev}`, **after** = `{after_rev}`. Closed loop, {conns} connections, {duration} per run,",
    f"{rounds} alternating rounds; medians with min-max; gateway `threads`: {threads}. {placement};",
    "TLS 1.3. CPU is the gateway process's own, per request.",
    "",
    "| path | protocol | version | requests/s | p50 ms | p99 ms | gateway CPU µs/request | expected status |",
    "|---|---|---|---|---|---|---|---|",
]
ratios = []
for path in ["allowed", "403", "429"]:
    for proto in ["h1", "h2"]:
        b, a = by[("before", path, proto)], by[("after", path, proto)]
        for name, rs in (("before", b), ("after", a)):
            lines.append(f"| {path} | {proto} | {name} | {cells(rs)} | {share(rs, want[path]):.3f} |")
        ratios.append(f"- {path} {proto}: requests/s **{med(a,'rps')/med(b,'rps'):.2f}x**, "
                      f"p99 {med(a,'p99_ms')/med(b,'p99_ms'):.2f}x, CPU/request **{med(a,'gw_cpu_us')/med(b,'gw_cpu_us'):.2f}x**")
m = {x["v"]: x for x in map(json.loads, open(mem))}
lines += ["", "After / before:", *ratios, "",
          "## Resident memory with 1,000 idle TLS connections", "",
          "| version | idle | with 1,000 connections |", "|---|---|---|"]
for v in ["before", "after"]:
    lines.append(f"| {v} | {m[v]['idle_kb']/1024:.1f} MiB | {m[v]['held_kb']/1024:.1f} MiB |")
lines += ["", f"After / before with 1,000 connections: {m['after']['held_kb']/m['before']['held_kb']:.2f}x.", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
