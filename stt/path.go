// The path: which transport carries a peer's traffic, UDP, WebSocket or a relay
// (relay.go). Its state is the path type; here are the moves made on the peer's frames
// (follow) and the fallback holds. The per-packet reads sit on the packet path itself:
// the choice for a batch (target) in send.go, roaming (learnEndpoint) in receive.go;
// the path timers (fallback to WebSocket, UDP probes) are in timers.go.

package stt

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// path is where the peer's frames go: its UDP address, its WebSocket connection, and
// which of the two carries its traffic. The fields read by the packet path are atomics;
// moves made by concurrent receivers are ordered by moveMu; dial and probe state is
// guarded by Peer.mu.
type path struct {
	udp   atomic.Pointer[conn.Endpoint]  // latest UDP address: configured, or where authenticated frames came from
	udpAP atomic.Pointer[netip.AddrPort] // udp's address, stored with it
	ws    atomic.Pointer[wsEndpoint]     // WebSocket connection to the peer, if any
	relay atomic.Pointer[relayEndpoint]  // relay path to the peer, if any (SetRelay)
	// on is the transport the peer's traffic goes over while it has it: onUDP, onWS or
	// onRelay. A move is a store; target reads it for every batch.
	on atomic.Uint32
	// wsConf is the peer's WebSocket settings, replaced whole by Update when they
	// change: a node that holds the peer's URL chooses the path (chooser).
	wsConf atomic.Pointer[wsSettings]
	// moved is the peer's frame that last moved its traffic (see follow); moveMu
	// orders moves made by concurrent receivers.
	moved  atomic.Pointer[pathMove]
	moveMu sync.Mutex
	// holding: the path is being switched (UDP gave no answer, the WebSocket is being
	// dialed); datagrams wait in queue instead of going into the dead path.
	holding atomic.Bool
	// sentUnanswered counts data datagrams sent since we last heard from the peer: if
	// the path is then given up as dead, they are presumed lost (DropFallback).
	sentUnanswered atomic.Uint64

	// Guarded by Peer.mu.
	lastProbe time.Time // of UDP, while on WebSocket
	dial      wsDial
}

// wsDial is the dialing of the peer's WebSocket URL. Guarded by Peer.mu.
type wsDial struct {
	running  bool
	fails    int // in a row
	failedAt time.Time
}

// Path names for status.
const (
	PathNone = "none"
	PathUDP  = "udp"
	PathWS   = "ws"
	// PathRelay: the peer's frames go through a relay (Peer.SetRelay, RelayVia).
	PathRelay = "relay"
)

// Path reports the transport the peer's traffic uses: "udp", "ws", "relay" or "none".
func (p *Peer) Path() string {
	switch p.target().(type) {
	case nil:
		return PathNone
	case *wsEndpoint:
		return PathWS
	case *relayEndpoint:
		return PathRelay
	default:
		return PathUDP
	}
}

// Values of path.on.
const (
	onUDP   uint32 = iota // UDP (or, without a UDP address, whatever path there is)
	onWS                  // the WebSocket connection
	onRelay               // the relay path
)

// pathName names a value of path.on for logs.
func pathName(on uint32) string {
	switch on {
	case onWS:
		return PathWS
	case onRelay:
		return PathRelay
	}
	return PathUDP
}

// pathMove is the frame that last moved the peer's traffic: its session's number and
// its counter plus one (0 for a handshake message).
type pathMove struct{ gen, next uint64 }

