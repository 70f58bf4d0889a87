# Shell helpers shared by the scripts here (source it; bash only).

# LOAD_LIMITS lifts the per-connection rates (messages, bytes, frames) for
# the few load runs where one connection sends faster than the defaults
# allow (over 100 messages or 256 KiB a second): the fan-out runs of
# BENCHMARKS section 3 above 100 msg/s per sender, and the replay
# benchmark's publisher. Nothing else needs it: connection caps default
# to the open-file limit, and loopback is a trusted proxy that names no
# client, so per-address limits do not count load from this machine.
# An older build ignores variables it does not know.
LOAD_LIMITS="RATE_LIMIT=1000000 RATE_BURST=1000000 BYTE_RATE=-1 FRAME_RATE=-1"

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

# pids are the processes a script started (pids+=($!) after each);
# stop_started kills them, newest first, waits for them and forgets them.
# Scripts call it from their EXIT trap and between runs.
pids=()
stop_started() {
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pids=()
}

# need_jq exits, saying how to install it, when jq is missing.
need_jq() {
	command -v jq >/dev/null || { echo "$(basename "$0"): needs jq (apt-get install jq)" >&2; exit 2; }
}
