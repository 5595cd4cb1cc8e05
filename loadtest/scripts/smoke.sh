#!/usr/bin/env bash
# loadtest/scenarios/smoke.toml against a local gateway (see scenario.sh).
exec "$(dirname "$0")/scenario.sh" smoke "$@"
