// Package offheap gives long-lived byte buffers memory mapped from the operating system
// rather than allocated on the Go heap.
//
// A daemon's receive loops (one per UDP socket) and its TUN read loop each hold a batch
// of 128 buffers of 64 KiB, and each UDP socket with GRO 16 more: about 26 MiB, live
// as long as the daemon, holding no pointers, and mostly never touched (a read fills
// the first page or two of the first few buffers), so most of it is never resident.
// On the Go heap it was nevertheless live heap to the garbage collector, which lets
// the heap grow to twice the live heap before it collects: a goal of about 63 MiB in a
// daemon whose other live data is 2–5 MiB. A daemon at rest makes some 30 KB of
// garbage a second, so its heap never reached the goal: only the runtime's forced
// collection every two minutes collected it, and the pages the garbage touched stayed
// resident (the scavenger returns free pages only above 110 % of the heap at the last
// collection, which counted the buffers): 4–5 MiB more resident memory within minutes
// of converging (docs/benchmarks.md, "Memory at rest"). Off the heap, the buffers set
// nothing: the goal follows the few MiB that are live.
//
// The memory is the caller's to give back (the release function), once nothing uses
// the buffers: a slice of them used after release is a fault, not a stale read. Under
// the race detector the buffers come from the Go heap, so that races on their
// contents are still reported (the detector does not see memory outside the heap).
//
// To check that nothing keeps a slice of a batch, build with -tags offheap_poison
// (Poison): the loops overwrite each batch when done with it and a released mapping
// stays reserved but inaccessible, so a late read sees 0xAA or faults, every time.
package offheap

// Buffers returns n buffers of size bytes, each with its own capacity (writing past
// one cannot reach the next), and release, which gives their memory back and may be
// called more than once. Fresh memory is zero. Where mapping fails or is not available
// the buffers come from the Go heap and release does nothing.
func Buffers(n, size int) (bufs [][]byte, release func()) {
	if n <= 0 || size <= 0 {
		return make([][]byte, max(n, 0)), func() {}
	}
	mem, release := alloc(n * size)
	if mem == nil {
		mem, release = make([]byte, n*size), func() {}
		if Poisoning {
			release = func() { Poison(mem) } // (under -race: a later read races with it)
		}
	}
	bufs = make([][]byte, n)
	for i := range bufs {
		bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
	}
	return bufs, release
}

// Poison overwrites b with 0xAA in a build with the offheap_poison tag, and does
// nothing otherwise. The loops call it on the bytes of a batch once they are done with
// it: anything that kept a slice of the batch (rather than a copy) then reads 0xAA,
// which tests that check what was kept see. Under the race detector the write also
// races with a read of the batch by another goroutine.
func Poison(b []byte) {
	if Poisoning {
		for i := range b {
			b[i] = 0xAA
		}
	}
}
