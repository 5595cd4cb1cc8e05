#!/usr/bin/env bash
# The integration suite with instances as plain processes (`--isolation
# process` on every worker, the embedded one included) instead of the
# default isolation. Tests that need isolation (isolation, egress) keep
# asking for it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
# The private Docker engine scripts/test.sh starts, when it still runs.
sock=${TMPDIR:-/tmp}/fngate-test-docker/docker.sock
if [ -z "${DOCKER_HOST:-}" ] && [ -S "$sock" ]; then export DOCKER_HOST="unix://$sock"; fi
FNGATE_TEST_ISOLATION=process cargo test -p gateway --test it -- "$@"
