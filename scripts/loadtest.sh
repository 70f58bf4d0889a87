#!/usr/bin/env bash
# Many-process load test on one host: several gateway processes sharing one
# port (SO_REUSEPORT) and one Redis, several loadgen processes, each from
# two loopback source addresses of its own (127.0.1.2 and up), one merged
# result.
#
# One process holds at most its hard open-file limit of sockets (20 000
# here), hence several of each: by default as many gateways and loadgens
# as CONNS needs (gateways keep 7 % headroom, since SO_REUSEPORT spreads
# connections by hash, not evenly). Rooms have CONNS/ROOMS members each;
# each loadgen holds whole rooms. Before starting, the script checks that
# the machine can hold CONNS (free memory: about 11 KiB per connection in
# all, most of it the kernel's for both ends of each socket; fs.file-max:
# two descriptors per connection) and refuses with the reason otherwise.
# Everything it starts is stopped on success, failure or Ctrl-C, and the
# run is bounded in time.
#
# Usage (all optional, defaults shown):
#   CONNS=100000 ROOMS=10000 GATEWAYS=<as needed> LOADGENS=<as needed> \
#   SENDERS=1 RATE=0.5 HOLD=20s DURATION=30s DRAIN=5s CONNECT_RATE=0 \
#   scripts/loadtest.sh
# PLACEMENT=spread (default) gives the gateways one port (SO_REUSEPORT):
# the kernel spreads connections by hash, so every room spans every
# gateway and each message is read from Redis by every node.
# PLACEMENT=room gives each gateway a port of its own and each loadgen all
# of them (loadgen -placement room): every member of a room joins the same
# gateway, as behind a load balancer that hashes the room's path (haproxy
# `balance uri`), and rooms are dealt to the gateways in turn.
# GW_ENV adds variables to the gateways (e.g. "PING_INTERVAL=10m").
# CONNECT_RATE is new connections per second over all loadgens (0: as fast
# as they go). With more processes than twice the CPUs, every process runs
# with GOMAXPROCS=1 (set GOMAXPROCS to override): a hundred processes with
# a thread per CPU each mostly spend the CPUs switching between them.
# The million-connection run of BENCHMARKS.md section 15:
#   CONNS=1000000 ROOMS=10000 RATE=0.1 CONNECT_RATE=4000 HOLD=30s DURATION=30s \
#   DRAIN=10s PLACEMENT=room GW_ENV=PING_INTERVAL=10m scripts/loadtest.sh
# (with the default PING_INTERVAL of 30 s, a million idle connections are
# 33 000 pings and pongs a second, more than this 2-core host has left
# once it also runs the million clients)
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
SENDERS=${SENDERS:-1}
RATE=${RATE:-0.5}
HOLD=${HOLD:-20s}
DURATION=${DURATION:-30s}
DRAIN=${DRAIN:-5s}
PLACEMENT=${PLACEMENT:-spread}
BIN=${BIN:-bin}
OUT=${OUT:-$(mktemp -d /tmp/loadtest.XXXXXX)}
mkdir -p "$OUT"

. scripts/lib.sh
PORT=${PORT:-$(free_port)}
[ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] || make build >/dev/null
refuse() { echo "loadtest: $*" >&2; exit 2; }
(( ROOMS > 0 && CONNS % ROOMS == 0 )) || refuse "CONNS ($CONNS) must be a multiple of ROOMS ($ROOMS): rooms have CONNS/ROOMS members each"
members=$((CONNS / ROOMS))

# Processes: each holds at most its open-file limit of sockets.
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
cap=$((hard - 64)) # what loadgen and the gateway keep for themselves
(( cap >= members )) || refuse "a room of $members members does not fit in one loadgen (open-file limit $hard)"
gw_cap=$((cap * 93 / 100))
GATEWAYS=${GATEWAYS:-$(((CONNS + gw_cap - 1) / gw_cap))}
if [ -z "${LOADGENS:-}" ]; then
	LOADGENS=$(((CONNS + cap - 1) / cap))
	while (( (ROOMS + LOADGENS - 1) / LOADGENS * members > cap )); do LOADGENS=$((LOADGENS + 1)); done
