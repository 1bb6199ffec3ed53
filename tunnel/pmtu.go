package tunnel

// What the packet pump does about each peer's path MTU (stt.Peer.PathMTU, found by
// the node's path MTU discovery): an inner packet larger than the path carries is
// answered as a router would answer it — ICMP Fragmentation Needed or ICMPv6 Packet Too
// Big back into the interface to its sender, or, for IPv4 without DF, cut into fragments
// that fit — and TCP SYNs both ways get their MSS clamped to the path. The interface's
// MTU stays what the configuration says. docs/operations.md, "MTU and path MTU".

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/stt-tun/stt-tun/internal/ipmtu"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// The node-wide bound on the ICMP errors the pump writes to the interface: a token
// bucket of icmpBurst, refilled at icmpRate per second. One error per flow is enough
// for its sender to lower its packets; the bound keeps a flood of large packets from
// becoming a flood of ICMP.
const (
	icmpRate  = 100
	icmpBurst = 20
)

// fragArena is the room for the fragments of one batch read from the interface, made
// once, the first time a packet needs fragmenting: 64 KiB packets cut for a 1200-byte
// path fit it several times over.
const fragArena = 512 << 10

// pmtuCounters count what the pump did about path MTUs; read by Counters.
type pmtuCounters struct {
	tooBig      atomic.Uint64 // packets larger than their peer's path, dropped
	icmpSent    atomic.Uint64 // ICMP errors written to the interface for them
	icmpLimited atomic.Uint64 // ... not written: over the rate bound
	icmpRefused atomic.Uint64 // ... not written: the RFCs forbid an error about that packet
	fragmented  atomic.Uint64 // IPv4 packets without DF sent in fragments
	fragments   atomic.Uint64 // the fragments sent for them
	clamped     atomic.Uint64 // TCP SYNs whose MSS was lowered, both ways
}

// outState is the outbound pump's own state for path MTUs: owned by readLoop, so
// plain fields.
type outState struct {
	tokens float64   // the ICMP token bucket
	last   time.Time // its last refill
	icmp   []byte    // an ICMP error being written: stt.Headroom, then the packet
	wbuf   [][]byte  // the one-element batch Write takes
	arena  []byte    // fragments of the current batch; nil until first needed
	used   int       // bytes of arena taken
}

// allowICMP takes a token from the bucket, if there is one.
func (o *outState) allowICMP(now time.Time) bool {
	if o.last.IsZero() {
		o.tokens = icmpBurst
	} else {
		o.tokens = min(icmpBurst, o.tokens+now.Sub(o.last).Seconds()*icmpRate)
	}
	o.last = now
	if o.tokens < 1 {
		return false
	}
	o.tokens--
	return true
}

// fragRoom returns a slice of the arena for one fragment of up to size bytes, laid out
// as Send wants it (the DATA header in front, the tag's room behind), or nil when the
// arena is full.
func (o *outState) fragRoom(size int) []byte {
	if o.arena == nil {
		o.arena = make([]byte, fragArena)
	}
	need := stt.Headroom + size + wire.TagLen
	if o.used+need > len(o.arena) {
		return nil
	}
	b := o.arena[o.used : o.used+need : o.used+need]
	o.used += need
	return b
}

// tooLarge handles pkt, read from the interface for p and larger than p's path MTU
// mtu. It returns keep = true when pkt goes on as it is (an IPv6 packet the RFCs let
// through, see ipmtu.Pass); else pkt is dropped, after its sender was answered or its
// fragments were appended to *pkts (flushing the batch first, through flush, when the
// arena is full).
func (t *Tunnel) tooLarge(o *outState, pkt []byte, mtu int, flow uint16, pkts *[][]byte, flows *[]uint16, flush func()) (keep bool) {
	switch ipmtu.Decide(pkt, mtu) {
	case ipmtu.Pass:
		return true
	case ipmtu.Fragment:
		count, largest := ipmtu.Fragments4(pkt, mtu)
		if stt.Headroom+largest+wire.TagLen > fragArena/count {
			// Cannot happen with ipmtu's bounds (at most 64 KiB in pieces of at
			// least 68 bytes would need more; the node's path MTU never goes that low).
			t.pmtu.tooBig.Add(1)
			return false
		}
		if o.arena != nil && o.used+count*(stt.Headroom+largest+wire.TagLen) > len(o.arena) {
			flush()
		}
		off := 0
		for range count {
			b := o.fragRoom(largest)
			if b == nil {
				break // cannot happen: room was made for count pieces
			}
			var n int
			n, off = ipmtu.Fragment4(b[stt.Headroom:len(b)-wire.TagLen], pkt, mtu, off)
			if n == 0 {
				break // cannot happen: Fragments4 counted these pieces
			}
			*pkts = append(*pkts, b[stt.Headroom-wire.HeaderLen:stt.Headroom+n])
			*flows = append(*flows, flow)
			t.pmtu.fragments.Add(1)
		}
		t.pmtu.fragmented.Add(1)
		return false
	case ipmtu.Answer:
		t.pmtu.tooBig.Add(1)
		if !o.allowICMP(time.Now()) {
			t.pmtu.icmpLimited.Add(1)
			return false
		}
		t.answerTooBig(o, pkt, mtu)
		return false
	}
	t.pmtu.tooBig.Add(1)
	t.pmtu.icmpRefused.Add(1)
	return false
}

