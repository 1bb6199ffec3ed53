package udp

import (
	"net"
	"net/netip"
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
