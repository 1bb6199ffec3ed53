package tunnel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/tun"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

func writeSecret(t testing.TB, dir, name string, k [32]byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(config.EncodeKey(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type memNode struct {
	t   *Tunnel
	dev *tuntest.Mem
}

// startMem starts a tunnel on an in-memory device listening on loopback.
func startMem(t testing.TB, seedFile, name string, addr string, peers []config.Peer) *memNode {
	t.Helper()
	return startCfg(t, memConfig(t, seedFile, name, addr, peers))
}

// memConfig is the configuration startMem starts: node name with a fresh key,
// interface mem-<name> with address addr, and peers.
func memConfig(t testing.TB, seedFile, name string, addr string, peers []config.Peer) *config.Config {
	t.Helper()
	key, _ := config.GenerateKey()
	return &config.Config{
		Interface: config.Interface{
			Name: "mem-" + name, NodeName: name,
			Addresses: []netip.Prefix{netip.MustParsePrefix(addr)},
			MTU:       1420, SeedFile: seedFile,
			KeyFile: writeSecret(t, t.TempDir(), name+".key", key),
		},
		Peers: peers,
	}
}

// ipv4UDP builds an IPv4/UDP packet; checksums are irrelevant to the tunnel.
func ipv4UDP(src, dst string, sport, dport uint16, payload []byte) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = protoUDP
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dport)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

func memPair(t testing.TB) (a, b *memNode) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	b = startMem(t, seedFile, "b", "10.9.0.2/24", []config.Peer{{
		Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")},
	}})
	a = startMem(t, seedFile, "a", "10.9.0.1/24", []config.Peer{{
		Name:            "b",
		Endpoint:        fmt.Sprintf("127.0.0.1:%d", b.t.Node().Port()),
		AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32"), netip.MustParsePrefix("192.168.77.0/24")},
	}})
	return a, b
}

// expectOneSourceDenied sends hello from a to b (which sets up the session and
// the path), then spoofed and good from b to a: good arrives, after spoofed was
// handled, and a counts exactly one packet denied for its source.
func expectOneSourceDenied(t *testing.T, a, b *memNode, hello, spoofed, good []byte) {
	t.Helper()
	a.dev.Inject(hello)
	expectPacket(t, b.dev, hello)
	b.dev.Inject(spoofed, good)
	expectPacket(t, a.dev, good) // in order: the spoofed one was handled first
	if got := a.t.Counters().SourceDenied; got != 1 {
		t.Fatalf("source-denied counter %d, want 1", got)
	}
}

func expectPacket(t *testing.T, dev *tuntest.Mem, want []byte) {
	t.Helper()
	select {
	case got := <-dev.Written():
		if !bytes.Equal(got, want) {
			t.Fatalf("packet differs:\n got %x\nwant %x", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("packet did not arrive")
	}
}

func TestPacketsCrossTheTunnelBothWays(t *testing.T) {
	a, b := memPair(t)
	out := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("ping through the tunnel"))
	a.dev.Inject(out)
	expectPacket(t, b.dev, out)
	back := ipv4UDP("10.9.0.2", "10.9.0.1", 2000, 1000, []byte("and back"))
	b.dev.Inject(back)
	expectPacket(t, a.dev, back)
	// A subnet behind b is reachable through b.
	lan := ipv4UDP("10.9.0.1", "192.168.77.5", 1000, 53, []byte("to the lan"))
	a.dev.Inject(lan)
	expectPacket(t, b.dev, lan)
}

func TestSpoofedSourceNeverReachesTun(t *testing.T) {
	a, b := memPair(t)
	// Establish the session and learn the path.
	hello := ipv4UDP("10.9.0.1", "10.9.0.2", 1, 2, []byte("hi"))
	// b sends with a source that a allows only from... nobody (10.9.0.77), and one
	// from a prefix that belongs to b itself; only the second may arrive.
	spoofed := ipv4UDP("10.9.0.77", "10.9.0.1", 2, 1, []byte("spoofed"))
	good := ipv4UDP("10.9.0.2", "10.9.0.1", 2, 1, []byte("genuine"))
	expectOneSourceDenied(t, a, b, hello, spoofed, good)
	if st := a.t.Status(); len(st.Peers) != 1 || st.Peers[0].Drops != 1 {
		t.Fatalf("the drop is not shown against peer b: %+v", st.Peers)
	}
	select {
	case p := <-a.dev.Written():
		t.Fatalf("unexpected packet reached the tun: %x", p)
	default:
	}
}

// TestDeliverCapsWriteCapacity: a receive buffer with more capacity than the TUN
// device's Write accepts (its coalescing could grow a packet past IP's limit there) is
// handed over cut to tun.MaxWriteCap, not refused.
func TestDeliverCapsWriteCapacity(t *testing.T) {
	seed, _ := config.GenerateSeed()
	a := startMem(t, writeSecret(t, t.TempDir(), "seed", seed), "a", "10.9.0.1/24", []config.Peer{{
		Name: "b", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32")},
	}})
	pkt := ipv4UDP("10.9.0.2", "10.9.0.1", 2, 1, []byte("roomy buffer"))
	buf := make([]byte, stt.Headroom+len(pkt), tun.MaxWriteCap(stt.Headroom)+1)
	copy(buf[stt.Headroom:], pkt)
	a.t.Deliver(&stt.Inbound{
		Bufs: [][]byte{buf}, Sizes: []int{len(pkt)}, Peers: []*stt.Peer{a.t.Node().Peer("b")},
		N: 1, Scratch: make([][]byte, 0, 1),
	})
	if c := a.t.Counters(); c.TunErrors != 0 || c.SourceDenied != 0 {
		t.Fatalf("tun errors %d, source denied %d; want 0 and 0", c.TunErrors, c.SourceDenied)
	}
	expectPacket(t, a.dev, pkt)
}

// TestPeerCannotUseAnotherPeersAddress: a member that sends with the source address
// of another member (c, configured on a but silent) is refused like any spoofer: the
// source must be inside the prefixes of the peer the frame came from, not merely of
// some peer.
func TestPeerCannotUseAnotherPeersAddress(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	b := startMem(t, seedFile, "b", "10.9.0.2/24", []config.Peer{{
		Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")},
	}})
	a := startMem(t, seedFile, "a", "10.9.0.1/24", []config.Peer{
		{
			Name:            "b",
			Endpoint:        fmt.Sprintf("127.0.0.1:%d", b.t.Node().Port()),
			AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32")},
		},
		{Name: "c", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.3/32")}},
	})
	hello := ipv4UDP("10.9.0.1", "10.9.0.2", 1, 2, []byte("hi"))
	a.dev.Inject(hello)
	expectPacket(t, b.dev, hello)

	asC := ipv4UDP("10.9.0.3", "10.9.0.1", 2, 1, []byte("pretending to be c"))
	good := ipv4UDP("10.9.0.2", "10.9.0.1", 2, 1, []byte("genuine"))
	b.dev.Inject(asC, good)
	expectPacket(t, a.dev, good) // in order: asC was handled first
	if got := a.t.Counters().SourceDenied; got != 1 {
		t.Fatalf("source-denied counter %d, want 1", got)
	}
	for _, p := range a.t.Status().Peers {
		want := uint64(0)
		if p.Name == "b" {
			want = 1
		}
		if p.Drops != want {
			t.Errorf("peer %s drops %d, want %d (the spoofer is b)", p.Name, p.Drops, want)
		}
	}
	select {
	case p := <-a.dev.Written():
		t.Fatalf("unexpected packet reached the tun: %x", p)
	default:
	}
}

func TestNoRouteCounted(t *testing.T) {
	a, _ := memPair(t)
	a.dev.Inject(ipv4UDP("10.9.0.1", "172.31.0.1", 1, 2, []byte("nowhere")))
	deadline := time.Now().Add(5 * time.Second)
	for a.t.Counters().NoRoute != 1 {
		if time.Now().After(deadline) {
			t.Fatal("no-route packet not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMalformedCounted: packets read from the interface that are neither a whole IPv4
// nor a whole IPv6 header go to no peer and are counted as malformed, not as no_route.
func TestMalformedCounted(t *testing.T) {
	a, _ := memPair(t)
	v5 := ipv4UDP("10.9.0.1", "10.9.0.2", 1, 2, []byte("not v4"))
	v5[0] = 0x55
	shortV4 := ipv4UDP("10.9.0.1", "10.9.0.2", 1, 2, nil)[:19]
	shortV6 := make([]byte, 39)
	shortV6[0] = 0x60
	a.dev.Inject(v5, shortV4, shortV6)
	// Packets are handled in order: once this one is counted, so are those above.
	a.dev.Inject(ipv4UDP("10.9.0.1", "172.31.0.1", 1, 2, []byte("nowhere")))
	deadline := time.Now().Add(5 * time.Second)
	for a.t.Counters().NoRoute == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no-route packet not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c := a.t.Counters(); c.Malformed != 3 || c.NoRoute != 1 {
		t.Fatalf("malformed %d, no_route %d; want 3 and 1", c.Malformed, c.NoRoute)
	}
	if got := a.t.Status().Counters["tunnel_malformed"]; got != 3 {
		t.Fatalf("status counters tunnel_malformed = %d, want 3", got)
	}
}

// TestLinkScopedNotCountedAsNoRoute: the kernel's link-local housekeeping (router
// solicitations, MLD, mDNS, broadcasts) that no peer takes is counted as ignored, not
// as no_route, which is kept for traffic that really went nowhere.
func TestLinkScopedNotCountedAsNoRoute(t *testing.T) {
	a, _ := memPair(t)
	v6 := make([]byte, 48) // IPv6 header and 8 bytes of ICMPv6: a router solicitation
	v6[0] = 0x60
	v6[5] = 8
	v6[6] = 58
	v6[7] = 255
	src, dst := netip.MustParseAddr("fe80::1").As16(), netip.MustParseAddr("ff02::2").As16()
	copy(v6[8:24], src[:])
	copy(v6[24:40], dst[:])
	for _, p := range [][]byte{
		ipv4UDP("10.9.0.1", "224.0.0.251", 5353, 5353, []byte("mdns")),
		ipv4UDP("10.9.0.1", "255.255.255.255", 68, 67, []byte("bootp")),
		ipv4UDP("10.9.0.1", "169.254.1.1", 1, 2, []byte("link-local")),
		v6,
	} {
		a.dev.Inject(p)
	}
	// Packets are handled in order: once this one is counted, so are those above.
	a.dev.Inject(ipv4UDP("10.9.0.1", "172.31.0.1", 1, 2, []byte("nowhere")))
	deadline := time.Now().Add(5 * time.Second)
	for a.t.Counters().NoRoute == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no-route packet not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c := a.t.Counters(); c.NoRoute != 1 || c.LinkScoped != 4 {
		t.Fatalf("no_route %d, link_scoped %d; want 1 and 4", c.NoRoute, c.LinkScoped)
	}
	if got := a.t.Status().Counters["ignored_link_scoped"]; got != 4 {
		t.Fatalf("status counters ignored_link_scoped = %d, want 4", got)
	}
}

func TestLinkScoped(t *testing.T) {
	for addr, want := range map[string]bool{
		"fe80::1": true, "ff02::1:ff00:1": true, "ff01::1": true, "224.0.0.22": true,
		"169.254.10.1": true, "255.255.255.255": true,
		"ff05::2": false, "ff0e::1": false, "239.1.1.1": false, "10.0.0.255": false,
		"fd00::1": false, "2001:db8::1": false, "10.9.0.2": false,
	} {
		if got := linkScoped(netip.MustParseAddr(addr)); got != want {
			t.Errorf("linkScoped(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestFlowHashKeepsFlowOnOneStream(t *testing.T) {
	p1 := ipv4UDP("10.0.0.1", "10.0.0.2", 1111, 2222, []byte("a"))
	p2 := ipv4UDP("10.0.0.1", "10.0.0.2", 1111, 2222, []byte("different payload, same flow"))
	p3 := ipv4UDP("10.0.0.1", "10.0.0.2", 1112, 2222, []byte("a"))
	if flowHash(p1) != flowHash(p2) {
		t.Fatal("one flow hashed to two values")
	}
	if flowHash(p1) == flowHash(p3) {
		t.Fatal("different ports hashed alike (possible, but not for these inputs)")
	}
}
