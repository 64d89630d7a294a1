#!/bin/bash
# rr-cpu.sh [BIN] [rr|crr] [RUNS]: the appliance's CPU per request/response
# exchange (rr) or per connection (crr), and the client's p50 (rr). Runs a
# gateway (BIN, default bin/appliance) in a namespace of its own ("the
# host", where `appliance netperf serve` answers on 198.18.0.1:9000) for a
# second one ("the container"), then RUNS (default 3) 3 s runs of
# `appliance netperf rr|crr` from the container, each printed as the
# appliance's utime + stime over the run divided by its transactions (µs).
# Run two binaries alternately to compare them. Needs root.
# Everything it makes is removed on exit.
set -euo pipefail
BIN=${1:-bin/appliance}; MODE=${2:-rr}; RUNS=${3:-3}
. "$(dirname "$0")/netns.sh" rrcpu
ip netns exec $H "$BIN" run --netns /run/netns/$C --mtu 1500 --no-ipv6 --log-level warn --name rrcpu$$ >/dev/null 2>&1 & AP=$!; PIDS+=($AP)
ip netns exec $H "$BIN" netperf serve 198.18.0.1:9000 >/dev/null 2>&1 & PIDS+=($!)
sleep 1.5
# ip netns exec execs the appliance: $AP is its PID.
kill -0 $AP 2>/dev/null || { echo "rr-cpu: the appliance did not start" >&2; exit 1; }
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$AP/stat; }
for i in $(seq "$RUNS"); do
	c0=$(cpu)
	out=$(ip netns exec $C "$BIN" netperf "$MODE" 198.18.0.1:9000 3s 2>/dev/null)
	c1=$(cpu)
	echo "$out" | python3 -c "
import json, sys
d = json.load(sys.stdin)
n = d.get('transactions') or d.get('connections')
us = ($c1 - $c0) * 1e6 / $TCK / n
p50 = ' p50 %.0f us' % d['p50_us'] if 'p50_us' in d else ''
print('$MODE: %d in 3 s, appliance CPU %.1f us each%s' % (n, us, p50))"
done
