package tunnel

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// TestClosingTunnelsMidTrafficReadsNoReleasedBuffer: the TUN read loop's buffers and
// the node's receive buffers are mapped outside the Go heap and unmapped when their
// loops end (internal/offheap), so a read of either after that faults. Tunnels closed
// while packets flow both ways (read from the device, sealed, sent, received, written
// to the other device), one side first and then the other, close cleanly, round after
// round, and every packet written to a device is one that was sent, whole.
func TestClosingTunnelsMidTrafficReadsNoReleasedBuffer(t *testing.T) {
	rounds := 4
	if testing.Short() {
		rounds = 1
	}
	payload := bytes.Repeat([]byte{0x5A}, 1200)
	ab := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, payload)
	ba := ipv4UDP("10.9.0.2", "10.9.0.1", 2000, 1000, payload)
	for round := range rounds {
		a, b := memPair(t)
		a.dev.Inject(ab)
		expectPacket(t, b.dev, ab) // the session is up
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var bad atomic.Value
		var got atomic.Int64
		inject := func(dev *tuntest.Mem, pkt []byte) {
			defer wg.Done()
			batch := make([][]byte, 32)
			for i := range batch {
				batch[i] = pkt
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				dev.Inject(batch...)
			}
		}
		drain := func(dev *tuntest.Mem, want []byte) {
			defer wg.Done()
			for p := range dev.Written() { // closed by the device's Close
				if !bytes.Equal(p, want) {
					bad.Store(len(p))
				}
				got.Add(1)
				dev.Recycle(p)
			}
		}
		wg.Add(4)
		go inject(a.dev, ab)
		go inject(b.dev, ba)
		go drain(a.dev, ba)
		go drain(b.dev, ab)
		waitUntil(t, "packets both ways", func() bool { return got.Load() > 500 })
		first, second := a, b
		if round%2 == 1 {
			first, second = b, a
		}
		_ = first.t.Close()
		_ = second.t.Close()
		close(stop)
		wg.Wait()
		if n := bad.Load(); n != nil {
			t.Fatalf("round %d: a packet of %d bytes was written altered", round, n)
		}
	}
}
