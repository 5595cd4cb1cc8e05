#!/usr/bin/env bash
# Benchmark for metering (issue 5): requests/s and gateway CPU per request
# with the usage log on versus off, same run, alternating rounds between two
# gateways that differ only in their [usage] section. Warm, HTTP/1.1
# keep-alive, TLS 1.3. Writes loadtest/results/metering.md.
#
# Env: ROUNDS (3), DURATION (10s), CONNS (64).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
OUT=loadtest/results/metering.md
source loadtest/scripts/lib.sh

config() { # PORT ADMIN_PORT NAME
    cat <<EOF
[gateway]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
self_signed_cert_path = "$work/$3-ca.pem"
[[functions]]
name = "echo"
command = ["$T/fngate-echo"]
instance_concurrency = 100
EOF
}
config 18443 19464 off > "$work/off.toml"
config 18444 19465 on > "$work/on.toml"
printf '[usage]\npath = "%s"\nsync_interval_ms = 1000\n' "$work/usage.jsonl" >> "$work/on.toml"

start_gateway "$work/off.toml"; OFF_PID=$GW_PID
start_gateway "$work/on.toml"; ON_PID=$GW_PID

run() { # PID PORT NAME DURATION
    GW_PID=$1
    measure --url "https://127.0.0.1:$2/2023-03-30/functions/echo/invocations" --cacert "$work/$3-ca.pem" -c "$CONNS" -d "$4"
}
run "$OFF_PID" 18443 off 2s >/dev/null; run "$ON_PID" 18444 on 2s >/dev/null   # warm up
off=(); on=()
for r in $(seq 1 "$ROUNDS"); do
    off+=("$(run "$OFF_PID" 18443 off "$DURATION")")
    on+=("$(run "$ON_PID" 18444 on "$DURATION")")
    echo "round $r: off ${off[-1]}" >&2
    echo "round $r: on ${on[-1]}" >&2
done
records=$(cat "$work"/usage.jsonl* | wc -l)

python3 - "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" "$records" \
    "$(printf '%s\n' "${off[@]}")" "$(printf '%s\n' "${on[@]}")" <<'PY'
import json, sys, datetime
out, rounds, duration, conns, cores, records, f, n = sys.argv[1:]
f, n = ([json.loads(x) for x in s.splitlines()] for s in (f, n))
for r in f + n: assert set(r["statuses"]) == {"200"} and r["errors"] == 0, r
sys.path.insert(0, "loadtest/scripts")
from summary import cells, med
def row(name, rs):
    return f"| {name} | {cells(rs)} |"
lines = [
    "# Metering benchmark (issue 5)",
    "",
    f"Produced by `loadtest/scripts/bench-metering.sh` on {datetime.date.today()} ({cores} cores).",
    "Two gateways, identical but for `[usage]` (the usage log, fsync every 1 s); counters are always on.",
    f"Closed loop, {conns} HTTP/1.1 keep-alive TLS 1.3 connections, {duration} per round, {rounds} alternating rounds;",
    "medians with min-max. Client pinned to core 0, gateways and instances to core 1 (the idle gateway costs nothing).",
    "",
    "| usage log | requests/s | p50 ms | p99 ms | gateway CPU µs/request |",
    "|---|---|---|---|---|",
    row("off", f),
    row("on", n),
    "",
    f"On / off: requests/s {med(n,'rps')/med(f,'rps'):.3f}x, gateway CPU per request {med(n,'gw_cpu_us')/med(f,'gw_cpu_us'):.3f}x.",
    f"Records written during the run: {records}.",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
