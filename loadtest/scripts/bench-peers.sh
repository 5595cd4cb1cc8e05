#!/usr/bin/env bash
# Side-by-side benchmark: the same native echo function behind
#   direct  - nothing (the client calls it: the machine's limit),
#   nginx   - TLS, a CIDR allow-list on a VPC-only path, limit_req on a
#             throttled path, keep-alive upstream pool,
#   haproxy - the same job,
#   fngate  - the equivalent config (a VPC-bound function, a rate-limited one).
# Paths: allowed (200), VPC-only from outside (403), throttled (429), each over
# HTTP/1.1 and HTTP/2; alternating rounds (direct nginx haproxy fngate ...);
# plus one connection calling in sequence (the added latency of each hop).
# Two layouts, in one run:
#   1 core : each server one worker (nginx worker_processes 1, HAProxy
#            nbthread 1, fngate threads = 1) pinned to core 1 with the echo
#            upstream; the client (1 thread) on core 0;
#   2 cores: two workers each (worker_processes 2, nbthread 2, threads = 2),
#            nothing pinned: servers, upstream and the client (2 threads)
#            share both cores.
# The same ECDSA P-256 certificate everywhere. Also: each server's resident
# memory with 1,000 idle TLS connections. Installs nginx, haproxy and openssl
# from Debian when missing. Writes loadtest/RESULTS.md. Loopback only.
#
# Env: ROUNDS (5), DURATION (5s), CONNS (64), LAYOUTS ("1 2"),
#      TARGETS ("nginx haproxy fngate"; direct is always measured).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
LAYOUTS=${LAYOUTS:-1 2}
TARGETS=${TARGETS:-nginx haproxy fngate}
OUT=loadtest/RESULTS.md

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
ulimit -n "$(ulimit -Hn)"   # 1,000 held connections need more than the usual 1024
source loadtest/scripts/lib.sh

# One certificate for all.
bench_cert
cat "$work/cert.pem" "$work/key.pem" > "$work/combined.pem"

ECHO=127.0.0.1:18081
F=/2023-03-30/functions
declare -A PORT=([nginx]=18444 [haproxy]=18445 [fngate]=18443)

# configs W: the three proxies' configs with W workers each.
configs() {
    local w=$1
    peer_configs "$w"
    cat > "$work/haproxy.cfg" <<EOF
global
    nbthread $w
    maxconn 8000   # ~2 fds per connection must fit the hard limit (20000 here)
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option http-buffer-request
frontend fe
    bind 127.0.0.1:18445 ssl crt $work/combined.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
    stick-table type ip size 100k expire 30s store http_req_rate(1s)
    acl p_private path $F/private/invocations
    acl p_thr path $F/throttled/invocations
    acl vpc src 127.0.0.2
    http-request deny deny_status 403 if p_private !vpc
    http-request track-sc0 src if p_thr
    http-request deny deny_status 429 if p_thr { sc_http_req_rate(0) gt 100 }
    http-request set-path /invoke
    default_backend echo
backend echo
    http-reuse always
    server e1 $ECHO maxconn 256
EOF
}

# run TARGET PATH PROTO CONNS: one measured run, as JSON with the server's
# CPU per request.
run() {
    local target=$1 path=$2 proto=$3 conns=$4 url
    local fn; fn=$(path_function "$path")
    local extra=(); [ "$proto" = h2 ] && extra=(--http2)
    if [ "$target" = direct ]; then
        url="http://$ECHO/invoke"
    else
        url="https://127.0.0.1:${PORT[$target]}$F/$fn/invocations"; extra+=(--cacert "$work/cert.pem")
    fi
    GW_PID=${PID[$target]}
    measure --url "$url" -c "$conns" -d "$DURATION" --source 127.0.0.1 "${extra[@]}"
}

