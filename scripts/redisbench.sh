#!/usr/bin/env bash
# The Redis-path benchmark of BENCHMARKS.md: two gateway nodes on one Redis,
# 1 000 rooms of 2 members placed on different nodes (so every message
# crosses nodes), both members sending, at several rates. NODES, MEMBERS
# and SENDERS (per room) change the layout: member m of room k connects
# to node (k+m) mod NODES. For each rate it
# reports messages/s, loss, p50/p99 and the CPU of Redis and of both
# gateways per published message over the send phase (from /proc, sampled
# by loadgen). Then it measures the per-round-trip reference in the same
# run: redis-benchmark's un-pipelined XADD (-c 1 and -c 20), Redis CPU per
# command.
#
# Usage (all optional, defaults shown):
#   RATES="1 2.5 10" ROOMS=1000 NODES=2 MEMBERS=2 SENDERS=MEMBERS \
#   DURATION=10s GATEWAY=bin/gateway \
#   GW_ENV="" OUT=/tmp/redisbench scripts/redisbench.sh
# RATES are messages per second per member: 1, 2.5 and 10 give 2 000,
# 5 000 and 20 000 messages/s in all. GATEWAY may name another build (an
# earlier commit) to compare designs in one run; GW_ENV adds variables to
# the gateways (e.g. "REDIS_BATCH_WINDOW=1ms"); LG_ARGS adds loadgen flags
# (e.g. "-options ids=1&ack=1 -cid"). Needs jq. Loopback only,
# bounded, stops by itself; run nothing else meanwhile (2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-"1 2.5 10"}
ROOMS=${ROOMS:-1000}
NODES=${NODES:-2}
MEMBERS=${MEMBERS:-2}
SENDERS=${SENDERS:-$MEMBERS}
DURATION=${DURATION:-10s}
GATEWAY=${GATEWAY:-bin/gateway}
LOADGEN=${LOADGEN:-bin/loadgen}
GW_ENV=${GW_ENV:-}
LG_ARGS=${LG_ARGS:-}
OUT=${OUT:-$(mktemp -d /tmp/redisbench.XXXXXX)}
mkdir -p "$OUT"
. scripts/lib.sh
need_jq
trap stop_started EXIT
[ -x "$GATEWAY" ] && [ -x "$LOADGEN" ] || make build >/dev/null



start_redis() {
	rport=$(free_port)
	redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" >"$OUT/redis-$rport.log" 2>&1 &
	pids+=($!)
	redis_pid=$!
	for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
}
# cpu PID prints the user+system CPU seconds of PID from /proc.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }

