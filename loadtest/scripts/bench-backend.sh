#!/usr/bin/env bash
# Cloud backends: what the gateway adds in front of a function that lives
# behind HTTPS. nginx (TLS, `return 200`) stands for the cloud; the same
# client calls it directly and through fngate (an `http` backend), in
# alternating rounds of one run:
#   - closed loop, CONNS keep-alive connections (requests/s, p50, p99);
#   - sequential, one connection, one call at a time (the latency added);
#   - memory: the gateway's resident memory before and after it pooled
#     1,000 backend connections (a 1,000-connection burst through it).
# Layout as bench-peers' "1 core": nginx (one worker) and fngate
# (threads = 1) on core 1, the client on core 0. Loopback only. Installs
# nginx and openssl from Debian when missing. Writes
# loadtest/results/backend.md (backend-h2.md with PROTO=h2).
#
# Env: ROUNDS (3), DURATION (5s), CONNS (64), PROTO (h1 | h2: the
# gateway -> backend leg; the client always speaks HTTP/1.1).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
PROTO=${PROTO:-h1}
OUT=loadtest/results/backend.md; [ "$PROTO" = h2 ] && OUT=loadtest/results/backend-h2.md

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
ulimit -n "$(ulimit -Hn)"
source loadtest/scripts/lib.sh

bench_cert

BACKEND=127.0.0.1:18446
http2=""; [ "$PROTO" = h2 ] && http2=" http2"
mkdir -p "$work/nginx/tmp" "$work/fngate"
{ nginx_head 1; cat <<EOF; } > "$work/nginx/nginx.conf"
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen $BACKEND ssl$http2;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 "{\"ok\":true}"; }
    }
}
EOF
cat > "$work/fngate/gateway.toml" <<EOF
[gateway]
listen = "127.0.0.1:18443"
admin_listen = "127.0.0.1:19464"
tls_cert = "$work/cert.pem"
tls_key = "$work/key.pem"
threads = 1
backend_ca_file = "$work/cert.pem"
backend_max_idle_per_host = 1024
[[functions]]
name = "cloud"
[[functions.backends]]
name = "svc"
kind = "http"
url = "https://$BACKEND/fn"
EOF

"${CORE1[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!); NGINX_MASTER=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18446) 2>/dev/null && break; sleep 0.05; done
start_gateway "$work/fngate/gateway.toml"
FNGATE=$GW_PID

declare -A URL=([direct]="https://$BACKEND/fn" [fngate]="https://127.0.0.1:18443/2023-03-30/functions/cloud/invocations")
run() {
    local target=$1 conns=$2
    GW_PID=$FNGATE
    measure --url "${URL[$target]}" --cacert "$work/cert.pem" -c "$conns" -d "$DURATION" --payload-bytes 256
}
# Warm both paths; stop if one is broken.
for t in direct fngate; do
    w=$(run "$t" 4)
    python3 -c "import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r['statuses'].get('200',0) == r['requests'] > 0 else 1)" "$w" \
        || { echo "warm-up of $t failed: $w" >&2; exit 1; }
done

results="$work/results.jsonl"; : > "$results"
for r in $(seq 1 "$ROUNDS"); do
    for kind in loaded sequential; do
        for t in direct fngate; do
            conns=$CONNS; [ "$kind" = sequential ] && conns=1
            line=$(run "$t" "$conns")
            echo "{\"round\":$r,\"target\":\"$t\",\"kind\":\"$kind\",\"r\":$line}" >> "$results"
            echo "round $r $kind $t: $line" >&2
        done
    done
done

# Memory with 1,000 pooled backend connections: a burst of 1,000 client
# connections, each with one call in flight, makes the gateway open 1,000
# backend connections (HTTP/1.1: one call each); they stay pooled after it.
before_kb=$(rss_kb "$FNGATE")
"${LT[@]}" --url "${URL[fngate]}" --cacert "$work/cert.pem" -c 1000 -d 3s --json > "$work/burst.json"
pooled=$(ss -Htn state established "( dport = :18446 )" | wc -l)
after_kb=$(rss_kb "$FNGATE")
echo "memory: $before_kb kB before, $after_kb kB with $pooled pooled backend connections" >&2

