package netstack

import (
	"runtime"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestSACKScoreboardSharesFreeList covers gVisor patch 0023: a new SACK
// scoreboard (one per TCP sender) no longer allocates its own btree free
// list (a 32-slot slice and a mutex, about 300 bytes).
func TestSACKScoreboardSharesFreeList(t *testing.T) {
	const n = 1000
	keep := make([]*tcp.SACKScoreboard, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range keep {
		keep[i] = tcp.NewSACKScoreboard(1460, 0)
	}
	runtime.ReadMemStats(&after)
	per := float64(after.TotalAlloc-before.TotalAlloc) / n
	t.Logf("%.0f bytes allocated per scoreboard", per)
	if per > 200 {
		t.Fatalf("a new SACK scoreboard allocates %.0f bytes, want at most 200 (its own btree free list is back?)", per)
	}
	runtime.KeepAlive(keep)
}
