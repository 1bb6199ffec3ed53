// Package tuntest provides an in-memory TUN device for tests of code that reads
// and writes packets through a tun.Device, such as the tunnel's packet pump.
package tuntest

import (
	"fmt"
	"os"
	"sync"

	"github.com/stt-tun/stt-tun/tun"
)

// WrittenCap is how many written packets a Mem holds before Write blocks.
const WrittenCap = 1024

// Mem is an in-memory tun.Device for tests. Packets given to Inject come out of
// Read; packets passed to Write come out of Written. It applies the Linux
// device's offset and buffer rules strictly (see package tun's documentation),
// including scribbling over the virtio-net headroom on Write, so code that
// passes with Mem respects them. It has no offloads and never coalesces.
type Mem struct {
	name       string
	mtu, batch int
	events     chan tun.Event
	done       chan struct{}
	closeOnce  sync.Once

	mu      sync.Mutex // guards queue, closed, readers
	cond    *sync.Cond // signalled when queue grows or the device closes
	queue   [][]byte
	closed  bool
	readers int // Reads waiting for packets, for tests

	wmu     sync.Mutex // serialises Write, and Write against closing written
	written chan []byte

	spare chan []byte // buffers for Inject and Write to copy into; see Recycle
}

var _ tun.Device = (*Mem)(nil)

// NewMem returns an open Mem with the given name, MTU and batch size (at
// least 1). Its Events channel holds one tun.EventUp.
func NewMem(name string, mtu, batch int) *Mem {
	m := &Mem{
		name:    name,
		mtu:     mtu,
		batch:   max(batch, 1),
		events:  make(chan tun.Event, 1),
		done:    make(chan struct{}),
		written: make(chan []byte, WrittenCap),
		spare:   make(chan []byte, WrittenCap),
	}
	m.cond = sync.NewCond(&m.mu)
	m.events <- tun.EventUp
	return m
}

// Inject queues copies of pkts for Read. Packets injected after Close are
// dropped.
func (m *Mem) Inject(pkts ...[]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	for _, p := range pkts {
		m.queue = append(m.queue, m.clone(p))
	}
	m.cond.Broadcast()
}

// Recycle gives m a packet received from Written once the caller is done with
// it: a later Inject or Write copies into it instead of allocating, so a
// benchmark can pass packets through m without the device itself allocating
// for each. Read recycles the copies Inject made in the same way. The caller
// must not touch p afterwards. Recycle keeps at most WrittenCap spare
// buffers and lets the rest go to the garbage collector.
func (m *Mem) Recycle(p []byte) {
	select {
	case m.spare <- p[:0]:
	default:
	}
}

// clone copies p into a spare buffer if one is ready and large enough, else
// into a new one.
func (m *Mem) clone(p []byte) []byte {
	select {
	case b := <-m.spare:
		if cap(b) >= len(p) {
			return append(b, p...)
		}
	default:
	}
	return append([]byte(nil), p...)
}

// Written returns the channel of copies of written packets, in write order.
// It is closed by Close, after which it still yields what was buffered.
func (m *Mem) Written() <-chan []byte { return m.written }

// File returns nil: Mem has no file descriptor.
func (m *Mem) File() *os.File { return nil }

// Read blocks until packets have been injected or m is closed, then copies up
// to min(len(bufs), BatchSize()) of them into bufs[i][offset:] and their
// lengths into sizes. A packet too large for bufs[0][offset:] fails the Read
// and is dropped, as on the Linux device. After Close it returns an error
// wrapping os.ErrClosed.
func (m *Mem) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 || len(sizes) < len(bufs) || offset < 0 {
		return 0, fmt.Errorf("tun: mem read: %d bufs, %d sizes, offset %d", len(bufs), len(sizes), offset)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.queue) == 0 && !m.closed {
		m.readers++
		m.cond.Wait()
		m.readers--
	}
	if m.closed {
		return 0, fmt.Errorf("tun: mem read: %w", os.ErrClosed)
	}
	n := 0
	for n < min(len(bufs), m.batch) && n < len(m.queue) {
		p := m.queue[n]
		if offset > len(bufs[n]) || len(p) > len(bufs[n])-offset {
			if n > 0 {
				break // leave it for the next Read
			}
			m.pop(1)
			return 0, fmt.Errorf("tun: mem read: packet of %d bytes overflows bufs[0] of %d bytes at offset %d", len(p), len(bufs[0]), offset)
		}
		sizes[n] = copy(bufs[n][offset:], p)
		n++
	}
	m.pop(n)
	return n, nil
}

// pop removes the first n packets of the queue, recycling their copies, and
// moves the rest to the front, so that Inject reuses the queue's array instead
// of walking off its end and reallocating.
func (m *Mem) pop(n int) {
	for _, p := range m.queue[:n] {
		m.Recycle(p)
	}
	k := copy(m.queue, m.queue[n:])
	clear(m.queue[k:])
	m.queue = m.queue[:k]
}

// waitingReaders returns how many Reads are blocked waiting for packets.
func (m *Mem) waitingReaders() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.readers
}

// Write checks bufs against the Linux device's rules, clears each packet's
// virtio-net headroom bufs[i][offset-tun.VirtioNetHdrLen:offset] as that device
// does, and sends a copy of each bufs[i][offset:] to Written, blocking while
// Written is full. It returns the number of packets written, and an error
// wrapping os.ErrClosed once m is closed.
func (m *Mem) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		if offset < tun.MinOffset || offset > len(b)-1 {
			return 0, fmt.Errorf("tun: mem write: invalid offset %d for bufs[%d] of %d bytes", offset, i, len(b))
		}
		if cap(b) > tun.MaxWriteCap(offset) {
			return 0, fmt.Errorf("tun: mem write: bufs[%d] capacity %d exceeds %d at offset %d", i, cap(b), tun.MaxWriteCap(offset), offset)
		}
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	for i, b := range bufs {
		if m.isDone() {
			return i, fmt.Errorf("tun: mem write: %w", os.ErrClosed)
		}
		clear(b[offset-tun.VirtioNetHdrLen : offset])
		select {
		case m.written <- m.clone(b[offset:]):
		case <-m.done:
			return i, fmt.Errorf("tun: mem write: %w", os.ErrClosed)
		}
	}
	return len(bufs), nil
}

func (m *Mem) isDone() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// MTU returns the MTU given to NewMem.
func (m *Mem) MTU() (int, error) { return m.mtu, nil }

// Name returns the name given to NewMem.
func (m *Mem) Name() (string, error) { return m.name, nil }

// Events returns the event channel; it is closed by Close.
func (m *Mem) Events() <-chan tun.Event { return m.events }

// BatchSize returns the batch size given to NewMem.
func (m *Mem) BatchSize() int { return m.batch }

// Close unblocks pending Reads and Writes with errors wrapping os.ErrClosed
// and closes the Written and Events channels. Further calls do nothing.
func (m *Mem) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.queue = nil
		m.cond.Broadcast()
		m.mu.Unlock()

		close(m.done) // first, so a Write blocked on a full Written lets go of wmu
		m.wmu.Lock()
		close(m.written)
		m.wmu.Unlock()
		close(m.events)
	})
	return nil
}
