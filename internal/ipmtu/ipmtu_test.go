package ipmtu

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// ip4 builds an IPv4 packet: header (with options opts, padded), then l4, with a
// correct header checksum.
func ip4(proto byte, frag uint16, src, dst [4]byte, opts, l4 []byte) []byte {
	hl := 20 + (len(opts)+3)&^3
	p := make([]byte, hl+len(l4))
	p[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], 0x1234)
	binary.BigEndian.PutUint16(p[6:8], frag)
	p[8], p[9] = 64, proto
	copy(p[12:16], src[:])
	copy(p[16:20], dst[:])
	copy(p[20:], opts)
	copy(p[hl:], l4)
	binary.BigEndian.PutUint16(p[10:12], Checksum(p[:hl]))
	return p
}

// ip6 builds an IPv6 packet whose first next-header is next, followed by rest.
func ip6(next byte, src, dst [16]byte, rest []byte) []byte {
	p := make([]byte, 40+len(rest))
	binary.BigEndian.PutUint32(p[0:4], 6<<28)
	binary.BigEndian.PutUint16(p[4:6], uint16(len(rest)))
	p[6], p[7] = next, 64
	copy(p[8:24], src[:])
	copy(p[24:40], dst[:])
	copy(p[40:], rest)
	return p
}

// fill is n bytes counting i mod 251.
func fill(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// tcpSeg is a TCP header with flags and options (padded to 4), then payload; checksum 0.
func tcpSeg(flags byte, opts []byte, payload []byte) []byte {
	hl := 20 + (len(opts)+3)&^3
	t := make([]byte, hl+len(payload))
	binary.BigEndian.PutUint16(t[0:2], 40000)
	binary.BigEndian.PutUint16(t[2:4], 5201)
	binary.BigEndian.PutUint32(t[4:8], 1)
	binary.BigEndian.PutUint32(t[8:12], 2)
	t[12] = byte(hl/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], 65535)
	copy(t[20:], opts)
	for i := 20 + len(opts); i < hl; i++ {
		t[i] = 1 // NOP padding
	}
	copy(t[hl:], payload)
	return t
}

// l4Checksum is the full checksum of an IPv4 or IPv6 packet's upper layer with its
// pseudo-header: 0 when the checksum in it is right.
func l4Checksum(pkt []byte) uint16 {
	var s uint32
	var l4 []byte
	var proto byte
	if pkt[0]>>4 == 4 {
		ihl := int(pkt[0]&0x0f) * 4
		l4, proto = pkt[ihl:], pkt[9]
		s = sum(pkt[12:20], 0) + uint32(proto) + uint32(len(l4))
	} else {
		var ok bool
		proto, l4, ok = upper6(pkt)
		if !ok {
			panic("no upper layer")
		}
		s = sum(pkt[8:40], 0) + uint32(len(l4)>>16) + uint32(len(l4)&0xffff) + uint32(proto)
	}
	return ^fold(sum(l4, s))
}

// setL4Checksum writes a correct TCP checksum into pkt.
func setTCPChecksum(pkt []byte) {
	tcp := pkt[len(pkt)-tcpLen(pkt):]
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:18], l4Checksum(pkt))
}

func tcpLen(pkt []byte) int {
	if pkt[0]>>4 == 4 {
		return len(pkt) - int(pkt[0]&0x0f)*4
	}
	_, l4, _ := upper6(pkt)
	return len(l4)
}

