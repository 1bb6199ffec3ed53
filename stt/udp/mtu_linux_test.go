package udp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRouteMTUIsTheOutgoingInterfaces: toward loopback addresses the MTU is the
// loopback interface's, for both families.
func TestRouteMTUIsTheOutgoingInterfaces(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip("no lo interface:", err)
	}
	for _, a := range []string{"127.0.0.1", "::1", "::ffff:127.0.0.1"} {
		got, err := RouteMTU(netip.MustParseAddr(a), 0)
		if err != nil {
			if a == "::1" {
				t.Logf("%s: %v (no IPv6 here?)", a, err)
				continue
			}
			t.Fatalf("%s: %v", a, err)
		}
		if got != lo.MTU {
			t.Errorf("%s: MTU %d, want lo's %d", a, got, lo.MTU)
		}
	}
	if _, err := RouteMTU(netip.Addr{}, 0); err == nil {
		t.Error("no error for the zero address")
	}
}

// TestPMTUProbeSocketsSetDontFragment: the sockets of NewPMTUProbe have
// IP(V6)_MTU_DISCOVER = PMTUDISC_PROBE; those of New keep the kernel's default.
func TestPMTUProbeSocketsSetDontFragment(t *testing.T) {
	for _, probe := range []bool{true, false} {
		b := newBind(options{pmtuProbe: probe})
		if _, _, err := b.Open(0); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*socket{b.v4.Load(), b.v6.Load()} {
			if s == nil {
				continue
			}
			var v int
			var gerr error
			if err := s.rc.Control(func(fd uintptr) {
				if s.is6 {
					v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER)
				} else {
					v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER)
				}
			}); err != nil || gerr != nil {
				t.Fatal(err, gerr)
			}
			want := unix.IP_PMTUDISC_PROBE // == IPV6_PMTUDISC_PROBE
			if probe && v != want || !probe && v == want {
				t.Errorf("pmtuProbe %v, IPv6 %v: MTU_DISCOVER = %d", probe, s.is6, v)
			}
		}
		_ = b.Close()
	}
}

// TestTooBigDatagramLosesOnlyItself: a datagram larger than a UDP datagram may be
// (EMSGSIZE, as one larger than the interface's MTU is with PMTUDISC_PROBE) is not
// sent, the Send says how many were not, and the datagrams around it still go, in
// order, with GSO and without.
func TestTooBigDatagramLosesOnlyItself(t *testing.T) {
	for _, noGSO := range []bool{false, true} {
		a, _, _ := open(t, options{pmtuProbe: true, noGSO: noGSO, noV6: true})
		_, fnsB, portB := open(t, options{noV6: true})
		c := collect(t, fnsB[0], 65535)
		ep := endpoint(t, a, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(portB))))
		bufs := [][]byte{payload(0, 1000), payload(1, 1000), payload(2, 65508), payload(3, 1000), payload(4, 65508), payload(5, 500)}
		err := a.Send(bufs, ep)
		var tb *MessageTooBigError
		if !errors.As(err, &tb) || tb.Dropped != 2 || !errors.Is(err, unix.EMSGSIZE) {
			t.Fatalf("noGSO %v: Send: %v, want 2 datagrams too big", noGSO, err)
		}
		for _, i := range []int{0, 1, 3, 5} {
			if g := c.next(t); !bytes.Equal(g.data, bufs[i]) {
				t.Fatalf("noGSO %v: got %d bytes, want datagram %d", noGSO, len(g.data), i)
			}
		}
	}
}
