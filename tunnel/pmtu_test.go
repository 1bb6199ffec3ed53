package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ipmtu"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// bigIPv4 is an IPv4 packet of n bytes from src to dst with the given protocol and
// flags (DF = 0x4000), its payload counting up, header checksum right.
func bigIPv4(src, dst string, proto byte, flags uint16, n int) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	p := make([]byte, n)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(n))
	binary.BigEndian.PutUint16(p[6:], flags)
	p[8], p[9] = 64, proto
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	for i := 20; i < n; i++ {
		p[i] = byte(i)
	}
	binary.BigEndian.PutUint16(p[10:], ipmtu.Checksum(p[:20]))
	return p
}

// bigIPv6 is an IPv6 UDP packet of n bytes from src to dst.
func bigIPv6(src, dst string, next byte, n int) []byte {
	p := make([]byte, n)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(n-40))
	p[6], p[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	return p
}

// nextWritten is the next packet the tunnel wrote to dev, or nil after a while.
func nextWritten(dev *tuntest.Mem, wait time.Duration) []byte {
	select {
	case p := <-dev.Written():
		return p
	case <-time.After(wait):
		return nil
	}
}

// tooLargeAlone runs tooLarge on pkt for a path of mtu bytes, outside any batch.
func tooLargeAlone(tu *Tunnel, o *outState, pkt []byte, mtu int) (keep bool, pkts [][]byte) {
	var flows []uint16
	keep = tu.tooLarge(o, pkt, mtu, 7, &pkts, &flows, func() {})
	return keep, pkts
}

// TestTooBigIPv4WithDFIsAnsweredIntoTheInterface: the sender of an IPv4 packet with DF
// larger than the path learns the path's MTU from an ICMP Fragmentation Needed written
// to the interface, from the address it sent to (an address of its own would be a
// martian to the kernel); the packet goes nowhere.
func TestTooBigIPv4WithDFIsAnsweredIntoTheInterface(t *testing.T) {
	a, _ := memPair(t)
	var o outState
	pkt := bigIPv4("10.9.0.1", "10.9.0.2", protoTCP, 0x4000, 1400)
	keep, pkts := tooLargeAlone(a.t, &o, pkt, 1200)
	if keep || len(pkts) != 0 {
		t.Fatalf("the packet went on (keep %v, %d pieces)", keep, len(pkts))
	}
	got := nextWritten(a.dev, 5*time.Second)
	if got == nil {
		t.Fatal("no ICMP error was written to the interface")
	}
	if len(got) != 576 || got[9] != 1 || got[20] != 3 || got[21] != 4 || binary.BigEndian.Uint16(got[26:28]) != 1200 {
		t.Fatalf("not a Fragmentation Needed for 1200 bytes: % x", got[:28])
	}
	if !bytes.Equal(got[12:16], pkt[16:20]) || !bytes.Equal(got[16:20], pkt[12:16]) {
		t.Errorf("ICMP from %v to %v", got[12:16], got[16:20])
	}
	if ipmtu.Checksum(got[:20]) != 0 || ipmtu.Checksum(got[20:]) != 0 {
		t.Error("checksums")
	}
	c := a.t.Counters()
	if c.TooBig != 1 || c.TooBigICMPSent != 1 || c.TooBigICMPRateLimited != 0 {
		t.Errorf("counters %+v", c)
	}
	if m := a.t.Status().Counters; m["tunnel_too_big"] != 1 || m["too_big_icmp_sent"] != 1 {
		t.Errorf("status counters %v", m)
	}
}

