package udp

import (
	"fmt"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// loop sends datagrams from one Bind to another over loopback and receives them in the
// same goroutine (on loopback a send has queued its datagrams at the receiver by the
// time it returns; the receive blocks if not).
type loop struct {
	tx    conn.Bind
	ep    conn.Endpoint
	rx    conn.ReceiveFunc
	send  [][]byte
	bufs  [][]byte
	sizes []int
	eps   []conn.Endpoint
	// watchdog closes the receiver when a round takes too long (a datagram lost), so
	// that the receive fails instead of blocking forever.
	watchdog *time.Timer
}

// newLoop opens the two Binds; a nil Bind is wireguard/conn's StdNetBind.
func newLoop(t testing.TB, tx, rx conn.Bind, size int) *loop {
	t.Helper()
	if tx == nil {
		tx = conn.NewStdNetBind()
	}
	if rx == nil {
		rx = conn.NewStdNetBind()
	}
	if _, _, err := tx.Open(0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Close() })
	fns, port, err := rx.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rx.Close() })
	ep, err := tx.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	l := &loop{tx: tx, ep: ep, rx: fns[0],
		send: make([][]byte, BatchSize), bufs: make([][]byte, BatchSize),
		sizes: make([]int, BatchSize), eps: make([]conn.Endpoint, BatchSize)}
	l.watchdog = time.AfterFunc(time.Hour, func() { _ = rx.Close() })
	t.Cleanup(func() { l.watchdog.Stop() })
	for i := range l.send {
		// Room behind each datagram: StdNetBind coalesces for GSO by appending to the
		// first datagram's buffer, so it needs the capacity (this Bind does not).
		l.send[i] = make([]byte, size, 65535)
		l.bufs[i] = make([]byte, 65535)
	}
	return l
}

// once sends n datagrams and receives them.
func (l *loop) once(t testing.TB, n int) {
	l.watchdog.Reset(10 * time.Second)
	if err := l.tx.Send(l.send[:n], l.ep); err != nil {
		t.Fatal(err)
	}
	for got := 0; got < n; {
		k, err := l.rx(l.bufs, l.sizes, l.eps)
		if err != nil {
			t.Fatalf("receive (%d of %d datagrams): %v", got, n, err)
		}
		for i := range k {
			if l.sizes[i] > 0 { // StdNetBind may return empty slots
				got++
			}
		}
	}
}

// TestNoAllocsPerDatagram: in steady state neither Send nor a receive function
// allocates, with or without the offloads.
func TestNoAllocsPerDatagram(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tx, rx options
	}{
		{"gso-gro", options{}, options{}},
		{"plain", options{noGSO: true}, options{noGRO: true}},
		{"gso-nogro", options{}, options{noGRO: true}},
		{"nogso-gro", options{noGSO: true}, options{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLoop(t, newBind(tc.tx), newBind(tc.rx), 1452)
			for range 10 {
				l.once(t, 64)
			}
			if a := testing.AllocsPerRun(200, func() { l.once(t, 64) }); a != 0 {
				t.Errorf("%.2f allocations per batch of 64 datagrams, want 0", a)
			}
		})
	}
}

// BenchmarkLoopback sends batches of 64 datagrams from a Bind to another of the same
// kind over loopback and receives them: this package's Bind against wireguard/conn's
// StdNetBind. One op is one datagram, sent and received.
func BenchmarkLoopback(b *testing.B) {
	for _, size := range []int{96, 1452} {
		for _, kind := range []string{"stt", "std"} {
			b.Run(fmt.Sprintf("%s/%dB", kind, size), func(b *testing.B) {
				var tx, rx conn.Bind
				if kind == "stt" {
					tx, rx = New(), New()
				}
				benchLoop(b, newLoop(b, tx, rx, size), size)
			})
		}
	}
}

// BenchmarkReceivePlain is the receive side alone under datagrams that arrive one by
// one (not coalesced: the sender here is this package's Bind without GSO, for both),
// where StdNetBind with GRO reads only 2 per recvmmsg.
func BenchmarkReceivePlain(b *testing.B) {
	for _, kind := range []string{"stt", "std"} {
		b.Run(kind+"/1452B", func(b *testing.B) {
			var rx conn.Bind
			if kind == "stt" {
				rx = New()
			}
			benchLoop(b, newLoop(b, newBind(options{noGSO: true}), rx, 1452), 1452)
		})
	}
}

func benchLoop(b *testing.B, l *loop, size int) {
	const batch = 64
	for range 10 {
		l.once(b, batch)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		l.once(b, min(batch, b.N-done))
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "datagrams/s")
}
