// Relaying (docs/protocol.md section 11): a node with Config.RelayMaxPairs > 0 forwards
// RELAY messages between two of its peers that cannot reach each other, and an end
// sends its frames for a peer through such a relay. The session between the two ends
// stays end to end: the relay sees the RELAY header and the inner STT message, which is
// ciphertext or a handshake message, and forwards it unchanged.

package stt

import (
	"errors"
	"net/netip"
	"time"
)

// Errors of RelayOpen.
var (
	// ErrNotRelay: this node does not relay (Config.RelayMaxPairs is 0).
	ErrNotRelay = errors.New("stt: this node is not a relay")
	// ErrRelayFull: the node forwards RelayMaxPairs route pairs already.
	ErrRelayFull = errors.New("stt: relay full")
	// ErrRelayShareFull: one of the two peers is an end of RelayMaxPerMember route
	// pairs already.
	ErrRelayShareFull = errors.New("stt: peer's share of the relay is full")
	// ErrRelayNoSession: one of the two peers has no live session with this node (or
	// the two are the same peer, or a wildcard).
	ErrRelayNoSession = errors.New("stt: no session with a relay end")
)

// DefaultRelayMaxPerMember is Config.RelayMaxPerMember when it is 0 and the node
// relays.
const DefaultRelayMaxPerMember = 8

// DefaultRelayIdle is how long a route pair lives without a forwarded message
// (Limits.RelayIdle).
const DefaultRelayIdle = 2 * time.Minute

// RelayOpen opens a route pair between peers a and b at this node, the relay: RELAY
// messages with idAB from a are forwarded to b, those with idBA from b to a. Both need
// a live session with this node. A pair that exists already (in either order) keeps
// its ids, which are returned again. The pair goes with RelayClose, when either peer is
// removed, or after Limits.RelayIdle without a forwarded message. Errors: ErrNotRelay,
// ErrRelayNoSession, ErrRelayFull, ErrRelayShareFull.
func (n *Node) RelayOpen(a, b *Peer) (idAB, idBA uint32, err error) {
	return 0, 0, ErrNotRelay
}

// RelayClose removes the route pair between a and b (given in either order), if any.
func (n *Node) RelayClose(a, b *Peer) {}

// SetRelay makes via, a peer of this node that relays, a path to p: frames for p go to
// via wrapped in RELAY messages with sendID, and RELAY messages from via with recvID
// carry p's frames (the ids of RELAY_GRANT). One relay per peer: it replaces the
// previous one. choose says that this node asked for the relay: it moves p's traffic to
// the relay itself when p has no direct path or UDP has not answered for
// Limits.FallbackAfter (the chooser); else it follows p onto the relay (the follower).
// Either end moves back to UDP on an authenticated frame from p over UDP.
func (p *Peer) SetRelay(via *Peer, sendID, recvID uint32, choose bool) error {
	return errors.New("stt: SetRelay not implemented yet")
}

// ClearRelay removes p's relay path; p's traffic goes direct again (UDP or WebSocket).
func (p *Peer) ClearRelay() {}

// Punch starts a fresh handshake with p sent only over UDP, directly: to addrs and to
// p's candidate addresses (and its current UDP address), never through a relay or over
// WebSocket. Both ends punching at once open their NATs to each other; a handshake that
// completes over UDP moves p's traffic to UDP at both ends. Unusable addresses are
// ignored.
func (p *Peer) Punch(addrs []netip.AddrPort) {}

// RelayVia is the relay p's traffic goes through now, or nil when it does not go
// through one.
func (p *Peer) RelayVia() *Peer { return nil }
