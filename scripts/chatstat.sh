#!/usr/bin/env bash
# Thread hand-offs at chat rates (BENCHMARKS.md section 14): runs one
# chatrate.sh round of SHAPE against TARGET and, during its send phase,
# counts the relay's CPU time, context switches and system calls with
# perf stat for 10 s. Loopback only, bounded; run nothing else meanwhile.
#
# Usage: GATEWAY=bin/gateway TARGET=redis SHAPE=100x10@1 scripts/chatstat.sh
# (needs perf and the permission to attach to the process: root, or
# kernel.perf_event_paranoid ≤ 1)
set -euo pipefail
cd "$(dirname "$0")/.."
GATEWAY=${GATEWAY:-bin/gateway} TARGET=${TARGET:-redis} SHAPE=${SHAPE:-100x10@1}
command -v perf >/dev/null || { echo "chatstat: perf is missing: apt-get install linux-perf" >&2; exit 2; }
out=$(mktemp -d /tmp/chatstat.XXXXXX)
SHAPES="$SHAPE" ROUNDS=1 DURATION=20s TARGETS="$TARGET" GATEWAY="$GATEWAY" OUT="$out" \
	scripts/chatrate.sh >"$out/chatrate.txt" 2>&1 &
run=$!
sleep 9 # connects and the hold: the send phase starts at about 5 s
pid=$(pgrep -n -f "^$GATEWAY" || true)
[ -n "$pid" ] || { echo "chatstat: no $GATEWAY process found" >&2; kill "$run"; exit 1; }
perf stat -x, -e task-clock,context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_nanosleep,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_read \
	-p "$pid" -- sleep 10 2>&1 | awk -F, '$1 != "" {printf "%s=%s ", $3, $1} END {print ""}'
wait "$run"
sed -n 2p "$out/chatrate.txt"
