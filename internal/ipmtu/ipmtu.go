// Package ipmtu is what the packet pump does with an inner IP packet that is larger
// than the path to its peer carries, as a router does with one larger than its next
// hop: it answers the sender with ICMP Fragmentation Needed (IPv4 with DF, RFC 1191,
// RFC 1812 4.3.2) or ICMPv6 Packet Too Big (RFC 4443 3.2, RFC 8201), or fragments an
// IPv4 packet without DF (RFC 791); and it clamps the MSS option of TCP SYNs to the
// path (RFC 879, RFC 6691), with the checksum updated incrementally (RFC 1624).
//
// Every function works on caller-provided buffers and allocates nothing. The input
// packet is hostile: any byte string is handled without panic, and what cannot be
// parsed gets no ICMP and is not changed.
package ipmtu

import "encoding/binary"

const (
	// MinMTU6 is the smallest MTU an IPv6 link may have (RFC 8200 5): Packet Too Big
	// never reports less.
	MinMTU6 = 1280
	// MinMTU4 is the smallest MTU an IPv4 router may report (RFC 791, RFC 1191).
	MinMTU4 = 68

	// MaxReply4 bounds an ICMPv4 error: no more than 576 bytes (RFC 1812 4.3.2.3).
	MaxReply4 = 576
	// MaxReply6 bounds an ICMPv6 error: no more than the IPv6 minimum MTU (RFC 4443 2.4(c)).
	MaxReply6 = MinMTU6

	protoICMP   = 1
	protoTCP    = 6
	protoICMPv6 = 58

	flagDF = 0x4000
	flagMF = 0x2000
)

// Action is what to do with a packet larger than the path's MTU.
type Action uint8

const (
	// Drop: the packet is lost and nothing is answered — the rules forbid an ICMP
	// error about it (an ICMP error, a fragment other than the first, a source that is
	// not one host, a multicast or broadcast IPv4 destination), or it does not parse.
	Drop Action = iota
	// Answer: drop it and answer the sender with PutTooBig.
	Answer
	// Fragment: an IPv4 packet without DF; send it in pieces made with Fragment4.
	Fragment
	// Pass: an IPv6 packet of at most 1280 bytes on a path that carries less. No
	// Packet Too Big may report less than 1280 (RFC 8200), so the packet goes as it is
	// (the path may still lose it; TCP avoids that with the clamped MSS).
	Pass
)

func (a Action) String() string {
	switch a {
	case Drop:
		return "drop"
	case Answer:
		return "answer"
	case Fragment:
		return "fragment"
	case Pass:
		return "pass"
	}
	return "action?"
}

// Decide says what to do with pkt, larger than mtu (the largest inner packet the path
// carries).
func Decide(pkt []byte, mtu int) Action {
	if len(pkt) == 0 {
		return Drop
	}
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || len(pkt) < ihl {
			return Drop
		}
		frag := binary.BigEndian.Uint16(pkt[6:8])
		if frag&flagDF == 0 {
			if n, _ := Fragments4(pkt, mtu); n == 0 {
				return Drop
			}
			return Fragment
		}
		if !mayAnswer4(pkt, ihl, frag) {
			return Drop
		}
		return Answer
	case 6:
		if len(pkt) < 40 {
			return Drop
		}
		if mtu < MinMTU6 && len(pkt) <= MinMTU6 {
			return Pass
		}
		if !mayAnswer6(pkt) {
			return Drop
		}
		return Answer
	}
	return Drop
}

// mayAnswer4 applies RFC 1812 4.3.2.7 (and RFC 1122 3.2.2): no ICMP error about an ICMP
// error, a fragment other than the first, a packet to a multicast or broadcast address,
// or from an address that is not one host (0/8, 127/8, multicast, 240/4).
func mayAnswer4(pkt []byte, ihl int, frag uint16) bool {
	if frag&0x1fff != 0 {
		return false
	}
	src, dst := pkt[12], pkt[16]
	if src == 0 || src == 127 || src >= 224 || dst >= 224 {
		return false // 224/4 multicast, 240/4 reserved, 255.255.255.255 broadcast
	}
	if pkt[9] == protoICMP {
		if len(pkt) < ihl+1 {
			return false
		}
		return icmp4Query(pkt[ihl])
	}
	return true
}

// icmp4Query reports whether an ICMPv4 type is a query or reply rather than an error:
// echo (0, 8), router advertisement and solicitation (9, 10), timestamp (13, 14),
// information (15, 16), address mask (17, 18). Unknown types count as errors.
func icmp4Query(typ byte) bool {
	switch typ {
	case 0, 8, 9, 10, 13, 14, 15, 16, 17, 18:
		return true
	}
	return false
}

