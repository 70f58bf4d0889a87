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

# free_port prints a loopback TCP port nothing listens on (bash's
# /dev/tcp, so no extra tools are needed).
free_port() {
	while :; do
		p=$((20000 + RANDOM % 20000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

# wait_ready PORT waits until the gateway on PORT answers /readyz with 200.
wait_ready() {
	for _ in $(seq 100); do
		if { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null; then
			printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
			status=$(head -n 1 <&3)
			exec 3<&-
			case "$status" in *" 200 "*) return 0 ;; esac
		fi
		sleep 0.1
	done
	echo "smoke: gateway on :$1 did not become ready" >&2
	return 1
}

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

urls=()
for n in 1 2; do
	port=$(free_port)
	ENVIRONMENT=production ALLOWED_HOSTS='*' IP_REDIS=127.0.0.1 PORT_REDIS=$rport PORT=$port LISTEN_HOST=127.0.0.1 \
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
