#!/usr/bin/env bash
# Isolated instances (sandbox-runtime --isolation namespaces) against plain
# processes (--isolation process), same run:
#   - cold start: spawn to first answer, for the native echo function and the
#     Python example, through each worker's API (create the instance, then
#     its first /invoke), ROUNDS alternating rounds of STARTS each, GAP
#     seconds apart (so the isolated worker's namespace pool has refilled,
#     as it has between cold starts that are not a burst);
#   - warm requests/s through a gateway whose one worker is either kind
#     (the native echo function, CONNS connections, DURATION, alternating);
#   - the memory a pooled network namespace costs: MemAvailable before and
#     after a worker with --netns-pool POOLED has made them, less its RSS.
# Workers and gateways on core 1, the client on core 0; root (namespaces).
# Loopback only. Writes loadtest/results/isolation.md.
#
# Env: ROUNDS (3), STARTS (10), GAP (0.2), DURATION (5s), CONNS (32), POOLED (32).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
STARTS=${STARTS:-10}
GAP=${GAP:-0.2}
POOLED=${POOLED:-32}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
OUT=loadtest/results/isolation.md
source loadtest/scripts/lib.sh

declare -A WPORT=([process]=17171 [namespaces]=17172) GPORT=([process]=18451 [namespaces]=18452)
for mode in process namespaces; do
    "${SRV[@]}" "$T/sandbox-runtime" --listen "127.0.0.1:${WPORT[$mode]}" --isolation "$mode" \
        --work-root "$work/work-$mode" 2> "$work/worker-$mode.log" &
    pids+=($!)
done
for mode in process namespaces; do
    for _ in $(seq 1 200); do grep -q "sandbox-runtime listening" "$work/worker-$mode.log" && break; sleep 0.05; done
    mkdir -p "$work/gw-$mode"
    cat > "$work/gw-$mode/gateway.toml" <<EOF
[gateway]
listen = "127.0.0.1:${GPORT[$mode]}"
admin_listen = "127.0.0.1:$((GPORT[$mode] + 1000))"
self_signed_cert_path = "$work/gw-$mode/ca.pem"
threads = 1
async_store = "memory"
[[workers]]
url = "http://127.0.0.1:${WPORT[$mode]}"
[[functions]]
name = "echo"
command = ["$T/fngate-echo"]
instance_concurrency = 200
EOF
    start_gateway "$work/gw-$mode/gateway.toml"
    eval "GW_$mode=\$GW_PID"
done

