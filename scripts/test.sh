#!/usr/bin/env bash
# The whole test suite, as CI runs it (README: "Run all tests").
# Needs only the Rust toolchain; installs what the tests use when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
need_apt=()
# Debian's own python3: isolated instances see only the system's /usr, not
# a toolchain manager's interpreter elsewhere (pyenv's under /root, say).
[ -x /usr/bin/python3 ] || need_apt+=(python3)
# curl (with HTTP/2) for the early-answer tests; testssl.sh for the TLS scan.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v testssl >/dev/null 2>&1 || need_apt+=(testssl.sh)
# Debian's python3 creates virtual environments only with python3-venv.
{ command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' 2>/dev/null; } || need_apt+=(python3-venv)
# A real Prometheus (and promtool) for the observability tests.
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need_apt+=(prometheus)
# Instance networking (network namespaces, veth pairs, per-instance rules).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
{ command -v iptables && command -v iptables-restore && command -v iptables-save; } >/dev/null 2>&1 || need_apt+=(iptables)
# Fleet mode's engine: NATS with JetStream (started per test on loopback).
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
# ...and Redis for its exact fleet-wide limits.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# A Docker engine for the image test (no registry is reachable: the image is FROM scratch).
{ command -v dockerd && command -v docker; } >/dev/null 2>&1 || need_apt+=(docker.io)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# A private Docker engine (its own data root and socket), unless one answers already.
if [ -z "${DOCKER_HOST:-}" ] || ! docker info >/dev/null 2>&1; then
    dockdir=${TMPDIR:-/tmp}/fngate-test-docker
    mkdir -p "$dockdir"
    export DOCKER_HOST="unix://$dockdir/docker.sock"
    if ! docker info >/dev/null 2>&1; then
        ${SUDO:-} dockerd --storage-driver=vfs --iptables=false --bridge=none \
            --data-root "$dockdir/root" --exec-root "$dockdir/exec" \
            --host "$DOCKER_HOST" --pidfile "$dockdir/docker.pid" > "$dockdir/dockerd.log" 2>&1 &
        dockerd_pid=$!
        trap 'kill "$dockerd_pid" 2>/dev/null || true; wait "$dockerd_pid" 2>/dev/null || true' EXIT
        for _ in $(seq 1 120); do
            docker info >/dev/null 2>&1 && break
            sleep 0.5
        done
        docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 "$dockdir/dockerd.log"; exit 1; }
    fi
fi

# The clouds' real clients for the SDK tests (a pinned virtual environment).
venv=$(bash scripts/sdk-venv.sh)
export FNGATE_SDK_VENV="$venv"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start the workspace's binaries (gateway, sandbox-runtime,
# fngate-echo), so build them all first.
cargo build --workspace --bins
# The docker test's image is built from the static release binaries.
bash scripts/build-static.sh
cargo test --workspace
# Coverage-guided fuzzing of the parsers, briefly (longer: bash scripts/fuzz.sh 3600).
bash scripts/fuzz.sh 20