// follow moves the peer's traffic to the transport a frame came over, via (onUDP, onWS
// or onRelay), which is not the one it is on, and reports whether it moved it back to
// UDP.
//
// An alternative to UDP (WebSocket, a relay) is chosen by one of the two nodes: for
// WebSocket the one that holds the peer's URL, for a relay the one that asked for it
// (SetRelay's choose). The chooser decides the move to its alternative itself
// (tickPathLocked): it moves only when UDP does not answer, and back on any frame over
// UDP; it never follows the peer onto its alternative, since the peer is there only by
// following it, and frames the peer sent before it saw a return to UDP keep coming that
// way for a while (a queue, a TCP stream, a relay: no time bound).
//
// Otherwise the node follows, but only frames the peer sent after the frame of the
// last move: a later counter in the same session, or a later session. The peer seals
// each frame before it reads its path, so a frame sealed after its move goes the new
// way; one of an older counter is late, and moves nothing however late it comes.
func (p *Peer) follow(via uint32, s *session, ctr uint64) bool {
	if via != onUDP && p.chooses(via) {
		return false
	}
	if cur := p.path.on.Load(); via == onUDP && p.chooses(cur) {
		if !p.path.on.CompareAndSwap(cur, onUDP) {
			return false
		}
		p.node.log.Info("peer path changed", "peer", p.cfg.Name, "path", PathUDP)
		return true
	}
	next := ctr + 1 // handshakeCtr + 1 == 0
	if m := p.path.moved.Load(); m != nil && (s.gen < m.gen || s.gen == m.gen && next <= m.next) {
		return false // sent before the last move
	}
	p.path.moveMu.Lock()
	defer p.path.moveMu.Unlock()
	if m := p.path.moved.Load(); p.path.on.Load() == via || m != nil && (s.gen < m.gen || s.gen == m.gen && next <= m.next) {
		return false
	}
	p.path.moved.Store(&pathMove{gen: s.gen, next: next})
	p.path.on.Store(via)
	p.node.log.Info("peer path changed", "peer", p.cfg.Name, "path", pathName(via))
	return via == onUDP
}

// chooses reports whether this node chooses the move of the peer's traffic to the
// alternative on (onWS: it holds the peer's URL and UDP is possible; onRelay: it asked
// for the relay). Never for onUDP.
func (p *Peer) chooses(on uint32) bool {
	switch on {
	case onWS:
		return p.chooser() && p.udpUsable()
	case onRelay:
		return p.relayChooser()
	}
	return false
}

// udpUsable says whether UDP to the peer is possible at all.
func (p *Peer) udpUsable() bool { return !p.node.cfg.DisableUDP && p.path.udp.Load() != nil }

// countFallbackLost counts the data datagrams sent over UDP since it last answered as
// lost to the move away from it (DropFallback). Some may have arrived, if only the way
// back failed; no answer says which.
func (p *Peer) countFallbackLost() {
	if lost := p.path.sentUnanswered.Swap(0); lost > 0 {
		p.drop(DropFallback, lost)
		p.node.log.Debug("datagrams sent over UDP after its last answer presumed lost", "peer", p.cfg.Name, "count", lost)
	}
}

// releaseHeldLocked ends a hold: the datagrams that waited go out on s over the path
// now chosen. Called with p.mu held.
func (p *Peer) releaseHeldLocked(s *session) {
	// Load first: this runs on every tick, and a write would contend with Send's read.
	if !p.path.holding.Load() || !p.path.holding.Swap(false) {
		return
	}
	if s == nil || s.expired(time.Now(), &p.node.limits) {
		// The session went meanwhile: the queue waits for the next, as any would.
		if len(p.queue) > 0 {
			p.handshake.want = true
		}
		return
	}
	p.flushQueueLocked(s)
}

// dropHeldLocked ends a hold whose move cannot be made (the dial failed): what waited is
// counted under DropFallback rather than sent into the path that stopped answering.
// Called with p.mu held.
func (p *Peer) dropHeldLocked() {
	if !p.path.holding.Swap(false) {
		return
	}
	p.dropQueueLocked(DropFallback)
}

// udpAddr is the IP address of the peer's current UDP endpoint, or the zero Addr.
func (p *Peer) udpAddr() netip.Addr {
	ep := p.path.udp.Load()
	if ep == nil || *ep == nil {
		return netip.Addr{}
	}
	return addrPortOf(*ep).Addr().Unmap()
}

func (p *Peer) setEndpoint(ap netip.AddrPort) error {
	ep, err := p.node.bind.ParseEndpoint(ap.String())
	if err != nil {
		return err
	}
	p.storeUDP(ep)
	return nil
}

// storeUDP makes ep the peer's UDP address, and publishes its AddrPort for
// UDPEndpoint, which the tunnel's packet pump calls for every UDP packet.
func (p *Peer) storeUDP(ep conn.Endpoint) {
	ap := addrPortOf(ep)
	p.path.udp.Store(&ep)
	p.path.udpAP.Store(&ap)
	if p.node != nil {
		p.node.addrGen.Add(1) // after the store: the timers then see the new address
	}
}
