package control

import (
	"bufio"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// MemStats is the process's memory after a forced collection, for the
// per-connection cost benchmark (GET /v1/memstats).
type MemStats struct {
	RSS        uint64 `json:"rss"`         // resident set (VmRSS)
	HeapInuse  uint64 `json:"heap_inuse"`  // Go heap spans in use
	HeapAlloc  uint64 `json:"heap_alloc"`  // live heap objects
	StackInuse uint64 `json:"stack_inuse"` // goroutine stacks
	Sys        uint64 `json:"sys"`         // everything the Go runtime got from the OS
	Goroutines int    `json:"goroutines"`
}

// ReadMemStats collects garbage, returns freed memory to the OS and reads
// the figures. It stops the world twice: not for hot paths.
func ReadMemStats() MemStats {
	// Two collections: the first moves sync.Pool contents to the victim
	// cache, the second frees them.
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return MemStats{RSS: selfRSS(), HeapInuse: ms.HeapInuse, HeapAlloc: ms.HeapAlloc,
		StackInuse: ms.StackInuse, Sys: ms.Sys, Goroutines: runtime.NumGoroutine()}
}

func selfRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// HandleMemStats adds GET /v1/memstats (see ReadMemStats) and the heap
// profile GET /debug/pprof/heap (net/http/pprof; ?gc=1 collects first) to
// mux, and the goroutine profile GET /debug/pprof/goroutine, for the
// per-connection cost breakdown.
func HandleMemStats(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/memstats", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, ReadMemStats())
	})
	mux.Handle("GET /debug/pprof/heap", pprof.Handler("heap"))
	mux.Handle("GET /debug/pprof/goroutine", pprof.Handler("goroutine"))
}
