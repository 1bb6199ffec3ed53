package mesh

// natmsg.go encodes and parses the mesh control messages that get members through NATs
// (docs/protocol.md 10.5): PUNCH_REQUEST and PUNCH, by which a member both sides have a
// session with makes them send handshakes to each other at the same time, and the
// RELAY_* messages by which a member that relays sets up a route between two others.
// The gossip Engine does not handle them: the node routes them (IsNATMessage) before it
// calls Engine.Handle. Like messages.go, every parser takes hostile input: exact
// lengths, bounded counts, no allocation beyond what a checked count justifies.

import (
	"encoding/binary"
	"net/netip"
)

// Control message types of NAT traversal.
const (
	TypePunchRequest byte = 0x86 // target key: "make target and me punch"
	TypePunch        byte = 0x87 // peer key and the addresses the coordinator sees it at
	TypeRelayRequest byte = 0x88 // target key: "relay between target and me"
	TypeRelayGrant   byte = 0x89 // peer key, send id, recv id: the route pair is open
	TypeRelayRefused byte = 0x8A // target key, reason
	TypeRelayClose   byte = 0x8B // peer key: "I no longer use the route to peer"
)

// IsNATMessage says whether typ is one of the NAT traversal messages, which the node
// handles itself rather than handing them to Engine.Handle.
func IsNATMessage(typ byte) bool {
	return typ >= TypePunchRequest && typ <= TypeRelayClose
}

// Reasons of RELAY_REFUSED.
const (
	RefuseNotRelay   uint8 = 1 // the asked member does not relay
	RefuseNoSession  uint8 = 2 // it has no session with the target
	RefuseFull       uint8 = 3 // it forwards as many route pairs as it will
	RefuseShareFull  uint8 = 4 // the requester is an end of as many pairs as one member may be
	RefuseNotAllowed uint8 = 5 // the target or the requester is not a known member
)

// Size limits of the NAT message bodies.
const (
	// MaxPunchAddrs bounds the addresses of one PUNCH.
	MaxPunchAddrs = 8
	keyBodyLen    = 32
	// MaxPunchBody is the longest PUNCH body: the key, the count and eight IPv6 addresses.
	MaxPunchBody      = 32 + 1 + MaxPunchAddrs*(1+16+2)
	relayGrantLen     = 32 + 4 + 4
	relayRefusedLen   = 32 + 1
	minPunchAddrBytes = 1 + 4 + 2
)

// AppendKey appends the body of PUNCH_REQUEST, RELAY_REQUEST or RELAY_CLOSE: one key.
func AppendKey(b []byte, key [32]byte) []byte {
	return append(b, key[:]...)
}

// ParseKey parses the body of PUNCH_REQUEST, RELAY_REQUEST or RELAY_CLOSE.
func ParseKey(b []byte) ([32]byte, error) {
	if len(b) != keyBodyLen {
		return [32]byte{}, badMsg("key body of %d bytes", len(b))
	}
	return [32]byte(b), nil
}

// Punch is the body of PUNCH: the member to punch to, and the addresses the coordinator
// sees it at over UDP (none when its session to the coordinator is not on UDP).
type Punch struct {
	Peer  [32]byte
	Addrs []netip.AddrPort
}

// wireAddrOK says whether an address (unmapped) and port may appear in PUNCH.
func wireAddrOK(a netip.Addr, port uint16) bool {
	return a.IsValid() && port != 0 && !a.IsUnspecified() && !a.IsMulticast() && !a.Is4In6()
}

// AppendPunch appends the body of PUNCH. An IPv4-mapped IPv6 address goes on the wire
// as IPv4.
func AppendPunch(b []byte, p Punch) ([]byte, error) {
	if len(p.Addrs) > MaxPunchAddrs {
		return b, badMsg("punch of %d addresses (limit %d)", len(p.Addrs), MaxPunchAddrs)
	}
	for _, ap := range p.Addrs {
		if !wireAddrOK(ap.Addr().Unmap(), ap.Port()) {
			return b, badMsg("punch address %v", ap)
		}
	}
	b = append(b, p.Peer[:]...)
	b = append(b, byte(len(p.Addrs)))
	for _, ap := range p.Addrs {
		b = appendAddr(b, ap.Addr().Unmap())
		b = binary.LittleEndian.AppendUint16(b, ap.Port())
	}
	return b, nil
}

