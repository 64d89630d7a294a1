# netns.sh, sourced by the measuring scripts here: makes two throwaway
# namespaces, $H ("the host", 198.18.0.1 on its loopback, where the
# appliance runs so that its host sockets reach nothing else) and $C ("the
# container"), named PREFIX{h,c}PID, and removes both on exit, after
# killing every process whose PID the script added to PIDS.
#   . "$(dirname "$0")/netns.sh" PREFIX
H=${1}h$$; C=${1}c$$
PIDS=()
cleanup() {
	if [ ${#PIDS[@]} -gt 0 ]; then
		kill "${PIDS[@]}" 2>/dev/null || true
		wait "${PIDS[@]}" 2>/dev/null || true
	fi
	ip netns del $C 2>/dev/null || true
	ip netns del $H 2>/dev/null || true
}
trap cleanup EXIT
ip netns add $H; ip netns add $C
ip -n $H link set lo up; ip -n $C link set lo up
ip -n $H addr add 198.18.0.1/32 dev lo
