package udp

import (
	"runtime"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/internal/offheap"
)

// TestGROSlotsAreGivenBackOnceTheSocketIsGone: a socket with UDP_GRO holds 16 slots of
// 64 KiB mapped outside the Go heap, given back by a cleanup once its receiver is
// unreachable. Binds opened and closed again, their receive functions dropped, leave
// nothing mapped: a reference that kept the receivers alive (or a cleanup that could
// never run, one that held the receiver itself) would leak 1 MiB per socket.
func TestGROSlotsAreGivenBackOnceTheSocketIsGone(t *testing.T) {
	if !offheap.Mapped || offheap.Poisoning {
		t.Skip("the slots are on the Go heap (race detector), or kept mapped (offheap_poison)")
	}
	before := offheap.Live()
	const binds = 4
	gro := 0
	for range binds {
		b := newBind(options{noV6: true})
		fns, _, err := b.Open(0)
		if err != nil {
			t.Fatal(err)
		}
		if b.v4.Load().gro {
			gro++
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		// A receive function after Close: what a node's receive loop does last.
		if _, err := fns[0](make([][]byte, 1), make([]int, 1), make([]conn.Endpoint, 1)); err == nil {
			t.Fatal("receive after Close: no error")
		}
	}
	if gro == 0 {
		t.Skip("no UDP_GRO on this kernel: no slots to give back")
	}
	if got := offheap.Live() - before; got < int64(gro*groSlots*slotSize) {
		t.Logf("mapped after the binds closed: %d KiB", got>>10) // some may be gone already
	}
	deadline := time.Now().Add(10 * time.Second)
	for offheap.Live() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d KiB still mapped for %d closed sockets with GRO (a socket's slots: %d KiB)",
				(offheap.Live()-before)>>10, gro, groSlots*slotSize>>10)
		}
		runtime.GC() // the cleanups run after a collection found the receivers unreachable
		time.Sleep(10 * time.Millisecond)
	}
}
