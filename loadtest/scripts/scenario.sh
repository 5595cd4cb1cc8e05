#!/usr/bin/env bash
# Runs loadtest/scenarios/NAME.toml against a gateway started with
# config/loadtest.toml (release build):  scenario.sh NAME [loadtest options]
# Extra options go to loadtest (e.g. --json, -d 30s).
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: scenario.sh NAME [loadtest options]}
shift
cargo build --release --workspace >&2
./target/release/gateway --config config/loadtest.toml 2> target/loadtest-gateway.log &
gw=$!
trap 'kill -TERM $gw 2>/dev/null; wait $gw 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
    grep -q "fngate listening" target/loadtest-gateway.log && break
    sleep 0.05
done
./target/release/loadtest --scenario "loadtest/scenarios/$name.toml" --cacert config/fngate-self-signed.pem "$@"
