# Shared by the benchmark scripts: build, core pinning, process cleanup,
# starting a gateway and waiting for it. Source it from the repository root.

cargo build --release --workspace >&2
T=$PWD/target/release
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Background processes are started as `"${CORE1[@]}" prog &` so that `$!` is
# the program itself (a backgrounded shell function would be a subshell that
# defers SIGTERM until its child exits).
if command -v taskset >/dev/null; then CORE0=(taskset -c 0); CORE1=(taskset -c 1); else CORE0=(); CORE1=(); fi
# place 1|2: where the servers (SRV, used by start_gateway) and the load
# generators run (CLIENT: the pinning, CLIENT_THREADS; LT: loadtest so placed). 1: servers on core 1, a one-thread client on core 0;
# 2: nothing pinned, a two-thread client (servers and client share both
# cores).
place() {
    if [ "$1" = 2 ]; then
        SRV=(); CLIENT=(); CLIENT_THREADS=2
    else
        SRV=("${CORE1[@]}"); CLIENT=("${CORE0[@]}"); CLIENT_THREADS=1
    fi
    LT=("${CLIENT[@]}" "$T/loadtest" --threads "$CLIENT_THREADS")
}
place 1

# start_gateway CONFIG.toml [BINARY]: the gateway (default: this build's) on
# core 1 (or as SRV says), logging to CONFIG.log; sets GW_PID. Its embedded
# worker runs plain processes, as the peers' setups compare, unless the
# config says otherwise or BENCH_ISOLATION=namespaces (a binary that predates
# the key, a base revision's, knows only plain processes).
start_gateway() {
    local log="${1%.toml}.log"
    if ! grep -q '^embedded_worker_isolation' "$1" && grep -qa embedded_worker_isolation "${2:-$T/gateway}"; then
        sed -i "0,/^\[gateway\]/s//[gateway]\nembedded_worker_isolation = \"${BENCH_ISOLATION:-process}\"/" "$1"
    fi
    RUST_LOG=warn,fngate=info "${SRV[@]}" "${2:-$T/gateway}" --config "$1" 2> "$log" &
    GW_PID=$!
    pids+=($!)
    for _ in $(seq 1 200); do
        grep -q "fngate listening" "$log" && return 0
        sleep 0.05
    done
    cat "$log" >&2
    return 1
}

# build_base REVISION OUT: the gateway of git REVISION, built in a worktree
# into a target directory of its own (kept between runs, so dependencies
# build once; sharing the working tree's would let cargo take one tree's
# workspace crates for the other's), copied to OUT.
build_base() {
    git worktree add --detach "$work/base" "$1" >&2
    local base_target
    base_target="$(dirname "$T")/bench-base"
    (cd "$work/base" && CARGO_TARGET_DIR="$base_target" cargo build --release -p gateway >&2)
    cp "$base_target/release/gateway" "$2"
    git worktree remove --force "$work/base"
}

# The functions the peer and before/after benchmarks call, one per path:
# allowed (echo), 403 (private: VPC-only, called from 127.0.0.1) and 429
# (throttled: 100 requests/s, burst 20). TOML for a gateway config's end.
path_functions_toml() {
    cat <<TOML
[[networks]]
vpc_id = "vpc-a"
cidrs = ["127.0.0.2/32"]
[[functions]]
name = "echo"
command = ["$T/fngate-echo"]
instance_concurrency = 200
[[functions]]
name = "private"
command = ["$T/fngate-echo"]
vpc_bindings = ["vpc-a"]
[[functions]]
name = "throttled"
command = ["$T/fngate-echo"]
instance_concurrency = 200
rate_limit = { per_second = 100.0, burst = 20 }
TOML
}

# path_function PATH: the function of path_functions_toml for allowed, 403 or 429.
path_function() {
    case $1 in allowed) echo echo ;; 403) echo private ;; 429) echo throttled ;; esac
}

# peer_configs W: nginx's (in $work/nginx) and fngate's (in $work/fngate)
# configs for the peer benchmarks, W workers each: TLS on 18444 and 18443,
# the functions of path_functions_toml (nginx: a location each, proxied to
# the echo program at $ECHO over a keep-alive pool; a CIDR allow-list for
# the VPC-only one, limit_req for the throttled one). Needs bench_cert's
# files and F (the invocation path's prefix).
peer_configs() {
    local w=$1
    mkdir -p "$work/nginx/tmp" "$work/fngate"
    { nginx_head "$w"; cat <<EOF; } > "$work/nginx/nginx.conf"
    limit_req_zone \$binary_remote_addr zone=thr:10m rate=100r/s;
    upstream echo { server $ECHO; keepalive 64; }
    server {
        listen 127.0.0.1:18444 ssl http2;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 100000000;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location = $F/echo/invocations { proxy_pass http://echo/invoke; }
        location = $F/private/invocations { allow 127.0.0.2; deny all; proxy_pass http://echo/invoke; }
        location = $F/throttled/invocations {
            limit_req zone=thr burst=20 nodelay;
            limit_req_status 429;
            proxy_pass http://echo/invoke;
        }
    }
}
EOF
    cat > "$work/fngate/gateway.toml" <<EOF
[gateway]
listen = "127.0.0.1:18443"
admin_listen = "127.0.0.1:19464"
tls_cert = "$work/cert.pem"
tls_key = "$work/key.pem"
threads = $w
EOF
    path_functions_toml >> "$work/fngate/gateway.toml"
}

# rss_kb PID...: their resident memory together, in kB.
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }

