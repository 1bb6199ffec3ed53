package impair

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitTimeout bounds every wait for a counter; it is a failure bound, not a measurement.
const waitTimeout = 10 * time.Second

// lab is a relay on loopback between two UDP sockets, a and b.
type lab struct {
	t    *testing.T
	r    *Relay
	a, b *net.UDPConn
	recv chan []byte                    // datagrams b received
	recA chan []byte                    // datagrams a received
	from atomic.Pointer[netip.AddrPort] // where b's latest datagram came from
}

func newLab(t *testing.T, cfg Config) *lab {
	t.Helper()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadBuffer(4 << 20)
		t.Cleanup(func() { c.Close() })
		return c
	}
	l := &lab{t: t, a: listen(), b: listen(), recv: make(chan []byte, 100000), recA: make(chan []byte, 100000)}
	cfg.ListenA, cfg.ListenB = "127.0.0.1:0", "127.0.0.1:0"
	cfg.PeerB = l.b.LocalAddr().String()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	l.r = r
	var wg sync.WaitGroup
	for _, x := range []struct {
		c    *net.UDPConn
		ch   chan []byte
		from *atomic.Pointer[netip.AddrPort]
	}{{l.a, l.recA, nil}, {l.b, l.recv, &l.from}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			for {
				n, from, err := x.c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if x.from != nil {
					x.from.Store(&from)
				}
				x.ch <- append([]byte(nil), buf[:n]...)
			}
		}()
	}
	t.Cleanup(func() { l.a.Close(); l.b.Close(); wg.Wait() })
	return l
}

// send sends payloads from a to the relay, waiting every 100 datagrams until the relay
// has read them, so that no socket buffer overflows: every loss is the relay's.
func (l *lab) send(payloads ...[]byte) {
	l.t.Helper()
	base := l.r.Stats().A2B.Received
	for i, p := range payloads {
		if _, err := l.a.WriteToUDPAddrPort(p, l.r.AddrA()); err != nil {
			l.t.Fatal(err)
		}
		if (i+1)%100 == 0 || i == len(payloads)-1 {
			want := base + uint64(i+1)
			l.wait(fmt.Sprintf("relay received %d", want), func(s Stats) bool { return s.A2B.Received >= want })
		}
	}
}

// wait polls the relay's counters until cond holds.
func (l *lab) wait(what string, cond func(Stats) bool) Stats {
	l.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		s := l.r.Stats()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("waiting for %s: %+v", what, s)
		}
		time.Sleep(delay)
	}
}

// waitSent waits until the relay has counted at least a2b and b2a datagrams as sent.
// The counters of a batch are updated after its last write returns, so the receiver can
// hold a datagram before the relay has counted it; a test that checks Sent (or the hold
// times, recorded with it) after collecting waits here first.
func (l *lab) waitSent(a2b, b2a uint64) Stats {
	l.t.Helper()
	return l.wait(fmt.Sprintf("relay counted %d sent a2b, %d b2a", a2b, b2a), func(s Stats) bool {
		return s.A2B.Sent >= a2b && s.B2A.Sent >= b2a
	})
}

// collect reads n datagrams that b received.
func (l *lab) collect(n int) [][]byte {
	l.t.Helper()
	out := make([][]byte, 0, n)
	timeout := time.After(waitTimeout)
	for len(out) < n {
		select {
		case p := <-l.recv:
			out = append(out, p)
		case <-timeout:
			l.t.Fatalf("b received %d datagrams, want %d; relay %+v", len(out), n, l.r.Stats())
		}
	}
	return out
}

// noMore checks that b has nothing more once the relay has sent all it will.
func (l *lab) noMore() {
	l.t.Helper()
	select {
	case p := <-l.recv:
		l.t.Fatalf("b received an unexpected datagram %x", p)
	default:
	}
}

