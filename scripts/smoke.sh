#!/usr/bin/env bash
# Smoke load run for CI: two gateway nodes on one Redis (started here on a
# free port), 1 000 connections spread over both, a few seconds of fan-out,
# and loadgen's verdict: it exits non-zero on any loss, duplicate,
# reordering, echo or failed connection. Speed is not asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
work=$(mktemp -d)
pids=()
cleanup() {
	# Newest first: the gateways stop before the Redis they use.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

. scripts/lib.sh

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

urls=()
for n in 1 2; do
	port=$(free_port)
	env ENVIRONMENT=production ALLOWED_HOSTS='*' IP_REDIS=127.0.0.1 PORT_REDIS=$rport PORT=$port LISTEN_HOST=127.0.0.1 \
		"$BIN/gateway" >"$work/gateway$n.log" 2>&1 &
	pids+=($!)
	wait_ready "$port"
	urls+=("ws://127.0.0.1:$port")
done

echo "smoke: 1000 connections over 2 nodes on Redis :$rport"
if ! "$BIN/loadgen" -url "$(IFS=,; echo "${urls[*]}")" -conns 1000 -rooms 20 -senders 2 -rate 10 \
	-duration 4s -drain 3s -src 127.0.0.2-127.0.0.5 -quiet; then
	echo "smoke: FAILED; gateway logs:" >&2
	tail -n 20 "$work"/gateway*.log >&2
	exit 1
fi
echo "smoke: OK"
