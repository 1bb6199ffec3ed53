//go:build unix && !race

package offheap

import (
	"sync"
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
	var once sync.Once
	return mem, func() { once.Do(func() { _ = syscall.Munmap(mem) }) }
}
