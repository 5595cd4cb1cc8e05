#!/usr/bin/env bash
# fngate against nginx on the allowed path, measured by three load
# generators: wrk (HTTP/1.1), h2load (HTTP/2 and HTTP/1.1) and loadtest
# (both), so that no figure rests on a tool this project wrote (issue 31).
# The servers are configured as in bench-peers.sh (lib.sh's peer_configs;
# only the allowed path, `echo`, is called): both proxy to the same echo
# program (nginx: `fngate-echo --standalone` over a keep-alive upstream pool;
# fngate: the same binary as its instance, process isolation), TLS 1.3 with
# one ECDSA P-256 certificate.
# Layouts as bench-peers.sh: 1 core (servers and upstream on core 1, a
# one-thread client on core 0) and 2 cores (two workers each, a two-thread
# client, nothing pinned). Rounds alternate nginx, fngate for every tool and
# protocol. CPU per request is the server's and its upstream's together
# (nginx workers + the standalone echo; fngate + its echo instance).
# Noise: a cell whose nginx rounds range wider than ±15% of their median is
# measured again, once; if still noisy, the report flags it.
#
# Env: ROUNDS (5), DURATION (5s), CONNS (64), LAYOUTS ("1 2"), OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
LAYOUTS=${LAYOUTS:-1 2}
OUT=${OUT:-loadtest/results/tools.md}
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
source loadtest/scripts/lib.sh
tools_install
bench_cert
ECHO=127.0.0.1:18081
F=/2023-03-30/functions
declare -A PORT=([nginx]=18444 [fngate]=18443)

# cpu_pids TARGET: the server's processes and its upstream's.
cpu_pids() {
    case $1 in
        nginx) echo "$(pgrep -P "$NGINX_MASTER" | tr '\n' ' ') $ECHO_PID" ;;
        fngate) echo "$FNGATE_PID $(pgrep -fx "$T/fngate-echo" | tr '\n' ' ')" ;;
    esac
}

# one TARGET TOOL PROTO: one measured run, as JSON.
one() {
    local url="https://127.0.0.1:${PORT[$1]}$F/echo/invocations"
    GW_PID=$(cpu_pids "$1")
    case $2/$3 in
        wrk/h1) tool_measure wrk "$url" "$CONNS" "$DURATION" ;;
        h2load/h1) tool_measure h2load "$url" "$CONNS" "$DURATION" --h1 ;;
        h2load/h2) tool_measure h2load "$url" "$CONNS" "$DURATION" ;;
        loadtest/h1) measure --url "$url" -c "$CONNS" -d "$DURATION" --cacert "$work/cert.pem" ;;
        loadtest/h2) measure --url "$url" -c "$CONNS" -d "$DURATION" --cacert "$work/cert.pem" --http2 ;;
    esac
}