# idle_and_held URL CACERT PID...: prints "IDLE_KB HELD_KB", the processes'
# resident memory before and while loadtest holds 1,000 idle TLS connections
# to URL.
idle_and_held() {
    local url=$1 ca=$2 idle held holder fifo
    shift 2
    idle=$(rss_kb "$@")
    fifo=$(mktemp -u "$work/hold.XXXXXX")
    mkfifo "$fifo"
    "${LT[@]}" --hold -c 1000 -d 20s --url "$url" --cacert "$ca" > "$fifo" &
    holder=$!
    read -r _ < "$fifo"
    held=$(rss_kb "$@")
    kill "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true
    echo "$idle $held"
}

# async_queued ADMIN_PORT: a gateway's fngate_async_queued.
async_queued() { curl -s "http://127.0.0.1:$1/metrics" | awk '$1 == "fngate_async_queued" {print $2}'; }

# drain_queue ADMIN_PORT NAME: waits (at most 2 minutes) until that gateway's
# asynchronous queue is empty.
drain_queue() {
    for _ in $(seq 1 1200); do
        [ "$(async_queued "$1")" = 0 ] && return 0
        sleep 0.1
    done
    echo "queue of $2 did not drain" >&2
    return 1
}

field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# CPU time (utime + stime, in clock ticks) so far of the gateway process, or
# of all the processes GW_PID lists (space-separated: nginx's workers).
GW_PID=
gw_cpu() {
    local t=0 p
    for p in $GW_PID; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo $t
}
CLK_TCK=$(getconf CLK_TCK)

# measure ARGS...: runs loadtest with ARGS (add --json and no --warmup, so the
# CPU window and the request count cover the same time) and prints its JSON
# with "gw_cpu_us": the gateway's CPU microseconds per request.
measure() {
    local before after json
    before=$(gw_cpu)
    json=$("${LT[@]}" "$@" --json)
    after=$(gw_cpu)
    python3 -c "import json,sys; r=json.loads(sys.argv[1]); r['gw_cpu_us']=(int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4])*1e6/max(r['requests'],1); print(json.dumps(r))" \
        "$json" "$before" "$after" "$CLK_TCK"
}

# bench_cert: one ECDSA P-256 certificate for localhost and 127.0.0.1, in
# $work/cert.pem and $work/key.pem (needs openssl).
bench_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -keyout "$work/key.pem" -out "$work/cert.pem" -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" 2>/dev/null
}

# nginx_head W: the start of an nginx.conf in $work/nginx (W workers, no
# access log, temp files under $work/nginx/tmp, which must exist), up to the
# open http block.
nginx_head() {
    cat <<EOF
worker_processes $1;
worker_rlimit_nofile 65536;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
EOF
}

# Standard tools beside loadtest (issue 31): wrk (HTTP/1.1) and h2load
# (HTTP/2, or HTTP/1.1 with --h1), installed from Debian when missing.
# `tool_measure` prints the same JSON keys as `measure` (rps, p50_ms, p99_ms, gw_cpu_us,
# requests, errors); h2load reports no percentiles, so its p50_ms/p99_ms are
# its mean and its mean plus two standard deviations ("p99_ms" is then an
# estimate, and the reports say so). The client runs where `place` put it.
tools_install() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq >&2
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    printf 'wrk.method = "POST"\nwrk.body = "hello"\nwrk.headers["Content-Type"] = "application/octet-stream"\n' > "$work/post.lua"
    printf hello > "$work/post.body"
}

# tool_measure wrk|h2load URL CONNS DURATION [--h1]: one run of that tool
# (POST "hello"; h2load: one stream per connection, the same concurrency as
# wrk's and loadtest's CONNS), its summary as JSON.
tool_measure() {
    local tool=$1 before after
    before=$(gw_cpu)
    case $tool in
        wrk) "${CLIENT[@]}" wrk -t"$CLIENT_THREADS" -c"$3" -d"$4" --latency -s "$work/post.lua" "$2" ;;
        h2load) "${CLIENT[@]}" h2load -t"$CLIENT_THREADS" -c"$3" -m1 -D"${4%s}" -d "$work/post.body" \
                    -H 'content-type: application/octet-stream' ${5:-} "$2" ;;
    esac > "$work/$tool.txt"
    after=$(gw_cpu)
    python3 - "$tool" "$work/$tool.txt" "$before" "$after" "$CLK_TCK" <<'PY'
import json, re, sys
tool, path, before, after, tck = sys.argv[1:]
text = open(path).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
if tool == "wrk":
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(non2xx.group(1)) if non2xx else 0
    p = {k: ms(v) for k, v in re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M)}
    p50, p99 = p["50"], p["99"]
else:
    rps = float(re.search(r"([\d.]+) req/s", text).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", text)
    total, ok = int(m.group(1)), int(m.group(2))
    codes = re.search(r"status codes: (\d+) 2xx", text)
    errors = total - (int(codes.group(1)) if codes else ok)
    t = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)\s+(\S+)", text)
    p50, p99 = ms(t.group(1)), ms(t.group(1)) + 2 * ms(t.group(2))
cpu = (int(after) - int(before)) / int(tck) * 1e6 / max(total, 1)
print(json.dumps({"rps": rps, "p50_ms": p50, "p99_ms": p99, "gw_cpu_us": cpu,
                  "requests": total, "errors": errors}))
PY
}
