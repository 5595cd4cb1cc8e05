#!/usr/bin/env bash
# Coverage-guided fuzzing of fngate's parsers (gateway/fuzz): the PROXY
# protocol header, every dialect's request head and credentials, the
# configuration loader. Each target runs SECONDS (default 600); the test
# command runs them for a short budget, a longer run is this script by hand:
#   bash scripts/fuzz.sh 3600
# The corpus grows in target/fuzz-run/corpus (the committed seeds are read,
# never written); a failing input lands in target/fuzz-run/artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
each=${1:-600}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo fuzz needs unstable compiler flags (sanitizers): stable allows them so.
export RUSTC_BOOTSTRAP=1
work=$(realpath -m "${CARGO_TARGET_DIR:-target}")/fuzz-run
cd gateway/fuzz
for t in proxy_header request_head config; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    echo "fuzzing $t for ${each}s"
    if ! cargo fuzz run "$t" "$work/corpus/$t" "seeds/$t" -- \
        -max_total_time="$each" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 > "$work/$t.log" 2>&1; then
        tail -60 "$work/$t.log"
        echo "fuzz target $t failed: the input is in $work/artifacts/$t/"
        exit 1
    fi
    grep -E "stat::number_of_executed_units|stat::new_units_added|Done " "$work/$t.log" || true
done