// TestTooBigIPv6IsAnsweredWithPacketTooBig: IPv6 gets a Packet Too Big from the
// destination it sent to; on a path under 1280 bytes a packet of at most 1280 goes on.
func TestTooBigIPv6IsAnsweredWithPacketTooBig(t *testing.T) {
	a, _ := memPair(t)
	var o outState
	pkt := bigIPv6("fd99::1", "fd99::2", protoUDP, 1400)
	if keep, _ := tooLargeAlone(a.t, &o, pkt, 1300); keep {
		t.Fatal("the packet went on")
	}
	got := nextWritten(a.dev, 5*time.Second)
	if got == nil || got[6] != 58 || got[40] != 2 || binary.BigEndian.Uint32(got[44:48]) != 1300 {
		t.Fatalf("not a Packet Too Big for 1300: % x", got)
	}
	if !bytes.Equal(got[8:24], pkt[24:40]) || !bytes.Equal(got[24:40], pkt[8:24]) {
		t.Errorf("from %x to %x", got[8:24], got[24:40])
	}
	if keep, _ := tooLargeAlone(a.t, &o, bigIPv6("fd99::1", "fd99::2", protoUDP, 1280), 1220); !keep {
		t.Error("a 1280-byte IPv6 packet on a 1220 path was not let through (no PTB may say less than 1280)")
	}
}

// TestTooBigICMPIsRateLimited: a burst of large packets draws at most the bucket's
// depth of ICMP errors; every packet is counted, answered or not.
func TestTooBigICMPIsRateLimited(t *testing.T) {
	a, _ := memPair(t)
	var o outState
	const n = 3 * icmpBurst
	for range n {
		tooLargeAlone(a.t, &o, bigIPv4("10.9.0.1", "10.9.0.2", protoUDP, 0x4000, 1400), 1200)
	}
	c := a.t.Counters()
	if c.TooBig != n || c.TooBigICMPSent+c.TooBigICMPRateLimited != n {
		t.Fatalf("counters %+v", c)
	}
	// A few tokens may come back while the loop runs on a slow machine; never
	// anything near one per packet.
	if c.TooBigICMPSent > icmpBurst+5 || c.TooBigICMPRateLimited == 0 {
		t.Errorf("%d ICMP errors sent for %d packets, bucket of %d", c.TooBigICMPSent, n, icmpBurst)
	}
}

// TestNoICMPAboutICMPErrors: a too-large ICMP error (here a Destination Unreachable
// with DF) is dropped without an answer and counted as not allowed.
func TestNoICMPAboutICMPErrors(t *testing.T) {
	a, _ := memPair(t)
	var o outState
	pkt := bigIPv4("10.9.0.1", "10.9.0.2", 1, 0x4000, 1400)
	pkt[20] = 3
	tooLargeAlone(a.t, &o, pkt, 1200)
	if got := nextWritten(a.dev, 200*time.Millisecond); got != nil {
		t.Fatalf("answered an ICMP error: % x", got[:28])
	}
	if c := a.t.Counters(); c.TooBig != 1 || c.TooBigICMPNotAllowed != 1 || c.TooBigICMPSent != 0 {
		t.Errorf("counters %+v", c)
	}
}

// TestIPv4WithoutDFIsFragmentedToThePeer: a 3000-byte IPv4 datagram without DF crosses
// to the peer in fragments that fit the path and add up to it.
func TestIPv4WithoutDFIsFragmentedToThePeer(t *testing.T) {
	a, b := memPair(t)
	hello := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("hello"))
	a.dev.Inject(hello)
	expectPacket(t, b.dev, hello)

	var o outState
	pkt := bigIPv4("10.9.0.1", "10.9.0.2", protoUDP, 0, 3000)
	keep, pkts := tooLargeAlone(a.t, &o, pkt, 1200)
	if keep || len(pkts) != 3 {
		t.Fatalf("keep %v, %d pieces, want 3", keep, len(pkts))
	}
	flows := []uint16{7, 7, 7}
	if err := a.t.peers[0].sp.Send(pkts, flows); err != nil {
		t.Fatal(err)
	}
	var payload []byte
	for i := range 3 {
		f := nextWritten(b.dev, 5*time.Second)
		if f == nil {
			t.Fatalf("fragment %d did not arrive", i)
		}
		if len(f) > 1200 || ipmtu.Checksum(f[:20]) != 0 || int(binary.BigEndian.Uint16(f[6:8])&0x1fff)*8 != len(payload) {
			t.Fatalf("fragment %d: %d bytes, header % x", i, len(f), f[:20])
		}
		payload = append(payload, f[20:]...)
	}
	if !bytes.Equal(payload, pkt[20:]) {
		t.Error("the fragments do not add up to the datagram")
	}
	if c := a.t.Counters(); c.Fragmented != 1 || c.Fragments != 3 || c.TooBig != 0 {
		t.Errorf("counters %+v", c)
	}
}

