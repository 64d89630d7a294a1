#!/bin/bash
# stalled-downloads.sh [BIN] [N]: the appliance memory a download costs when
# the container stops reading it. Runs a gateway (BIN, default
# bin/appliance) in a namespace of its own ("the host") for a second one
# ("the container"); a server in the host namespace writes to every
# connection as fast as it can; the container opens N connections with a
# 64 KiB receive buffer and never reads. Prints the appliance's RSS growth
# per connection once the transfers have stalled (MTU env: the TUN MTU,
# default 65520 as in appliance run). Needs root, python3.
# Everything it makes is removed on exit.
set -euo pipefail
BIN=${1:-bin/appliance}; N=${2:-200}; MTU=${MTU:-65520}
. "$(dirname "$0")/netns.sh" stall
ip netns exec $H "$BIN" run --netns /run/netns/$C --mtu $MTU --no-ipv6 --log-level warn --name stall$$ >/dev/null 2>&1 & AP=$!; PIDS+=($AP)
ip netns exec $H timeout 120 python3 -c '
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.1", 7000)); s.listen(1024)
buf = b"x" * (1 << 20)
def feed(c):
    try:
        while True: c.sendall(buf)
    except Exception: pass
while True:
    c, _ = s.accept(); threading.Thread(target=feed, args=(c,), daemon=True).start()
' & PIDS+=($!)
for _ in $(seq 50); do ip -n $C addr show 2>/dev/null | grep -q 10.0.2.100 && break; sleep 0.1; done
sleep 0.5
r0=$(awk '/VmRSS/{print $2}' /proc/$AP/status)
ip netns exec $C timeout 60 python3 -c "
import socket, time
cs = []
for i in range($N):
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.connect(('198.18.0.1', 7000)); cs.append(c)
time.sleep(30)
" & PIDS+=($!)
sleep 6
r1=$(awk '/VmRSS/{print $2}' /proc/$AP/status)
echo "$(basename "$BIN"): MTU $MTU, $N stalled downloads: RSS ${r0} -> ${r1} KiB, $(( (r1 - r0) / N )) KiB each"
