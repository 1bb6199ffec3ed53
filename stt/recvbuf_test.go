package stt

import (
	"runtime"
	"testing"

	"github.com/stt-tun/stt-tun/stt/udp"
)

// TestReceiveBuffersAreNotOnTheGoHeap: each receive loop keeps a batch of 64 KiB
// buffers (8 MiB), and each UDP socket with GRO 16 more (1 MiB), mostly never touched.
// On the Go heap they were live heap to the garbage collector, which then let garbage
// grow to as much again before collecting and kept the pages it touched: a daemon at
// rest grew by megabytes (docs/benchmarks.md, "Memory at rest"). Two nodes with a
// session between them, their receive loops running, add less than 2 MiB to the Go
// heap (41 MiB with both kinds of buffer on it, 4 MiB with the GRO slots alone).
func TestReceiveBuffersAreNotOnTheGoHeap(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector the buffers are on the Go heap, where it sees them (internal/offheap)")
	}
	before := liveHeap()
	a, b := pair(t, Limits{})
	established(t, a, b) // both nodes have received: their loops have their buffers
	grew := int64(liveHeap()) - int64(before)
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
	if grew >= 2<<20 {
		t.Fatalf("two nodes added %d KiB to the Go heap (a receive batch is %d KiB)", grew>>10, udp.BatchSize*BufferSize>>10)
	}
	t.Logf("two nodes added %d KiB to the Go heap", grew>>10)
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