fi
(( LOADGENS <= ROOMS )) || refuse "LOADGENS ($LOADGENS) must not exceed ROOMS ($ROOMS)"
(( (ROOMS + LOADGENS - 1) / LOADGENS * members <= cap )) ||
	refuse "$LOADGENS loadgen processes would hold $(((ROOMS + LOADGENS - 1) / LOADGENS * members)) connections each, more than the open-file limit allows ($cap): raise LOADGENS"
case $PLACEMENT in
spread) ;;
room) (( (ROOMS + GATEWAYS - 1) / GATEWAYS * members <= cap )) ||
	refuse "$GATEWAYS gateways would hold $(((ROOMS + GATEWAYS - 1) / GATEWAYS)) whole rooms of $members each, more than the open-file limit allows ($cap): raise GATEWAYS" ;;
*) refuse "PLACEMENT is $PLACEMENT; want spread or room" ;;
esac
(( (CONNS + GATEWAYS - 1) / GATEWAYS <= cap )) ||
	refuse "$GATEWAYS gateways would hold $(((CONNS + GATEWAYS - 1) / GATEWAYS)) connections each, more than the open-file limit allows ($cap): raise GATEWAYS"

# Memory: about 11 KiB per connection (kernel ~8.5 KiB for both ends,
# gateway and load tool ~1 KiB each), 40 MiB per process, 1 GiB to spare.
need_mib=$((CONNS * 11 / 1024 + (GATEWAYS + LOADGENS) * 40 + 1024))
avail_mib=$(($(awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo) / 1024))
(( need_mib <= avail_mib )) ||
	refuse "$CONNS connections need about $need_mib MiB (11 KiB each: the kernel's socket memory for both ends, the gateway's and the load tool's), and $avail_mib MiB are available: lower CONNS or free memory"
# Descriptors: two per connection (both ends on this host), system-wide.
read -r fused _ fmax </proc/sys/fs/file-nr
need_fds=$((2 * CONNS + (GATEWAYS + LOADGENS) * 100))
(( fused + need_fds <= fmax )) ||
	refuse "$CONNS connections need $need_fds descriptors (two each, both ends on this host) and fs.file-max allows $((fmax - fused)) more: as root, sysctl -w fs.file-max=$((fused + need_fds + 100000))"

# Connection tracking, when some firewall rule uses it, keeps an entry per
# connection (loopback too).
if [ -r /proc/sys/net/netfilter/nf_conntrack_count ]; then
	read -r ct </proc/sys/net/netfilter/nf_conntrack_count
	read -r ctmax </proc/sys/net/netfilter/nf_conntrack_max
	(( ct == 0 || ct + CONNS < ctmax )) ||
		refuse "connection tracking is on ($ct entries) and holds at most $ctmax: as root, sysctl -w net.netfilter.nf_conntrack_max=$((ct + CONNS + 100000))"
fi

# Many processes on few CPUs: one thread each for Go code.
# And Redis (one thread) and the gateways go first: the clients wait
# (nice), their latency is what is measured.
many=$(( GATEWAYS + LOADGENS > 2 * $(nproc) ))
if [ -z "${GOMAXPROCS:-}" ] && (( many )); then
	export GOMAXPROCS=1
fi
LOADGEN_NICE=${LOADGEN_NICE:-$(( many ? 10 : 0 ))}

# Loopback packets wait in a CPU's backlog (net.core.netdev_max_backlog,
# 1 000 by default) until softirq processing takes them; with a hundred
# processes on two CPUs it overflows, packets are dropped and TCP resends
# them 200 ms and more later: connects and Redis round trips time out
# (6 million drops in one run of a million connections). As root, the
# script raises it for a many-process run and puts it back at the end.
backlog_was=""
if (( many )) && [ "$(id -u)" = 0 ]; then
	backlog_was=$(cat /proc/sys/net/core/netdev_max_backlog)
	if (( backlog_was < 100000 )); then
		echo 100000 >/proc/sys/net/core/netdev_max_backlog &&
			echo "loadtest: net.core.netdev_max_backlog raised from $backlog_was to 100000 for the run"
	else
		backlog_was=""
	fi
fi

pids=()
cleanup() {
	# Newest first: the loadgens, then the gateways, then the Redis they use.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ -n "$backlog_was" ]; then echo "$backlog_was" >/proc/sys/net/core/netdev_max_backlog || true; fi
}
trap cleanup EXIT
trap 'echo "loadtest: interrupted; stopping every process it started" >&2; exit 130' INT TERM

