# Shell helpers shared by the scripts here (source it; bash only).

# LOAD_LIMITS lifts the gateway's limits against abusive clients (per-IP
# and total connection caps, frame and message rates) for load runs, whose
# many connections come from few addresses and send faster than people do.
# An older build ignores variables it does not know.
LOAD_LIMITS="MAX_CONNECTIONS=-1 MAX_CONNECTIONS_PER_IP=-1 FRAME_RATE=-1 RATE_LIMIT=1000000 RATE_BURST=1000000"

# free_port prints a loopback TCP port nothing listens on (bash's
# /dev/tcp, so no extra tools are needed).
free_port() {
	while :; do
		p=$((20000 + RANDOM % 20000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

# wait_ready PORT waits until the gateway on PORT answers /readyz with 200,
# for at most 10 s.
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
	echo "$(basename "$0"): gateway on :$1 did not become ready" >&2
	return 1
}