results="$work/results.jsonl"
mem="$work/memory.jsonl"
: > "$results"
: > "$mem"
declare -A PID=()
for layout in $LAYOUTS; do
    place "$layout"
    configs "$layout"
    suite=()
    "${SRV[@]}" "$T/fngate-echo" --standalone "$ECHO" 2>/dev/null &
    pids+=($!); suite+=($!); PID[direct]=$!
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18081) 2>/dev/null && break; sleep 0.05; done
    for t in $TARGETS; do
        case $t in
            nginx)
                "${SRV[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
                pids+=($!); suite+=($!); NGINX_MASTER=$!
                for _ in $(seq 1 100); do [ "$(pgrep -c -P "$NGINX_MASTER" || true)" -ge "$layout" ] && break; sleep 0.05; done
                # Its CPU: all its workers', not the master's.
                PID[nginx]=$(pgrep -P "$NGINX_MASTER" | tr '\n' ' ') ;;
            haproxy)
                "${SRV[@]}" haproxy -f "$work/haproxy.cfg" -db 2> "$work/haproxy.log" &
                pids+=($!); suite+=($!); PID[haproxy]=$! ;;
            fngate)
                start_gateway "$work/fngate/gateway.toml"
                suite+=($GW_PID); PID[fngate]=$GW_PID ;;
        esac
    done
    # Warm up every path once (starts fngate's instances); stop if a target is broken.
    for t in $TARGETS; do
        for p in allowed 403 429; do
            w=$(run "$t" "$p" h1 "$CONNS")
            python3 -c "import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r['requests'] > 0 else 1)" "$w" \
                || { echo "warm-up of $t $p failed: $w" >&2; exit 1; }
        done
    done
    run direct allowed h1 "$CONNS" >/dev/null
    for r in $(seq 1 "$ROUNDS"); do
        for path in allowed 403 429 sequential; do
            for proto in h1 h2; do
                [ "$path" = sequential ] && [ "$proto" = h2 ] && continue
                for target in direct $TARGETS; do
                    [ "$target" = direct ] && { [ "$path" = 403 ] || [ "$path" = 429 ] || [ "$proto" = h2 ]; } && continue
                    if [ "$path" = sequential ]; then
                        line=$(run "$target" allowed h1 1)
                    else
                        line=$(run "$target" "$path" "$proto" "$CONNS")
                    fi
                    echo "{\"layout\":$layout,\"round\":$r,\"target\":\"$target\",\"path\":\"$path\",\"proto\":\"$proto\",\"r\":$line}" >> "$results"
                    echo "layout $layout round $r $path $proto $target: $line" >&2
                done
            done
        done
    done
    if [ "$layout" = 1 ]; then
        # Resident memory with 1,000 idle TLS connections (server processes only).
        for target in $TARGETS; do
            case $target in
                nginx) procs=("$NGINX_MASTER" $(pgrep -P "$NGINX_MASTER")) ;;
                *) procs=("${PID[$target]}") ;;
            esac
            read -r idle held < <(idle_and_held "https://127.0.0.1:${PORT[$target]}$F/echo/invocations" "$work/cert.pem" "${procs[@]}")
            echo "{\"target\":\"$target\",\"idle_kb\":$idle,\"held_kb\":$held}" >> "$mem"
            echo "memory $target: $idle kB idle, $held kB with 1000 connections" >&2
        done
    fi
    for p in "${suite[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${suite[@]}"; do wait "$p" 2>/dev/null || true; done
done

python3 - "$OUT" "$results" "$mem" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" "$(nginx -v 2>&1 | sed 's/.*\///')" "$(haproxy -v | head -1 | awk '{print $3}')" <<'PY'
import json, statistics, sys, datetime, collections
out, results, mem, rounds, duration, conns, cores, nginx_v, haproxy_v = sys.argv[1:]
rows = [json.loads(l) for l in open(results)]
by = collections.defaultdict(list)
for x in rows:
    by[(x["layout"], x["target"], x["path"], x["proto"])].append(x["r"])
