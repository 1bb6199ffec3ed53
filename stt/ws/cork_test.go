package ws

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
)

// countConn is a net.Conn that records each Write.
type countConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	err    error
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func (c *countConn) snapshot() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// TestCorkGathersARun: the writes of a run reach the connection as one write, in
// order, at uncork; nothing is written before.
func TestCorkGathersARun(t *testing.T) {
	under := &countConn{}
	c := &corkConn{Conn: under}
	c.cork()
	var want []byte
	for i := range 30 {
		p := bytes.Repeat([]byte{byte(i)}, 4096)
		want = append(want, p...)
		if n, err := c.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if n := len(under.snapshot()); n != 0 {
		t.Fatalf("%d writes reached the connection while corked", n)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	got := under.snapshot()
	if len(got) != 1 || !bytes.Equal(got[0], want) {
		t.Fatalf("%d writes after uncork; want the run as one write", len(got))
	}
}

// TestUncorkedWritesPassThrough: outside a run (pings, the close handshake) every
// write goes out at once.
func TestUncorkedWritesPassThrough(t *testing.T) {
	under := &countConn{}
	c := &corkConn{Conn: under}
	for range 3 {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(under.snapshot()); n != 3 {
		t.Fatalf("%d writes; want 3 written through", n)
	}
	if err := c.uncork(); err != nil || len(under.snapshot()) != 3 {
		t.Fatalf("uncork without a run: %v, %d writes", err, len(under.snapshot()))
	}
}

// TestCorkIsBounded: a run larger than maxCork is written in pieces of at most
// maxCork bytes, and in order.
func TestCorkIsBounded(t *testing.T) {
	under := &countConn{}
	c := &corkConn{Conn: under}
	c.cork()
	var want []byte
	for i := range 3 * maxCork / 1000 {
		p := bytes.Repeat([]byte{byte(i)}, 1000)
		want = append(want, p...)
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	big := bytes.Repeat([]byte{0xee}, maxCork+1)
	want = append(want, big...)
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for _, w := range under.snapshot() {
		if len(w) > maxCork && !bytes.Equal(w, big) {
			t.Fatalf("a write of %d bytes exceeds the bound", len(w))
		}
		got = append(got, w...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes arrived changed or out of order")
	}
	if cap(c.buf) > 2*maxCork {
		t.Errorf("buffer grew to %d bytes", cap(c.buf))
	}
}

// TestUncorkReportsWriteError: an error of the gathered write is not lost.
func TestUncorkReportsWriteError(t *testing.T) {
	boom := errors.New("connection reset")
	under := &countConn{err: boom}
	c := &corkConn{Conn: under}
	c.cork()
	if _, err := c.Write([]byte("frame")); err != nil {
		t.Fatal(err)
	}
	if err := c.uncork(); !errors.Is(err, boom) {
		t.Fatalf("uncork = %v, want %v", err, boom)
	}
}

// TestCorkConcurrentWriters: writes from another goroutine (the library's pings)
// during runs lose and tear nothing.
func TestCorkConcurrentWriters(t *testing.T) {
	under := &countConn{}
	c := &corkConn{Conn: under}
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 500 {
			_, _ = c.Write([]byte("PING"))
		}
	})
	for range 500 {
		c.cork()
		_, _ = c.Write([]byte("data"))
		_ = c.uncork()
	}
	wg.Wait()
	all := bytes.Join(under.snapshot(), nil)
	if n := bytes.Count(all, []byte("PING")); n != 500 {
		t.Errorf("%d pings arrived, want 500", n)
	}
	if n := bytes.Count(all, []byte("data")); n != 500 {
		t.Errorf("%d data writes arrived, want 500", n)
	}
}
