#!/usr/bin/env bash
# Statically linked release binaries for the FROM-scratch image (Dockerfile):
# target/x86_64-unknown-linux-gnu/release/{gateway,sandbox-runtime,fngate-echo}.
# The explicit --target keeps crt-static away from build scripts and proc macros.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target x86_64-unknown-linux-gnu --bins
