#!/bin/bash
# transfer-cpu.sh BIN MTU [-R] [SECONDS] [CPUPROFILE]: one iperf3 transfer
# through a gateway, and the appliance's CPU per GB moved. Runs BIN
# (`appliance run`, MTU, no IPv6) in a namespace of its own ("the host",
# where iperf3 -s listens on 198.18.0.1) for a second one ("the
# container"), then iperf3 from the container for SECONDS (default 5):
# upload, or download with -R. Prints Gbit/s, the appliance's utime +
# stime over the run and their ratio per GB. With CPUPROFILE the appliance
# writes a Go CPU profile there (go tool pprof -top BIN FILE). Run two
# binaries alternately to compare them. Needs root. Everything it makes is
# removed on exit.
set -euo pipefail
BIN=${1:?usage: transfer-cpu.sh BIN MTU [-R] [SECONDS] [CPUPROFILE]}; MTU=${2:?MTU}
DIR=""
if [ "${3:-}" = "-R" ]; then DIR=-R; shift; fi
T=${3:-5}; PROF=${4:-}
. "$(dirname "$0")/netns.sh" tcpu
extra=()
[ -n "$PROF" ] && extra=(--cpuprofile "$PROF")
ip netns exec $H "$BIN" "${extra[@]}" run --netns /run/netns/$C --mtu "$MTU" --no-ipv6 --log-level warn --name tcpu$$ >/dev/null 2>&1 & AP=$!; PIDS+=($AP)
ip netns exec $H iperf3 -s -B 198.18.0.1 >/dev/null 2>&1 & PIDS+=($!)
sleep 1.5
# ip netns exec execs the appliance: $AP is its PID.
kill -0 $AP 2>/dev/null || { echo "transfer-cpu: the appliance did not start" >&2; exit 1; }
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$AP/stat; }
c0=$(cpu)
out=$(ip netns exec $C iperf3 -c 198.18.0.1 $DIR -t "$T" -J)
c1=$(cpu)
echo "$out" | python3 -c "
import json, sys
e = json.load(sys.stdin)['end']['sum_received']
cpus = ($c1 - $c0) / $TCK
print('%s mtu %s: %.2f Gbit/s, appliance %.2f CPU-s, %.2f CPU-s/GB' % ('down' if '$DIR' else 'up', '$MTU', e['bits_per_second'] / 1e9, cpus, cpus / (e['bytes'] / 1e9)))"
# SIGINT ends the appliance cleanly (and writes the profile).
kill -INT $AP; wait $AP 2>/dev/null || true
