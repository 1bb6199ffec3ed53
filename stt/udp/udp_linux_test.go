package udp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// open opens a Bind with options o on a port the kernel picks and closes it when the
// test ends.
func open(t testing.TB, o options) (*Bind, []conn.ReceiveFunc, uint16) {
	t.Helper()
	b := newBind(o)
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b, fns, port
}

// has6 says whether the host can do IPv6 on loopback.
func has6(t testing.TB, b *Bind) bool {
	t.Helper()
	if b.v6.Load() == nil {
		return false
	}
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		return false
	}
	c.Close()
	return true
}

type datagram struct {
	data []byte
	ep   conn.Endpoint
}

// collector runs a receive function in the background for the rest of the test.
type collector struct {
	ch   chan datagram
	errc chan error
}

func collect(t testing.TB, fn conn.ReceiveFunc, bufSize int) *collector {
	t.Helper()
	c := &collector{ch: make(chan datagram, 1<<16), errc: make(chan error, 1)}
	go func() {
		bufs := make([][]byte, BatchSize)
		for i := range bufs {
			bufs[i] = make([]byte, bufSize)
		}
		sizes := make([]int, BatchSize)
		eps := make([]conn.Endpoint, BatchSize)
		for {
			n, err := fn(bufs, sizes, eps)
			if err != nil {
				c.errc <- err
				return
			}
			for i := range n {
				if sizes[i] == 0 {
					c.errc <- fmt.Errorf("receive returned a size of 0 at %d of %d", i, n)
					return
				}
				c.ch <- datagram{append([]byte(nil), bufs[i][:sizes[i]]...), eps[i]}
			}
		}
	}()
	return c
}

func (c *collector) next(t testing.TB) datagram {
	t.Helper()
	select {
	case d := <-c.ch:
		return d
	case err := <-c.errc:
		t.Fatalf("receive: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for a datagram")
	}
	return datagram{}
}

// none checks that nothing more arrives within d.
func (c *collector) none(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case g := <-c.ch:
		t.Fatalf("unexpected datagram of %d bytes: %q", len(g.data), g.data[:min(len(g.data), 16)])
	case err := <-c.errc:
		t.Fatalf("receive: %v", err)
	case <-time.After(d):
	}
}

