#!/usr/bin/env bash
# Installs what the demo, tests and benchmarks run: iperf3, iproute2, curl,
# ping, dig, tcpdump, iptables (the reference the iptables package's golden
# tests compare against), and the peer tools pasta (passt) and slirp4netns that
# the benchmark compares against. Only installs what is missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have iperf3 || need+=(iperf3)
have ip || need+=(iproute2)
have curl || need+=(curl)
have ping || need+=(iputils-ping)
have dig || need+=(dnsutils)
have tcpdump || need+=(tcpdump)
have iptables-nft-restore || need+=(iptables)
have pasta || need+=(passt)
have slirp4netns || need+=(slirp4netns)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! have apt-get; then
  echo "install-deps: missing ${need[*]}; install them (needs root and apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# passt and slirp4netns are optional peers for the benchmark: do not fail
# when a distribution lacks them.
core=(); opt=()
for p in "${need[@]}"; do
  case "$p" in passt|slirp4netns) opt+=("$p") ;; *) core+=("$p") ;; esac
done
[ ${#core[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${core[@]}"
[ ${#opt[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${opt[@]}" || echo "install-deps: optional ${opt[*]} not installed" >&2
