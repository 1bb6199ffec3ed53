package tunnel

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/tun/tuntest"
)

const (
	// pumpWindow is how many packets BenchmarkPump keeps in flight between a's device
	// and b's: enough to keep both pumps and their batches busy (on two cores 64
	// measures 1.5-2x slower per packet, mostly goroutine hand-offs), few enough
	// that b's socket buffer, 7 MiB as wireguard/conn sets it for root, never
	// overflows, so a loss means a fault rather than overrun.
	pumpWindow = 256
	// pumpRefill is the fewest packets injected at a time, but for the last few:
	// a's device batch, so a's pump reads whole batches as from a busy device.
	pumpRefill = 16
	// pumpLossWait is how long the benchmark waits for any packet before it writes
	// off everything in flight as lost. Packets that turn up later are taken off
	// the loss count again, so a too-short wait costs speed, not accuracy.
	pumpLossWait = 250 * time.Millisecond
	// pumpWarmup packets go through before the timer starts, so the devices' spare
	// buffers and the nodes' lazily grown state are in place.
	pumpWarmup = 8 * pumpWindow
)

// BenchmarkPump measures the whole packet path of a tunnel: IP packets injected into
// a's in-memory device are read by a's pump, classified, sealed and sent over loopback
// UDP by a's node, received, opened and checked by b's node and written by b's pump to
// b's device. One op is one packet; the bytes per op are the IP packet's. Packets
// lost on the way are reported as lost/op (a fraction of the packets) rather than
// failing the benchmark.
func BenchmarkPump(b *testing.B) {
	for _, size := range []int{1400, 64} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) { benchPump(b, size) })
	}
}

func benchPump(b *testing.B, size int) {
	a, dst := memPair(b)
	pp := newPumpPipe(a.dev, dst.dev, size)

	// The first packet starts the handshake and waits in a's queue until it is done.
	hello := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, make([]byte, size-28))
	a.dev.Inject(hello)
	select {
	case p := <-dst.dev.Written():
		dst.dev.Recycle(p)
	case <-time.After(10 * time.Second):
		b.Fatal("no packet crossed the tunnel: handshake failed?")
	}
	if _, lost := pp.pump(b, pumpWarmup); lost > 0 {
		b.Logf("warm-up lost %d of %d packets", lost, pumpWarmup)
	}

	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	_, lost := pp.pump(b, b.N)
	b.StopTimer()
	b.ReportMetric(float64(lost)/float64(b.N), "lost/op")
	if lost > 0 {
		b.Logf("lost %d of %d packets; a: %+v drops %v; b: %+v drops %v", lost, b.N,
			a.t.Counters(), a.t.Node().Stats().Drops, dst.t.Counters(), dst.t.Node().Stats().Drops)
	}
}

// pumpPipe injects numbered packets into one device and counts them out of another.
type pumpPipe struct {
	in, out *tuntest.Mem
	size    int
	batch   [][]byte // pumpWindow packet images, numbered before each Inject
	seq     uint64   // number of the next packet to inject
	timer   *time.Timer
}

func newPumpPipe(in, out *tuntest.Mem, size int) *pumpPipe {
	pp := &pumpPipe{in: in, out: out, size: size, batch: make([][]byte, pumpWindow)}
	for i := range pp.batch {
		pp.batch[i] = ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, make([]byte, size-28))
	}
	pp.timer = time.NewTimer(time.Hour)
	pp.timer.Stop()
	return pp
}

// pump passes n packets, keeping at most pumpWindow in flight and injecting them
// pumpRefill or more at a time, and returns how many arrived and how many were
// lost. It waits only on arrivals: a wait of pumpLossWait with none means
// everything still in flight is lost. The packets carry their number after the
// UDP header, so one written off that turns up late is counted as arrived. Every
// packet injected is accounted for when it returns; it does not allocate.
func (pp *pumpPipe) pump(b *testing.B, n int) (arrived, lost int) {
	first := pp.seq             // packets numbered below first belong to an earlier call
	writtenOff := pp.seq        // packets numbered below this that had not arrived were written off
	sent := 0                   // injected in this call
	written := pp.out.Written() // yields copies, handed back with Recycle
	for arrived+lost < n {
		if k := min(pumpWindow-(sent-arrived-lost), n-sent); k >= pumpRefill || k > 0 && k == n-sent {
			for _, p := range pp.batch[:k] {
				binary.BigEndian.PutUint64(p[28:], pp.seq)
				pp.seq++
			}
			pp.in.Inject(pp.batch[:k]...) // copies, so the images can be renumbered
			sent += k
		}
		pp.timer.Reset(pumpLossWait)
		select {
		case p, ok := <-written:
			if !ok {
				b.Fatal("b's device closed")
			}
			if len(p) != pp.size {
				b.Fatalf("a packet of %d bytes arrived, want %d", len(p), pp.size)
			}
			seq := binary.BigEndian.Uint64(p[28:])
			pp.out.Recycle(p)
			switch {
			case seq < first:
				// Written off by an earlier call; not this call's to count.
			case seq < writtenOff:
				lost-- // written off, but here after all
				arrived++
			default:
				arrived++
			}
		case <-pp.timer.C:
			lost = sent - arrived
			writtenOff = pp.seq
		}
	}
	pp.timer.Stop()
	return arrived, lost
}
