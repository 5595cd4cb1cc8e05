#!/usr/bin/env bash
# The integration suite with every instance isolated (`--isolation
# namespaces` on every worker, the embedded one included). As root.
# Tests that rely on what isolation takes away (writing the host's files,
# reading an instance's host pid) are listed in ARCHITECTURE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
FNGATE_TEST_ISOLATION=namespaces cargo test -p gateway --test it -- "$@"
