package tuntest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
	"github.com/stt-tun/stt-tun/tun"
)

func fill(b []byte, v byte) []byte {
	for i := range b {
		b[i] = v
	}
	return b
}

func TestMemRoundTrip(t *testing.T) {
	m := NewMem("mem0", 1420, 4)
	defer m.Close()
	pkts := [][]byte{[]byte("first packet"), []byte("second"), []byte("third one")}
	m.Inject(pkts...)
	pkts[0][0] = 'X' // Inject copies

	const off = 16
	bufs := [][]byte{make([]byte, off+1420), make([]byte, off+1420)}
	sizes := make([]int, len(bufs))
	var got [][]byte
	for len(got) < len(pkts) {
		n, err := m.Read(bufs, sizes, off)
		if err != nil {
			t.Fatal(err)
		}
		if n > len(bufs) {
			t.Fatalf("Read returned %d packets into %d bufs", n, len(bufs))
		}
		for i := range n {
			got = append(got, bytes.Clone(bufs[i][off:off+sizes[i]]))
		}
	}
	want := []string{"first packet", "second", "third one"}
	for i := range want {
		if string(got[i]) != want[i] {
			t.Errorf("packet %d = %q, want %q", i, got[i], want[i])
		}
	}

	wbufs := make([][]byte, len(got))
	for i, p := range got {
		wbufs[i] = append(make([]byte, off), p...)
	}
	if n, err := m.Write(wbufs, off); err != nil || n != len(wbufs) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	wbufs[0][off] = 'Y' // Written yields copies
	for i := range want {
		if p := <-m.Written(); string(p) != want[i] {
			t.Errorf("written %d = %q, want %q", i, p, want[i])
		}
	}
}

func TestMemOffsetHonoured(t *testing.T) {
	m := NewMem("mem0", 100, 8)
	defer m.Close()
	pkt := []byte{0x45, 1, 2, 3, 4, 5, 6, 7}
	m.Inject(pkt)

	const off = 16
	buf := fill(make([]byte, off+100), 0xAA)
	sizes := []int{0}
	if n, err := m.Read([][]byte{buf}, sizes, off); err != nil || n != 1 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if !bytes.Equal(buf[off:off+sizes[0]], pkt) {
		t.Errorf("read %x, want %x at offset", buf[off:off+sizes[0]], pkt)
	}
	if !bytes.Equal(buf[:off], fill(make([]byte, off), 0xAA)) || !bytes.Equal(buf[off+len(pkt):], fill(make([]byte, 100-len(pkt)), 0xAA)) {
		t.Errorf("Read touched bytes outside [offset, offset+size): %x", buf)
	}

	wbuf := append(fill(make([]byte, off), 0xBB), pkt...)
	if _, err := m.Write([][]byte{wbuf}, off); err != nil {
		t.Fatal(err)
	}
	if got := <-m.Written(); !bytes.Equal(got, pkt) {
		t.Errorf("written %x, want %x", got, pkt)
	}
	wantHead := append(fill(make([]byte, off-tun.VirtioNetHdrLen), 0xBB), make([]byte, tun.VirtioNetHdrLen)...)
	if !bytes.Equal(wbuf[:off], wantHead) {
		t.Errorf("headroom after Write = %x, want %x (virtio-net header scratch cleared, rest untouched)", wbuf[:off], wantHead)
	}
}

func TestMemRules(t *testing.T) {
	m := NewMem("mem0", 100, 8)
	defer m.Close()
	pkt := []byte{0x45, 0, 0, 0}
	for _, c := range []struct {
		name string
		buf  []byte
		off  int
	}{
		{"offset below tun.MinOffset", append(make([]byte, tun.MinOffset-1), pkt...), tun.MinOffset - 1},
		{"empty packet", make([]byte, 16), 16},
		{"offset past end", make([]byte, 16), 17},
		{"capacity past tun.MaxWriteCap", append(make([]byte, 16, tun.MaxWriteCap(16)+1), pkt...), 16},
	} {
		if n, err := m.Write([][]byte{append(make([]byte, 16), pkt...), c.buf}, c.off); err == nil || n != 0 {
			t.Errorf("%s: Write = %d, %v; want 0 and an error", c.name, n, err)
		}
	}
	if n := len(m.Written()); n != 0 {
		t.Errorf("%d packets written by failed Writes", n)
	}
	if _, err := m.Write([][]byte{append(make([]byte, 16, tun.MaxWriteCap(16)), pkt...)}, 16); err != nil {
		t.Errorf("Write with capacity tun.MaxWriteCap: %v", err)
	}

	big, small := make([]byte, 101), []byte{0x45}
	m.Inject(big, small)
	bufs := [][]byte{make([]byte, 16+100)}
	sizes := []int{0}
	if n, err := m.Read(bufs, sizes, 16); err == nil || n != 0 {
		t.Errorf("Read of a packet larger than the buffer = %d, %v; want an error", n, err)
	}
	if n, err := m.Read(bufs, sizes, 16); err != nil || n != 1 || sizes[0] != 1 {
		t.Errorf("Read after an oversized packet = %d, %v, size %d; want the next packet", n, err, sizes[0])
	}
	if _, err := m.Read(bufs, nil, 16); err == nil {
		t.Error("Read with too few sizes succeeded")
	}
}

