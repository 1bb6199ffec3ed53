//go:build unix && !race

package offheap

import (
	"sync"
	"sync/atomic"
	"syscall"
)

// Mapped reports whether Buffers maps its memory outside the Go heap.
const Mapped = true

// alloc maps size bytes of private anonymous memory, or returns nil.
func alloc(size int) ([]byte, func()) {
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, nil
	}
	live.Add(int64(size))
	var once sync.Once
	return mem, func() {
		once.Do(func() {
			live.Add(-int64(size))
			if Poisoning {
				// Kept mapped but inaccessible, so that the address is never reused:
				// a read through a slice kept past the release faults every time.
				_ = syscall.Mprotect(mem, syscall.PROT_NONE)
				return
			}
			_ = syscall.Munmap(mem)
		})
	}
}

// live is the memory mapped and not yet released, in bytes.
var live atomic.Int64

// Live is the memory Buffers has mapped outside the Go heap and not yet released, in
// bytes: what the loops and sockets alive hold (and a leak would make grow).
func Live() int64 { return live.Load() }