// TestFragmentArenaFlushesWhenFull: fragments that would overflow the arena make the
// batch go first, and the arena starts again.
func TestFragmentArenaFlushesWhenFull(t *testing.T) {
	a, _ := memPair(t)
	var o outState
	var pkts [][]byte
	var flows []uint16
	flushes := 0
	flush := func() { flushes++; pkts, flows = pkts[:0], flows[:0]; o.used = 0 }
	pkt := bigIPv4("10.9.0.1", "10.9.0.2", protoUDP, 0, 60000)
	per, largest := ipmtu.Fragments4(pkt, 1200)
	perPacket := per * (stt.Headroom + largest + wire.TagLen)
	for range fragArena/perPacket + 1 {
		a.t.tooLarge(&o, pkt, 1200, 7, &pkts, &flows, flush)
	}
	if flushes != 1 {
		t.Errorf("%d flushes, want 1", flushes)
	}
	if len(pkts) != per {
		t.Errorf("%d fragments pending after the flush, want %d", len(pkts), per)
	}
	for _, p := range pkts {
		if cap(p)-len(p) < wire.TagLen {
			t.Fatal("a fragment lacks room for the tag")
		}
	}
}

// TestMSSClampCounts: a clamped SYN is counted.
func TestMSSClampCounts(t *testing.T) {
	a, _ := memPair(t)
	syn := bigIPv4("10.9.0.1", "10.9.0.2", protoTCP, 0x4000, 44)
	tcp := syn[20:]
	clear(tcp)
	tcp[12], tcp[13] = 6<<4, 0x02
	copy(tcp[20:], []byte{2, 4, 0x05, 0xb4})
	a.t.clampMSS(syn, 1200)
	if got := binary.BigEndian.Uint16(tcp[22:24]); got != 1160 {
		t.Errorf("MSS %d, want 1160", got)
	}
	if c := a.t.Counters(); c.MSSClamped != 1 {
		t.Errorf("clamped %d", c.MSSClamped)
	}

}

// TestMSSClampIsOnByDefaultAndReloads: mss_clamp is on unless the file says otherwise,
// and a reload changes it (no restart), reported as a change.
func TestMSSClampIsOnByDefaultAndReloads(t *testing.T) {
	seed, _ := config.GenerateSeed()
	n := newCfgNode(t, writeSecret(t, t.TempDir(), "seed", seed), "a", "10.9.0.1/24")
	a := startCfg(t, n.config(t, ""))
	if !a.t.mssClamp.Load() {
		t.Fatal("mss_clamp is off by default")
	}
	changes, err := a.t.ReloadChanges(n.config(t, "mss_clamp = false"))
	if err != nil {
		t.Fatalf("reload refused: %v", err)
	}
	if len(changes) != 1 || changes[0] != "interface.mss_clamp changed from true to false" || a.t.mssClamp.Load() {
		t.Errorf("changes %q, clamp %v", changes, a.t.mssClamp.Load())
	}
}

