#!/usr/bin/env bash
# Benchmark for configuration reload (issue 30), same run, alternating rounds:
#  - the allowed path with no reloads,
#  - the allowed path while the configuration is reloaded every second
#    (POST /admin/reload after a policy change of another function),
# measured with loadtest and with wrk; then the time one reload takes with
# NFUNC functions in gateway.functions_dir (a policy change of one, and a
# function added). Warm, HTTP/1.1 keep-alive, TLS 1.3.
# Writes loadtest/results/reload.md.
#
# Env: ROUNDS (3), DURATION (10s), CONNS (64), NFUNC (1000), RELOADS (10).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
NFUNC=${NFUNC:-1000}
RELOADS=${RELOADS:-10}
OUT=loadtest/results/reload.md
source loadtest/scripts/lib.sh

mkdir -p "$work/functions.d"
# NFUNC functions in files of 100, as deployment tooling would drop them.
python3 - "$work/functions.d" "$NFUNC" "$T/fngate-echo" <<'PY'
import sys
d, n, echo = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for g in range(0, n, 100):
    with open(f"{d}/group-{g // 100:03}.toml", "w") as f:
        for i in range(g, min(g + 100, n)):
            f.write(f'[[functions]]\nname = "fn-{i:04}"\ncommand = ["{echo}"]\ntimeout_s = 60\n\n')
PY
cat > "$work/gateway.toml" <<EOF
[gateway]
listen = "127.0.0.1:18443"
admin_listen = "127.0.0.1:19464"
self_signed_cert_path = "$work/ca.pem"
functions_dir = "$work/functions.d"

[[functions]]
name = "steady"
command = ["$T/fngate-echo"]
instance_concurrency = 100
EOF
start_gateway "$work/gateway.toml"
URL=https://127.0.0.1:18443/2023-03-30/functions/steady/invocations
ADMIN=http://127.0.0.1:19464
run() { measure --url "$URL" --cacert "$work/ca.pem" -c "$CONNS" -d "$1"; }
tools_install
wrk_run() { tool_measure wrk "$URL" "$CONNS" "$1"; }
# Every second: flip fn-0007's timeout, then POST /admin/reload.
reloader() {
    local t
    while true; do
        t=$(awk '/^timeout_s/ {print $3; exit}' "$work/functions.d/group-000.toml")
        t=$((t == 60 ? 61 : 60))
        sed -i "0,/^timeout_s = .*/s//timeout_s = $t/" "$work/functions.d/group-000.toml"
        curl -s -X POST "$ADMIN/admin/reload" >> "$work/reloads.jsonl"
        echo >> "$work/reloads.jsonl"
        sleep 1
    done
}
with_reloads() {
    reloader &
    local rp=$!
    "$@"
    kill "$rp"
    wait "$rp" 2>/dev/null || true
}

run 2s >/dev/null; wrk_run 2s >/dev/null   # warm up
applied() { curl -s "$ADMIN/metrics" | awk '$1 == "fngate_config_reloads_total{result=\"applied\"}" {print $2}'; }
applied_before=$(applied)
none=(); during=(); wnone=(); wduring=()
for r in $(seq 1 "$ROUNDS"); do
    none+=("$(run "$DURATION")")
    during+=("$(with_reloads run "$DURATION")")
    wnone+=("$(wrk_run "$DURATION")")
    wduring+=("$(with_reloads wrk_run "$DURATION")")
    echo "round $r: none ${none[-1]}" >&2
    echo "round $r: during ${during[-1]}" >&2
    echo "round $r: wrk none ${wnone[-1]}" >&2
    echo "round $r: wrk during ${wduring[-1]}" >&2
done

applied_during=$(( $(applied) - applied_before ))

# One reload's time with NFUNC functions: a policy change of one function,
# then a function added (and removed again). The file watcher may apply a
# change first (the POST then finds nothing to do): such a round is redone.
: > "$work/timed.jsonl"
timed_reload() {   # KIND: POST /admin/reload; 0 when it applied
    curl -s -w '\n%{time_total}\n' -X POST "$ADMIN/admin/reload" | python3 -c '
import json, sys
body, t = sys.stdin.read().strip().rsplit("\n", 1)
r = json.loads(body)
print(json.dumps({"kind": sys.argv[1], "result": r["result"], "elapsed_ms": r["elapsed_ms"], "curl_ms": float(t) * 1000}))
sys.exit(r["result"] != "applied")' "$1" >> "$work/timed.jsonl.try"
}
n=0
for i in $(seq 1 $((RELOADS * 5))); do
    [ "$n" -ge "$RELOADS" ] && break
    : > "$work/timed.jsonl.try"
    sed -i "0,/^timeout_s = .*/s//timeout_s = $((100 + i))/" "$work/functions.d/group-000.toml"
    timed_reload policy || continue
    if [ ! -e "$work/functions.d/added.toml" ]; then
        printf '[[functions]]\nname = "added"\ncommand = ["%s"]\n' "$T/fngate-echo" > "$work/functions.d/added.toml"
    else
        rm -f "$work/functions.d/added.toml"
    fi
    timed_reload add-remove || continue
    cat "$work/timed.jsonl.try" >> "$work/timed.jsonl"
    n=$((n + 1))