// numbered returns n datagrams of size bytes, each starting with its index.
func numbered(n, size int) [][]byte {
	ps := make([][]byte, n)
	for i := range ps {
		p := make([]byte, size)
		binary.BigEndian.PutUint32(p, uint32(i))
		for j := 4; j < size; j++ {
			p[j] = byte(i + j)
		}
		ps[i] = p
	}
	return ps
}

func TestForwardsBothWaysUnchanged(t *testing.T) {
	l := newLab(t, Config{Seed: 1})
	ps := numbered(300, 1200)
	l.send(ps...)
	got := l.collect(len(ps))
	for i := range ps {
		if !bytes.Equal(got[i], ps[i]) {
			t.Fatalf("datagram %d changed or out of order", i)
		}
	}
	// b answers to the relay's B side; the relay sends it to a, the address it learned.
	if _, err := l.b.WriteToUDPAddrPort([]byte("reply"), l.r.AddrB()); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-l.recA:
		if string(p) != "reply" {
			t.Fatalf("a got %q", p)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("no reply at a: %+v", l.r.Stats())
	}
	// The relay counts a batch once the writes returned, so a datagram may be received
	// before it is counted as sent: wait for the counters, then check them exactly.
	s := l.waitSent(300, 1)
	if s.A2B.Received != 300 || s.A2B.Sent != 300 || s.B2A.Sent != 1 || s.A2B.SentBytes != 300*1200 {
		t.Fatalf("counters %+v", s)
	}
}

func TestNoPeerYet(t *testing.T) {
	l := newLab(t, Config{})
	// Nobody on side A has spoken yet: the relay has nowhere to send b's datagram.
	if _, err := l.b.WriteToUDPAddrPort([]byte("early"), l.r.AddrB()); err != nil {
		t.Fatal(err)
	}
	l.wait("no peer", func(s Stats) bool { return s.B2A.NoPeer == 1 })
}

func TestLossRate(t *testing.T) {
	const n = 10000
	l := newLab(t, Config{Seed: 42})
	if err := l.r.SetA2B(Impairment{Loss: 0.05}); err != nil {
		t.Fatal(err)
	}
	l.send(numbered(n, 64)...)
	s := l.wait("all sent or lost", func(s Stats) bool { return s.A2B.Sent+s.A2B.Lost == n })
	// 5% of 10k: mean 500, standard deviation about 22; the seed makes it exact.
	if s.A2B.Lost < 400 || s.A2B.Lost > 600 {
		t.Fatalf("lost %d of %d, want 5%% ± 1%%", s.A2B.Lost, n)
	}
	got := l.collect(int(s.A2B.Sent))
	seen := map[uint32]bool{}
	for _, p := range got {
		seen[binary.BigEndian.Uint32(p)] = true
	}
	if len(seen) != int(s.A2B.Sent) {
		t.Fatalf("b got %d distinct datagrams, relay sent %d", len(seen), s.A2B.Sent)
	}
	// Same seed, same decisions.
	l2 := newLab(t, Config{Seed: 42})
	_ = l2.r.SetA2B(Impairment{Loss: 0.05})
	l2.send(numbered(n, 64)...)
	s2 := l2.wait("all sent or lost", func(s Stats) bool { return s.A2B.Sent+s.A2B.Lost == n })
	if s2.A2B.Lost != s.A2B.Lost {
		t.Errorf("same seed lost %d, then %d", s.A2B.Lost, s2.A2B.Lost)
	}
	// The other direction was not touched.
	if im := l.r.Impairment(BtoA); im != (Impairment{}) {
		t.Errorf("b2a impairment %v", im)
	}
}