layouts = sorted({x["layout"] for x in rows})
want = {"allowed": "200", "403": "403", "429": "429", "sequential": "200"}
sys.path.insert(0, "loadtest/scripts")
from summary import med, rng
lines = [
    "# fngate vs nginx vs HAProxy",
    "",
    f"Produced by `bash loadtest/scripts/bench-peers.sh` on {datetime.date.today()} ({cores} cores; nginx {nginx_v}, HAProxy {haproxy_v}).",
    f"Closed loop with `loadtest`, {conns} keep-alive connections, {duration} per run, {rounds} alternating rounds",
    "(direct, nginx, HAProxy, fngate for each path and protocol); medians with min-max.",
    "The same native echo function upstream of every proxy (one thread; fngate runs it as its instance, the",
    "others reach the same binary on a fixed port over a keep-alive pool). TLS 1.3 with the same ECDSA P-256",
    "certificate on every proxy. CPU is the server's own (nginx: its workers; fngate: the gateway process,",
    "not its echo instance), from /proc before and after each run.",
    "",
    "Layouts:",
    "- **1 core**: each server with one worker pinned to core 1 (nginx `worker_processes 1`, HAProxy `nbthread 1`,",
    "  fngate `threads = 1`) with its echo upstream; the client (1 thread) pinned to core 0.",
    "- **2 cores**: two workers each (`worker_processes 2`, `nbthread 2`, `threads = 2`), nothing pinned: the",
    "  servers, the upstream and the client (2 threads) share both cores, as the scheduler places them.",
    "",
    "Paths: **allowed** (`echo`, proxied to the function), **403** (`private`, a VPC-only path called from outside),",
    "**429** (`throttled`, limited to 100 requests/s with a burst of 20: nearly all answered 429), and",
    "**sequential** (the allowed path over one HTTP/1.1 connection, one call at a time: the latency a hop adds).",
    "",
    "## Summary: fngate / nginx, same run",
    "",
    "| layout | path | protocol | requests/s | p50 | p99 | CPU/request |",
    "|---|---|---|---|---|---|---|",
]
summary_at = len(lines)
body = []
for layout in layouts:
    body += [f"# {layout} core{'s' if layout > 1 else ''}", ""]
    for path in ["allowed", "403", "429", "sequential"]:
        for proto in ["h1", "h2"]:
            if not by.get((layout, "nginx", path, proto)) and not by.get((layout, "fngate", path, proto)):
                continue
            body += [f"## {path} path, {'HTTP/1.1' if proto == 'h1' else 'HTTP/2'} ({layout} core{'s' if layout > 1 else ''})", "",
                     "| target | requests/s | p50 ms | p99 ms | server CPU µs/request | share of the expected status |",
                     "|---|---|---|---|---|---|"]
            base = by.get((layout, "direct", path, proto)) or by.get((layout, "direct", "allowed", "h1"))
            ng = by.get((layout, "nginx", path, proto))
            for t in ["direct", "nginx", "haproxy", "fngate"]:
                rs = by.get((layout, t, path, proto))
                if not rs:
                    continue
                ok = statistics.median(r["statuses"].get(want[path], 0) / max(r["requests"], 1) for r in rs)
                cpu = "-" if t == "direct" else f"{med(rs,'gw_cpu_us'):.1f}"
                body.append(f"| {t} | {med(rs,'rps'):.0f} ({rng(rs,'rps','.0f')}) | {med(rs,'p50_ms'):.3f} | {med(rs,'p99_ms'):.2f} ({rng(rs,'p99_ms','.2f')}) | {cpu} | {ok:.3f} |")
            body.append("")
            fg = by.get((layout, "fngate", path, proto))
            ratios = []
            for t in ["nginx", "haproxy", "fngate"]:
                rs = by.get((layout, t, path, proto))
                if rs and base and path != "sequential":
                    ratios.append(f"{t}/direct {med(rs,'rps')/med(base,'rps'):.2f}x")
            if fg and ng:
                r_rps = med(fg,'rps')/med(ng,'rps'); r_p50 = med(fg,'p50_ms')/med(ng,'p50_ms')
                r_p99 = med(fg,'p99_ms')/med(ng,'p99_ms'); r_cpu = med(fg,'gw_cpu_us')/med(ng,'gw_cpu_us')
                ratios.append(f"**fngate/nginx: requests/s {r_rps:.2f}x, p99 {r_p99:.2f}x, CPU/request {r_cpu:.2f}x**")
                lines.append(f"| {layout} | {path} | {proto} | **{r_rps:.2f}x** | {r_p50:.2f}x | {r_p99:.2f}x | {r_cpu:.2f}x |")
            if path == "sequential" and base:
                d = med(base, 'p50_ms')
                added = [f"{t} +{(med(by[(layout, t, path, proto)], 'p50_ms') - d) * 1000:.0f} µs"
                         for t in ["nginx", "haproxy", "fngate"] if by.get((layout, t, path, proto))]
                body += [f"Added p50 over calling the instance directly ({d * 1000:.0f} µs): " + ", ".join(added) + ".", ""]
            if ratios:
                body += ["Ratios: " + "; ".join(ratios) + ".", ""]
lines += ["", "(Ratios of medians; for requests/s higher is better, for the others lower.)", ""]
lines += body
lines += ["## Resident memory with 1,000 idle TLS connections (1 core)", "",
          "| target | idle | with 1,000 connections |", "|---|---|---|"]
for l in open(mem):
    m = json.loads(l)
    lines.append(f"| {m['target']} | {m['idle_kb']/1024:.1f} MiB | {m['held_kb']/1024:.1f} MiB |")
lines += ["", "nginx counts master and worker; HAProxy its one process; fngate its gateway process (with the embedded worker),",
          "not the echo instance (as nginx's and HAProxy's upstream is not counted either).", "",
          "## Commands", "", "```sh", "bash loadtest/scripts/bench-peers.sh            # ROUNDS=5 DURATION=5s CONNS=64 LAYOUTS='1 2'",
          "# each run (1 core; 2 cores: no taskset, --threads 2):",
          "taskset -c 0 target/release/loadtest --threads 1 --url URL -c 64 -d 5s --source 127.0.0.1 [--http2] --cacert cert.pem --json",
          "# sequential: the same with -c 1",
          "# memory:", "target/release/loadtest --hold -c 1000 -d 20s --url URL --cacert cert.pem",
          "# profiles of fngate (perf call graphs, DHAT allocations per request):",
          "bash loadtest/scripts/profile.sh perf allowed h1; bash loadtest/scripts/profile.sh heap allowed h1", "```", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
