#!/usr/bin/env bash
# The clouds' real clients (boto3, the AWS CLI, the FC 3.0 SDK) in a virtual
# environment of their exact pins (gateway/tests/sdk/requirements.txt),
# rebuilt when those change. Prints the environment's path. Used by the test
# command and the benchmarks that sign requests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(realpath -m "${CARGO_TARGET_DIR:-target}")/sdk-venv
req=gateway/tests/sdk/requirements.txt
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "creating the SDK virtual environment in $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" > "$venv/.requirements.sha256"
fi
echo "$venv"
