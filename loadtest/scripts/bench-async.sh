#!/usr/bin/env bash
# Asynchronous invocations: what durability costs. Three gateways, same run,
# alternating rounds:
#   before  = git revision BASE (default: the last one with the in-memory
#             queue), its queue in memory;
#   durable = this tree, the embedded task store (redb, fsync'd group commit);
#   memory  = this tree, async_store = "memory" (same code, no disk).
# 1. accepted asynchronous invocations per second (202/s), closed loop, the
#    tasks running meanwhile (an echo function);
# 2. submit-to-completion latency at a moderate open-loop rate, from the
#    usage log (the 202's start to the attempt's end, per request id);
# 3. the store's size with 10,000 tasks queued (and after they are done).
# Gateways pinned to core 1 with their instances, the client to core 0.
# Loopback only. Writes loadtest/results/async.md.
#
# Usage: bash loadtest/scripts/bench-async.sh [BASE]
# Env: ROUNDS (5), DURATION (5s), CONNS (64), RATE (200).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:-8a18ea3}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
RATE=${RATE:-200}
OUT=loadtest/results/async.md
base_rev=$(git rev-parse --short "$BASE")
head_rev="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway sandbox-runtime || echo '+changes')"
ulimit -n "$(ulimit -Hn)"
source loadtest/scripts/lib.sh   # builds the working tree

build_base "$BASE" "$work/gateway-before"

F=/2023-03-30/functions
declare -A PORT=([before]=18443 [durable]=18445 [memory]=18447) PID=() BIN=(
    [before]="$work/gateway-before" [durable]="$T/gateway" [memory]="$T/gateway")
config() { # VERSION
    local v=$1
    printf '[gateway]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nself_signed_cert_path = "%s"\nmax_async_queued = 1000000\n' \
        "${PORT[$v]}" $((PORT[$v] + 1000)) "$work/ca-$v.pem"
    case $v in
        durable | sizing) printf 'async_store_path = "%s"\n' "$work/$v.redb" ;;
        memory) printf 'async_store = "memory"\n' ;;
    esac
    printf '[usage]\npath = "%s"\nsync_interval_ms = 100\n' "$work/usage-$v.jsonl"
    printf '[[functions]]\nname = "echo"\ncommand = ["%s"]\ninstance_concurrency = 200\n' "$T/fngate-echo"
    [ "$v" = before ] || printf 'async_max_concurrency = 200\n'
    printf '[[functions]]\nname = "parked"\ncommand = ["%s"]\n' "$T/fngate-echo"
    [ "$v" = before ] || printf 'async_max_concurrency = 1\n'
}
for v in before durable memory; do
    config "$v" > "$work/$v.toml"
    start_gateway "$work/$v.toml" "${BIN[$v]}"
    PID[$v]=$GW_PID
done

async_load() { # VERSION FUNCTION ARGS...
    local v=$1 fn=$2
    shift 2
    GW_PID=${PID[$v]}
    measure --url "https://127.0.0.1:${PORT[$v]}$F/$fn/invocations" --cacert "$work/ca-$v.pem" \
        -H "x-fc-invocation-type: Async" --body x "$@"
}
queued() { async_queued $((PORT[$1] + 1000)); }
drain() { drain_queue $((PORT[$1] + 1000)) "$1"; }
for v in before durable memory; do async_load "$v" echo -c "$CONNS" -d 1s >/dev/null; drain "$v"; done   # warm up

results="$work/results.jsonl"
: > "$results"
for r in $(seq 1 "$ROUNDS"); do
    for v in before durable memory; do
        line=$(async_load "$v" echo -c "$CONNS" -d "$DURATION")
        drain "$v"
        echo "{\"v\":\"$v\",\"r\":$line}" >> "$results"
        echo "round $r $v: $line" >&2
    done
done

# Submit-to-completion latency at a moderate rate: the usage log's records
# of this phase only (marked by their start time).
latency="$work/latency.jsonl"
: > "$latency"
for v in before durable memory; do
    since=$(date +%s%3N)
    async_load "$v" echo --rate "$RATE" -c 16 -d 10s > /dev/null
    drain "$v"
    sleep 0.5   # the usage log's sync interval
    python3 - "$work/usage-$v.jsonl" "$since" "$v" >> "$latency" <<'PY'
import collections, json, sys
path, since, v = sys.argv[1], int(sys.argv[2]), sys.argv[3]
acc, end = {}, collections.defaultdict(int)
for line in open(path):
    r = json.loads(line)
    if r["start_unix_ms"] < since:
        continue
    if r["outcome"] == "accepted":
        acc[r["request_id"]] = r["start_unix_ms"]
    elif r["network"] == "internal":
        end[r["request_id"]] = max(end[r["request_id"]], r["end_unix_ms"])
lat = sorted(end[i] - t for i, t in acc.items() if i in end)
q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
print(json.dumps({"v": v, "n": len(lat), "accepted": len(acc), "p50": q(0.5), "p99": q(0.99), "max": lat[-1]}))
PY
    echo "latency $v: $(tail -1 "$latency")" >&2
