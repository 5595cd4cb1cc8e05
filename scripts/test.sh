#!/usr/bin/env bash
# The whole test suite, as CI runs it (README: "Run all tests").
# Needs only the Rust toolchain; installs what the tests use when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# A real Prometheus (and promtool) for the observability tests.
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start the workspace's binaries (gateway, sandbox-runtime,
# fngate-echo), so build them all first.
cargo build --workspace --bins
cargo test --workspace