// answerTooBig writes to the interface the ICMP error that tells pkt's sender the path
// carries mtu bytes. It comes from the address pkt was sent to, not from one of the
// interface's own: the error enters the system through the interface, and Linux drops
// an IPv4 packet that arrives from one of its own addresses as a martian (unless
// accept_local) — the tunnel is a router inside the host, with no address of its own.
// Only a Packet Too Big about a multicast packet comes from the interface's IPv6
// address (none without one).
func (t *Tunnel) answerTooBig(o *outState, pkt []byte, mtu int) {
	var src netip.Addr
	if pkt[0]>>4 == 4 {
		src = netip.AddrFrom4([4]byte(pkt[16:20]))
	} else if src = netip.AddrFrom16([16]byte(pkt[24:40])); src.IsMulticast() {
		if src = t.own6; !src.IsValid() {
			t.pmtu.icmpRefused.Add(1)
			return
		}
	}
	if o.icmp == nil {
		o.icmp = make([]byte, stt.Headroom+ipmtu.MaxReply6)
		o.wbuf = make([][]byte, 1)
	}
	var n int
	if src.Is4() {
		a := src.As4()
		n = ipmtu.PutTooBig(o.icmp[stt.Headroom:], pkt, mtu, a[:])
	} else {
		a := src.As16()
		n = ipmtu.PutTooBig(o.icmp[stt.Headroom:], pkt, mtu, a[:])
	}
	if n == 0 {
		return
	}
	// Write may reorder and reuse what it is given: set the batch each time.
	o.wbuf[0] = o.icmp[: stt.Headroom+n : stt.Headroom+ipmtu.MaxReply6]
	if _, err := t.dev.Write(o.wbuf, stt.Headroom); err != nil {
		t.tunErrors.Add(1)
		return
	}
	t.pmtu.icmpSent.Add(1)
}

// clampMSS lowers the MSS of a TCP SYN in pkt to what a path of mtu bytes carries, and
// counts it. The test in front is the only work done for a packet that is not TCP.
func (t *Tunnel) clampMSS(pkt []byte, mtu int) {
	if !maybeTCP(pkt) {
		return
	}
	if ipmtu.ClampMSS(pkt, mtu) {
		t.pmtu.clamped.Add(1)
	}
}

// clampSYN clamps the MSS of a TCP SYN in pkt for the peer sp whose path MTU is m: to m,
// or while there is no estimate yet (m 0) to what any path carries (PathMTUPending), as
// the connection may outlive the search.
func (t *Tunnel) clampSYN(pkt []byte, sp *stt.Peer, m int) {
	if m == 0 {
		if !maybeSYN(pkt) {
			return
		}
		if m = sp.PathMTUPending(); m == 0 {
			return
		}
	}
	t.clampMSS(pkt, m)
}

// maybeTCP reports whether pkt may be TCP: IPv4 with protocol 6, or IPv6 whose first
// next header is TCP or an extension header.
func maybeTCP(pkt []byte) bool {
	switch pkt[0] >> 4 {
	case 4:
		return len(pkt) >= 40 && pkt[9] == protoTCP
	case 6:
		return len(pkt) >= 60 && (pkt[6] == protoTCP || pkt[6] == 0 || pkt[6] == 43 || pkt[6] == 60 || pkt[6] == 44)
	}
	return false
}

// maybeSYN reports whether pkt may be a TCP SYN (or SYN-ACK): maybeTCP, and the SYN
// flag set where an IPv4 packet's or an IPv6 packet without extension headers' TCP
// header has it (behind extension headers ClampMSS decides).
func maybeSYN(pkt []byte) bool {
	if !maybeTCP(pkt) {
		return false
	}
	if pkt[0]>>4 == 4 {
		at := int(pkt[0]&0x0f)*4 + 13
		return at < len(pkt) && pkt[at]&0x02 != 0
	}
	return pkt[6] != protoTCP || pkt[53]&0x02 != 0
}

// pathMTUChanged is the node's report of a new path MTU estimate for a peer: one log
// line.
func (t *Tunnel) pathMTUChanged(p *stt.Peer, old, new int) {
	if new > 0 && new < old {
		t.log.Warn("path MTU lowered", "peer", p.Name(), "from", old, "to", new)
		return
	}
	t.log.Info("path MTU", "peer", p.Name(), "from", old, "to", new)
}
