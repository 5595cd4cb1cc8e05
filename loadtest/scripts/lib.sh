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
    pids+=($!)
    for _ in $(seq 1 200); do
        grep -q "fngate listening" "$work/gateway.log" && return 0
        sleep 0.05
    done
    cat "$work/gateway.log" >&2
    return 1
}

field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
