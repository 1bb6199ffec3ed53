package tunnel

import (
	"encoding/binary"
	"net/netip"
)

const (
	protoTCP = 6
	protoUDP = 17
)

// dstAddr returns the destination of an IPv4 or IPv6 packet.
func dstAddr(pkt []byte) (netip.Addr, bool) { return packetAddr(pkt, 16, 24) }

// srcAddr returns the source of an IPv4 or IPv6 packet.
func srcAddr(pkt []byte) (netip.Addr, bool) { return packetAddr(pkt, 12, 8) }

// packetAddr reads the address at offset v4 of an IPv4 header or v6 of an IPv6 header.
func packetAddr(pkt []byte, v4, v6 int) (netip.Addr, bool) {
	if len(pkt) == 0 {
		return netip.Addr{}, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte(pkt[v4 : v4+4])), true
	case 6:
		if len(pkt) < 40 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16([16]byte(pkt[v6 : v6+16])), true
	}
	return netip.Addr{}, false
}

// linkScoped reports whether dst is an address a packet never leaves its link for:
// link-local unicast and multicast, interface-local multicast, and the IPv4 limited
// broadcast. The kernel sends such packets on every interface it brings up (IPv6
// router solicitations and MLD reports), so when no peer's prefixes cover them they are
// housekeeping, not traffic that went astray, and are counted apart from no_route.
func linkScoped(dst netip.Addr) bool {
	return dst.IsLinkLocalUnicast() || dst.IsLinkLocalMulticast() || dst.IsInterfaceLocalMulticast() ||
		dst == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// flowHash maps a packet's flow (addresses, protocol and, for TCP and UDP, ports) to a
// number, so that every packet of one flow goes on the same stream.
func flowHash(pkt []byte) uint16 {
	const (
		offset = 2166136261
		prime  = 16777619
	)
	h := uint32(offset)
	mix := func(b []byte) {
		for _, c := range b {
			h = (h ^ uint32(c)) * prime
		}
	}
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0x0f) * 4
		proto := pkt[9]
		mix(pkt[12:20])
		mix(pkt[9:10])
		fragOff := binary.BigEndian.Uint16(pkt[6:8]) & 0x1fff
		if (proto == protoTCP || proto == protoUDP) && fragOff == 0 && ihl >= 20 && len(pkt) >= ihl+4 {
			mix(pkt[ihl : ihl+4])
		}
	case 6:
		proto := pkt[6]
		mix(pkt[8:40])
		mix(pkt[6:7])
		if (proto == protoTCP || proto == protoUDP) && len(pkt) >= 44 {
			mix(pkt[40:44])
		}
	}
	return uint16(h ^ h>>16)
}
