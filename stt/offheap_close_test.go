package stt

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/offheap"
)

// TestClosingMidTrafficReadsNoReleasedBuffer: a receive loop's buffers are mapped
// outside the Go heap and unmapped when the loop ends, so whatever reads them after
// that faults (not under the race detector, where they are on the heap). Nodes closed
// while data, control messages and handshakes flow both ways, round after round, must
// close cleanly: nothing reads a batch after its loop is gone (the loop releases its
// buffers after its last batch, and Close waits for the loops). Every payload delivered
// must be one that was sent, whole.
func TestClosingMidTrafficReadsNoReleasedBuffer(t *testing.T) {
	rounds := 6
	if testing.Short() {
		rounds = 2
	}
	if !offheap.Mapped {
		t.Log("buffers on the Go heap in this build: the faults this looks for cannot happen")
	}
	payload := bytes.Repeat([]byte{0x5A}, 1200)
	for round := range rounds {
		a, b := pair(t, Limits{})
		established(t, a, b)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		send := func(p *Peer) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				batch := make([][]byte, 32)
				flows := make([]uint16, 32)
				for j := range batch {
					batch[j] = datagram(payload)
					flows[j] = uint16(j)
				}
				_ = p.Send(batch, flows)
				if i%8 == 0 {
					_ = p.SendReliable(0x80, payload[:100])
					_ = p.SendUnreliable(0x81, payload[:100])
				}
				if i%32 == 0 {
					p.Rekey()
				}
			}
		}
		wg.Add(2)
		go send(a.Peer("b"))
		go send(b.Peer("a"))
		waitFor(t, 5*time.Second, "traffic both ways", func() bool {
			return a.h.count.Load() > 200 && b.h.count.Load() > 200
		})
		// One side first, while the other still sends to it; then the other.
		first, second := a, b
		if round%2 == 1 {
			first, second = b, a
		}
		if err := first.Close(); err != nil {
			t.Logf("close: %v", err)
		}
		_ = second.Close()
		close(stop)
		wg.Wait()
		for _, n := range []*testNode{a, b} {
			n.h.mu.Lock()
			for _, got := range n.h.got {
				if !bytes.Equal(got, payload) && string(got) != "hello" {
					n.h.mu.Unlock()
					t.Fatalf("round %d: a payload of %d bytes was delivered altered", round, len(got))
				}
			}
			n.h.mu.Unlock()
		}
	}
}
