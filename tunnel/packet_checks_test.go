package tunnel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
)

// ipv6UDP builds an IPv6/UDP packet; checksums are irrelevant to the tunnel.
func ipv6UDP(src, dst string, sport, dport uint16, payload []byte) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	p := make([]byte, 48+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(8+len(payload)))
	p[6] = protoUDP
	p[7] = 64
	copy(p[8:24], s[:])
	copy(p[24:40], d[:])
	binary.BigEndian.PutUint16(p[40:], sport)
	binary.BigEndian.PutUint16(p[42:], dport)
	binary.BigEndian.PutUint16(p[44:], uint16(8+len(payload)))
	copy(p[48:], payload)
	return p
}

// TestSpoofedIPv6SourceNeverReachesTun: the source check reads an IPv6 packet's
// source address: a packet from the sending peer's own prefix arrives, one whose
// source lies outside it is counted and never written. IPv4 spoofing has its own
// tests; the IPv6 header keeps its addresses elsewhere.
func TestSpoofedIPv6SourceNeverReachesTun(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	b := startMem(t, seedFile, "b", "fd00:9::2/64", []config.Peer{{
		Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("fd00:9::1/128")},
	}})
	a := startMem(t, seedFile, "a", "fd00:9::1/64", []config.Peer{{
		Name:            "b",
		Endpoint:        fmt.Sprintf("127.0.0.1:%d", b.t.Node().Port()),
		AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("fd00:9::2/128")},
	}})
	hello := ipv6UDP("fd00:9::1", "fd00:9::2", 1, 2, []byte("hi over v6"))
	spoofed := ipv6UDP("fd00:9::77", "fd00:9::1", 2, 1, []byte("spoofed"))
	good := ipv6UDP("fd00:9::2", "fd00:9::1", 2, 1, []byte("genuine"))
	expectOneSourceDenied(t, a, b, hello, spoofed, good)
	select {
	case p := <-a.dev.Written():
		t.Fatalf("unexpected packet reached the tun: %x", p)
	default:
	}
}

// TestPacketAddressesReadTheirFields: srcAddr and dstAddr read the source and the
// destination of both IP versions, which the source check and the routing rely on.
func TestPacketAddressesReadTheirFields(t *testing.T) {
	for _, tc := range []struct {
		pkt      []byte
		src, dst string
	}{
		{ipv4UDP("10.1.2.3", "10.4.5.6", 1, 2, []byte("x")), "10.1.2.3", "10.4.5.6"},
		{ipv6UDP("fd00:1::3", "fd00:4::6", 1, 2, []byte("x")), "fd00:1::3", "fd00:4::6"},
	} {
		src, ok1 := srcAddr(tc.pkt)
		dst, ok2 := dstAddr(tc.pkt)
		if !ok1 || !ok2 || src.String() != tc.src || dst.String() != tc.dst {
			t.Errorf("packet %s -> %s: read source %v (%v), destination %v (%v)", tc.src, tc.dst, src, ok1, dst, ok2)
		}
	}
}

// TestTruncatedPacketsFromPeerNotWritten: a packet from a peer too short to hold its
// IP header is counted as malformed and never written, even when the part that is
// there names an allowed source.
func TestTruncatedPacketsFromPeerNotWritten(t *testing.T) {
	seed, _ := config.GenerateSeed()
	a := startMem(t, writeSecret(t, t.TempDir(), "seed", seed), "a", "10.9.0.1/24", []config.Peer{{
		Name: "b", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32"), netip.MustParsePrefix("fd00:9::2/128")},
	}})
	v4 := ipv4UDP("10.9.0.2", "10.9.0.1", 2, 1, nil)[:19]
	v6 := ipv6UDP("fd00:9::2", "fd00:9::1", 2, 1, nil)[:39]
	in := &stt.Inbound{Peers: []*stt.Peer{a.t.Node().Peer("b"), a.t.Node().Peer("b")}, N: 2, Scratch: make([][]byte, 0, 2)}
	for _, pkt := range [][]byte{v4, v6} {
		buf := make([]byte, stt.Headroom+len(pkt), stt.BufferSize)
		copy(buf[stt.Headroom:], pkt)
		in.Bufs = append(in.Bufs, buf)
		in.Sizes = append(in.Sizes, len(pkt))
	}
	a.t.Deliver(in)
	if c := a.t.Counters(); c.Malformed != 2 {
		t.Fatalf("malformed %d, want 2", c.Malformed)
	}
	select {
	case p := <-a.dev.Written():
		t.Fatalf("a truncated packet reached the tun: %x", p)
	default:
	}
}