func TestReorderReorders(t *testing.T) {
	const n = 1000
	l := newLab(t, Config{Seed: 7})
	_ = l.r.SetA2B(Impairment{Reorder: 0.1, ReorderDepth: 2})
	l.send(numbered(n, 100)...)
	got := l.collect(n)
	s := l.r.Stats().A2B
	seen := map[uint32]bool{}
	inversions := 0
	var maxSeen uint32
	for i, p := range got {
		id := binary.BigEndian.Uint32(p)
		seen[id] = true
		if i > 0 && id < maxSeen {
			inversions++
		}
		maxSeen = max(maxSeen, id)
	}
	if len(seen) != n {
		t.Fatalf("b got %d distinct datagrams of %d", len(seen), n)
	}
	if s.Reordered < 50 || s.Reordered > 150 {
		t.Errorf("reordered %d of %d, want about 10%%", s.Reordered, n)
	}
	// Every held datagram arrives after a later one, except when traffic paused at
	// the moment it was held (the hold times out).
	if inversions < int(s.Reordered)/2 {
		t.Errorf("only %d datagrams arrived after a later one; relay held back %d", inversions, s.Reordered)
	}
	t.Logf("held back %d, arrived out of order %d", s.Reordered, inversions)
	l.noMore()
}

func TestDuplicateDuplicates(t *testing.T) {
	l := newLab(t, Config{Seed: 3})
	_ = l.r.SetA2B(Impairment{Duplicate: 1})
	ps := numbered(200, 300)
	l.send(ps...)
	got := l.collect(400)
	count := map[uint32]int{}
	for _, p := range got {
		id := binary.BigEndian.Uint32(p)
		if !bytes.Equal(p, ps[id]) {
			t.Fatalf("duplicate of %d differs", id)
		}
		count[id]++
	}
	for i := range ps {
		if count[uint32(i)] != 2 {
			t.Fatalf("datagram %d arrived %d times, want 2", i, count[uint32(i)])
		}
	}
	s := l.wait("sent", func(s Stats) bool { return s.A2B.Sent == 400 })
	if s.A2B.Duplicated != 200 {
		t.Errorf("duplicated %d, want 200", s.A2B.Duplicated)
	}

	// A fraction: the count matches what b gets.
	_ = l.r.SetA2B(Impairment{Duplicate: 0.25})
	l.send(numbered(2000, 50)...)
	s = l.wait("sent", func(s Stats) bool { return s.A2B.Sent == 400+2000+s.A2B.Duplicated-200 })
	d := s.A2B.Duplicated - 200
	if d < 400 || d > 600 {
		t.Errorf("duplicated %d of 2000, want about 25%%", d)
	}
	l.collect(int(2000 + d))
	l.noMore()
}

func TestCorruptChangesOneByte(t *testing.T) {
	l := newLab(t, Config{Seed: 11})
	_ = l.r.SetA2B(Impairment{Corrupt: 1})
	// One at a time, so that a corrupted index cannot confuse the pairing.
	for i, p := range numbered(300, 180) {
		l.send(p)
		got := l.collect(1)[0]
		if len(got) != len(p) {
			t.Fatalf("datagram %d: length %d, want %d", i, len(got), len(p))
		}
		diff := 0
		for j := range p {
			if p[j] != got[j] {
				diff++
			}
		}
		if diff != 1 {
			t.Fatalf("datagram %d: %d bytes differ, want exactly 1", i, diff)
		}
	}
	if s := l.r.Stats().A2B; s.Corrupted != 300 {
		t.Errorf("corrupted %d, want 300", s.Corrupted)
	}
}

func TestBlackHoleThenRecovery(t *testing.T) {
	l := newLab(t, Config{})
	_ = l.r.Set(Impairment{BlackHole: true})
	l.send(numbered(500, 100)...)
	if s := l.r.Stats().A2B; s.BlackHoled != 500 || s.Sent != 0 {
		t.Fatalf("black hole: %+v", s)
	}
	l.noMore()
	// Changed while running: the next datagrams pass.
	_ = l.r.Set(Impairment{})
	l.send([]byte("after"))
	if got := l.collect(1)[0]; string(got) != "after" {
		t.Fatalf("got %q", got)
	}
}