done

python3 - "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" "$NFUNC" "$work/reloads.jsonl" "$work/timed.jsonl" "$applied_during" \
    "$(printf '%s\n' "${none[@]}")" "$(printf '%s\n' "${during[@]}")" \
    "$(printf '%s\n' "${wnone[@]}")" "$(printf '%s\n' "${wduring[@]}")" <<'PY'
import json, sys, datetime, statistics
out, rounds, duration, conns, cores, nfunc, reloads, timed, applied, n, d, wn, wd = sys.argv[1:]
n, d, wn, wd = ([json.loads(x) for x in s.splitlines()] for s in (n, d, wn, wd))
for r in n + d: assert set(r["statuses"]) == {"200"} and r["errors"] == 0, r
for r in wn + wd: assert r["errors"] == 0, r
during = [json.loads(l) for l in open(reloads) if l.strip()]
# A change the file watcher applied first leaves its POST "unchanged".
assert all(r.get("result") in ("applied", "unchanged") for r in during), during[:3]
t = [json.loads(l) for l in open(timed) if l.strip()]
assert t, "no timed reload applied"
for r in t: assert r["result"] == "applied", r
sys.path.insert(0, "loadtest/scripts")
from summary import cells, med, noisy
def ms(kind, key):
    v = [r[key] for r in t if r["kind"] == kind]
    return f"{statistics.median(v):.1f} (max {max(v):.1f})"
ratio = lambda a, b, k: med(a, k) / med(b, k)
noise = [name for name, rs in (("loadtest", n), ("wrk", wn)) if noisy(rs)]
lines = [
    "# Configuration reload benchmark (issue 30)",
    "",
    f"Produced by `loadtest/scripts/bench-reload.sh` on {datetime.date.today()} ({cores} cores), release build.",
    f"Closed loop, {conns} HTTP/1.1 keep-alive TLS 1.3 connections to one warm function, {duration} per round",
    f"(after a warm-up pass), {rounds} alternating rounds per tool; medians with min-max. Client pinned to core 0,",
    f"gateway and instances to core 1. The gateway serves {int(nfunc) + 1} functions ({nfunc} in `functions_dir`,",
    "ten files of 100). \"Reload every second\": a loop flips one other function's `timeout_s` and calls",
    f"`POST /admin/reload` once a second; {applied} reloads were applied during the rounds (by the POST or, when it",
    "polled first, the file watcher), none refused.",
    "",
    "| tool | reloads | requests/s | p50 ms | p99 ms | gateway CPU µs/request |",
    "|---|---|---|---|---|---|",
    f"| loadtest | none | {cells(n)} |",
    f"| loadtest | every second | {cells(d)} |",
    f"| wrk | none | {cells(wn)} |",
    f"| wrk | every second | {cells(wd)} |",
    "",
    f"Ratios (every second / none): loadtest requests/s {ratio(d, n, 'rps'):.2f}x, p99 {ratio(d, n, 'p99_ms'):.2f}x; "
    f"wrk requests/s {ratio(wd, wn, 'rps'):.2f}x, p99 {ratio(wd, wn, 'p99_ms'):.2f}x.",
    ("Noise: a no-reload round of " + " and ".join(noise) + " moved more than ±15% from its median; "
     "the machine was busy, read the ratios with care and rerun." if noise else
     "Every no-reload round stayed within ±15% of its median."),
    "",
    f"One reload with {int(nfunc) + 1} functions (median and max of {len([r for r in t if r['kind'] == 'policy'])}, idle gateway):",
    "",
    "| change | gateway's own time, ms | as the admin client saw it, ms |",
    "|---|---|---|",
    f"| one function's policy (`timeout_s`) | {ms('policy', 'elapsed_ms')} | {ms('policy', 'curl_ms')} |",
    f"| a function added or removed | {ms('add-remove', 'elapsed_ms')} | {ms('add-remove', 'curl_ms')} |",
    "",
    "The gateway's time covers reading and validating every file, building the next registry (limiters",
    "carried), planning the pools and swapping them in.",
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
