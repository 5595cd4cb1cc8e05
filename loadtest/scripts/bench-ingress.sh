#!/usr/bin/env bash
# Benchmark for ingress policy (issue 3): requests/s of the denied path versus
# the allowed path of the same VPC-bound function, warm, HTTP/1.1 keep-alive,
# same run, alternating rounds. The allowed caller sends from 127.0.0.2 (in
# vpc-a); the denied caller from 127.0.0.1 (the internet).
# Writes loadtest/results/ingress.md. Loopback only.
#
# Env: ROUNDS (3), DURATION (10s), CONNS (64).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
OUT=loadtest/results/ingress.md
source loadtest/scripts/lib.sh

cat > "$work/gateway.toml" <<EOF
[gateway]
listen = "127.0.0.1:18443"
admin_listen = "127.0.0.1:19464"
self_signed_cert_path = "$work/ca.pem"

[[networks]]
vpc_id = "vpc-a"
cidrs = ["127.0.0.2/32"]

[[functions]]
name = "payroll"
command = ["$T/fngate-echo"]
instance_concurrency = 100
vpc_bindings = ["vpc-a"]
access_rules = [
  { priority = 100, action = "deny", cidr = "10.1.9.0/24", name = "quarantine" },
  { priority = 200, action = "allow", vpc_id = "vpc-a" },
]
EOF
start_gateway "$work/gateway.toml"
URL=https://127.0.0.1:18443/2023-03-30/functions/payroll/invocations
common=(--url "$URL" --cacert "$work/ca.pem" -c "$CONNS")

"${LT[@]}" "${common[@]}" --source 127.0.0.2 -d 2s --json >/dev/null   # start the instance
allowed=(); denied=()
for r in $(seq 1 "$ROUNDS"); do
    allowed+=("$("${LT[@]}" "${common[@]}" --source 127.0.0.2 -d "$DURATION" --warmup 1s --json)")
    denied+=("$("${LT[@]}" "${common[@]}" --source 127.0.0.1 -d "$DURATION" --warmup 1s --json)")
    echo "round $r: allowed ${allowed[-1]}" >&2
    echo "round $r: denied ${denied[-1]}" >&2
done

python3 - "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$(nproc)" \
    "$(printf '%s\n' "${allowed[@]}")" "$(printf '%s\n' "${denied[@]}")" <<'PY'
import json, sys, datetime
out, rounds, duration, conns, cores, a, d = sys.argv[1:]
a = [json.loads(l) for l in a.splitlines()]
d = [json.loads(l) for l in d.splitlines()]
for r in a: assert set(r["statuses"]) == {"200"} and r["errors"] == 0, r
for r in d: assert set(r["statuses"]) == {"403"} and r["errors"] == 0, r
sys.path.insert(0, "loadtest/scripts")
from summary import med, rng
lines = [
    "# Ingress benchmark (issue 3)",
    "",
    f"Produced by `loadtest/scripts/bench-ingress.sh` on {datetime.date.today()} ({cores} cores).",
    f"One VPC-bound function (`vpc_bindings = [\"vpc-a\"]` plus two access rules), warm;",
    f"closed loop, {conns} HTTP/1.1 keep-alive TLS 1.3 connections, {duration} per round after 1 s warm-up,",
    f"{rounds} alternating rounds; medians with min-max. Client pinned to core 0, gateway and instance to core 1.",
    "",
    "| path | caller | answer | requests/s | p50 ms | p99 ms |",
    "|---|---|---|---|---|---|",
    f"| allowed | 127.0.0.2 (vpc-a) | 200 from the instance | {med(a,'rps'):.0f} ({rng(a,'rps','.0f')}) | {med(a,'p50_ms'):.2f} | {med(a,'p99_ms'):.2f} ({rng(a,'p99_ms','.2f')}) |",
    f"| denied | 127.0.0.1 (internet) | 403 `AccessDenied` | {med(d,'rps'):.0f} ({rng(d,'rps','.0f')}) | {med(d,'p50_ms'):.2f} | {med(d,'p99_ms'):.2f} ({rng(d,'p99_ms','.2f')}) |",
    "",
    f"Ratio denied / allowed: requests/s {med(d,'rps')/med(a,'rps'):.2f}x.",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
