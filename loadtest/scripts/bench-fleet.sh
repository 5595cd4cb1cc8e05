#!/usr/bin/env bash
# Fleet mode: what sharing state costs one gateway. Same run, alternating
# rounds, one gateway each (this tree):
#   single = no [fleet] (the embedded defaults);
#   split  = [fleet] on NATS JetStream, rate_limits = "split";
#   redis  = [fleet], rate_limits = "redis" (one Redis round trip per call).
# 1. allowed-path requests/s: sync calls of an echo function whose rate
#    limit (1e6/s) checks every call and refuses none;
# 2. asynchronous enqueue rate (202/s): single's embedded store (redb) and
#    split's JetStream queue, the tasks running meanwhile.
# Gateways, their instances, nats-server and redis-server pinned to core 1,
# the client to core 0. Loopback only. Writes loadtest/results/fleet.md.
#
# Usage: bash loadtest/scripts/bench-fleet.sh
# Env: ROUNDS (5), DURATION (5s), CONNS (64).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
OUT=loadtest/results/fleet.md
head_rev="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway sandbox-runtime || echo '+changes')"
ulimit -n "$(ulimit -Hn)"
source loadtest/scripts/lib.sh   # builds the working tree

"${CORE1[@]}" nats-server -js -a 127.0.0.1 -p 14222 -sd "$work/nats" 2> "$work/nats.log" &
pids+=($!)
"${CORE1[@]}" redis-server --bind 127.0.0.1 --port 16379 --save "" --appendonly no > "$work/redis.log" &
pids+=($!)
for _ in $(seq 1 100); do
    grep -q "Server is ready" "$work/nats.log" && grep -q "Ready to accept" "$work/redis.log" && break
    sleep 0.1
done

F=/2023-03-30/functions
declare -A PORT=([single]=18443 [split]=18445 [redis]=18447) PID=()
config() { # VERSION
    local v=$1
    printf '[gateway]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nself_signed_cert_path = "%s"\nmax_async_queued = 1000000\n' \
        "${PORT[$v]}" $((PORT[$v] + 1000)) "$work/ca-$v.pem"
    [ "$v" = single ] && printf 'async_store_path = "%s"\n' "$work/single.redb"
    printf '[[functions]]\nname = "echo"\ncommand = ["%s"]\ninstance_concurrency = 200\nasync_max_concurrency = 200\n' "$T/fngate-echo"
    printf 'rate_limit = { per_second = 1000000.0, burst = 1000000 }\n'
    case $v in
        split | redis)
            # Each its own fleet: one gateway each, its own embedded worker.
            printf '[fleet]\nid = "bench"\nname = "bench_%s"\nnats_urls = ["nats://127.0.0.1:14222"]\ndiscover_workers = false\n' "$v"
            ;;
    esac
    [ "$v" = redis ] && printf 'rate_limits = "redis"\nredis_url = "redis://127.0.0.1:16379"\n'
    return 0
}
VERSIONS=(single split redis)
for v in "${VERSIONS[@]}"; do
    config "$v" > "$work/$v.toml"
    start_gateway "$work/$v.toml"
    PID[$v]=$GW_PID
done

load() { # VERSION ARGS...
    local v=$1
    shift
    GW_PID=${PID[$v]}
    measure --url "https://127.0.0.1:${PORT[$v]}$F/echo/invocations" --cacert "$work/ca-$v.pem" --body x "$@"
}
drain() { drain_queue $((PORT[$1] + 1000)) "$1"; }
for v in "${VERSIONS[@]}"; do load "$v" -c "$CONNS" -d 1s >/dev/null; done   # warm up

