#!/usr/bin/env bash
# Requests/s of the same warm function through each door (Function Compute,
# Lambda, Azure HTTP trigger), and through the FC and Lambda doors with
# signature verification on (requests pre-signed by the clouds' own SDKs and
# replayed: the gateway verifies every one in full), same run, alternating
# rounds, HTTP/1.1 and HTTP/2. Control rows (`*-carried`) send the same signed
# headers to the function that checks none, so the cost of verifying is told
# apart from the cost of carrying the SDKs' larger requests. Gateway and instances pinned to core 1, the
# client to core 0; loopback only. Writes loadtest/results/doors.md.
#
# Usage: bash loadtest/scripts/bench-doors.sh
# Env: ROUNDS (3), DURATION (5s), CONNS (64).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
OUT=loadtest/results/doors.md
ulimit -n "$(ulimit -Hn)"
source loadtest/scripts/lib.sh   # builds the working tree
venv=$(bash scripts/sdk-venv.sh)

PORT=18443
URL=https://127.0.0.1:$PORT
BODY=$(printf 'x%.0s' $(seq 1 64))   # loadtest's default 64-byte payload
cat > "$work/doors.toml" <<TOML
[gateway]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$((PORT + 1000))"
self_signed_cert_path = "$work/ca.pem"
[[credentials]]
access_key_id = "AKIDBENCH"
secret = "bench-secret"
[[functions]]
name = "echo"
command = ["$T/fngate-echo"]
instance_concurrency = 200
[[functions]]
name = "signed"
command = ["$T/fngate-echo"]
instance_concurrency = 200
auth = "signature"
TOML
start_gateway "$work/doors.toml"

DOORS=(fc lambda azure fc-signed lambda-signed fc-carried lambda-carried)
path_of() {
    case $1 in
        fc) echo /2023-03-30/functions/echo/invocations ;;
        lambda) echo /2015-03-31/functions/echo/invocations ;;
        azure) echo /api/echo ;;
        fc-signed) echo /2023-03-30/functions/signed/invocations ;;
        lambda-signed) echo /2015-03-31/functions/signed/invocations ;;
        fc-carried) echo /2023-03-30/functions/echo/invocations ;;
        lambda-carried) echo /2015-03-31/functions/echo/invocations ;;
    esac
}
run() { # DOOR PROTO DURATION
    local extra=() line
    [ "$2" = h2 ] && extra+=(--http2)
    case $1 in
        *-signed | *-carried)
            while IFS= read -r line; do extra+=(-H "$line"); done < <(
                "$venv/bin/python" loadtest/scripts/sign.py "${1%-*}" "$URL" signed "$BODY" AKIDBENCH bench-secret)
            ;;
    esac
    measure --url "$URL$(path_of "$1")" --cacert "$work/ca.pem" -c "$CONNS" -d "$3" \
        --source 127.0.0.1 --body "$BODY" "${extra[@]}"
}
for d in "${DOORS[@]}"; do for p in h1 h2; do run "$d" "$p" 1s >/dev/null; done; done   # warm up

results="$work/results.jsonl"
: > "$results"
for r in $(seq 1 "$ROUNDS"); do
    for proto in h1 h2; do
        for d in "${DOORS[@]}"; do
            line=$(run "$d" "$proto" "$DURATION")
            echo "{\"door\":\"$d\",\"proto\":\"$proto\",\"r\":$line}" >> "$results"
            echo "round $r $proto $d: $line" >&2
        done
    done
done

rev="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway sandbox-runtime || echo '+changes')"
python3 - "$OUT" "$results" "$rev" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" <<'PY'
import collections, datetime, json, sys
sys.path.insert(0, "loadtest/scripts")
from summary import cells, med, share
out, results, rev, rounds, duration, conns, cores = sys.argv[1:]
by = collections.defaultdict(list)
for x in map(json.loads, open(results)):
    by[(x["door"], x["proto"])].append(x["r"])
doors = ["fc", "lambda", "azure", "fc-signed", "lambda-signed", "fc-carried", "lambda-carried"]
lines = [
    "# The same warm function through each door",
    "",
    f"Produced by `bash loadtest/scripts/bench-doors.sh` on {datetime.date.today()} ({cores} cores), gateway `{rev}`.",
    f"Closed loop, {conns} connections, {duration} per run, {rounds} alternating rounds; medians with min-max.",
    "Gateway and its echo instances pinned to core 1, the client to core 0; TLS 1.3; 64-byte payload.",
    "`*-signed`: requests signed by the real SDKs (botocore SigV4, the FC SDK's ACS3-HMAC-SHA256) and",
    "replayed; the gateway verifies each one in full. `*-carried`: the same signed requests to the function",
    "that checks no signature (same bytes, no verification). CPU is the gateway process's own, per request.",
    "",
    "| door | protocol | requests/s | p50 ms | p99 ms | gateway CPU µs/request | share 200 |",
    "|---|---|---|---|---|---|---|",
]
ratios = []
for proto in ["h1", "h2"]:
    base = by[("fc", proto)]
    for d in doors:
        rs = by[(d, proto)]
        lines.append(f"| {d} | {proto} | {cells(rs)} | {share(rs, '200'):.3f} |")
        if d in ("lambda", "azure", "fc-signed", "lambda-signed"):
            ratios.append(f"- {proto} {d} / fc: requests/s **{med(rs,'rps')/med(base,'rps'):.2f}x**, "
                          f"CPU/request **{med(rs,'gw_cpu_us')/med(base,'gw_cpu_us'):.2f}x**, "
                          f"p99 {med(rs,'p99_ms')/med(base,'p99_ms'):.2f}x")
    for d in ["fc", "lambda"]:
        s, c, u = by[(f"{d}-signed", proto)], by[(f"{d}-carried", proto)], by[(d, proto)]
        ratios.append(f"- {proto} {d}: signed and verified / unsigned: requests/s **{med(s,'rps')/med(u,'rps'):.2f}x**, "
                      f"CPU/request **{med(s,'gw_cpu_us')/med(u,'gw_cpu_us'):.2f}x**; "
                      f"verified / carried unverified (the verification alone): requests/s **{med(s,'rps')/med(c,'rps'):.2f}x**, "
                      f"CPU/request **{med(s,'gw_cpu_us')/med(c,'gw_cpu_us'):.2f}x** "
                      f"(+{med(s,'gw_cpu_us')-med(c,'gw_cpu_us'):.1f} µs)")
lines += ["", "Ratios (medians):", *ratios, ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