CELLS="wrk/h1 h2load/h1 h2load/h2 loadtest/h1 loadtest/h2"
results="$work/results.jsonl"
: > "$results"
for layout in $LAYOUTS; do
    place "$layout"
    peer_configs "$layout"
    suite=()
    "${SRV[@]}" "$T/fngate-echo" --standalone "$ECHO" 2>/dev/null &
    ECHO_PID=$!; pids+=($!); suite+=($!)
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18081) 2>/dev/null && break; sleep 0.05; done
    "${SRV[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
    NGINX_MASTER=$!; pids+=($!); suite+=($!)
    for _ in $(seq 1 100); do [ "$(pgrep -c -P "$NGINX_MASTER" || true)" -ge "$layout" ] && break; sleep 0.05; done
    start_gateway "$work/fngate/gateway.toml"
    FNGATE_PID=$GW_PID; suite+=($GW_PID)
    for t in nginx fngate; do one "$t" loadtest h1 >/dev/null; done   # warm-up: fngate's instance starts
    for cell in $CELLS; do
        tool=${cell%/*}; proto=${cell#*/}
        for attempt in 1 2; do
            rows=()
            for r in $(seq 1 "$ROUNDS"); do
                for t in nginx fngate; do
                    line=$(one "$t" "$tool" "$proto")
                    echo "layout $layout $tool $proto round $r $t: $line" >&2
                    rows+=("{\"layout\":$layout,\"tool\":\"$tool\",\"proto\":\"$proto\",\"attempt\":$attempt,\"round\":$r,\"target\":\"$t\",\"r\":$line}")
                done
            done
            noisy=$(printf '%s\n' "${rows[@]}" | python3 -c '
import json, sys
sys.path.insert(0, "loadtest/scripts")
from summary import noisy
print(int(noisy([x["r"] for x in map(json.loads, sys.stdin) if x["target"] == "nginx"])))')
            printf '%s\n' "${rows[@]}" >> "$results"
            [ "$noisy" = 0 ] && break
            echo "layout $layout $tool $proto: nginx's rounds ranged wider than ±15%: measuring again" >&2
        done
    done
    for p in "${suite[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${suite[@]}"; do wait "$p" 2>/dev/null || true; done
done

python3 - "$OUT" "$results" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" "$(nginx -v 2>&1 | sed 's/.*\///')" "$(git rev-parse --short HEAD)" <<'PY'
import collections, datetime, json, statistics, sys
sys.path.insert(0, "loadtest/scripts")
from summary import med, noisy, rng
out, results, rounds, duration, conns, cores, nginx_v, rev = sys.argv[1:]
rows = [json.loads(l) for l in open(results)]
# The last attempt of each cell counts; an earlier noisy one is listed as such.
last = {}
for x in rows:
    k = (x["layout"], x["tool"], x["proto"])
    last[k] = max(last.get(k, 0), x["attempt"])
by = collections.defaultdict(list)
for x in rows:
    if x["attempt"] == last[(x["layout"], x["tool"], x["proto"])]:
        by[(x["layout"], x["tool"], x["proto"], x["target"])].append(x["r"])
lines = [
    "# fngate vs nginx, allowed path, by three load generators (issue 31)", "",
    f"Produced by `bash loadtest/scripts/bench-tools.sh` on {datetime.date.today()} ({cores} cores, nginx {nginx_v}), tree at `{rev}`.",
    f"Closed loop, {conns} keep-alive connections (h2load: one stream each), {duration} per run, {rounds} alternating rounds",
    "(nginx, fngate) per tool and protocol; medians with min-max. TLS 1.3, one ECDSA P-256 certificate; both proxy to the",
    "same echo program. CPU per request: the server's and its upstream's together. h2load gives no percentiles:",
    "its p50 column is its mean and its p99 column the mean plus two standard deviations.",
    "1 core: servers and upstream pinned to core 1, a one-thread client on core 0; 2 cores: two workers each,",
    "a two-thread client, nothing pinned.", "",
    "| layout | tool | protocol | target | requests/s | p50 ms | p99 ms | CPU µs/request | errors |",
    "|---|---|---|---|---|---|---|---|---|",
]
summary = ["", "## fngate / nginx (ratios of medians)", "",
           "| layout | tool | protocol | requests/s | p99 | CPU/request | nginx's rounds |", "|---|---|---|---|---|---|---|"]
for (layout, tool, proto) in sorted(last):
    ng, fg = by.get((layout, tool, proto, "nginx")), by.get((layout, tool, proto, "fngate"))
    for t, rs in (("nginx", ng), ("fngate", fg)):
        if rs:
            lines.append(f"| {layout} | {tool} | {proto} | {t} | {med(rs,'rps'):.0f} ({rng(rs,'rps','.0f')}) | {med(rs,'p50_ms'):.2f} | "
                         f"{med(rs,'p99_ms'):.2f} ({rng(rs,'p99_ms','.2f')}) | {med(rs,'gw_cpu_us'):.1f} ({rng(rs,'gw_cpu_us','.1f')}) | {sum(r.get('errors',0) for r in rs)} |")
    if ng and fg:
        n = "noisy (>±15%) after a repeat: not meaningful" if noisy(ng) else ("within ±15% on the repeat" if last[(layout, tool, proto)] > 1 else "within ±15%")
        summary.append(f"| {layout} | {tool} | {proto} | **{med(fg,'rps')/med(ng,'rps'):.2f}x** | {med(fg,'p99_ms')/med(ng,'p99_ms'):.2f}x | "
                       f"{med(fg,'gw_cpu_us')/med(ng,'gw_cpu_us'):.2f}x | {n} |")
lines += summary
lines += ["", "## Command", "", "```sh", f"ROUNDS={rounds} DURATION={duration} CONNS={conns} bash loadtest/scripts/bench-tools.sh",
          "# the runs (1 core; 2 cores: -t2 / --threads 2, no taskset):",
          "taskset -c 0 wrk -t1 -c64 -d5s --latency -s post.lua URL",
          "taskset -c 0 h2load -t1 -c64 -m1 -D5 -d post.body -H 'content-type: application/octet-stream' [--h1] URL",
          "taskset -c 0 target/release/loadtest --threads 1 --url URL -c 64 -d 5s --cacert cert.pem [--http2] --json", "```", "",
          "Raw rounds (JSON lines) are printed to stderr by the script."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