// mayAnswer6 applies RFC 4443 2.4(e): no ICMPv6 error about an ICMPv6 error, or about a
// packet from an address that is not one host (unspecified, multicast). Packet Too Big
// is the exception the RFC makes for multicast destinations (2.4(e.2)), so they are
// answered.
func mayAnswer6(pkt []byte) bool {
	src := pkt[8:24]
	if src[0] == 0xff || isZero(src) || isLoopback6(src) {
		return false
	}
	proto, l4, ok := upper6(pkt)
	if !ok {
		return false
	}
	if proto == protoICMPv6 {
		return len(l4) >= 1 && l4[0] >= 128 // 0..127 are errors (RFC 4443 2.1)
	}
	return true
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func isLoopback6(b []byte) bool { return isZero(b[:15]) && b[15] == 1 }

// maxExtHeaders bounds the IPv6 extension headers upper6 steps over.
const maxExtHeaders = 8

// upper6 finds the upper-layer protocol of an IPv6 packet and what follows its headers.
// ok is false when the chain does not parse within maxExtHeaders, or when the packet
// is a fragment other than the first (its upper-layer header is elsewhere); the upper
// layer may be empty.
func upper6(pkt []byte) (proto byte, l4 []byte, ok bool) {
	proto, l4, ok, _ = walk6(pkt)
	return proto, l4, ok
}

// walk6 is upper6, and reports whether the chain holds an Authentication Header.
func walk6(pkt []byte) (proto byte, l4 []byte, ok, ah bool) {
	proto, off := pkt[6], 40
	for range maxExtHeaders {
		switch proto {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(pkt) < off+8 {
				return 0, nil, false, ah
			}
			proto, off = pkt[off], off+(int(pkt[off+1])+1)*8
		case 44: // fragment
			if len(pkt) < off+8 || binary.BigEndian.Uint16(pkt[off+2:off+4])>>3 != 0 {
				return 0, nil, false, ah
			}
			proto, off = pkt[off], off+8
		case 51: // authentication header: length in 4-byte units, less 2
			if len(pkt) < off+8 {
				return 0, nil, false, ah
			}
			proto, off, ah = pkt[off], off+(int(pkt[off+1])+2)*4, true
		default:
			if off > len(pkt) {
				return 0, nil, false, ah
			}
			return proto, pkt[off:], true, ah
		}
	}
	return 0, nil, false, ah
}

// PutTooBig writes into dst the ICMP error that tells pkt's sender the path carries no
// more than mtu bytes: ICMPv4 Destination Unreachable, Fragmentation Needed (type 3 code
// 4, next-hop MTU) for IPv4, ICMPv6 Packet Too Big (type 2, MTU at least 1280) for IPv6.
// src is the address the error comes from (4 or 16 bytes, the family of pkt); it goes to
// pkt's source. The error quotes as much of pkt as fits in 576 (IPv4) or 1280 (IPv6)
// bytes. It returns the length written, or 0 if dst is shorter than that, src is of the
// wrong family, or Decide would not answer pkt.
func PutTooBig(dst, pkt []byte, mtu int, src []byte) int {
	if Decide(pkt, mtu) != Answer {
		return 0
	}
	if pkt[0]>>4 == 4 {
		return putTooBig4(dst, pkt, mtu, src)
	}
	return putTooBig6(dst, pkt, mtu, src)
}

func putTooBig4(dst, pkt []byte, mtu int, src []byte) int {
	if len(src) != 4 {
		return 0
	}
	quote := min(len(pkt), MaxReply4-28)
	n := 28 + quote
	if len(dst) < n {
		return 0
	}
	mtu = max(min(mtu, 0xffff), MinMTU4)
	h := dst[:20]
	h[0], h[1] = 0x45, 0xc0 // internetwork control (RFC 1812 4.3.2.5)
	binary.BigEndian.PutUint16(h[2:4], uint16(n))
	binary.BigEndian.PutUint32(h[4:8], 0) // id 0, no flags: it is never fragmented
	h[8], h[9] = 64, protoICMP
	h[10], h[11] = 0, 0
	copy(h[12:16], src)
	copy(h[16:20], pkt[12:16])
	binary.BigEndian.PutUint16(h[10:12], ^fold(sum(h, 0)))
	m := dst[20:n]
	m[0], m[1], m[2], m[3] = 3, 4, 0, 0
	binary.BigEndian.PutUint16(m[4:6], 0)
	binary.BigEndian.PutUint16(m[6:8], uint16(mtu))
	copy(m[8:], pkt[:quote])
	binary.BigEndian.PutUint16(m[2:4], ^fold(sum(m, 0)))
	return n
}

func putTooBig6(dst, pkt []byte, mtu int, src []byte) int {
	if len(src) != 16 {
		return 0
	}
	quote := min(len(pkt), MaxReply6-48)
	n := 48 + quote
	if len(dst) < n {
		return 0
	}
	mtu = max(mtu, MinMTU6)
	h := dst[:40]
	binary.BigEndian.PutUint32(h[0:4], 6<<28)
	binary.BigEndian.PutUint16(h[4:6], uint16(n-40))
	h[6], h[7] = protoICMPv6, 64
	copy(h[8:24], src)
	copy(h[24:40], pkt[8:24])
	m := dst[40:n]
	m[0], m[1], m[2], m[3] = 2, 0, 0, 0
	binary.BigEndian.PutUint32(m[4:8], uint32(mtu))
	copy(m[8:], pkt[:quote])
	binary.BigEndian.PutUint16(m[2:4], ^fold(sum(m, pseudo6(h, len(m), protoICMPv6))))
	return n
}

// pseudo6 is the sum of the IPv6 pseudo-header of an upper-layer message of length n
// under the IPv6 header h (RFC 8200 8.1).
func pseudo6(h []byte, n int, proto byte) uint32 {
	s := sum(h[8:40], 0)
	return s + uint32(n>>16) + uint32(n&0xffff) + uint32(proto)
}

// sum adds b to s as big-endian 16-bit words (RFC 1071); an odd last byte is padded.
func sum(b []byte, s uint32) uint32 {
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
		if s >= 1<<31 {
			s = s&0xffff + s>>16
		}
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

// fold folds a sum to 16 bits with end-around carry.
func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// Checksum is the Internet checksum of b (RFC 1071), for tests and callers that check.
func Checksum(b []byte) uint16 { return ^fold(sum(b, 0)) }

// fragHeaderLen is the length of the header of a fragment other than the first: the
// fixed header and the options whose "copied" bit is set (RFC 791 3.2), padded to 4.
func fragHeaderLen(h []byte) int { return (20 + copiedOptions(nil, h[20:]) + 3) &^ 3 }

// copiedOptions walks the IPv4 options opts and returns the length of those whose
// "copied" bit is set (RFC 791 3.2), copying them one after the other into dst unless dst
// is nil. The walk stops at End of Options or at an option whose length does not fit.
func copiedOptions(dst, opts []byte) int {
	n := 0
	for i := 0; i < len(opts); {
		t := opts[i]
		if t == 0 {
			break
		}
		if t == 1 {
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			break
		}
		l := int(opts[i+1])
		if t&0x80 != 0 {
			if dst != nil {
				copy(dst[n:], opts[i:i+l])
			}
			n += l
		}
		i += l
	}
	return n
}

// Fragment4 writes into dst the fragment of pkt, an IPv4 packet without DF, that starts
// at payload offset off (0 for the first), as large as mtu allows, and returns its length
// and the payload offset of the next fragment; next equals the payload's length after the
// last. The first fragment carries pkt's whole header; the others its fixed header and
// the options to be copied (RFC 791 3.2). pkt may itself be a fragment: the pieces keep its
// offset and, on the last, its More Fragments flag. The payload is what pkt's total length
// says (bytes beyond are ignored). It returns n = 0 when dst is too short, mtu leaves no
// room for 8 bytes of payload, or pkt is not such a packet (among them a fragment that
// reaches past 65535 bytes); next is then off.
func Fragment4(dst, pkt []byte, mtu, off int) (n, next int) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return 0, off
	}
	ihl := int(pkt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	frag := binary.BigEndian.Uint16(pkt[6:8])
	if ihl < 20 || total < ihl || total > len(pkt) || frag&flagDF != 0 {
		return 0, off
	}
	payload := pkt[ihl:total]
	if off < 0 || off >= len(payload) || off%8 != 0 || beyond(frag, len(payload)) {
		return 0, off
	}
	var hl int
	if off == 0 {
		hl = ihl
	} else {
		hl = fragHeaderLen(pkt[:ihl])
	}
	room := (mtu - hl) &^ 7
	if room < 8 {
		return 0, off
	}
	size := min(room, len(payload)-off)
	last := off+size == len(payload)
	n = hl + size
	if len(dst) < n {
		return 0, off
	}
	// The header: whole for the first fragment, fixed part and copied options for the rest.
	if off == 0 {
		copy(dst, pkt[:ihl])
	} else {
		copy(dst, pkt[:20])
		w := 20 + copiedOptions(dst[20:], pkt[20:ihl])
		for ; w < hl; w++ {
			dst[w] = 0 // end of options, padding
		}
		dst[0] = 0x40 | byte(hl/4)
	}
	copy(dst[hl:n], payload[off:off+size])
	base := int(frag&0x1fff) * 8
	f := uint16((base + off) / 8)
	if !last || frag&flagMF != 0 {
		f |= flagMF
	}
	binary.BigEndian.PutUint16(dst[2:4], uint16(n))
	binary.BigEndian.PutUint16(dst[6:8], f)
	dst[10], dst[11] = 0, 0
	binary.BigEndian.PutUint16(dst[10:12], ^fold(sum(dst[:hl], 0)))
	return n, off + size
}

// beyond reports whether a fragment at frag's offset with plen bytes of payload reaches
// past the largest datagram IPv4 has: its pieces' offsets would overflow their 13 bits.
func beyond(frag uint16, plen int) bool { return int(frag&0x1fff)*8+plen > 0xffff }

// Fragments4 is how many fragments Fragment4 makes of pkt for mtu, and the largest of
// them; 0, 0 if it makes none.
func Fragments4(pkt []byte, mtu int) (count, largest int) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return 0, 0
	}
	ihl := int(pkt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if ihl < 20 || total < ihl || total > len(pkt) || binary.BigEndian.Uint16(pkt[6:8])&flagDF != 0 {
		return 0, 0
	}
	plen := total - ihl
	if plen == 0 || beyond(binary.BigEndian.Uint16(pkt[6:8]), plen) {
		return 0, 0
	}
	first := (mtu - ihl) &^ 7
	if first < 8 {
		return 0, 0
	}
	if plen <= first {
		return 1, total
	}
	rest := (mtu - fragHeaderLen(pkt[:ihl])) &^ 7
	if rest < 8 {
		return 0, 0
	}
	return 1 + (plen-first+rest-1)/rest, ihl + first
}