python3 - "$OUT" "$results" "$ROUNDS" "$DURATION" "$CONNS" "$PROTO" "$before_kb" "$after_kb" "$pooled" "$(nginx -v 2>&1 | sed 's/.*\///')" <<'PY'
import json, sys, datetime, collections
out, results, rounds, duration, conns, proto, before, after, pooled, nginx_v = sys.argv[1:]
sys.path.insert(0, "loadtest/scripts")
from summary import med, rng
rows = [json.loads(l) for l in open(results)]
by = collections.defaultdict(list)
for x in rows:
    by[(x["target"], x["kind"])].append(x["r"])
d, f = by[("direct", "loaded")], by[("fngate", "loaded")]
ds, fs = by[("direct", "sequential")], by[("fngate", "sequential")]
before, after, pooled = int(before), int(after), int(pooled)
lines = [
    "# Cloud backends: fngate in front of an HTTPS backend",
    "",
    f"Produced by `bash loadtest/scripts/bench-backend.sh` on {datetime.date.today()} (nginx {nginx_v} as the backend,",
    f"`return 200` over TLS 1.3; gateway to backend over {'HTTP/2' if proto == 'h2' else 'HTTP/1.1'}). One run, {rounds} alternating rounds of {duration}:",
    "the client calls the backend directly, then through fngate (an `http` backend), 256-byte payloads.",
    "nginx (one worker) and fngate (`threads = 1`) on core 1, the client on core 0. Medians, min-max.",
    "",
    f"## {conns} keep-alive connections",
    "",
    "| path | requests/s | p50 ms | p99 ms | fngate CPU µs/request |",
    "|---|---|---|---|---|",
    f"| direct | {med(d,'rps'):.0f} ({rng(d,'rps','.0f')}) | {med(d,'p50_ms'):.3f} | {med(d,'p99_ms'):.2f} | - |",
    f"| through fngate | {med(f,'rps'):.0f} ({rng(f,'rps','.0f')}) | {med(f,'p50_ms'):.3f} | {med(f,'p99_ms'):.2f} | {med(f,'gw_cpu_us'):.1f} |",
    "",
    f"fngate/direct: requests/s {med(f,'rps')/med(d,'rps'):.2f}x; added p50 {(med(f,'p50_ms')-med(d,'p50_ms'))*1000:.0f} µs, added p99 {(med(f,'p99_ms')-med(d,'p99_ms'))*1000:.0f} µs.",
    "(The backend and the gateway share one core here, so the through-fngate rate is bounded by both.)",
    "",
    "## One connection, one call at a time",
    "",
    "| path | p50 ms | p99 ms |",
    "|---|---|---|",
    f"| direct | {med(ds,'p50_ms'):.3f} | {med(ds,'p99_ms'):.2f} |",
    f"| through fngate | {med(fs,'p50_ms'):.3f} | {med(fs,'p99_ms'):.2f} |",
    "",
    f"Added by the gateway: p50 {(med(fs,'p50_ms')-med(ds,'p50_ms'))*1000:.0f} µs, p99 {(med(fs,'p99_ms')-med(ds,'p99_ms'))*1000:.0f} µs.",
    "",
    "## Memory with pooled backend connections",
    "",
    f"Gateway resident memory {before/1024:.1f} MiB before, {after/1024:.1f} MiB after a 1,000-connection burst through it,",
    f"which left {pooled} backend TLS connection{'s' if pooled != 1 else ''} pooled"
    + (f": at most {(after-before)/max(pooled,1):.1f} kB per pooled connection (an upper bound: the figure also holds what the"
       " allocator kept of the burst's 1,000 client connections, closed by then)." if pooled >= 10 else
       " (HTTP/2 multiplexes the calls; the growth is what the allocator kept of the burst's client connections)."),
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