func TestMemCloseUnblocksRead(t *testing.T) {
	m := NewMem("mem0", 100, 8)
	errc := make(chan error, 1)
	go func() {
		_, err := m.Read([][]byte{make([]byte, 116)}, []int{0}, 16)
		errc <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nslab.WaitFor(ctx, func() bool { return m.waitingReaders() == 1 }); err != nil {
		t.Fatal("Read never blocked:", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("blocked Read returned %v, want os.ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not unblock Read")
	}
	if _, ok := <-m.Events(); !ok {
		t.Error("Events closed without the initial tun.EventUp")
	}
	if _, ok := <-m.Events(); ok {
		t.Error("Events not closed by Close")
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestMemCloseUnblocksWrite(t *testing.T) {
	m := NewMem("mem0", 100, 8)
	bufs := make([][]byte, WrittenCap+1)
	for i := range bufs {
		bufs[i] = append(make([]byte, 16), 0x45)
	}
	type result struct {
		n   int
		err error
	}
	res := make(chan result, 1)
	go func() {
		n, err := m.Write(bufs, 16)
		res <- result{n, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nslab.WaitFor(ctx, func() bool { return len(m.Written()) == WrittenCap }); err != nil {
		t.Fatal("Written never filled:", err)
	}
	m.Close()
	select {
	case r := <-res:
		if r.n != WrittenCap || !errors.Is(r.err, os.ErrClosed) {
			t.Errorf("Write blocked on a full Written = %d, %v; want %d, os.ErrClosed", r.n, r.err, WrittenCap)
		}
	case <-ctx.Done():
		t.Fatal("Close did not unblock Write")
	}
	drained := 0
	for range m.Written() {
		drained++
	}
	if drained != WrittenCap {
		t.Errorf("drained %d packets after Close, want %d", drained, WrittenCap)
	}
}

func TestMemConcurrent(t *testing.T) {
	m := NewMem("mem0", 100, 16)
	const injectors, per = 4, 500
	var wg sync.WaitGroup
	for i := range injectors {
		wg.Go(func() {
			for j := range per {
				m.Inject([]byte{byte(i), byte(j)})
			}
		})
	}
	const off = 16
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, off+100)
	}
	sizes := make([]int, len(bufs))
	writes := make(chan [][]byte, 4)
	wg.Go(func() {
		for b := range writes {
			if _, err := m.Write(b, off); err != nil {
				t.Error(err)
			}
		}
	})
	seen := 0
	go func() {
		defer close(writes)
		for seen < injectors*per {
			n, err := m.Read(bufs, sizes, off)
			if err != nil {
				t.Error(err)
				return
			}
			out := make([][]byte, n)
			for i := range n {
				out[i] = bytes.Clone(bufs[i][:off+sizes[i]])
			}
			writes <- out
			seen += n
		}
	}()
	for range injectors * per {
		if p := <-m.Written(); len(p) != 2 {
			t.Fatalf("written packet %x, want 2 bytes", p)
		}
	}
	wg.Wait()
	m.Close()
}

func TestMemRecycle(t *testing.T) {
	m := NewMem("mem0", 1500, 4)
	defer m.Close()
	const off = 16
	bufs := [][]byte{make([]byte, off+1500)}
	sizes := []int{0}
	wbufs := [][]byte{make([]byte, off+1500)}
	// pass sends p through Inject, Read, Write and Written, recycling what
	// Written yields, and checks it arrives intact.
	pass := func(p []byte) {
		m.Inject(p)
		if n, err := m.Read(bufs, sizes, off); err != nil || n != 1 {
			t.Fatalf("Read = %d, %v", n, err)
		}
		wbufs[0] = wbufs[0][:off+copy(wbufs[0][off:cap(wbufs[0])], bufs[0][off:off+sizes[0]])]
		if n, err := m.Write(wbufs, off); err != nil || n != 1 {
			t.Fatalf("Write = %d, %v", n, err)
		}
		got := <-m.Written()
		if !bytes.Equal(got, p) {
			t.Fatalf("passed %x, got %x", p, got)
		}
		m.Recycle(got)
	}
	big := fill(make([]byte, 1400), 0xB1)
	small := fill(make([]byte, 64), 0x5A)
	pass(small)
	pass(big) // the recycled spares are too small: new copies
	pass(small)
	pass(big)
	if allocs := testing.AllocsPerRun(100, func() { pass(big) }); allocs != 0 {
		t.Errorf("a recycled round trip allocates %v times", allocs)
	}

	// Inject still copies, and so does Write, into recycled buffers too.
	p := fill(make([]byte, 64), 1)
	m.Inject(p)
	p[0] = 2
	if _, err := m.Read(bufs, sizes, off); err != nil || bufs[0][off] != 1 {
		t.Fatalf("injected packet changed with the caller's slice: %x, %v", bufs[0][off], err)
	}
	wbufs[0] = append(wbufs[0][:off], p...)
	if _, err := m.Write(wbufs, off); err != nil {
		t.Fatal(err)
	}
	wbufs[0][off] = 3
	if got := <-m.Written(); got[0] != 2 {
		t.Fatalf("written packet changed with the writer's buffer: %x", got[0])
	}
}