printf '%-8s %9s %7s %8s %8s %6s %14s %14s\n' "rate" "msg/s" "lost" "p50 ms" "p99 ms" "errors" "redis us/msg" "gateway us/msg"
for rate in $RATES; do
	start_redis
	urls=() gw=()
	for n in $(seq "$NODES"); do
		# A free port can be taken by another process before the gateway
		# binds it (many nodes, many load connections): try another.
		for try in 1 2 3; do
			port=$(free_port)
			env ENVIRONMENT=production ALLOWED_HOSTS='*' IP_REDIS=127.0.0.1 PORT_REDIS="$rport" PORT="$port" \
				LISTEN_HOST=127.0.0.1 LOG_LEVEL=warn $GW_ENV "$GATEWAY" >"$OUT/gateway$n-$rate.log" 2>&1 &
			pid=$!
			if wait_ready "$port" 2>/dev/null; then break; fi
			kill "$pid" 2>/dev/null || true
			[ "$try" -lt 3 ] || { echo "redisbench: gateway $n did not become ready (see $OUT/gateway$n-$rate.log)" >&2; exit 1; }
		done
		pids+=("$pid")
		gw+=("$pid")
		urls+=("ws://127.0.0.1:$port")
	done
	"$LOADGEN" -url "$(IFS=,; echo "${urls[*]}")" -conns $((MEMBERS * ROOMS)) -rooms "$ROOMS" -senders "$SENDERS" -rate "$rate" \
		-hold 2s -duration "$DURATION" -drain 3s -src 127.0.0.2-127.0.0.9 $LG_ARGS \
		-pid "$(IFS=,; echo "${gw[*]}"),$redis_pid" -json -quiet >"$OUT/run-$rate.json" 2>"$OUT/run-$rate.log" || true
	jq -r --arg rate "$rate" --arg r "$redis_pid" '
		.messages as $m | ($m.sent / (if $m.send_seconds > 0 then $m.send_seconds else 1 end)) as $rps |
		([.procs[] | select(.pid == ($r|tonumber)) | .cpu_send_seconds] | add) as $rc |
		([.procs[] | select(.pid != ($r|tonumber)) | .cpu_send_seconds] | add) as $gc |
		[$rate, ($rps|floor), $m.lost, (.latency_us.p50/1000), (.latency_us.p99/1000), ([.errors[]?] | add // 0),
		 (if $m.sent > 0 then $rc * 1e6 / $m.sent else 0 end), (if $m.sent > 0 then $gc * 1e6 / $m.sent else 0 end)] |
		"\(.[0])\t\(.[1])\t\(.[2])\t\(.[3]*10|round/10)\t\(.[4]*10|round/10)\t\(.[5])\t\(.[6]*10|round/10)\t\(.[7]*10|round/10)"
	' "$OUT/run-$rate.json" | awk -F'\t' '{ printf "%-8s %9s %7s %8s %8s %6s %14s %14s\n", $1, $2, $3, $4, $5, $6, $7, $8 }'
	# Round trips and commands per published message, whole run.
	redis-cli -p "$rport" info stats | tr -d '\r' | awk -F: -v f="$OUT/run-$rate.json" '
		/^total_commands_processed|^total_reads_processed|^total_writes_processed/ { v[$1] = $2 }
		END { printf "  redis totals: %d commands, %d reads, %d writes\n", v["total_commands_processed"], v["total_reads_processed"], v["total_writes_processed"] }'
	jq -r '"  sent: \(.messages.sent)"' "$OUT/run-$rate.json"
	# Redis's CPU over the whole run (start, connects, joins, presence,
	# the send phase, the drain) per published message; at rate 0, the
	# share of a core Redis used while every node held its connections.
	whole=$(cpu "$redis_pid")
	jq -r --arg whole "$whole" --arg r "$redis_pid" '
		.messages.sent as $n | ([.procs[] | select(.pid == ($r|tonumber)) | .cpu_send_seconds] | add) as $rc |
		if $n > 0 then "  redis whole run: \($whole) s CPU, \(($whole|tonumber) * 1e6 / $n | .*10|round/10) us per message"
		else "  idle: redis used \($rc * 100 / (if .messages.send_seconds > 0 then .messages.send_seconds else 1 end) | .*100|round/100) % of a core over the send phase (\($whole) s CPU whole run)" end
	' "$OUT/run-$rate.json"
	# Pump round trips and wakes of all gateways, whole run, and where
	# Redis's time went (INFO commandstats, kept in OUT).
	for u in "${urls[@]}"; do curl -s "http://${u#ws://}/metrics"; done | awk '
		/^chat_redis_round_trips_total/ { rt += $2 } /^chat_redis_wakes_total/ { wk += $2 } /^chat_redis_blocking_reads_total/ { bl += $2 }
		END { printf "  gateways: %d pump round trips, %d wakes, %d blocking reads\n", rt, wk, bl }' || true
	redis-cli -p "$rport" info commandstats | tr -d '\r' >"$OUT/commandstats-$rate.txt"
	stop_started
done

# The floor: one un-pipelined XADD per round trip, ~100-byte payload.
start_redis
payload=$(printf 'x%.0s' $(seq 100))
for c in 1 20; do
	n=$((c == 1 ? 20000 : 100000))
	c0=$(cpu "$redis_pid")
	redis-benchmark -p "$rport" -c "$c" -n "$n" -q XADD "bench:ref:$c" '*' s 12345678901234567890 p "$payload" >"$OUT/ref-$c.txt"
	c1=$(cpu "$redis_pid")
	awk -v a="$c0" -v b="$c1" -v n="$n" -v c="$c" 'BEGIN { printf "reference: redis-benchmark XADD -c %d: %.1f us of Redis CPU per command\n", c, (b - a) * 1e6 / n }'
done
stop_started
echo "results in $OUT"