mem() { awk -v k="$1" '$1 == k":" { print $2 }' /proc/meminfo; }

# Redis: our own unless REDIS_PORT names one.
if [ -z "${REDIS_PORT:-}" ]; then
	REDIS_PORT=$(free_port)
	while [ "$REDIS_PORT" = "$PORT" ]; do REDIS_PORT=$(free_port); done
	# With many processes on few CPUs Redis stands in for a Redis host of
	# its own: as root, it goes before everything else (nice -10).
	$( ((many)) && [ "$(id -u)" = 0 ] && echo nice -n -10 ) redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" \
		--maxclients $((1000 + 10 * GATEWAYS)) >"$OUT/redis.log" 2>&1 &
	pids+=($!)
	redis_pid=$!
	for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
else
	redis_pid=$(redis-cli -p "$REDIS_PORT" info server | awk -F: '/^process_id/ { print $2 }' | tr -d '\r')
fi

slab0=$(mem Slab)
gw_pids=()
gw_ports=() # PLACEMENT=room: each gateway's own port; spread: PORT for all
for i in $(seq "$GATEWAYS"); do
	port=$PORT
	if [ "$PLACEMENT" = room ] && ((i > 1)); then
		port=$(free_port)
		while [[ " ${gw_ports[*]} $REDIS_PORT " == *" $port "* ]]; do port=$(free_port); done
	fi
	gw_ports+=("$port")
	env ENVIRONMENT=production ALLOWED_HOSTS='*' IP_REDIS=127.0.0.1 PORT_REDIS=$REDIS_PORT \
		PORT=$port LISTEN_HOST=127.0.0.1 REUSE_PORT=true LOG_LEVEL=warn ${GW_ENV:-} \
		"$BIN/gateway" >"$OUT/gateway$i.log" 2>&1 &
	pids+=($!)
	gw_pids+=($!)
done
for port in $(printf '%s\n' "${gw_ports[@]}" | sort -u); do
	for _ in $(seq 100); do
		PORT=$port "$BIN/gateway" -healthcheck 2>/dev/null && break
		sleep 0.1
	done
	PORT=$port "$BIN/gateway" -healthcheck || { echo "loadtest: gateways did not start on :$port; see $OUT" >&2; exit 1; }
done

cpu0=$(redis-cli -p "$REDIS_PORT" info cpu | awk -F: '/used_cpu_(sys|user):/ { s += $2 } END { print s }')
lg_pids=()
first_room=0 # the first room of loadgen i, counting every loadgen's rooms
for i in $(seq 0 $((LOADGENS - 1))); do
	# Whole rooms per process; two source addresses of its own, each with
	# the whole ephemeral port range towards the gateways' one address.
	rooms=$((ROOMS / LOADGENS + (i < ROOMS % LOADGENS ? 1 : 0)))
	urls="ws://127.0.0.1:$PORT"
	if [ "$PLACEMENT" = room ]; then
		# Rotated so that this loadgen's first room goes to the gateway
		# next in turn: rooms are dealt to the gateways evenly.
		urls=$(for k in $(seq 0 $((GATEWAYS - 1))); do echo "ws://127.0.0.1:${gw_ports[$(((first_room + k) % GATEWAYS))]}"; done | paste -sd,)
	fi
	net=$((1 + i / 120)) host=$((2 + 2 * (i % 120)))
	# -dial-concurrency 64: the processes dial at once, and the gateways'
	# accept backlogs (SOMAXCONN) are shared by all of them. Only the
	# first samples the gateways (-pid): each sample reads /proc, and fifty
	# samplers of fifty gateways cost a sixth of a core.
	nice -n "$LOADGEN_NICE" "$BIN/loadgen" -url "$urls" -placement "$PLACEMENT" -conns $((rooms * members)) -rooms "$rooms" \
		-senders "$SENDERS" -rate "$RATE" -hold "$HOLD" -duration "$DURATION" -drain "$DRAIN" \
		-dial-concurrency 64 -max-conns "$cap" -connect-rate "$(awk -v r="${CONNECT_RATE:-0}" -v n="$LOADGENS" 'BEGIN { print r / n }')" -src "127.0.$net.$host-127.0.$net.$((host + 1))" \
		$( ((i == 0)) && echo -pid "$(IFS=,; echo "${gw_pids[*]}")" ) -json -label "loadgen$i" \
		>"$OUT/loadgen$i.json" 2>"$OUT/loadgen$i.log" &
	pids+=($!)
	lg_pids+=($!)
	first_room=$((first_room + rooms))