func TestDelayApplied(t *testing.T) {
	l := newLab(t, Config{Seed: 5})
	const delay, jitter = 40 * time.Millisecond, 20 * time.Millisecond
	_ = l.r.SetA2B(Impairment{Delay: delay, Jitter: jitter})
	l.send(numbered(200, 100)...)
	l.collect(200)
	s := l.waitSent(200, 0).A2B
	if s.Delayed != 200 {
		t.Errorf("delayed %d, want 200", s.Delayed)
	}
	// A lower bound only: a slow machine may hold datagrams longer, never shorter.
	if s.MinHold < delay {
		t.Errorf("a datagram left after %v, before the %v delay", s.MinHold, delay)
	}
	t.Logf("hold %v .. %v", s.MinHold, s.MaxHold)
}

func TestQueueBounded(t *testing.T) {
	l := newLab(t, Config{MaxQueue: 10})
	_ = l.r.SetA2B(Impairment{Delay: time.Hour})
	l.send(numbered(50, 100)...)
	if s := l.r.Stats().A2B; s.QueueDropped != 40 || s.Delayed != 10 {
		t.Fatalf("with a 10-datagram queue: %+v", s)
	}
}

func TestShapeTokenBucket(t *testing.T) {
	d := &direction{relay: &Relay{}}
	im := Impairment{Rate: 1000, Burst: 1000, QueueBytes: 1000}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at   time.Duration
		size int
		want time.Duration // departure after t0; -1 = dropped
	}{
		{0, 1000, 0},                            // the full bucket
		{0, 500, 500 * time.Millisecond},        // waits for tokens
		{0, 500, time.Second},                   // behind it
		{0, 500, -1},                            // backlog would pass 1000 bytes
		{2 * time.Second, 500, 2 * time.Second}, // refilled meanwhile: 1000 - 1000 + 2000 = 1000 tokens
		{2 * time.Second, 500, 2 * time.Second},
		{2 * time.Second, 250, 2*time.Second + 250*time.Millisecond},
	}
	for i, s := range steps {
		dep, ok := d.shape(im, s.size, t0.Add(s.at))
		if s.want < 0 {
			if ok {
				t.Errorf("step %d: departs at %v, want dropped", i, dep.Sub(t0))
			}
			continue
		}
		if !ok || dep.Sub(t0) != s.want {
			t.Errorf("step %d: departs at %v (ok %v), want %v", i, dep.Sub(t0), ok, s.want)
		}
	}
	if d.stats.RateDropped != 1 || d.stats.RateDelayed != 3 {
		t.Errorf("counters %+v", d.stats)
	}
}

func TestRateLimitHolds(t *testing.T) {
	l := newLab(t, Config{})
	const rate, burst, queue = 200_000, 10_000, 20_000
	_ = l.r.SetA2B(Impairment{Rate: rate, Burst: burst, QueueBytes: queue})
	start := time.Now()
	l.send(numbered(300, 1000)...) // 300 kB offered at once: more than burst + backlog
	s := l.wait("drained", func(s Stats) bool { return s.A2B.Sent+s.A2B.RateDropped == 300 })
	el := time.Since(start)
	if s.A2B.RateDropped == 0 {
		t.Fatalf("nothing dropped: %+v", s.A2B)
	}
	// An upper bound, which a slow machine can only make looser.
	if limit := burst + queue + rate*el.Seconds(); float64(s.A2B.SentBytes) > limit {
		t.Errorf("sent %d bytes in %v, more than burst + backlog + rate allow (%.0f)", s.A2B.SentBytes, el, limit)
	}
	l.collect(int(s.A2B.Sent))
}

