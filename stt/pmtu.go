// Path MTU discovery (docs/protocol.md, "Path MTU"): the largest inner packet that
// reaches a peer on its current path, found with padded PROBE control messages sent
// with Don't Fragment.

package stt

import "sync/atomic"

// Path MTU states, as PeerStats.PathMTUState and status show them.
const (
	PMTUNone      = ""          // no probing: no session, a WebSocket path, or discovery off
	PMTUProbing   = "probing"   // the search runs; PathMTU is the largest size confirmed so far
	PMTUConfirmed = "confirmed" // the search ended; PathMTU is confirmed by an acknowledged probe
	PMTULowered   = "lowered"   // large frames went unanswered while small ones passed: lowered, searching again
)

// pmtuState is the peer's path MTU discovery. mtu is read by the packet path.
type pmtuState struct {
	mtu atomic.Int32 // largest confirmed inner packet on the current path; 0 = none known
}

// PathMTU is the largest inner packet (the payload of one DATA frame) known to reach
// the peer on its current path, or 0 when no limit is known or needed (a WebSocket
// path, no session yet, discovery off). One atomic load: the packet pump calls it per
// packet.
func (p *Peer) PathMTU() int { return int(p.pmtu.mtu.Load()) }