done

# Sample kernel slab memory while connections are held, and show each
# load process's latest progress line every 5 s.
echo "loadtest: $GATEWAYS gateways on :$(IFS=,; echo "${gw_ports[*]}" | tr ',' '\n' | sort -u | paste -sd,) ($PLACEMENT placement; Redis on :$REDIS_PORT), $LOADGENS loadgen processes, $CONNS connections in $ROOMS rooms; logs in $OUT"
peak=$slab0
tick=0
redis_cpu() { redis-cli -p "$REDIS_PORT" info cpu | awk -F: '/used_cpu_(sys|user):/ { s += $2 } END { print s }'; }
# Redis's CPU while every connection is held and nothing is sent (the
# phase loadgen0 reports as "hold", from its 5th second, when the other
# loadgens' last connects are over): presence and liveness work alone.
hold_t0="" hold_c0="" hold_t1="" hold_c1="" hold_ticks=0
while kill -0 "${lg_pids[0]}" 2>/dev/null; do
	s=$(mem Slab); (( s > peak )) && peak=$s
	if tail -n 1 "$OUT/loadgen0.log" 2>/dev/null | grep -q ' hold '; then
		hold_ticks=$((hold_ticks + 1))
		if ((hold_ticks >= 5)); then
			now=$(date +%s.%N) c=$(redis_cpu)
			[ -n "$hold_t0" ] || { hold_t0=$now hold_c0=$c; }
			hold_t1=$now hold_c1=$c
		fi
	fi
	if (( tick % 5 == 4 )); then
		for i in $(seq 0 $((LOADGENS < 4 ? LOADGENS - 1 : 3))); do
			tail -n 1 "$OUT/loadgen$i.log" 2>/dev/null || true
		done
		(( LOADGENS <= 4 )) || echo "  (and $((LOADGENS - 4)) more loadgen processes; their logs are in $OUT)"
	fi
	tick=$((tick + 1))
	sleep 1
done
status=0
for p in "${lg_pids[@]}"; do wait "$p" || status=1; done
cpu1=$(redis_cpu)
# Where Redis's time went (whole life of the server when the script started it).
redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' >"$OUT/commandstats.txt" || true

"$BIN/loadgen" -mode merge -report "$OUT/report.html" "$OUT"/loadgen*.json | tee "$OUT/summary.txt" || status=1
# (awk reads to the end: exiting at the first match would fail the
# pipeline when loadgen is still writing.)
sent=$({ "$BIN/loadgen" -mode merge -json "$OUT"/loadgen*.json 2>/dev/null || true; } | awk -F'[:,]' '/"sent"/ && !n { n = $2 } END { print n }' | tr -d ' ')
redis_rss=$(awk '/VmRSS/ { print $2 }' "/proc/$redis_pid/status" 2>/dev/null || echo 0)
{
	echo "redis      CPU $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')s during the run, $(awk -v a="$cpu0" -v b="$cpu1" -v n="${sent:-0}" 'BEGIN { if (n > 0) printf "%.2f", (b - a) * 1e6 / n; else print "-" }') µs per published message, RSS $((redis_rss / 1024)) MiB"
	if [ -n "$hold_t0" ] && [ "$hold_t1" != "$hold_t0" ]; then
		echo "redis      idle during the hold: $(awk -v t0="$hold_t0" -v t1="$hold_t1" -v c0="$hold_c0" -v c1="$hold_c1" 'BEGIN { printf "%.2f %% of a core over %.0f s", (c1 - c0) * 100 / (t1 - t0), t1 - t0 }') (every node holding its connections, nothing sent)"
	fi
	echo "kernel     slab memory peak +$(( (peak - slab0) / 1024 )) MiB over the run ($(( (peak - slab0) * 1024 / (CONNS > 0 ? CONNS : 1) )) B per connection, both ends)"
	echo "report     $OUT/report.html"
	echo "results    $OUT"
} | tee -a "$OUT/summary.txt"
exit $status
