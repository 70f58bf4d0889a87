#!/usr/bin/env bash
# Many-process load test on one host: several gateway processes sharing one
# port (SO_REUSEPORT) and one Redis, several loadgen processes spreading
# connections over source addresses 127.0.0.2-127.0.0.20, one merged result.
#
# One process holds at most ~19 500 sockets here (hard limit 20 000 open
# files), hence several of each. Everything is bounded and stops by itself.
#
# Usage (all optional, defaults shown):
#   CONNS=100000 ROOMS=10000 GATEWAYS=6 LOADGENS=6 SENDERS=1 RATE=0.5 \
#   HOLD=20s DURATION=30s DRAIN=5s scripts/loadtest.sh
# The gateways' PORT and the Redis port are free loopback ports picked at
# start (printed); set PORT=<port> to choose the gateways' port, and
# REDIS_PORT=<port> to use a running Redis instead of starting one.
# Results go to $OUT (a new temporary directory by default): per-process
# JSON and logs, the merged summary (summary.txt) and one HTML report of
# the whole run (report.html: latency, throughput, connections, the
# gateways' CPU and memory over time).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-100000}
ROOMS=${ROOMS:-10000}
GATEWAYS=${GATEWAYS:-6}
LOADGENS=${LOADGENS:-6}
SENDERS=${SENDERS:-1}
RATE=${RATE:-0.5}
HOLD=${HOLD:-20s}
DURATION=${DURATION:-30s}
DRAIN=${DRAIN:-5s}
BIN=${BIN:-bin}
OUT=${OUT:-$(mktemp -d /tmp/loadtest.XXXXXX)}
mkdir -p "$OUT"
SRC_FIRST=2
SRC_LAST=20

. scripts/lib.sh
PORT=${PORT:-$(free_port)}
[ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] || make build >/dev/null
if (( CONNS % LOADGENS != 0 || ROOMS % LOADGENS != 0 )); then
	echo "loadtest: CONNS and ROOMS must divide by LOADGENS ($LOADGENS)" >&2
	exit 2
fi

pids=()
cleanup() {
	# Newest first: the gateways stop before the Redis they use.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

mem() { awk -v k="$1" '$1 == k":" { print $2 }' /proc/meminfo; }

# Redis: our own unless REDIS_PORT names one.
if [ -z "${REDIS_PORT:-}" ]; then
	REDIS_PORT=$(free_port)
	while [ "$REDIS_PORT" = "$PORT" ]; do REDIS_PORT=$(free_port); done
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" \
		--maxclients 10000 >"$OUT/redis.log" 2>&1 &
	pids+=($!)
	redis_pid=$!
	for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
else
	redis_pid=$(redis-cli -p "$REDIS_PORT" info server | awk -F: '/^process_id/ { print $2 }' | tr -d '\r')
fi

slab0=$(mem Slab)
gw_pids=()
for i in $(seq "$GATEWAYS"); do
	env ENVIRONMENT=production ALLOWED_HOSTS='*' IP_REDIS=127.0.0.1 PORT_REDIS=$REDIS_PORT \
		PORT=$PORT LISTEN_HOST=127.0.0.1 REUSE_PORT=true LOG_LEVEL=warn \
		"$BIN/gateway" >"$OUT/gateway$i.log" 2>&1 &
	pids+=($!)
	gw_pids+=($!)
done
for _ in $(seq 100); do
	PORT=$PORT "$BIN/gateway" -healthcheck 2>/dev/null && break
	sleep 0.1
done
PORT=$PORT "$BIN/gateway" -healthcheck || { echo "loadtest: gateways did not start; see $OUT" >&2; exit 1; }

# Split the source addresses among the loadgen processes.
nsrc=$((SRC_LAST - SRC_FIRST + 1))
per=$(( nsrc / LOADGENS )); (( per >= 1 )) || per=1
cpu0=$(redis-cli -p "$REDIS_PORT" info cpu | awk -F: '/used_cpu_(sys|user):/ { s += $2 } END { print s }')
lg_pids=()
for i in $(seq 0 $((LOADGENS - 1))); do
	a=$(( SRC_FIRST + (i * per) % nsrc )); b=$(( a + per - 1 ))
	(( b <= SRC_LAST )) || b=$SRC_LAST
	"$BIN/loadgen" -url "ws://127.0.0.1:$PORT" -conns $((CONNS / LOADGENS)) -rooms $((ROOMS / LOADGENS)) \
		-senders "$SENDERS" -rate "$RATE" -hold "$HOLD" -duration "$DURATION" -drain "$DRAIN" \
		-src "127.0.0.$a-127.0.0.$b" -pid "$(IFS=,; echo "${gw_pids[*]}")" -json -label "loadgen$i" \
		>"$OUT/loadgen$i.json" 2>"$OUT/loadgen$i.log" &
	lg_pids+=($!)
done

# Sample kernel slab memory while connections are held, and show each
# load process's latest progress line every 5 s.
echo "loadtest: $GATEWAYS gateways on :$PORT (Redis on :$REDIS_PORT), $LOADGENS loadgen processes, $CONNS connections in $ROOMS rooms; logs in $OUT"
peak=$slab0
tick=0
while kill -0 "${lg_pids[0]}" 2>/dev/null; do
	s=$(mem Slab); (( s > peak )) && peak=$s
	if (( tick % 5 == 4 )); then
		for i in $(seq 0 $((LOADGENS - 1))); do
			tail -n 1 "$OUT/loadgen$i.log" 2>/dev/null || true
		done
	fi
	tick=$((tick + 1))
	sleep 1
done
status=0
for p in "${lg_pids[@]}"; do wait "$p" || status=1; done
cpu1=$(redis-cli -p "$REDIS_PORT" info cpu | awk -F: '/used_cpu_(sys|user):/ { s += $2 } END { print s }')
# Where Redis's time went (whole life of the server when the script started it).
redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' >"$OUT/commandstats.txt" || true

"$BIN/loadgen" -mode merge -report "$OUT/report.html" "$OUT"/loadgen*.json | tee "$OUT/summary.txt" || status=1
# (awk reads to the end: exiting at the first match would fail the
# pipeline when loadgen is still writing.)
sent=$("$BIN/loadgen" -mode merge -json "$OUT"/loadgen*.json 2>/dev/null | awk -F'[:,]' '/"sent"/ && !n { n = $2 } END { print n }' | tr -d ' ')
redis_rss=$(awk '/VmRSS/ { print $2 }' "/proc/$redis_pid/status" 2>/dev/null || echo 0)
{
	echo "redis      CPU $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')s during the run, $(awk -v a="$cpu0" -v b="$cpu1" -v n="${sent:-0}" 'BEGIN { if (n > 0) printf "%.2f", (b - a) * 1e6 / n; else print "-" }') µs per published message, RSS $((redis_rss / 1024)) MiB"
	echo "kernel     slab memory peak +$(( (peak - slab0) / 1024 )) MiB over the run ($(( (peak - slab0) * 1024 / (CONNS > 0 ? CONNS : 1) )) B per connection, both ends)"
	echo "report     $OUT/report.html"
	echo "results    $OUT"
} | tee -a "$OUT/summary.txt"
exit $status
