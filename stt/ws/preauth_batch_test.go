package ws

import (
	"sync"
	"testing"
)

// TestUnauthenticatedConnectionReceivesSmallBatches: until the node marks a server
// connection authenticated, every ReceiveFunc call carries at most PreAuthBatch
// records, however many one message holds, so a connection that has proved nothing
// holds few receive buffers; once marked, batches grow to the configured size.
func TestUnauthenticatedConnectionReceivesSmallBatches(t *testing.T) {
	type batch struct {
		n      int
		authed bool
	}
	var (
		mu      sync.Mutex
		batches []batch
	)
	in := newSink()
	srv, conns := startServer(t, func(c *ServerConfig) {
		c.Receive = func(c *Conn, bufs [][]byte, sizes []int) {
			mu.Lock()
			batches = append(batches, batch{len(bufs), c.Authenticated()})
			mu.Unlock()
			in.receive(c, bufs, sizes)
		}
	})
	cl := dial(t, DialConfig{URL: srv.URL()})
	sc := nextConn(t, conns)
	const perMessage = 50 // small frames: one Send, one message
	frames := make([][]byte, perMessage)
	for i := range frames {
		frames[i] = frame(i, 64)
	}
	if err := cl.Send(frames); err != nil {
		t.Fatal(err)
	}
	in.waitN(t, perMessage)
	mu.Lock()
	for i, b := range batches {
		if b.authed || b.n > PreAuthBatch {
			t.Errorf("batch %d before authentication: %d records (authenticated: %v), at most %d allowed",
				i, b.n, b.authed, PreAuthBatch)
		}
	}
	before := len(batches)
	mu.Unlock()

	sc.MarkAuthenticated()
	if err := cl.Send(frames); err != nil {
		t.Fatal(err)
	}
	in.waitN(t, 2*perMessage)
	mu.Lock()
	defer mu.Unlock()
	largest := 0
	for _, b := range batches[before:] {
		largest = max(largest, b.n)
	}
	if largest != perMessage {
		t.Errorf("after authentication the largest batch has %d records, want the whole message of %d", largest, perMessage)
	}
}