func TestRebindChangesSourceAddress(t *testing.T) {
	l := newLab(t, Config{})
	l.send([]byte("one"))
	l.collect(1)
	old := l.r.AddrB()
	if err := l.r.Rebind(SideB, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if l.r.AddrB() == old {
		t.Fatal("same address after rebind")
	}
	l.send([]byte("two"))
	if got := string(l.collect(1)[0]); got != "two" {
		t.Fatalf("got %q", got)
	}
	if from := *l.from.Load(); from != l.r.AddrB() {
		t.Fatalf("b saw the datagram come from %v, want the new address %v", from, l.r.AddrB())
	}
	// b answers to the new address, and a receives it.
	if _, err := l.b.WriteToUDPAddrPort([]byte("back"), l.r.AddrB()); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-l.recA:
		if string(p) != "back" {
			t.Fatalf("a got %q", p)
		}
	case <-time.After(waitTimeout):
		t.Fatal("nothing came back through the new socket")
	}
}

func TestCapture(t *testing.T) {
	l := newLab(t, Config{Capture: 3})
	l.send([]byte("1"), []byte("2"), []byte("3"), []byte("4"))
	got := l.r.Captured(AtoB)
	if len(got) != 3 || string(got[0]) != "2" || string(got[2]) != "4" {
		t.Fatalf("captured %q", got)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	r, err := New(Config{ListenA: "127.0.0.1:0", ListenB: "127.0.0.1:0", PeerB: "127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Set(Impairment{Delay: time.Hour})
	c, err := net.Dial("udp", r.AddrA().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for r.Stats().A2B.Delayed == 0 {
		if ctx.Err() != nil {
			t.Fatal("the datagram was never held, so Close is not tested with one in the queue")
		}
		time.Sleep(time.Millisecond)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Rebind(SideA, "127.0.0.1:0"); err == nil {
		t.Fatal("rebind after close succeeded")
	}
}

func TestParseImpairment(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Impairment
	}{
		{"", Impairment{}},
		{"none", Impairment{}},
		{"loss=5% delay=20ms jitter=5ms", Impairment{Loss: 0.05, Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}},
		{"reorder=0.02 reorder-depth=3 dup=1% corrupt=0.001", Impairment{Reorder: 0.02, ReorderDepth: 3, Duplicate: 0.01, Corrupt: 0.001}},
		{"rate=1M burst=30k queue=64k blackhole", Impairment{Rate: 1e6, Burst: 30e3, QueueBytes: 64e3, BlackHole: true}},
	} {
		got, err := ParseImpairment(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseImpairment(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		again, err := ParseImpairment(got.String())
		if err != nil || again != got {
			t.Errorf("round trip of %q through %q: %+v, %v", c.in, got.String(), again, err)
		}
	}
	for _, bad := range []string{"loss=2", "loss=-1%", "delay=-1s", "rate=x", "frob=1", "loss", "rate=-5"} {
		if _, err := ParseImpairment(bad); err == nil {
			t.Errorf("ParseImpairment(%q) accepted", bad)
		}
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Config{ListenA: "127.0.0.1:0", ListenB: "127.0.0.1:0", PeerA: "nonsense"}); err == nil {
		t.Error("bad peer accepted")
	}
	if _, err := New(Config{ListenA: "256.0.0.1:0", ListenB: "127.0.0.1:0"}); err == nil {
		t.Error("bad listen address accepted")
	}
}

func TestSetDropLosesChosenDatagrams(t *testing.T) {
	l := newLab(t, Config{})
	first := true
	l.r.SetDrop(AtoB, func(b []byte) bool {
		if first && b[0] == 'x' {
			first = false
			return true
		}
		return false
	})
	l.send([]byte("a"), []byte("x1"), []byte("b"), []byte("x2"))
	got := l.collect(3)
	if string(got[0]) != "a" || string(got[1]) != "b" || string(got[2]) != "x2" {
		t.Fatalf("got %q", got)
	}
	if s := l.waitSent(3, 0).A2B; s.Filtered != 1 || s.Sent != 3 {
		t.Fatalf("counters %+v", s)
	}
	l.r.SetDrop(AtoB, nil)
	l.send([]byte("x3"))
	if got := l.collect(1)[0]; string(got) != "x3" {
		t.Fatalf("got %q", got)
	}
}