// TestPathMTUWorkAllocatesNothing: fragmenting, clamping and refusing to answer an ICMP
// error take no allocation once the fragment arena exists.
func TestPathMTUWorkAllocatesNothing(t *testing.T) {
	a, _ := memPair(t)
	var o outState
	pkts, flows := make([][]byte, 0, 64), make([]uint16, 0, 64)
	flush := func() { pkts, flows = pkts[:0], flows[:0]; o.used = 0 }
	frag := bigIPv4("10.9.0.1", "10.9.0.2", protoUDP, 0, 3000)
	icmpErr := bigIPv4("10.9.0.1", "10.9.0.2", 1, 0x4000, 1400)
	icmpErr[20] = 3
	syn := bigIPv4("10.9.0.1", "10.9.0.2", protoTCP, 0x4000, 44)
	clear(syn[20:])
	syn[32], syn[33] = 6<<4, 0x02
	allocs := allocsPerCall(100, func() {
		flush()
		a.t.tooLarge(&o, frag, 1200, 7, &pkts, &flows, flush)
		a.t.tooLarge(&o, icmpErr, 1200, 7, &pkts, &flows, flush)
		copy(syn[40:], []byte{2, 4, 0x05, 0xb4})
		a.t.clampMSS(syn, 1200)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet", allocs)
	}
	if a.t.Counters().MSSClamped == 0 || a.t.Counters().Fragmented == 0 {
		t.Error("the work was not done")
	}
}

// narrowBind drops, silently, every datagram longer than limit bytes: a path narrower
// than the links say that sends no ICMP.
type narrowBind struct {
	conn.Bind
	limit int
}

func (b *narrowBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	keep := bufs[:0:0]
	for _, m := range bufs {
		if len(m) <= b.limit {
			keep = append(keep, m)
		}
	}
	if len(keep) == 0 {
		return nil
	}
	return b.Bind.Send(keep, ep)
}

// synWithMSS is a TCP SYN (or SYN-ACK with flags 0x12) from src to dst with an MSS
// option, checksums right.
func synWithMSS(src, dst string, flags byte, mss uint16) []byte {
	p := bigIPv4(src, dst, protoTCP, 0x4000, 44)
	tcp := p[20:]
	clear(tcp)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	tcp[12], tcp[13] = 6<<4, flags
	tcp[20], tcp[21] = 2, 4
	binary.BigEndian.PutUint16(tcp[22:], mss)
	sum := uint32(0)
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	sum += protoTCP + uint32(len(tcp))
	for i := 0; i < len(tcp); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(tcp[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(tcp[16:], ^uint16(sum))
	return p
}

// tcpChecksumOK verifies an IPv4 TCP packet's checksum.
func tcpChecksumOK(p []byte) bool {
	tcp := p[20:]
	sum := uint32(protoTCP) + uint32(len(tcp))
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for i := 0; i+1 < len(tcp); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(tcp[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum) == 0xffff
}

// TestPumpOnANarrowPath: two tunnels whose UDP loses datagrams over 1300 bytes without
// a word. Once the node has found the path (1300 − 32 = 1268 inside), the pump answers a
// larger IPv4 packet with DF by Fragmentation Needed for 1268, sends one without DF in
// fragments that arrive, and clamps the MSS of a SYN going out and of a SYN-ACK coming
// in (from a peer that does not clamp) to 1268 − 40.
func TestPumpOnANarrowPath(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	start := func(name, addr string, clamp bool, peers []config.Peer) *memNode {
		cfg := memConfig(t, seedFile, name, addr, peers)
		cfg.Interface.MSSClamp, cfg.Advanced.PMTUDiscovery = clamp, true
		dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
		tu, err := Start(context.Background(), cfg, Options{Device: dev, Bind: &narrowBind{Bind: udp.NewPMTUProbe(), limit: 1300}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tu.Close() })
		return &memNode{t: tu, dev: dev}
	}
	// b does not clamp, so that what a receives shows a's own clamping of SYN-ACKs.
	b := start("b", "10.9.0.2/24", false, []config.Peer{{Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")}}})
	a := start("a", "10.9.0.1/24", true, []config.Peer{{Name: "b", Endpoint: endpointOf(b),
		AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32")}}})
	hello := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("hello"))
	a.dev.Inject(hello)
	expectPacket(t, b.dev, hello)
	back := ipv4UDP("10.9.0.2", "10.9.0.1", 2000, 1000, []byte("back"))
	b.dev.Inject(back)
	expectPacket(t, a.dev, back)
	const inner = 1300 - wire.Overhead
	defer func() {
		if t.Failed() {
			t.Logf("peer stats: a %+v, b %+v", a.t.peers[0].sp.Stats(), b.t.peers[0].sp.Stats())
		}
	}()
	waitUntil(t, "both ends find the path MTU", func() bool {
		return a.t.peers[0].sp.PathMTU() == inner && b.t.peers[0].sp.PathMTU() == inner
	})

	a.dev.Inject(bigIPv4("10.9.0.1", "10.9.0.2", protoTCP, 0x4000, 1400))
	got := nextWritten(a.dev, 5*time.Second)
	if got == nil || got[20] != 3 || got[21] != 4 || binary.BigEndian.Uint16(got[26:28]) != inner {
		t.Fatalf("no Fragmentation Needed for %d: % x", inner, got)
	}

	dgram := bigIPv4("10.9.0.1", "10.9.0.2", protoUDP, 0, 3000)
	a.dev.Inject(dgram)
	var payload []byte
	for len(payload) < 3000-20 {
		f := nextWritten(b.dev, 5*time.Second)
		if f == nil || len(f) > inner {
			t.Fatalf("fragment missing or too large after %d bytes: %d", len(payload), len(f))
		}
		payload = append(payload, f[20:]...)
	}
	if !bytes.Equal(payload, dgram[20:]) {
		t.Error("the fragments do not add up to the datagram")
	}

	a.dev.Inject(synWithMSS("10.9.0.1", "10.9.0.2", 0x02, 1460))
	syn := nextWritten(b.dev, 5*time.Second)
	if syn == nil || binary.BigEndian.Uint16(syn[42:44]) != inner-40 || !tcpChecksumOK(syn) {
		t.Fatalf("SYN out: % x, want MSS %d and a right checksum", syn, inner-40)
	}
	b.dev.Inject(synWithMSS("10.9.0.2", "10.9.0.1", 0x12, 1460))
	synack := nextWritten(a.dev, 5*time.Second)
	if synack == nil || binary.BigEndian.Uint16(synack[42:44]) != inner-40 || !tcpChecksumOK(synack) {
		t.Fatalf("SYN-ACK in: % x, want MSS %d and a right checksum", synack, inner-40)
	}
}

// TestFirstSYNOfASessionIsClamped: a SYN that starts the session, before any probe was
// answered (PathMTU 0), leaves with its MSS clamped to what any UDP or relay path of
// 1280 IP carries (1192 − 40): the connection keeps that MSS, and sized for the
// interface it would never fit a narrow path without ICMP. The SYN-ACK coming back is
// clamped too.
func TestFirstSYNOfASessionIsClamped(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	start := func(name, addr string, clamp bool, peers []config.Peer) *memNode {
		cfg := memConfig(t, seedFile, name, addr, peers)
		cfg.Interface.MSSClamp, cfg.Advanced.PMTUDiscovery = clamp, true
		dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
		tu, err := Start(context.Background(), cfg, Options{Device: dev, Bind: &narrowBind{Bind: udp.NewPMTUProbe(), limit: 1300}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tu.Close() })
		return &memNode{t: tu, dev: dev}
	}
	b := start("b", "10.9.0.2/24", false, []config.Peer{{Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")}}})
	a := start("a", "10.9.0.1/24", true, []config.Peer{{Name: "b", Endpoint: endpointOf(b),
		AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32")}}})
	const pending = 1280 - 40 - 8 - wire.RelayHeaderLen - wire.Overhead
	if m := a.t.peers[0].sp.PathMTU(); m != 0 {
		t.Fatalf("path MTU %d before the first packet", m)
	}
	a.dev.Inject(synWithMSS("10.9.0.1", "10.9.0.2", 0x02, 1460))
	syn := nextWritten(b.dev, 5*time.Second)
	if syn == nil || binary.BigEndian.Uint16(syn[42:44]) != pending-40 || !tcpChecksumOK(syn) {
		t.Fatalf("first SYN: % x, want MSS %d and a right checksum", syn, pending-40)
	}
	b.dev.Inject(synWithMSS("10.9.0.2", "10.9.0.1", 0x12, 1460))
	synack := nextWritten(a.dev, 5*time.Second)
	if synack == nil || binary.BigEndian.Uint16(synack[42:44]) > 1300-wire.Overhead-40 || !tcpChecksumOK(synack) {
		t.Fatalf("SYN-ACK in: % x, want MSS at most %d and a right checksum", synack, 1300-wire.Overhead-40)
	}
}
