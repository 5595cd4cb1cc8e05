#!/usr/bin/env bash
# loadtest/scenarios/soak.toml against a local gateway (see scenario.sh).
exec "$(dirname "$0")/scenario.sh" soak "$@"