var (
	a4, b4, r4 = [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, [4]byte{10, 99, 0, 1}
	a6         = [16]byte{0xfd, 15: 1}
	b6         = [16]byte{0xfd, 15: 2}
	r6         = [16]byte{0xfd, 15: 0x99}
)

// TestFragNeededMatchesHandCheckedPacket compares the ICMPv4 error for a 1500-byte TCP
// segment with DF against the packet worked out independently (checksums 0x6399 and
// 0xe77f computed by a separate RFC 1071 implementation).
func TestFragNeededMatchesHandCheckedPacket(t *testing.T) {
	pkt := ip4(protoTCP, flagDF, a4, b4, nil, tcpSeg(0x10, nil, fill(1460)))
	if Decide(pkt, 1220) != Answer {
		t.Fatalf("Decide = %v, want Answer", Decide(pkt, 1220))
	}
	dst := make([]byte, 2000)
	n := PutTooBig(dst, pkt, 1220, r4[:])
	if n != 576 {
		t.Fatalf("reply of %d bytes, want 576 (RFC 1812: no more than 576)", n)
	}
	want := []byte{
		0x45, 0xc0, 0x02, 0x40, 0, 0, 0, 0, 64, 1, 0x63, 0x99, 10, 99, 0, 1, 10, 0, 0, 1,
		3, 4, 0xe7, 0x7f, 0, 0, 0x04, 0xc4,
	}
	if !bytes.Equal(dst[:28], want) {
		t.Errorf("header\n got %x\nwant %x", dst[:28], want)
	}
	if !bytes.Equal(dst[28:n], pkt[:548]) {
		t.Error("the quoted packet is not the first 548 bytes of the original")
	}
	if Checksum(dst[:20]) != 0 || Checksum(dst[20:n]) != 0 {
		t.Error("checksums do not verify")
	}
}

// TestPacketTooBigMatchesHandCheckedPacket: the ICMPv6 Packet Too Big for a 1400-byte
// UDP datagram on a 1300-byte path, checksum 0xf9c8 worked out independently.
func TestPacketTooBigMatchesHandCheckedPacket(t *testing.T) {
	udp := make([]byte, 8+1352)
	binary.BigEndian.PutUint16(udp[0:2], 1000)
	binary.BigEndian.PutUint16(udp[2:4], 2000)
	binary.BigEndian.PutUint16(udp[4:6], 1360)
	copy(udp[8:], fill(1352))
	pkt := ip6(17, a6, b6, udp)
	dst := make([]byte, 2000)
	n := PutTooBig(dst, pkt, 1300, r6[:])
	if n != 1280 {
		t.Fatalf("reply of %d bytes, want 1280 (RFC 4443: no more than the minimum MTU)", n)
	}
	if got := binary.BigEndian.Uint16(dst[4:6]); got != 1240 {
		t.Errorf("payload length %d, want 1240", got)
	}
	if dst[6] != protoICMPv6 || !bytes.Equal(dst[8:24], r6[:]) || !bytes.Equal(dst[24:40], a6[:]) {
		t.Errorf("header %x", dst[:40])
	}
	if want := []byte{2, 0, 0xf9, 0xc8, 0, 0, 0x05, 0x14}; !bytes.Equal(dst[40:48], want) {
		t.Errorf("ICMPv6 header % x, want % x", dst[40:48], want)
	}
	if !bytes.Equal(dst[48:n], pkt[:1232]) {
		t.Error("the quoted packet is not the first 1232 bytes of the original")
	}
	if l4Checksum(dst[:n]) != 0 {
		t.Error("checksum does not verify")
	}
}

// TestPacketTooBigNeverReportsBelow1280: on a path under 1280 bytes an IPv6 packet of at
// most 1280 goes as it is (nothing valid could be reported), a larger one learns 1280.
func TestPacketTooBigNeverReportsBelow1280(t *testing.T) {
	small := ip6(17, a6, b6, make([]byte, 1280-40))
	if got := Decide(small, 1220); got != Pass {
		t.Errorf("1280-byte packet on a 1220 path: %v, want Pass", got)
	}
	big := ip6(17, a6, b6, make([]byte, 1400-40))
	dst := make([]byte, 1280)
	if n := PutTooBig(dst, big, 1220, r6[:]); n == 0 || binary.BigEndian.Uint32(dst[44:48]) != 1280 {
		t.Errorf("n %d, MTU %d, want 1280", n, binary.BigEndian.Uint32(dst[44:48]))
	}
}

// TestNoICMPErrorsWhereTheRFCsForbidThem: RFC 1812 4.3.2.7 and RFC 4443 2.4(e).
func TestNoICMPErrorsWhereTheRFCsForbidThem(t *testing.T) {
	big := make([]byte, 1400)
	icmp4 := func(typ byte) []byte { b := append([]byte{typ, 0, 0, 0, 0, 0, 0, 0}, big...); return b }
	icmp6 := func(typ byte) []byte { b := append([]byte{typ, 0, 0, 0, 0, 0, 0, 0}, big...); return b }
	mc4, bc4, zero4, lo4, e4 := [4]byte{224, 0, 0, 5}, [4]byte{255, 255, 255, 255}, [4]byte{0, 0, 0, 0}, [4]byte{127, 0, 0, 1}, [4]byte{240, 0, 0, 1}
	mc6, zero6 := [16]byte{0xff, 0x02, 15: 1}, [16]byte{}
	hbh := func(next byte, rest []byte) []byte { return append([]byte{next, 0, 0, 0, 0, 0, 0, 0}, rest...) }
	cases := []struct {
		name string
		pkt  []byte
		want Action
	}{
		{"v4 TCP with DF", ip4(protoTCP, flagDF, a4, b4, nil, big), Answer},
		{"v4 echo request with DF", ip4(protoICMP, flagDF, a4, b4, nil, icmp4(8)), Answer},
		{"v4 ICMP destination unreachable", ip4(protoICMP, flagDF, a4, b4, nil, icmp4(3)), Drop},
		{"v4 ICMP time exceeded", ip4(protoICMP, flagDF, a4, b4, nil, icmp4(11)), Drop},
		{"v4 ICMP unknown type", ip4(protoICMP, flagDF, a4, b4, nil, icmp4(42)), Drop},
		{"v4 not the first fragment, DF", ip4(protoTCP, flagDF|100, a4, b4, nil, big), Drop},
		{"v4 to multicast", ip4(17, flagDF, a4, mc4, nil, big), Drop},
		{"v4 to broadcast", ip4(17, flagDF, a4, bc4, nil, big), Drop},
		{"v4 from 0.0.0.0", ip4(17, flagDF, zero4, b4, nil, big), Drop},
		{"v4 from loopback", ip4(17, flagDF, lo4, b4, nil, big), Drop},
		{"v4 from 240/4", ip4(17, flagDF, e4, b4, nil, big), Drop},
		{"v4 without DF", ip4(17, 0, a4, b4, nil, big), Fragment},
		{"v4 header cut", ip4(17, flagDF, a4, b4, nil, big)[:12], Drop},
		{"v6 UDP", ip6(17, a6, b6, big), Answer},
		{"v6 echo request", ip6(protoICMPv6, a6, b6, icmp6(128)), Answer},
		{"v6 destination unreachable", ip6(protoICMPv6, a6, b6, icmp6(1)), Drop},
		{"v6 packet too big", ip6(protoICMPv6, a6, b6, icmp6(2)), Drop},
		{"v6 ICMPv6 error behind hop-by-hop", ip6(0, a6, b6, hbh(protoICMPv6, icmp6(3))), Drop},
		{"v6 echo behind hop-by-hop", ip6(0, a6, b6, hbh(protoICMPv6, icmp6(129))), Answer},
		{"v6 to multicast (PTB is the exception)", ip6(17, a6, mc6, big), Answer},
		{"v6 from multicast", ip6(17, mc6, b6, big), Drop},
		{"v6 from unspecified", ip6(17, zero6, b6, big), Drop},
		{"v6 extension chain cut", ip6(0, a6, b6, nil), Drop},
		{"v6 header cut", ip6(17, a6, b6, big)[:30], Drop},
		{"not IP", append([]byte{0x50}, big...), Drop},
	}
	dst := make([]byte, 2000)
	for _, c := range cases {
		got := Decide(c.pkt, 1280)
		if got != c.want {
			t.Errorf("%s: Decide = %v, want %v", c.name, got, c.want)
		}
		n := PutTooBig(dst, c.pkt, 1280, r6[:])
		if c.pkt[0]>>4 == 4 {
			n = PutTooBig(dst, c.pkt, 1280, r4[:])
		}
		if (n > 0) != (c.want == Answer) {
			t.Errorf("%s: PutTooBig wrote %d bytes", c.name, n)
		}
	}
}

// TestFragmentsReassembleToTheOriginal: a 1500-byte IPv4 datagram without DF, with an
// option to copy and one not to, cut for a 1220-byte path: every piece fits, offsets are
// multiples of 8, only the last lacks MF, the header checksums verify, the copied option
// is in every piece and the other only in the first, and the payloads put together are
// the original's.
func TestFragmentsReassembleToTheOriginal(t *testing.T) {
	opts := []byte{0x94, 4, 0, 0, 7, 3, 1, 0} // router alert (copied), record route of 3 (not copied), pad
	payload := fill(1500 - 28)
	for _, tc := range []struct {
		name string
		frag uint16 // pkt's own fragment field
		opts []byte
	}{
		{"whole datagram", 0, nil},
		{"with options", 0, opts},
		{"itself a middle fragment", flagMF | 185, nil},
		{"itself the last fragment", 185, opts},
	} {
		pkt := ip4(17, tc.frag, a4, b4, tc.opts, payload)
		ihl := int(pkt[0]&0x0f) * 4
		const mtu = 600
		count, largest := Fragments4(pkt, mtu)
		if count == 0 || largest > mtu {
			t.Fatalf("%s: Fragments4 = %d, %d", tc.name, count, largest)
		}
		var got []byte
		dst := make([]byte, 2000)
		n, off, pieces := 0, 0, 0
		for off < len(payload) {
			prev := off
			for j := range dst { // no byte of an earlier piece may pass for this one's
				dst[j] = 0xee
			}
			n, off = Fragment4(dst, pkt, mtu, off)
			if n == 0 {
				t.Fatalf("%s: Fragment4 at %d failed", tc.name, prev)
			}
			pieces++
			f := dst[:n]
			hl := int(f[0]&0x0f) * 4
			fr := binary.BigEndian.Uint16(f[6:8])
			if n > mtu || int(binary.BigEndian.Uint16(f[2:4])) != n || Checksum(f[:hl]) != 0 {
				t.Errorf("%s: piece %d: length %d, header %x", tc.name, pieces, n, f[:hl])
			}
			if want := int(tc.frag&0x1fff)*8 + prev; int(fr&0x1fff)*8 != want {
				t.Errorf("%s: piece %d at offset %d, want %d", tc.name, pieces, int(fr&0x1fff)*8, want)
			}
			lastPiece := off == len(payload)
			if wantMF := !lastPiece || tc.frag&flagMF != 0; (fr&flagMF != 0) != wantMF {
				t.Errorf("%s: piece %d MF %v", tc.name, pieces, fr&flagMF != 0)
			}
			if !lastPiece && (n-hl)%8 != 0 {
				t.Errorf("%s: piece %d carries %d bytes, not a multiple of 8", tc.name, pieces, n-hl)
			}
			if prev == 0 && (hl != ihl || !bytes.Equal(f[0:2], pkt[0:2]) || !bytes.Equal(f[4:6], pkt[4:6]) ||
				!bytes.Equal(f[8:10], pkt[8:10]) || !bytes.Equal(f[12:ihl], pkt[12:ihl])) {
				t.Errorf("%s: first piece's header %x, original %x", tc.name, f[:hl], pkt[:ihl])
			}
			if prev > 0 && tc.opts != nil && !bytes.Equal(f[20:hl], []byte{0x94, 4, 0, 0}) {
				t.Errorf("%s: later piece's options %x, want only the router alert", tc.name, f[20:hl])
			}
			got = append(got, f[hl:]...)
		}
		if pieces != count {
			t.Errorf("%s: %d pieces, Fragments4 said %d", tc.name, pieces, count)
		}
		if !bytes.Equal(got, payload) {
			t.Errorf("%s: reassembled payload differs", tc.name)
		}
	}
}

// TestFragment4RefusesDFAndTinyMTU: a DF packet is never fragmented, nor cut below 8
// bytes of payload.
func TestFragment4RefusesDFAndTinyMTU(t *testing.T) {
	dst := make([]byte, 2000)
	if n, _ := Fragment4(dst, ip4(17, flagDF, a4, b4, nil, fill(1000)), 576, 0); n != 0 {
		t.Error("fragmented a DF packet")
	}
	if n, _ := Fragment4(dst, ip4(17, 0, a4, b4, nil, fill(1000)), 27, 0); n != 0 {
		t.Error("made a fragment with less than 8 bytes of payload")
	}
	if c, _ := Fragments4(ip4(17, 0, a4, b4, nil, fill(1000)), 27); c != 0 {
		t.Error("Fragments4 counts pieces for a 27-byte MTU")
	}
}

// TestClampMSSKeepsTheChecksumRight: SYN and SYN-ACK, IPv4 and IPv6, the MSS option at an
// even and an odd offset: the MSS drops to the path's and the incrementally updated
// checksum equals a full recomputation.
func TestClampMSSKeepsTheChecksumRight(t *testing.T) {
	mssOpt := []byte{2, 4, 0x05, 0xb4}                                                 // 1460, at offset 20
	oddOpt := []byte{1, 2, 4, 0xff, 0xc4, 1, 1, 1}                                     // NOP then MSS 65476, value at offset 23
	wsOpt := []byte{1, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 2, 4, 0x23, 0x28} // MSS 9000 last
	for _, tc := range []struct {
		name  string
		pkt   []byte
		mtu   int
		want  uint16
		wantC bool
	}{
		{"v4 SYN", ip4(protoTCP, flagDF, a4, b4, nil, tcpSeg(0x02, mssOpt, nil)), 1220, 1180, true},
		{"v4 SYN-ACK odd offset", ip4(protoTCP, flagDF, a4, b4, nil, tcpSeg(0x12, oddOpt, nil)), 1220, 1180, true},
		{"v4 SYN, MSS after other options", ip4(protoTCP, flagDF, a4, b4, nil, tcpSeg(0x02, wsOpt, nil)), 1400, 1360, true},
		{"v4 SYN already small", ip4(protoTCP, flagDF, a4, b4, nil, tcpSeg(0x02, mssOpt, nil)), 1500, 1460, false},
		{"v4 ACK untouched", ip4(protoTCP, flagDF, a4, b4, nil, tcpSeg(0x10, mssOpt, nil)), 1220, 1460, false},
		{"v6 SYN", ip6(protoTCP, a6, b6, tcpSeg(0x02, mssOpt, nil)), 1220, 1160, true},
		{"v6 SYN-ACK odd offset", ip6(protoTCP, a6, b6, tcpSeg(0x12, oddOpt, nil)), 1300, 1240, true},
		{"v6 SYN behind hop-by-hop", ip6(0, a6, b6, append([]byte{protoTCP, 0, 0, 0, 0, 0, 0, 0}, tcpSeg(0x02, mssOpt, nil)...)), 1220, 1160, true},
	} {
		pkt := tc.pkt
		setTCPChecksum(pkt)
		if l4Checksum(pkt) != 0 {
			t.Fatalf("%s: test packet's checksum is wrong", tc.name)
		}
		changed := ClampMSS(pkt, tc.mtu)
		if changed != tc.wantC {
			t.Errorf("%s: changed = %v", tc.name, changed)
		}
		_, l4, _ := upper6(pkt)
		if pkt[0]>>4 == 4 {
			l4 = pkt[20:]
		}
		if got := mssOf(l4); got != tc.want {
			t.Errorf("%s: MSS %d, want %d", tc.name, got, tc.want)
		}
		if l4Checksum(pkt) != 0 {
			t.Errorf("%s: checksum wrong after clamping", tc.name)
		}
	}
}

// mssOf reads the MSS option of a TCP header, 0 if none.
func mssOf(tcp []byte) uint16 {
	opts := tcp[20 : int(tcp[12]>>4)*4]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0:
			return 0
		case 1:
			i++
			continue
		}
		if opts[i] == 2 {
			return binary.BigEndian.Uint16(opts[i+2:])
		}
		i += int(opts[i+1])
	}
	return 0
}