done

# The store's size with 10,000 tasks queued, in a fresh store of its own
# (the durable gateway's keeps the done tasks of the rounds above): they
# wait behind one held attempt (async_max_concurrency = 1, each sleeps a
# minute). Then the size per done task kept for the task API, from the
# durable gateway's store.
PORT[sizing]=18449
config sizing > "$work/sizing.toml"
start_gateway "$work/sizing.toml" "$T/gateway"
PID[sizing]=$GW_PID
size_empty=$(stat -c %s "$work/sizing.redb")
"${LT[@]}" --url "https://127.0.0.1:${PORT[sizing]}$F/parked/invocations" --cacert "$work/ca-sizing.pem" \
    -H "x-fc-invocation-type: Async" --body "fngate:sleep:60000" -c 16 --requests 10000 --json > "$work/parked.json"
size_full=$(stat -c %s "$work/sizing.redb")
parked=$(queued sizing)
done_kept=$(curl -s "http://127.0.0.1:$((PORT[durable] + 1000))/metrics" | awk '$1 ~ /^fngate_async_results_total/ {s += $2} END {print s}')
size_done=$(stat -c %s "$work/durable.redb")
echo "store: $size_empty bytes empty, $size_full with $parked queued; $size_done with $done_kept done" >&2

python3 - "$OUT" "$results" "$latency" "$base_rev" "$head_rev" "$ROUNDS" "$DURATION" "$CONNS" "$RATE" "$(nproc)" \
    "$size_empty" "$size_full" "$parked" "$size_done" "$done_kept" <<'PY'
import collections, datetime, json, sys
sys.path.insert(0, "loadtest/scripts")
from summary import cells, med, share
(out, results, latency, base_rev, head_rev, rounds, duration, conns, rate, cores,
 size_empty, size_full, parked, size_done, done_kept) = sys.argv[1:]
by = collections.defaultdict(list)
for x in map(json.loads, open(results)):
    by[x["v"]].append(x["r"])
names = {"before": f"before (`{base_rev}`, in memory)", "durable": "durable (redb)", "memory": 'async_store = "memory"'}
lines = [
    "# Asynchronous invocations: the durable task store against the in-memory queue",
    "",
    f"Produced by `bash loadtest/scripts/bench-async.sh {base_rev}` on {datetime.date.today()} ({cores} cores),",
    f"this tree at `{head_rev}`. Closed loop, {conns} connections over HTTP/1.1 + TLS 1.3, {duration} per run,",
    f"{rounds} alternating rounds, medians with min-max; every answer a 202, the tasks (an echo) running",
    "meanwhile and drained between runs. Gateways pinned to core 1 with their instances, the client to core 0.",
    "CPU is the gateway process's own per accepted call (its share of running the task included).",
    "",
    "| version | 202/s | p50 ms | p99 ms | gateway CPU µs/call | share of 202 |",
    "|---|---|---|---|---|---|",
]
for v in ["before", "durable", "memory"]:
    lines.append(f"| {names[v]} | {cells(by[v])} | {share(by[v], '202'):.3f} |")
b, d, m = (by[v] for v in ["before", "durable", "memory"])
lines += ["",
          f"- durable / before: 202/s **{med(d,'rps')/med(b,'rps'):.2f}x**, p99 {med(d,'p99_ms')/med(b,'p99_ms'):.2f}x, "
          f"CPU/call {med(d,'gw_cpu_us')/med(b,'gw_cpu_us'):.2f}x",
          f"- durable / memory (the same code without the disk): 202/s **{med(d,'rps')/med(m,'rps'):.2f}x**, "
          f"CPU/call {med(d,'gw_cpu_us')/med(m,'gw_cpu_us'):.2f}x",
          "", f"## Submit to completion at {rate} calls/s (open loop, 10 s)", "",
          "From the usage log: the 202's request start to its attempt's end, per request id.", "",
          "| version | completed | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
for x in map(json.loads, open(latency)):
    lines.append(f"| {names[x['v']]} | {x['n']} of {x['accepted']} | {x['p50']} | {x['p99']} | {x['max']} |")
per = (int(size_full) - int(size_empty)) / max(int(parked), 1)
lines += ["", "## Store size", "",
          f"{parked} tasks queued (20-byte payloads): the file grew from {int(size_empty)/1e6:.1f} MB to "
          f"{int(size_full)/1e6:.1f} MB, **{per*10000/1e6:.1f} MB per 10,000 queued tasks** ({per:.0f} bytes each:",
          "the record, its payload and five index entries, in redb's pages).",
          f"The durable gateway's store after the runs above: {int(size_done)/1e6:.1f} MB, after "
          f"{int(float(done_kept))} tasks done (the newest kept for the task API up to `max_async_retained`, 100,000 by default, "
          "and `async_retention_s`; freed pages are reused, the file does not shrink).", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
