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
LT=("${CORE0[@]}" "$T/loadtest" --threads 1)

# start_gateway CONFIG: the gateway on core 1, logging to $work/gateway.log.
start_gateway() {
    RUST_LOG=warn,fngate=info "${CORE1[@]}" "$T/gateway" --config "$1" 2> "$work/gateway.log" &
    GW_PID=$!
    pids+=($!)
    for _ in $(seq 1 200); do
        grep -q "fngate listening" "$work/gateway.log" && return 0
        sleep 0.05
    done
    cat "$work/gateway.log" >&2
    return 1
}

field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# CPU time (utime + stime, in clock ticks) of the gateway process so far.
GW_PID=
gw_cpu() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
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
