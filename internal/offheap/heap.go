//go:build !unix || race

package offheap

// Mapped reports whether Buffers maps its memory outside the Go heap: not on this
// platform, or not under the race detector, which sees only the Go heap.
const Mapped = false

func alloc(int) ([]byte, func()) { return nil, nil }

// Live is 0: nothing is mapped outside the Go heap here.
func Live() int64 { return 0 }
