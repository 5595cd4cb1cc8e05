#!/usr/bin/env bash
# loadtest/scenarios/mixed.toml against a local gateway (see scenario.sh).
exec "$(dirname "$0")/scenario.sh" mixed "$@"