func endpoint(t testing.TB, b *Bind, s string) conn.Endpoint {
	t.Helper()
	ep, err := b.ParseEndpoint(s)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

// payload is datagram i of a test: size bytes that name i.
func payload(i, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		b[j] = byte(i*7 + j)
	}
	if size >= 4 {
		copy(b, fmt.Sprintf("%04d", i%10000))
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	for _, fam := range []string{"v4", "v6"} {
		t.Run(fam, func(t *testing.T) {
			a, _, portA := open(t, options{})
			b, fnsB, portB := open(t, options{})
			lo := "127.0.0.1"
			fn := fnsB[0]
			if fam == "v6" {
				if !has6(t, b) {
					t.Skip("no IPv6")
				}
				lo, fn = "::1", fnsB[1]
			}
			c := collect(t, fn, 65535)
			ep := endpoint(t, a, net.JoinHostPort(lo, strconv.Itoa(int(portB))))
			sizes := []int{1, 100, 1452, 9000, 65000}
			var bufs [][]byte
			for i, n := range sizes {
				bufs = append(bufs, payload(i, n))
			}
			if err := a.Send(bufs, ep); err != nil {
				t.Fatal(err)
			}
			want := netip.AddrPortFrom(netip.MustParseAddr(lo), portA)
			var back conn.Endpoint
			for i := range sizes {
				g := c.next(t)
				if !bytes.Equal(g.data, bufs[i]) {
					t.Fatalf("datagram %d: got %d bytes, want %d", i, len(g.data), len(bufs[i]))
				}
				e := g.ep.(*Endpoint)
				if e.AddrPort() != want || e.DstToString() != want.String() {
					t.Fatalf("datagram %d from %v, want %v", i, e.AddrPort(), want)
				}
				if e.SrcIP() != want.Addr() {
					t.Fatalf("datagram %d: sticky source %v, want %v", i, e.SrcIP(), want.Addr())
				}
				back = g.ep
			}
			// And back, to the endpoint the receive path made.
			cA := collect(t, map[bool]func() conn.ReceiveFunc{
				false: func() conn.ReceiveFunc { return a.v4.Load().rx.receiveIPv4 },
				true:  func() conn.ReceiveFunc { return a.v6.Load().rx.receiveIPv6 },
			}[fam == "v6"](), 65535)
			if err := b.Send([][]byte{[]byte("pong")}, back); err != nil {
				t.Fatal(err)
			}
			if g := cA.next(t); string(g.data) != "pong" || g.ep.(*Endpoint).AddrPort().Port() != portB {
				t.Fatalf("reply %q from %v", g.data, g.ep.DstToString())
			}
		})
	}
}

// TestGSOBatch: many equal datagrams and a short tail, sent as one coalesced message,
// arrive as the same datagrams in the same order, whether the receiver has GRO (one
// coalesced datagram to split) or not (the kernel splits).
func TestGSOBatch(t *testing.T) {
	for _, tc := range []struct {
		name       string
		send, recv options
	}{
		{"gso-gro", options{}, options{}},
		{"gso-nogro", options{}, options{noGRO: true}},
		{"nogso-gro", options{noGSO: true}, options{}},
		{"nogso-nogro", options{noGSO: true}, options{noGRO: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _, _ := open(t, tc.send)
			b, fnsB, portB := open(t, tc.recv)
			c := collect(t, fnsB[0], 65535)
			ep := endpoint(t, a, fmt.Sprintf("127.0.0.1:%d", portB))
			var bufs [][]byte
			for i := range 127 {
				bufs = append(bufs, payload(i, 1200))
			}
			bufs = append(bufs, payload(127, 300))
			for round := range 3 {
				if err := a.Send(bufs, ep); err != nil {
					t.Fatal(err)
				}
				for i := range bufs {
					if g := c.next(t); !bytes.Equal(g.data, bufs[i]) {
						t.Fatalf("round %d, datagram %d: got %d bytes %q, want %d bytes %q", round, i, len(g.data), g.data[:4], len(bufs[i]), bufs[i][:4])
					}
				}
			}
			c.none(t, 20*time.Millisecond)
			sa, sb := a.v4.Load(), b.v4.Load()
			t.Logf("sender: GSO %v, %d coalesced messages; receiver: GRO %v, %d coalesced datagrams", sa.gso.Load(), sa.gsoMsgs.Load(), sb.gro, sb.groMsgs.Load())
			if !tc.send.noGSO && sa.gso.Load() && sa.gsoMsgs.Load() == 0 {
				t.Error("GSO is on but no coalesced message went out")
			}
			if !tc.send.noGSO && !tc.recv.noGRO && sb.gro && sb.groMsgs.Load() == 0 {
				t.Error("GRO is on and the sender coalesced, but no coalesced datagram came in")
			}
		})
	}
}

// TestEmptyDatagramCostsNothing: empty and 1-byte datagrams between real ones, and
// between coalesced ones, queued so that they share recvmmsg batches, cost no other
// datagram. Empty ones are never delivered (dropped by the filter, or skipped without
// it); 1-byte ones are delivered, as they are (the node counts them as malformed).
func TestEmptyDatagramCostsNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    options
	}{
		{"filter-gro", options{}},
		{"filter-nogro", options{noGRO: true}},
		{"nofilter-gro", options{noFilter: true}},
		{"nofilter-nogro", options{noFilter: true, noGRO: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _, _ := open(t, options{})
			b, fnsB, portB := open(t, tc.o)
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portB)
			ep := endpoint(t, a, dst.String())
			plain, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer plain.Close()
			drops0 := socketDrops(t, "udp", portB)

			// Queue everything first, so that the receiver reads it in few batches.
			var want [][]byte
			const rounds = 100
			coalesced := make([][]byte, 8)
			for r := range rounds {
				real1, real2 := payload(2*r, 200), payload(2*r+1, 1000)
				for _, m := range [][]byte{real1, {}, real2, {0xee}} {
					if _, err := plain.WriteToUDPAddrPort(m, dst); err != nil {
						t.Fatal(err)
					}
				}
				want = append(want, real1, real2, []byte{0xee})
				if r%10 == 0 {
					for i := range coalesced {
						coalesced[i] = payload(10000+r*10+i, 700)
					}
					if err := a.Send(coalesced, ep); err != nil {
						t.Fatal(err)
					}
					if _, err := plain.WriteToUDPAddrPort(nil, dst); err != nil {
						t.Fatal(err)
					}
					for _, m := range coalesced {
						want = append(want, m)
					}
				}
			}
			// Datagrams from two sockets: compare per source, in order.
			c := collect(t, fnsB[0], 65535)
			var gotPlain, gotBind [][]byte
			for range want {
				g := c.next(t)
				if g.ep.(*Endpoint).AddrPort().Port() == uint16(plain.LocalAddr().(*net.UDPAddr).Port) {
					gotPlain = append(gotPlain, g.data)
				} else {
					gotBind = append(gotBind, g.data)
				}
			}
			c.none(t, 50*time.Millisecond)
			var wantPlain, wantBind [][]byte
			for _, m := range want {
				if len(m) == 700 {
					wantBind = append(wantBind, m)
				} else {
					wantPlain = append(wantPlain, m)
				}
			}
			if !equalAll(gotPlain, wantPlain) || !equalAll(gotBind, wantBind) {
				t.Fatalf("got %d+%d datagrams, want %d+%d, or not the same ones in order", len(gotPlain), len(gotBind), len(wantPlain), len(wantBind))
			}
			empties := rounds + rounds/10
			s := b.v4.Load()
			dropped := socketDrops(t, "udp", portB) - drops0
			t.Logf("GRO %v: %d datagrams delivered; %d empty: %d skipped by the receive path, %d dropped by the kernel",
				s.gro, len(want), empties, s.skipped.Load(), dropped)
			if tc.o.noFilter {
				if got := s.skipped.Load(); got != uint64(empties) {
					t.Errorf("receive path skipped %d datagrams, want the %d empty ones", got, empties)
				}
			} else {
				if got := s.skipped.Load(); got != 0 {
					t.Errorf("receive path skipped %d datagrams: the filter let empty ones through", got)
				}
				if dropped != uint64(empties) {
					t.Errorf("the kernel counted %d drops, want the %d empty datagrams", dropped, empties)
				}
			}
		})
	}
}

