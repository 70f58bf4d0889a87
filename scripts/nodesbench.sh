#!/usr/bin/env bash
# The "nodes" table of BENCHMARKS.md (issue 23): the same load on 2, 6, 12
# and 24 gateway nodes sharing one Redis: 1 000 rooms of 10 members spread
# over all nodes (member m of room k on node (k+m) mod NODES), one sender
# per room at 1 msg/s (1 000 msg/s, 9 000 deliveries/s), 10 000
# connections. For each node count it runs scripts/redisbench.sh with
# RATES="0 1": rate 0 holds the connections with no messages (Redis's idle
# share of a core), rate 1 gives Redis CPU per message over the send phase
# (messages alone) and over the whole run (connects, joins, presence),
# p50/p99 and loss. GATEWAYS lists builds to interleave (e.g. an earlier
# commit's binary), so that the machine's noise weighs on all alike.
#
# Usage (all optional, defaults shown):
#   NODE_COUNTS="2 6 12 24" GATEWAYS="bin/gateway" OUT=/tmp/nodesbench scripts/nodesbench.sh
# Loopback only, bounded, stops by itself; run nothing else meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_COUNTS=${NODE_COUNTS:-"2 6 12 24"}
GATEWAYS=${GATEWAYS:-bin/gateway}
OUT=${OUT:-$(mktemp -d /tmp/nodesbench.XXXXXX)}
mkdir -p "$OUT"
[ -x bin/gateway ] && [ -x bin/loadgen ] || make build >/dev/null
for n in $NODE_COUNTS; do
	for g in $GATEWAYS; do
		echo "== $n nodes, $g"
		NODES=$n MEMBERS=10 SENDERS=1 ROOMS=1000 RATES="0 1" GATEWAY="$g" OUT="$OUT/$n-$(basename "$g")" \
			scripts/redisbench.sh 2>&1 | grep -v '^results in'
	done
done
echo "results in $OUT"
