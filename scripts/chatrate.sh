#!/usr/bin/env bash
# The chat-rate benchmark of BENCHMARKS.md (issue 23): one node at the
# rates people chat at, three relays driven by the same clients, runs
# interleaved so that the machine's noise weighs on all alike:
#   floor     loadgen -mode floor: one locked thread, one write(2) per delivery
#   embedded  the gateway with nothing set (in-memory engine)
#   redis     the gateway in production mode on its own redis-server
# For each shape and round it prints the CPU of the relay per delivery
# (µs), Redis's CPU per message (µs), deliveries, loss and p50/p99, over
# the send phase (loadgen samples /proc).
#
# Usage (all optional, defaults shown):
#   SHAPES="100x10@1 10x100@5" ROUNDS=3 DURATION=15s TARGETS="floor embedded redis" \
#   GATEWAY=bin/gateway GW_ENV="" OUT=/tmp/chatrate scripts/chatrate.sh
# A shape RxM@r is R rooms of M members, one sender per room at r msg/s.
# GATEWAY may name another build, GW_ENV adds variables to the gateway
# (both modes). Needs jq. Loopback only, bounded, stops by itself; run
# nothing else meanwhile (2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

SHAPES=${SHAPES:-"100x10@1 10x100@5"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15s}
TARGETS=${TARGETS:-"floor embedded redis"}
GATEWAY=${GATEWAY:-bin/gateway}
LOADGEN=${LOADGEN:-bin/loadgen}
GW_ENV=${GW_ENV:-}
OUT=${OUT:-$(mktemp -d /tmp/chatrate.XXXXXX)}
mkdir -p "$OUT"
[ -x "$GATEWAY" ] && [ -x "$LOADGEN" ] || make build >/dev/null

. scripts/lib.sh
need_jq
trap stop_started EXIT

# start TARGET: starts the relay (and Redis) and sets port, relay_pid,
# redis_pid ("" without Redis).
start() {
	port=$(free_port) redis_pid=""
	case $1 in
	floor)
		"$LOADGEN" -mode floor -listen "127.0.0.1:$port" >"$OUT/floor.log" 2>&1 &
		pids+=($!) relay_pid=$!
		for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
		return ;;
	embedded)
		env PORT="$port" LISTEN_HOST=127.0.0.1 LOG_LEVEL=warn $GW_ENV "$GATEWAY" >"$OUT/embedded.log" 2>&1 & ;;
	redis)
		rport=$(free_port)
		redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" >"$OUT/redis.log" 2>&1 &
		pids+=($!) redis_pid=$!
		for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
		env ENVIRONMENT=production ALLOWED_HOSTS='*' IP_REDIS=127.0.0.1 PORT_REDIS="$rport" PORT="$port" \
			LISTEN_HOST=127.0.0.1 LOG_LEVEL=warn $GW_ENV "$GATEWAY" >"$OUT/redis-gateway.log" 2>&1 & ;;
	*) echo "chatrate: unknown target $1 (floor, embedded, redis)" >&2; exit 2 ;;
	esac
	pids+=($!) relay_pid=$!
	wait_ready "$port"
}

printf '%-11s %-9s %5s %14s %14s %10s %6s %8s %8s\n' shape target round "relay us/dlv" "redis us/msg" deliveries lost "p50 ms" "p99 ms"
for shape in $SHAPES; do
	rooms=${shape%%x*} rest=${shape#*x} members=${rest%@*} rate=${shape#*@}
	for round in $(seq "$ROUNDS"); do
		for target in $TARGETS; do
			start "$target"
			procs=$relay_pid${redis_pid:+,$redis_pid}
			f="$OUT/$shape-$target-$round.json"
			"$LOADGEN" -url "ws://127.0.0.1:$port" -conns $((rooms * members)) -rooms "$rooms" -senders 1 -rate "$rate" \
				-hold 2s -duration "$DURATION" -drain 2s -src 127.0.0.2-127.0.0.5 -pid "$procs" -json -quiet >"$f" 2>"${f%.json}.log" || true
			jq -r --arg shape "$shape" --arg target "$target" --arg round "$round" --arg g "$relay_pid" --arg r "${redis_pid:-0}" '
				.messages as $m |
				([.procs[] | select(.pid == ($g|tonumber)) | .cpu_send_seconds] | add // 0) as $gc |
				([.procs[] | select(.pid == ($r|tonumber)) | .cpu_send_seconds] | add // 0) as $rc |
				[$shape, $target, $round,
				 (if $m.delivered > 0 then $gc * 1e6 / $m.delivered else 0 end),
				 (if $r != "0" and $m.sent > 0 then $rc * 1e6 / $m.sent else null end),
				 $m.delivered, $m.lost, (.latency_us.p50/1000), (.latency_us.p99/1000)] |
				"\(.[0])\t\(.[1])\t\(.[2])\t\(.[3]*10|round/10)\t\(if .[4] == null then "-" else (.[4]*10|round/10) end)\t\(.[5])\t\(.[6])\t\(.[7]*10|round/10)\t\(.[8]*10|round/10)"
			' "$f" | awk -F'\t' '{ printf "%-11s %-9s %5s %14s %14s %10s %6s %8s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
			stop_started
		done
	done
done
echo "results in $OUT"