# Cold starts through the worker API: create, first invoke, delete.
cold="$work/cold.jsonl"; : > "$cold"
python3 - "$cold" "$ROUNDS" "$STARTS" "$T/fngate-echo" "$PWD/config/functions/hello.py" "$GAP" <<'PY'
import json, sys, time, urllib.request
out, rounds, starts, echo, hello = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
gap = float(sys.argv[6])
ports = {"process": 17171, "namespaces": 17172}
# The same interpreter for both kinds of worker: an isolated instance sees
# only the system's, and a plain process would find a tool manager's shim
# first in the worker's PATH.
commands = {"native": [echo], "python": ["/usr/bin/python3", hello]}
def call(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()
n = 0
with open(out, "w") as f:
    for r in range(rounds):
        for kind, command in commands.items():
            for mode, port in ports.items():
                for i in range(starts):
                    n += 1
                    iid = f"bench-{mode}-{kind}-{n}"
                    spec = {"instance_id": iid, "function": f"bench-{kind}", "command": command,
                            "env": {}, "memory_mb": 128, "start_timeout_ms": 30000}
                    t0 = time.perf_counter()
                    info = json.loads(call("POST", f"http://127.0.0.1:{port}/v1/instances", json.dumps(spec).encode()))
                    call("POST", f"http://{info['address']}/invoke", b"{}")
                    ms = (time.perf_counter() - t0) * 1000
                    call("DELETE", f"http://127.0.0.1:{port}/v1/instances/{iid}")
                    f.write(json.dumps({"mode": mode, "kind": kind, "round": r, "ms": ms}) + "\n")
                    time.sleep(gap)
PY

# The memory of pooled namespaces: a worker that keeps POOLED ready.
# Kernel memory (a namespace's veth pair, rules, sockets and tables live
# there): slab, per-CPU areas, kernel stacks and page tables, in KiB.
avail() { awk '/^(Slab|Percpu|KernelStack|PageTables):/ {s += $2} END {print -s}' /proc/meminfo; }
before=$(avail)
"${SRV[@]}" "$T/sandbox-runtime" --listen 127.0.0.1:17173 --isolation namespaces \
    --instance-subnet 10.199.0.0/16 --netns-pool "$POOLED" --work-root "$work/work-pool" 2> "$work/worker-pool.log" &
pool_pid=$!
pids+=($pool_pid)
for _ in $(seq 1 600); do
    [ "$(ls /run/netns 2>/dev/null | grep -c '^fngate-0ac7')" -ge "$POOLED" ] && break
    sleep 0.1
done
sleep 1
after=$(avail)
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pool_pid/status")
pooled=$(ls /run/netns | grep -c '^fngate-0ac7' || true)
kill -TERM "$pool_pid"; wait "$pool_pid" 2>/dev/null || true
echo "{\"pooled\": $pooled, \"kib\": $((before - after)), \"rss_kib\": $rss}" > "$work/pool.json"

# Warm requests/s through each gateway (the instance starts on the warm-up).
warm="$work/warm.jsonl"; : > "$warm"
for mode in process namespaces; do
    "${LT[@]}" --url "https://127.0.0.1:${GPORT[$mode]}/2023-03-30/functions/echo/invocations" \
        --cacert "$work/gw-$mode/ca.pem" -c 4 -d 1s --json > /dev/null
done
for r in $(seq 1 "$ROUNDS"); do
    for mode in process namespaces; do
        eval "GW_PID=\$GW_$mode"
        line=$(measure --url "https://127.0.0.1:${GPORT[$mode]}/2023-03-30/functions/echo/invocations" \
            --cacert "$work/gw-$mode/ca.pem" -c "$CONNS" -d "$DURATION")
        echo "{\"mode\":\"$mode\",\"round\":$r,\"r\":$line}" >> "$warm"
        echo "warm $mode round $r: $line" >&2
    done
done

python3 - "$OUT" "$cold" "$warm" "$ROUNDS" "$STARTS" "$DURATION" "$CONNS" "$work/pool.json" "$GAP" <<'PY'
import collections, datetime, json, statistics, sys
out, cold, warm, rounds, starts, duration, conns, pool, gap = sys.argv[1:]
pool = json.load(open(pool))
sys.path.insert(0, "loadtest/scripts")
from summary import med, rng
c = collections.defaultdict(list)
for l in open(cold):
    x = json.loads(l)
    c[(x["mode"], x["kind"])].append(x["ms"])
w = collections.defaultdict(list)
for l in open(warm):
    x = json.loads(l)
    w[x["mode"]].append(x["r"])
def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]
lines = [
    "# Isolated instances vs plain processes",
    "",
    f"Produced by `bash loadtest/scripts/bench-isolation.sh` on {datetime.date.today()}: one run, {rounds} alternating rounds.",
    "Workers (`--isolation process` and `--isolation namespaces`) and their gateways on core 1, the client on core 0.",
    "",
    f"## Cold start: spawn to first answer ({int(rounds) * int(starts)} starts per cell, {gap} s apart, through the worker API)",
    "",
    "| function | process p50 ms | namespaces p50 ms | added p50 ms | ratio | process p90 ms | namespaces p90 ms |",
    "|---|---|---|---|---|---|---|",
]
for kind in ["native", "python"]:
    p, n = c[("process", kind)], c[("namespaces", kind)]
    mp, mn = statistics.median(p), statistics.median(n)
    lines.append(f"| {kind} | {mp:.1f} | {mn:.1f} | {mn - mp:+.1f} | {mn/mp:.2f}x | {q(p,0.9):.1f} | {q(n,0.9):.1f} |")
p, n = w["process"], w["namespaces"]
lines += [
    "",
    f"## Warm: the native echo function through a gateway, {conns} connections, {duration} per round",
    "",
    "| worker | requests/s | p50 ms | p99 ms | gateway CPU µs/request |",
    "|---|---|---|---|---|",
    f"| process | {med(p,'rps'):.0f} ({rng(p,'rps','.0f')}) | {med(p,'p50_ms'):.3f} | {med(p,'p99_ms'):.2f} | {med(p,'gw_cpu_us'):.1f} |",
    f"| namespaces | {med(n,'rps'):.0f} ({rng(n,'rps','.0f')}) | {med(n,'p50_ms'):.3f} | {med(n,'p99_ms'):.2f} | {med(n,'gw_cpu_us'):.1f} |",
    "",
    f"namespaces/process: requests/s {med(n,'rps')/med(p,'rps'):.2f}x.",
    "",
    "## A pooled network namespace",
    "",
    f"A worker with `--netns-pool {pool['pooled']}` (its own RSS {pool['rss_kib'] / 1024:.1f} MiB): the kernel's memory (slab, per-CPU, stacks, page tables) grew by {pool['kib'] / 1024:.1f} MiB once its {pool['pooled']} namespaces were made,",
    f"**about {pool['kib'] / max(1, pool['pooled']):.0f} KiB per pooled namespace** (its veth pair, rules, conntrack and DNS sockets).",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