// TestNoAllocations: the hot-path functions allocate nothing.
func TestNoAllocations(t *testing.T) {
	syn := ip4(protoTCP, flagDF, a4, b4, nil, tcpSeg(0x02, []byte{2, 4, 0x05, 0xb4}, nil))
	big := ip4(protoTCP, flagDF, a4, b4, nil, fill(1480))
	nodf := ip4(17, 0, a4, b4, nil, fill(1480))
	big6 := ip6(17, a6, b6, fill(1400))
	dst := make([]byte, 2000)
	allocs := testing.AllocsPerRun(100, func() {
		syn[len(syn)-2] = 0x05 // back to 1460 so that every run clamps
		syn[len(syn)-1] = 0xb4
		ClampMSS(syn, 1220)
		Decide(big, 1220)
		PutTooBig(dst, big, 1220, r4[:])
		PutTooBig(dst, big6, 1300, r6[:])
		for off := 0; off < 1480; {
			var n int
			if n, off = Fragment4(dst, nodf, 1220, off); n == 0 {
				break
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per run", allocs)
	}
}

// FuzzPacket: any bytes and MTU: nothing panics, an ICMP error written has right
// checksums and fits its bound, fragments fit the MTU with right header checksums and
// carry the payload, and clamping keeps a right TCP checksum right.
func FuzzPacket(f *testing.F) {
	f.Add(ip4(protoTCP, flagDF, a4, b4, nil, tcpSeg(0x02, []byte{2, 4, 0x05, 0xb4}, fill(10))), 1220)
	f.Add(ip4(17, 0, a4, b4, []byte{0x94, 4, 0, 0}, fill(1400)), 600)
	f.Add(ip6(protoTCP, a6, b6, tcpSeg(0x12, []byte{1, 2, 4, 0xff, 0xc4}, nil)), 1280)
	f.Add(ip6(0, a6, b6, append([]byte{17, 0, 0, 0, 0, 0, 0, 0}, fill(1400)...)), 1300)
	f.Add(ip6(protoICMPv6, a6, b6, fill(1400)), 1300)
	f.Fuzz(func(t *testing.T, pkt []byte, mtu int) {
		mtu = 1 + (mtu&0xffff)%65535
		dst := make([]byte, 70000)
		act := Decide(pkt, mtu)
		src := r4[:]
		if len(pkt) > 0 && pkt[0]>>4 == 6 {
			src = r6[:]
		}
		if n := PutTooBig(dst, pkt, mtu, src); n > 0 {
			if act != Answer {
				t.Fatalf("PutTooBig answered a packet Decide says %v", act)
			}
			if src := dst[:n]; src[0]>>4 == 4 {
				if n > MaxReply4 || Checksum(dst[:20]) != 0 || Checksum(dst[20:n]) != 0 {
					t.Fatalf("bad ICMPv4 error %x", dst[:n])
				}
			} else if n > MaxReply6 || l4Checksum(dst[:n]) != 0 {
				t.Fatalf("bad ICMPv6 error %x", dst[:n])
			}
		}
		if act == Fragment {
			ihl := int(pkt[0]&0x0f) * 4
			payload := pkt[ihl:binary.BigEndian.Uint16(pkt[2:4])]
			var got []byte
			for off := 0; off < len(payload); {
				var n int
				n, off = Fragment4(dst, pkt, mtu, off)
				if n == 0 {
					t.Fatalf("Fragment4 failed at %d for a packet Decide fragments", off)
				}
				hl := int(dst[0]&0x0f) * 4
				if n > mtu || Checksum(dst[:hl]) != 0 {
					t.Fatalf("fragment of %d bytes for MTU %d, header %x", n, mtu, dst[:hl])
				}
				got = append(got, dst[hl:n]...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("fragments do not carry the payload")
			}
		}
		cp := append([]byte(nil), pkt...)
		valid := false
		func() {
			defer func() { _ = recover() }() // l4Checksum of the test may not parse it
			valid = isTCP(cp) && l4Checksum(cp) == 0
		}()
		if ClampMSS(cp, mtu) && valid && l4Checksum(cp) != 0 {
			t.Fatalf("clamping broke the checksum of %x", pkt)
		}
	})
}

func isTCP(p []byte) bool {
	if len(p) < 20 {
		return false
	}
	switch p[0] >> 4 {
	case 4:
		ihl := int(p[0]&0x0f) * 4
		return p[9] == protoTCP && ihl >= 20 && len(p) >= ihl+20
	case 6:
		if len(p) < 40 {
			return false
		}
		proto, l4, ok := upper6(p)
		return ok && proto == protoTCP && len(l4) >= 20
	}
	return false
}

// TestClampMSSLeavesAuthenticatedSegmentsAlone: an IPv6 TCP SYN behind an
// Authentication Header (IPsec AH, RFC 4302) is not changed: the AH's integrity check
// covers the TCP header, and a clamped MSS would make the receiver drop every SYN of
// the connection. (An IPv4 one is already left alone: its protocol is AH, not TCP.)
func TestClampMSSLeavesAuthenticatedSegmentsAlone(t *testing.T) {
	ah := func(next byte) []byte { // 24 bytes: 12 fixed, a 12-byte ICV; length (24/4)-2
		h := make([]byte, 24)
		h[0], h[1] = next, 4
		h[7] = 1 // SPI
		h[11] = 1
		return h
	}
	syn := tcpSeg(0x02, []byte{2, 4, 0x05, 0xb4}, nil)
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{
		{"AH then TCP", ip6(51, a6, b6, append(ah(protoTCP), syn...))},
		{"hop-by-hop, AH, TCP", ip6(0, a6, b6, append(append([]byte{51, 0, 0, 0, 0, 0, 0, 0}, ah(protoTCP)...), syn...))},
	} {
		orig := append([]byte(nil), tc.pkt...)
		if ClampMSS(tc.pkt, 1220) || !bytes.Equal(tc.pkt, orig) {
			t.Errorf("%s: changed under AH:\n% x\n% x", tc.name, orig, tc.pkt)
		}
	}
}

// TestNoFragmentsBeyondTheLargestDatagram: a fragment whose offset and payload reach
// past the largest datagram IPv4 has (65535 bytes) is not cut further: a piece's offset
// would not fit the 13 bits of its field and would spill into the flags (DF, MF).
func TestNoFragmentsBeyondTheLargestDatagram(t *testing.T) {
	const off = 8180 // 65440 bytes
	pkt := ip4(17, off, a4, b4, nil, fill(2000))
	if n, _ := Fragments4(pkt, 1220); n != 0 {
		t.Errorf("Fragments4 = %d pieces", n)
	}
	if a := Decide(pkt, 1220); a != Drop {
		t.Errorf("Decide = %v, want drop", a)
	}
	dst := make([]byte, 2000)
	for o := 0; o < 2000; {
		n, next := Fragment4(dst, pkt, 1220, o)
		if n == 0 {
			break
		}
		if fr := binary.BigEndian.Uint16(dst[6:8]); fr&flagDF != 0 || int(fr&0x1fff)*8 != off*8+o {
			t.Fatalf("piece at %d: fragment field %#04x", o, fr)
		}
		o = next
	}
}