// ParsePunch parses the body of PUNCH. Its Addrs are a new slice of exactly the
// addresses the body holds (nil for none).
func ParsePunch(b []byte) (Punch, error) {
	if len(b) < 33 || len(b) > MaxPunchBody {
		return Punch{}, badMsg("punch of %d bytes", len(b))
	}
	n := int(b[32])
	if n > MaxPunchAddrs || len(b) < 33+n*minPunchAddrBytes {
		return Punch{}, badMsg("punch of %d addresses in %d bytes", n, len(b))
	}
	p := Punch{Peer: [32]byte(b[:32])}
	if n > 0 {
		p.Addrs = make([]netip.AddrPort, 0, n)
	}
	rd := reader{b: b[33:]}
	for i := range n {
		a := rd.addr()
		port := rd.u16()
		if rd.bad {
			return Punch{}, badMsg("punch truncated at address %d", i)
		}
		if !wireAddrOK(a, port) {
			return Punch{}, badMsg("punch address %v port %d", a, port)
		}
		p.Addrs = append(p.Addrs, netip.AddrPortFrom(a, port))
	}
	if len(rd.b) != 0 {
		return Punch{}, badMsg("%d bytes after the punch addresses", len(rd.b))
	}
	return p, nil
}

// RelayGrant is the body of RELAY_GRANT, as its receiver (one end of the route pair)
// reads it: the other end, the relay id it puts on the messages it sends to Peer
// through the relay, and the one the relay puts on the messages from Peer to it.
type RelayGrant struct {
	Peer           [32]byte
	SendID, RecvID uint32
}

func (g RelayGrant) ok() bool { return g.SendID != 0 && g.RecvID != 0 && g.SendID != g.RecvID }

// AppendRelayGrant appends the body of RELAY_GRANT; both ids must be non-zero and distinct.
func AppendRelayGrant(b []byte, g RelayGrant) ([]byte, error) {
	if !g.ok() {
		return b, badMsg("relay grant ids %d, %d", g.SendID, g.RecvID)
	}
	b = append(b, g.Peer[:]...)
	b = binary.LittleEndian.AppendUint32(b, g.SendID)
	return binary.LittleEndian.AppendUint32(b, g.RecvID), nil
}

// ParseRelayGrant parses the body of RELAY_GRANT.
func ParseRelayGrant(b []byte) (RelayGrant, error) {
	if len(b) != relayGrantLen {
		return RelayGrant{}, badMsg("relay grant of %d bytes", len(b))
	}
	g := RelayGrant{Peer: [32]byte(b[:32]), SendID: binary.LittleEndian.Uint32(b[32:]), RecvID: binary.LittleEndian.Uint32(b[36:])}
	if !g.ok() {
		return RelayGrant{}, badMsg("relay grant ids %d, %d", g.SendID, g.RecvID)
	}
	return g, nil
}

// RelayRefused is the body of RELAY_REFUSED: the target of the refused RELAY_REQUEST
// and why (one of the Refuse constants).
type RelayRefused struct {
	Target [32]byte
	Reason uint8
}

func refuseReasonOK(r uint8) bool { return r >= RefuseNotRelay && r <= RefuseNotAllowed }

// AppendRelayRefused appends the body of RELAY_REFUSED.
func AppendRelayRefused(b []byte, r RelayRefused) ([]byte, error) {
	if !refuseReasonOK(r.Reason) {
		return b, badMsg("relay refusal reason %d", r.Reason)
	}
	b = append(b, r.Target[:]...)
	return append(b, r.Reason), nil
}

// ParseRelayRefused parses the body of RELAY_REFUSED. A reason outside 1–5 is malformed.
func ParseRelayRefused(b []byte) (RelayRefused, error) {
	if len(b) != relayRefusedLen {
		return RelayRefused{}, badMsg("relay refusal of %d bytes", len(b))
	}
	if !refuseReasonOK(b[32]) {
		return RelayRefused{}, badMsg("relay refusal reason %d", b[32])
	}
	return RelayRefused{Target: [32]byte(b[:32]), Reason: b[32]}, nil
}
