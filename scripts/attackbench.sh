#!/usr/bin/env bash
# The hostile-client figures of BENCHMARKS.md: each attack of
# `loadgen -mode attack` against a fresh gateway (embedded engine, default
# limits), with a bystander room measuring latency before and during it.
#
# Usage (all optional, defaults shown):
#   GATEWAY=bin/gateway DURATION=5s HOLDERS=1000 HOLD=12s scripts/attackbench.sh
# GATEWAY may name an earlier build to get the "before" figures in the same
# session. Loopback only, bounded, stops by itself; run nothing else
# meanwhile (2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
GATEWAY=${GATEWAY:-bin/gateway}
LOADGEN=${LOADGEN:-bin/loadgen}
DURATION=${DURATION:-5s}
HOLDERS=${HOLDERS:-1000}
HOLD=${HOLD:-12s}
[ -x "$GATEWAY" ] && [ -x "$LOADGEN" ] || make build >/dev/null
. scripts/lib.sh

gw=""
trap '[ -n "$gw" ] && kill "$gw" 2>/dev/null; wait 2>/dev/null || true' EXIT
# fragments: 1-byte unfinished messages held HOLD (below FRAGMENT_TIMEOUT,
# so RSS shows what holding them costs); fragments-max: 60 KiB ones.
for attack in flood continuation fragments fragments-max; do
	port=$(free_port)
	PORT=$port LISTEN_HOST=127.0.0.1 LOG_LEVEL=error "$GATEWAY" >/dev/null 2>&1 &
	gw=$!
	wait_ready "$port"
	case $attack in
	flood) args=(-conns 5 -duration "$DURATION") ;;
	continuation) args=(-duration "$DURATION") ;;
	fragments) args=(-conns "$HOLDERS" -duration "$HOLD" -src 127.0.0.2-127.0.0.40) ;;
	fragments-max) args=(-conns "$HOLDERS" -duration "$HOLD" -src 127.0.0.2-127.0.0.40 -attack-bytes 61440) ;;
	esac
	"$LOADGEN" -mode attack -attack "${attack%-max}" "${args[@]}" -url "ws://127.0.0.1:$port" -pid "$gw"
	kill "$gw"
	wait "$gw" 2>/dev/null || true
	gw=""
done