// ClampMSS lowers the MSS option of a TCP SYN (or SYN-ACK) in pkt, IPv4 or IPv6, to what
// a path of mtu bytes carries: mtu − 40 for IPv4, mtu − 60 for IPv6 (fixed IP and TCP
// headers, RFC 6691). The TCP checksum is updated incrementally (RFC 1624). It reports
// whether it changed pkt; any other packet, one it cannot parse, and an IPv6 one behind
// an Authentication Header (whose integrity check covers the TCP header) are left alone.
func ClampMSS(pkt []byte, mtu int) bool {
	if len(pkt) < 20 {
		return false
	}
	var tcp []byte
	var mss int
	switch pkt[0] >> 4 {
	case 4:
		if pkt[9] != protoTCP {
			return false
		}
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 || len(pkt) < ihl {
			return false
		}
		tcp, mss = pkt[ihl:], mtu-40
	case 6:
		if len(pkt) < 40 {
			return false
		}
		proto, l4, ok, ah := walk6(pkt)
		if !ok || proto != protoTCP || ah {
			return false // behind AH the TCP header is under an integrity check
		}
		tcp, mss = l4, mtu-60
	default:
		return false
	}
	if len(tcp) < 20 || tcp[13]&0x02 == 0 { // SYN
		return false
	}
	doff := int(tcp[12]>>4) * 4
	if doff < 20 || doff > len(tcp) || mss <= 0 {
		return false
	}
	opts := tcp[20:doff]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0:
			return false
		case 1:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return false
		}
		if opts[i] == 2 && opts[i+1] == 4 {
			at := 20 + i + 2 // offset of the value in the TCP header
			old := binary.BigEndian.Uint16(tcp[at:])
			if int(old) <= mss {
				return false
			}
			nw := uint16(min(mss, 0xffff))
			binary.BigEndian.PutUint16(tcp[at:], nw)
			if at%2 == 1 {
				// The value straddles two 16-bit words of the sum: it counts byte-swapped.
				old, nw = old>>8|old<<8, nw>>8|nw<<8
			}
			c := binary.BigEndian.Uint16(tcp[16:18])
			binary.BigEndian.PutUint16(tcp[16:18], updateChecksum(c, old, nw))
			return true
		}
		i += int(opts[i+1])
	}
	return false
}

// updateChecksum is the checksum c after a 16-bit word of the data changed from old to
// nw: HC' = ~(~HC + ~m + m') (RFC 1624 3, eqn. 3).
func updateChecksum(c, old, nw uint16) uint16 {
	s := uint32(^c) + uint32(^old) + uint32(nw)
	return ^fold(s)
}
