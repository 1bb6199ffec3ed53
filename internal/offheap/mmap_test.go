//go:build unix && !race

package offheap

import (
	"runtime"
	"testing"
)

// TestBuffersAreNotOnTheGoHeap: a batch of 128 buffers of 64 KiB, written to, adds
// (next to) nothing to the Go heap the garbage collector paces itself by.
func TestBuffersAreNotOnTheGoHeap(t *testing.T) {
	const n, size = 128, 64 << 10
	before := liveHeap()
	bufs, release := Buffers(n, size)
	defer release()
	for _, b := range bufs {
		b[0], b[len(b)-1] = 1, 1
	}
	grew := int64(liveHeap()) - int64(before)
	runtime.KeepAlive(bufs)
	if grew > 1<<20 {
		t.Fatalf("the Go heap grew by %d KiB for %d KiB of buffers", grew>>10, n*size>>10)
	}
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