func equalAll(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// socketDrops reads the kernel's drop counter of the UDP socket bound to port, from
// /proc/net/udp or udp6 (the last column).
func socketDrops(t testing.TB, file string, port uint16) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/" + file)
	if err != nil {
		t.Fatal(err)
	}
	suffix := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 13 || !strings.HasSuffix(f[1], suffix) {
			continue
		}
		n, err := strconv.ParseUint(f[len(f)-1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Fatalf("no socket on port %d in /proc/net/%s", port, file)
	return 0
}

// TestTruncatedSkipped: a datagram longer than the caller's buffer is skipped, without
// a trace in what the receive function returns, and costs no other datagram.
func TestTruncatedSkipped(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    options
	}{{"gro", options{}}, {"nogro", options{noGRO: true}}} {
		t.Run(tc.name, func(t *testing.T) {
			a, _, _ := open(t, options{})
			b, fnsB, portB := open(t, tc.o)
			ep := endpoint(t, a, fmt.Sprintf("127.0.0.1:%d", portB))
			big := make([][]byte, 4)
			for i := range big {
				big[i] = payload(100+i, 600) // coalesced: one message of 4 segments too long each
			}
			var want [][]byte
			for i := range 20 {
				small, long := payload(i, 50), payload(50+i, 700)
				if err := a.Send([][]byte{small}, ep); err != nil {
					t.Fatal(err)
				}
				if err := a.Send([][]byte{long}, ep); err != nil {
					t.Fatal(err)
				}
				if err := a.Send(big, ep); err != nil {
					t.Fatal(err)
				}
				want = append(want, small)
			}
			last := payload(99, 500)
			if err := a.Send([][]byte{last}, ep); err != nil {
				t.Fatal(err)
			}
			want = append(want, last)
			c := collect(t, fnsB[0], 512)
			for i := range want {
				if g := c.next(t); !bytes.Equal(g.data, want[i]) {
					t.Fatalf("datagram %d: got %d bytes, want %d", i, len(g.data), len(want[i]))
				}
			}
			c.none(t, 20*time.Millisecond)
			if got := b.v4.Load().skipped.Load(); got != 20+20*4 {
				t.Errorf("skipped %d datagrams, want %d", got, 20+20*4)
			}
		})
	}
}

func TestCloseUnblocksReceivers(t *testing.T) {
	b := newBind(options{})
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, len(fns))
	for _, fn := range fns {
		go func() {
			bufs, sizes, eps := [][]byte{make([]byte, 1500)}, make([]int, 1), make([]conn.Endpoint, 1)
			_, err := fn(bufs, sizes, eps)
			errs <- err
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for range fns {
		select {
		case err := <-errs:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("receive returned %v, want net.ErrClosed", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("Close did not unblock a receiver")
		}
	}
	if _, err := fns[0]([][]byte{make([]byte, 10)}, make([]int, 1), make([]conn.Endpoint, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("receive after Close returned %v, want net.ErrClosed", err)
	}
	if err := b.Send([][]byte{{1}}, endpoint(t, b, "127.0.0.1:9")); err == nil {
		t.Fatal("Send after Close succeeded")
	}
	// A closed Bind opens again.
	fns, _, err = b.Open(0)
	if err != nil || len(fns) == 0 {
		t.Fatalf("reopen: %v", err)
	}
	_ = b.Close()
}

func TestOpen(t *testing.T) {
	b, fns, port := open(t, options{})
	if port == 0 {
		t.Fatal("port 0")
	}
	if b.v6.Load() != nil && len(fns) != 2 || b.v6.Load() == nil && len(fns) != 1 {
		t.Fatalf("%d receive functions", len(fns))
	}
	if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Fatalf("second Open: %v", err)
	}
	if got := conn.ReceiveFunc(fns[0]).PrettyName(); got != "v4" {
		t.Errorf("PrettyName %q, want v4", got)
	}
	// Both families on the port, the IPv6 socket IPv6-only.
	for _, s := range []*socket{b.v4.Load(), b.v6.Load()} {
		if s == nil {
			continue
		}
		if p := s.conn.LocalAddr().(*net.UDPAddr).Port; p != int(port) {
			t.Errorf("socket on port %d, want %d", p, port)
		}
		if s.is6 {
			if v := sockopt(t, s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 1 {
				t.Errorf("IPV6_V6ONLY = %d", v)
			}
		}
		if v := sockopt(t, s, unix.SOL_SOCKET, unix.SO_RCVBUF); v < 2*socketBuffer && os.Geteuid() == 0 {
			t.Errorf("SO_RCVBUF = %d, want %d (forced, as root)", v, 2*socketBuffer)
		}
	}
	// A given port.
	b2 := newBind(options{})
	free, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	want := uint16(free.LocalAddr().(*net.UDPAddr).Port)
	free.Close()
	if _, got, err := b2.Open(want); err != nil || got != want {
		t.Fatalf("Open(%d) = %d, %v", want, got, err)
	}
	_ = b2.Close()
	// IPv4 alone.
	_, fns4, _ := open(t, options{noV6: true})
	if len(fns4) != 1 {
		t.Fatalf("IPv4 only: %d receive functions", len(fns4))
	}
	// A port taken on IPv4 is an error.
	taken, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if _, _, err := newBind(options{}).Open(uint16(taken.LocalAddr().(*net.UDPAddr).Port)); err == nil {
		t.Fatal("Open on a taken port succeeded")
	}
}

func sockopt(t testing.TB, s *socket, level, opt int) int {
	t.Helper()
	var v int
	var err error
	if cerr := s.rc.Control(func(fd uintptr) { v, err = unix.GetsockoptInt(int(fd), level, opt) }); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSetMark(t *testing.T) {
	b, _, _ := open(t, options{})
	if err := b.SetMark(0x5a5a); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*socket{b.v4.Load(), b.v6.Load()} {
		if s == nil {
			continue
		}
		if got := sockopt(t, s, unix.SOL_SOCKET, unix.SO_MARK); got != 0x5a5a {
			t.Errorf("SO_MARK = %#x, want 0x5a5a", got)
		}
	}
	// A mark set before Open applies to the sockets Open makes.
	b2 := newBind(options{})
	if err := b2.SetMark(7); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b2.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if got := sockopt(t, b2.v4.Load(), unix.SOL_SOCKET, unix.SO_MARK); got != 7 {
		t.Errorf("SO_MARK after Open = %d, want 7", got)
	}
}

func TestParseEndpoint(t *testing.T) {
	b := newBind(options{})
	for _, tc := range []struct {
		in, want string
		scope    uint32
	}{
		{"192.0.2.1:51900", "192.0.2.1:51900", 0},
		{"[2001:db8::1]:1", "[2001:db8::1]:1", 0},
		{"[::ffff:192.0.2.1]:7", "192.0.2.1:7", 0},
		{"[fe80::1%1]:7", "[fe80::1%1]:7", 1},
		// An interface name becomes its number, as in endpoints the receive path makes.
		{"[fe80::1%lo]:7", "[fe80::1%1]:7", 1},
	} {
		ep, err := b.ParseEndpoint(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		e := ep.(*Endpoint)
		if e.DstToString() != tc.want || e.scope != tc.scope || e.SrcIP().IsValid() {
			t.Errorf("%s: %s scope %d src %v", tc.in, e.DstToString(), e.scope, e.SrcIP())
		}
	}
	for _, bad := range []string{"", "192.0.2.1", "host:1", "[fe80::1%nosuchif0]:1"} {
		if _, err := b.ParseEndpoint(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestStickySource: a reply leaves from the local address the peer's datagram was sent
// to, not the one routing would pick; ClearSrc gives the choice back to routing.
func TestStickySource(t *testing.T) {
	b, fns, port := open(t, options{})
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c := collect(t, fns[0], 1500)
	// 127.0.0.2 is ours too (all of 127/8 is), but routing answers 127.0.0.1 from
	// 127.0.0.1.
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)
	if _, err := peer.WriteToUDPAddrPort([]byte("ping"), to); err != nil {
		t.Fatal(err)
	}
	g := c.next(t)
	e := g.ep.(*Endpoint)
	if e.SrcIP() != to.Addr() || e.SrcToString() != "127.0.0.2" {
		t.Fatalf("sticky source %v, want %v", e.SrcIP(), to.Addr())
	}
	reply := func() netip.AddrPort {
		t.Helper()
		if err := b.Send([][]byte{[]byte("pong")}, e); err != nil {
			t.Fatal(err)
		}
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 100)
		n, from, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "pong" {
			t.Fatalf("reply: %q, %v", buf[:n], err)
		}
		return from
	}
	if from := reply(); from != to {
		t.Fatalf("reply from %v, want %v", from, to)
	}
	// The same pair gives the same endpoint.
	if _, err := peer.WriteToUDPAddrPort([]byte("ping"), to); err != nil {
		t.Fatal(err)
	}
	if g2 := c.next(t); g2.ep != g.ep {
		t.Fatal("a second datagram of the same pair got another endpoint")
	}
	e.ClearSrc()
	if e.SrcIP().IsValid() {
		t.Fatal("ClearSrc kept the source")
	}
	if from := reply(); from.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("reply after ClearSrc from %v, want 127.0.0.1 (routing's choice)", from)
	}
	// A cleared endpoint is not handed out again: the next datagram gets a new one,
	// with its source.
	if _, err := peer.WriteToUDPAddrPort([]byte("ping"), to); err != nil {
		t.Fatal(err)
	}
	if g3 := c.next(t); g3.ep == g.ep || g3.ep.(*Endpoint).SrcIP() != to.Addr() {
		t.Fatalf("after ClearSrc: same endpoint %v, source %v", g3.ep == g.ep, g3.ep.(*Endpoint).SrcIP())
	}

	// A source address the host does not have: the endpoint forgets it and the
	// datagram goes out anyway.
	gone := &Endpoint{dst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(peer.LocalAddr().(*net.UDPAddr).Port)),
		src: netip.MustParseAddr("192.0.2.77")}
	if err := b.Send([][]byte{[]byte("pong")}, gone); err != nil {
		t.Fatalf("Send from a source address the host lacks: %v", err)
	}
	if gone.SrcIP().IsValid() {
		t.Error("the endpoint kept a source address the host lacks")
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	if n, _, err := peer.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("reply: %q, %v", buf[:n], err)
	}
}

// TestGSORefused: when the kernel refuses UDP_SEGMENT (here because the socket sends
// without UDP checksums, SO_NO_CHECK, which GSO cannot do: EINVAL), the datagrams go
// out without it — also with a sticky source, where EINVAL could have meant a lost
// source address. One refusal does not turn GSO off for the socket (before Linux 6.14
// a single destination's small path MTU also gives EINVAL); gsoEINVALLimit refusals in
// a row do, and a coalesced send that goes through starts the count again.
func TestGSORefused(t *testing.T) {
	for _, sticky := range []bool{false, true} {
		t.Run(fmt.Sprintf("sticky=%v", sticky), func(t *testing.T) {
			a, _, _ := open(t, options{})
			_, fnsB, portB := open(t, options{})
			s := a.v4.Load()
			if !s.gso.Load() {
				t.Skip("no UDP_SEGMENT in this kernel")
			}
			noCheck := func(on int) {
				t.Helper()
				if err := s.rc.Control(func(fd uintptr) { err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, on); _ = err }); err != nil {
					t.Fatal(err)
				}
			}
			c := collect(t, fnsB[0], 2000)
			ep := &Endpoint{dst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portB)}
			if sticky {
				ep.src = netip.MustParseAddr("127.0.0.1")
			}
			var bufs [][]byte
			for i := range 10 {
				bufs = append(bufs, payload(i, 1000))
			}
			send := func() {
				t.Helper()
				if err := a.Send(bufs, ep); err != nil {
					t.Fatal(err)
				}
				for i := range bufs {
					if g := c.next(t); !bytes.Equal(g.data, bufs[i]) {
						t.Fatalf("datagram %d differs", i)
					}
				}
				if sticky && !ep.SrcIP().IsValid() {
					t.Fatal("the GSO failure cost the endpoint its source address")
				}
			}
			noCheck(1)
			for range gsoEINVALLimit - 1 {
				send()
			}
			if !s.gso.Load() {
				t.Fatalf("GSO turned off after %d refusals, fewer than %d", gsoEINVALLimit-1, gsoEINVALLimit)
			}
			noCheck(0)
			send() // goes through with GSO: the count starts again
			noCheck(1)
			for range gsoEINVALLimit - 1 {
				send()
			}
			if !s.gso.Load() {
				t.Fatal("GSO turned off although a coalesced send went through in between")
			}
			send()
			if s.gso.Load() {
				t.Errorf("GSO still on after %d refusals in a row", gsoEINVALLimit)
			}
		})
	}
}

// TestEndpointCacheBounded: datagrams from more sources than the cache holds keep it
// at its bound; within the bound, a source keeps its endpoint.
func TestEndpointCacheBounded(t *testing.T) {
	const max, sources = 16, 100
	b, fns, port := open(t, options{cacheMax: max})
	c := collect(t, fns[0], 1500)
	dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	var conns []*net.UDPConn
	for i := range sources {
		// Sources over 127/8, each with its own port.
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, byte(i/250), byte(1+i%250))})
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		conns = append(conns, pc)
	}
	seen := map[conn.Endpoint]bool{}
	for round := range 3 {
		for i, pc := range conns {
			if _, err := pc.WriteToUDPAddrPort(payload(i, 20), dst); err != nil {
				t.Fatal(err)
			}
			g := c.next(t)
			if want := pc.LocalAddr().(*net.UDPAddr).AddrPort(); g.ep.(*Endpoint).AddrPort() != want {
				t.Fatalf("round %d: from %v, want %v", round, g.ep.DstToString(), want)
			}
			seen[g.ep] = true
		}
	}
	if len(seen) < sources {
		t.Fatalf("%d endpoints for %d sources", len(seen), sources)
	}
	// Within the bound, a source keeps its endpoint.
	var first conn.Endpoint
	for i := range 5 {
		if _, err := conns[0].WriteToUDPAddrPort(payload(i, 20), dst); err != nil {
			t.Fatal(err)
		}
		g := c.next(t)
		if i == 0 {
			first = g.ep
		} else if g.ep != first {
			t.Fatal("a source got a new endpoint within the cache's bound")
		}
	}
	// Stop the receiver, then look at the cache.
	r := b.v4.Load().rx
	_ = b.Close()
	if err := <-c.errc; !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	if n := len(r.cache.m); n > max || n == 0 {
		t.Fatalf("cache holds %d endpoints, bound %d", n, max)
	}
}