results="$work/results.jsonl"
: > "$results"
for r in $(seq 1 "$ROUNDS"); do
    for v in "${VERSIONS[@]}"; do
        line=$(load "$v" -c "$CONNS" -d "$DURATION")
        echo "{\"v\":\"$v\",\"k\":\"sync\",\"r\":$line}" >> "$results"
        echo "round $r sync $v: $line" >&2
    done
    for v in single split; do
        line=$(load "$v" -H "x-fc-invocation-type: Async" -c "$CONNS" -d "$DURATION")
        drain "$v"
        echo "{\"v\":\"$v\",\"k\":\"async\",\"r\":$line}" >> "$results"
        echo "round $r async $v: $line" >&2
    done
done
redis_fallbacks=$(curl -s "http://127.0.0.1:$((PORT[redis] + 1000))/metrics" | awk '$1 ~ /^fngate_fleet_limit_fallbacks_total/ {s += $2} END {print s + 0}')

python3 - "$OUT" "$results" "$head_rev" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" "$redis_fallbacks" <<'PY'
import collections, datetime, json, sys
sys.path.insert(0, "loadtest/scripts")
from summary import cells, med, share
out, results, head_rev, rounds, duration, conns, cores, fallbacks = sys.argv[1:]
by = collections.defaultdict(list)
for x in map(json.loads, open(results)):
    by[(x["k"], x["v"])].append(x["r"])
names = {"single": "single process (no `[fleet]`)", "split": '`[fleet]`, `rate_limits = "split"`',
         "redis": '`[fleet]`, `rate_limits = "redis"`'}
lines = [
    "# Fleet mode: one gateway's cost of sharing state",
    "",
    f"Produced by `bash loadtest/scripts/bench-fleet.sh` on {datetime.date.today()} ({cores} cores), this tree at `{head_rev}`.",
    f"Closed loop, {conns} connections over HTTP/1.1 + TLS 1.3, {duration} per run, {rounds} alternating rounds,",
    "medians with min-max. One gateway per version; gateways, their instances, nats-server 2.9 and",
    "redis-server 7 on core 1, the client on core 0. CPU is the gateway process's own per call.",
    "",
    "## Allowed path (sync calls, a rate limit checked on every call, none refused)",
    "",
    "| version | requests/s | p50 ms | p99 ms | gateway CPU µs/call | share of 200 |",
    "|---|---|---|---|---|---|",
]
for v in ["single", "split", "redis"]:
    lines.append(f"| {names[v]} | {cells(by[('sync', v)])} | {share(by[('sync', v)], '200'):.3f} |")
s, p, r = (by[("sync", v)] for v in ["single", "split", "redis"])
lines += ["",
          f"- split / single: requests/s **{med(p,'rps')/med(s,'rps'):.2f}x**, CPU/call {med(p,'gw_cpu_us')/med(s,'gw_cpu_us'):.2f}x",
          f"- redis / single: requests/s **{med(r,'rps')/med(s,'rps'):.2f}x**, CPU/call {med(r,'gw_cpu_us')/med(s,'gw_cpu_us'):.2f}x, "
          f"p99 {med(r,'p99_ms')/med(s,'p99_ms'):.2f}x (Redis fallbacks during the runs: {fallbacks})",
          "", "## Asynchronous enqueue (202/s, the tasks running meanwhile, drained between runs)", "",
          "| store | 202/s | p50 ms | p99 ms | gateway CPU µs/call | share of 202 |", "|---|---|---|---|---|---|"]
stores = {"single": "embedded (redb, fsync'd group commit)", "split": "JetStream (publish + record, file storage)"}
for v in ["single", "split"]:
    lines.append(f"| {stores[v]} | {cells(by[('async', v)])} | {share(by[('async', v)], '202'):.3f} |")
e, j = by[("async", "single")], by[("async", "split")]
lines += ["", f"- JetStream / embedded: 202/s **{med(j,'rps')/med(e,'rps'):.2f}x**, "
          f"p99 {med(j,'p99_ms')/med(e,'p99_ms'):.2f}x, CPU/call {med(j,'gw_cpu_us')/med(e,'gw_cpu_us'):.2f}x", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
