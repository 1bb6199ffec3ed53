// Relaying (docs/protocol.md section 9.1): a node with Config.RelayMaxPairs > 0 forwards
// RELAY messages between two of its peers that cannot reach each other, and an end
// sends its frames for a peer through such a relay. The session between the two ends
// stays end to end: the relay sees the RELAY header and the inner STT message, which is
// ciphertext or a handshake message, and forwards the whole message unchanged.
//
// Both tables the receive path reads, the relay's routes and an end's relay paths, are
// immutable maps behind atomic pointers, replaced whole (under relays.mu) when a route
// or a path is opened or closed: a RELAY message takes no lock.

package stt

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/wire"
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

// relays is a node's relaying state: as a relay (routes, pairs) and as an end (ends).
type relays struct {
	// mu serialises the changes of the tables; the receive path only loads them.
	mu     sync.Mutex
	routes atomic.Pointer[map[uint32]*relayRoute]      // at the relay, by id
	ends   atomic.Pointer[map[uint32][]*relayEndpoint] // at an end, by recv id (two relays may pick the same id)
	pairs  []*relayPair                                // guarded by mu
	npairs atomic.Int32                                // len(pairs), for the timer loop

	forwarded, fwdBytes atomic.Uint64
	refused             atomic.Uint64
}

// relayPair is a route pair at the relay: a→b (ab) and b→a (ba).
type relayPair struct {
	a, b   *Peer
	ab, ba *relayRoute
}

// relayRoute is one direction of a pair: RELAY messages with id from from go to to.
type relayRoute struct {
	id       uint32
	from, to *Peer
	// used is when the route last forwarded a message (or was opened), mono ns of the
	// node's epoch: the idle expiry reads it.
	used atomic.Int64
}

// relayEndpoint is, at an end, the relay path to peer: frames go to via wrapped in
// RELAY messages with sendID, and RELAY messages from via with recvID carry peer's
// frames. It is a conn.Endpoint, so that the receive path, the handshake and the path
// rules treat it like a UDP address or a WebSocket connection. Immutable.
type relayEndpoint struct {
	peer           *Peer
	via            *Peer
	sendID, recvID uint32
	choose         bool
	// addr is via's address when the path was set: what handshakes see as the source
	// of messages through the relay (their cookies and rate limits bind to it).
	addr netip.AddrPort
}

func (e *relayEndpoint) ClearSrc()           {}
func (e *relayEndpoint) SrcToString() string { return "" }
func (e *relayEndpoint) DstToString() string { return e.addr.String() }
func (e *relayEndpoint) DstToBytes() []byte  { b, _ := e.addr.MarshalBinary(); return b }
func (e *relayEndpoint) DstIP() netip.Addr   { return e.addr.Addr() }
func (e *relayEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// AddrPort is the relay's address (addrPortOf).
func (e *relayEndpoint) AddrPort() netip.AddrPort { return e.addr }

func (e *relayEndpoint) String() string { return "relay via " + e.via.cfg.Name }

// mono is t in nanoseconds since the node's epoch.
func (n *Node) mono(t time.Time) int64 { return int64(t.Sub(n.epoch)) }

// maxPerMember is Config.RelayMaxPerMember with its default.
func (n *Node) maxPerMember() int {
	if n.cfg.RelayMaxPerMember > 0 {
		return n.cfg.RelayMaxPerMember
	}
	return DefaultRelayMaxPerMember
}

// RelayOpen opens a route pair between peers a and b at this node, the relay: RELAY
// messages with idAB from a are forwarded to b, those with idBA from b to a. Both need
// a live session with this node. A pair that exists already (in either order) keeps
// its ids, which are returned again (in the order asked). The pair goes with RelayClose,
// when either peer is removed, or after Limits.RelayIdle without a forwarded message.
// Errors: ErrNotRelay, ErrRelayNoSession, ErrRelayFull, ErrRelayShareFull.
func (n *Node) RelayOpen(a, b *Peer) (idAB, idBA uint32, err error) {
	if n.cfg.RelayMaxPairs <= 0 {
		return 0, 0, ErrNotRelay
	}
	if a == nil || b == nil || a == b || a.node != n || b.node != n || a.cfg.AnyName || b.cfg.AnyName ||
		!a.HasSession() || !b.HasSession() {
		return 0, 0, ErrRelayNoSession
	}
	r := &n.relays
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.isRemoved() || b.isRemoved() {
		return 0, 0, ErrRelayNoSession
	}
	na, nb := 0, 0
	for _, pr := range r.pairs {
		switch {
		case pr.a == a && pr.b == b:
			return pr.ab.id, pr.ba.id, nil
		case pr.a == b && pr.b == a:
			return pr.ba.id, pr.ab.id, nil
		}
		if pr.a == a || pr.b == a {
			na++
		}
		if pr.a == b || pr.b == b {
			nb++
		}
	}
	if len(r.pairs) >= n.cfg.RelayMaxPairs {
		r.refused.Add(1)
		return 0, 0, ErrRelayFull
	}
	if max(na, nb) >= n.maxPerMember() {
		r.refused.Add(1)
		return 0, 0, ErrRelayShareFull
	}
	old := r.routeMap()
	m := make(map[uint32]*relayRoute, len(old)+2)
	for id, rt := range old {
		m[id] = rt
	}
	newID := func() uint32 {
		for {
			id := rand.Uint32()
			if _, dup := m[id]; id != 0 && !dup {
				return id
			}
		}
	}
	t := n.mono(time.Now())
	pr := &relayPair{a: a, b: b}
	pr.ab = &relayRoute{id: newID(), from: a, to: b}
	m[pr.ab.id] = pr.ab
	pr.ba = &relayRoute{id: newID(), from: b, to: a}
	m[pr.ba.id] = pr.ba
	pr.ab.used.Store(t)
	pr.ba.used.Store(t)
	r.pairs = append(r.pairs, pr)
	r.npairs.Store(int32(len(r.pairs)))
	r.routes.Store(&m)
	n.log.Debug("relay route pair opened", "a", a.cfg.Name, "b", b.cfg.Name)
	return pr.ab.id, pr.ba.id, nil
}

// RelayClose removes the route pair between a and b (given in either order), if any.
func (n *Node) RelayClose(a, b *Peer) {
	n.relays.removePairs(func(pr *relayPair) bool {
		return pr.a == a && pr.b == b || pr.a == b && pr.b == a
	})
}

// routeMap is the current route table (nil when there is none). Called with mu held.
func (r *relays) routeMap() map[uint32]*relayRoute {
	if m := r.routes.Load(); m != nil {
		return *m
	}
	return nil
}

// removePairs removes the pairs gone says are gone, and returns how many.
func (r *relays) removePairs(gone func(*relayPair) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.pairs[:0]
	removed := 0
	for _, pr := range r.pairs {
		if gone(pr) {
			removed++
			continue
		}
		kept = append(kept, pr)
	}
	clear(r.pairs[len(kept):])
	r.pairs = kept
	if removed == 0 {
		return 0
	}
	m := make(map[uint32]*relayRoute, 2*len(kept))
	for _, pr := range kept {
		m[pr.ab.id], m[pr.ba.id] = pr.ab, pr.ba
	}
	r.routes.Store(&m)
	r.npairs.Store(int32(len(kept)))
	return removed
}

// expireRelays removes the route pairs that have forwarded nothing for RelayIdle.
// Called from the timer loop.
func (n *Node) expireRelays(now time.Time) {
	if n.relays.npairs.Load() == 0 {
		return
	}
	limit := n.mono(now) - int64(n.limits.RelayIdle)
	if k := n.relays.removePairs(func(pr *relayPair) bool {
		return max(pr.ab.used.Load(), pr.ba.used.Load()) < limit
	}); k > 0 {
		n.log.Debug("idle relay route pairs removed", "count", k)
	}
}

// forgetRelays removes p from the relay tables: the pairs p is an end of, and the
// relay paths that go to p or through p. Called when p is removed.
func (n *Node) forgetRelays(p *Peer) {
	n.relays.removePairs(func(pr *relayPair) bool { return pr.a == p || pr.b == p })
	var cleared []*Peer
	n.relays.mu.Lock()
	for _, es := range n.relays.endMap() {
		for _, e := range es {
			if e.peer == p || e.via == p {
				cleared = append(cleared, e.peer)
			}
		}
	}
	n.relays.mu.Unlock()
	for _, q := range cleared {
		q.ClearRelay()
	}
}

// endMap is the current table of relay paths (nil when there is none).
func (r *relays) endMap() map[uint32][]*relayEndpoint {
	if m := r.ends.Load(); m != nil {
		return *m
	}
	return nil
}

// replaceEnd swaps old for e (either may be nil) in the table of relay paths.
// Called with mu held.
func (r *relays) replaceEnd(old, e *relayEndpoint) {
	cur := r.endMap()
	m := make(map[uint32][]*relayEndpoint, len(cur)+1)
	for id, es := range cur {
		for _, x := range es {
			if x != old {
				m[id] = append(m[id], x)
			}
		}
	}
	if e != nil {
		m[e.recvID] = append(m[e.recvID], e)
	}
	r.ends.Store(&m)
}

// SetRelay makes via, a peer of this node that relays, a path to p: frames for p go to
// via wrapped in RELAY messages with sendID, and RELAY messages from via with recvID
// carry p's frames (the ids of RELAY_GRANT). One relay per peer: it replaces the
// previous one. choose says that this node asked for the relay: it moves p's traffic to
// the relay itself when p has no direct path or UDP has not answered for
// Limits.FallbackAfter (the chooser); else it follows p onto the relay (the follower).
// Either end moves back to UDP on an authenticated frame from p over UDP.
func (p *Peer) SetRelay(via *Peer, sendID, recvID uint32, choose bool) error {
	n := p.node
	switch {
	case via == nil || via == p || via.node != n:
		return errors.New("stt: a relay must be another peer of this node")
	case p.cfg.AnyName || via.cfg.AnyName:
		return ErrWildcardPeer
	case sendID == 0 || recvID == 0 || sendID == recvID:
		return errors.New("stt: relay ids must be non-zero and distinct")
	}
	addr := via.UDPEndpoint()
	if !addr.IsValid() {
		addr = via.WSEndpoint()
	}
	e := &relayEndpoint{peer: p, via: via, sendID: sendID, recvID: recvID, choose: choose, addr: addr}
	r := &n.relays
	r.mu.Lock()
	if p.isRemoved() || via.isRemoved() {
		r.mu.Unlock()
		return errors.New("stt: peer removed")
	}
	old := p.path.relay.Swap(e)
	r.replaceEnd(old, e)
	if !choose && old != nil && old.via != via {
		// A follower on another relay: the new one carries the traffic once a frame
		// of the peer's came through it (follow), not at once.
		p.path.on.CompareAndSwap(onRelay, onUDP)
	}
	r.mu.Unlock()
	n.log.Info("relay path set", "peer", p.cfg.Name, "via", via.cfg.Name, "chooser", choose)
	n.kick() // a chooser without a direct path moves at once
	return nil
}

// ClearRelay removes p's relay path; p's traffic goes direct again (UDP or WebSocket).
func (p *Peer) ClearRelay() {
	r := &p.node.relays
	r.mu.Lock()
	old := p.path.relay.Swap(nil)
	if old != nil {
		r.replaceEnd(old, nil)
	}
	r.mu.Unlock()
	if old == nil {
		return
	}
	if p.path.on.CompareAndSwap(onRelay, onUDP) {
		p.node.log.Info("peer path changed", "peer", p.cfg.Name, "path", p.Path())
	}
	p.node.kick()
}

// RelayVia is the relay p's traffic goes through now, or nil when it does not go
// through one.
func (p *Peer) RelayVia() *Peer {
	if e, ok := p.target().(*relayEndpoint); ok {
		return e.via
	}
	return nil
}

// relayUse records that relayed traffic went to or through p at now: the session with
// it is in use, though no frame of it carried that traffic.
func (p *Peer) relayUse(now time.Time) { touch(&p.times.lastRelayed, p.mono(now)) }

// useGrain is the precision of the last-use times the relay path writes (relayUse, a
// route's used): they are read against timeouts of seconds to minutes, and a store per
// forwarded packet would make the receive goroutines fight over their cache lines.
const useGrain = int64(10 * time.Millisecond)

// touch stores t in a last-use time unless it holds one less than useGrain older.
func touch(a *atomic.Int64, t int64) {
	if t-a.Load() >= useGrain {
		a.Store(t)
	}
}

// relayChooser reports whether this node asked for p's relay path (SetRelay choose).
func (p *Peer) relayChooser() bool {
	e := p.path.relay.Load()
	return e != nil && e.choose
}

func (p *Peer) isRemoved() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.removed
}

// sentFrom reports whether ep is p's current endpoint: its UDP address or its
// WebSocket connection. Allocates nothing.
func (p *Peer) sentFrom(ep conn.Endpoint) bool {
	if we, ok := ep.(*wsEndpoint); ok {
		return p.path.ws.Load() == we
	}
	ap := p.path.udpAP.Load()
	return ap != nil && *ap == addrPortOf(ep)
}

// relayIn resolves a RELAY message that arrived from ep: either the relay forwards it
// (route, forwarded into fw) or this node is an end of the path it names (the relay
// endpoint its inner message came by). ok is false when it was dropped (and counted).
func (n *Node) relayIn(msg []byte, ep conn.Endpoint, fw *relayFwd, now time.Time) (inner []byte, e *relayEndpoint, ok bool) {
	id, inner, err := wire.ParseRelay(msg)
	if err != nil {
		n.drop(DropRelayMalformed)
		return nil, nil, false
	}
	known := false
	if m := n.relays.routes.Load(); m != nil {
		if rt := (*m)[id]; rt != nil {
			if rt.from.sentFrom(ep) {
				n.forward(rt, msg, fw, now)
				return nil, nil, false
			}
			known = true
		}
	}
	if m := n.relays.ends.Load(); m != nil {
		for _, e := range (*m)[id] {
			if e.via.sentFrom(ep) {
				return inner, e, true
			}
			known = true
		}
	}
	if known {
		n.drop(DropRelayWrongSource)
	} else {
		n.drop(DropRelayUnknownID)
	}
	return nil, nil, false
}

// forward queues msg on fw for the route's to-end, if it has a live session and a
// direct path (a relay does not relay through another relay).
func (n *Node) forward(rt *relayRoute, msg []byte, fw *relayFwd, now time.Time) {
	to := rt.to
	s := to.keys.current.Load()
	if s == nil || s.expired(now, &n.limits) {
		n.drop(DropRelayNoRoute)
		return
	}
	ep := to.target()
	if _, relayed := ep.(*relayEndpoint); ep == nil || relayed {
		n.drop(DropRelayNoRoute)
		return
	}
	touch(&rt.used, n.mono(now))
	rt.from.relayUse(now)
	to.relayUse(now)
	if fw.ep != nil && fw.ep != ep {
		fw.flush(n)
	}
	fw.ep = ep
	fw.frames = append(fw.frames, msg)
	fw.bytes += uint64(len(msg))
}

// relayFwd collects the messages a receive batch forwards to one endpoint, so that they
// go out in one send. Per receive goroutine.
type relayFwd struct {
	ep     conn.Endpoint
	frames [][]byte
	bytes  uint64
}

// flush sends what fw holds and counts it.
func (fw *relayFwd) flush(n *Node) {
	if len(fw.frames) == 0 {
		fw.ep = nil
		return
	}
	if err := n.send(fw.frames, fw.ep); err != nil {
		n.ctr.drops[DropSendError].Add(uint64(len(fw.frames)))
	} else {
		n.relays.forwarded.Add(uint64(len(fw.frames)))
		n.relays.fwdBytes.Add(fw.bytes)
	}
	clear(fw.frames)
	fw.frames, fw.ep, fw.bytes = fw.frames[:0], nil, 0
}

// relayWrap is the scratch of one wrapped send: the RELAY messages, copies of the
// frames behind an 8-byte header, in buffers kept for the next send.
type relayWrap struct {
	bufs [][]byte
	out  [][]byte
}

var relayWraps = sync.Pool{New: func() any { return new(relayWrap) }}

// relayBufMin is the smallest buffer a wrap keeps: a full-size tunnel frame fits.
const relayBufMin = 2048

// sendRelay sends frames to e.peer through e.via, each wrapped in a RELAY message.
func (n *Node) sendRelay(frames [][]byte, e *relayEndpoint) error {
	ep := e.via.target()
	if _, relayed := ep.(*relayEndpoint); ep == nil || relayed {
		return errNoEndpoint
	}
	e.via.relayUse(time.Now())
	w := relayWraps.Get().(*relayWrap)
	if len(w.bufs) < len(frames) {
		w.bufs = append(w.bufs, make([][]byte, len(frames)-len(w.bufs))...)
	}
	out := w.out[:0]
	var err error
	for i, f := range frames {
		need := wire.RelayHeaderLen + len(f)
		if len(f) > wire.MaxRelayInner {
			err = errFrameTooLong
			continue
		}
		b := w.bufs[i]
		if cap(b) < need {
			b = make([]byte, max(need, relayBufMin))
			w.bufs[i] = b
		}
		b = b[:need]
		wire.PutRelayHeader(b, e.sendID)
		copy(b[wire.RelayHeaderLen:], f)
		out = append(out, b)
	}
	if len(out) > 0 {
		if e2 := n.send(out, ep); e2 != nil {
			err = e2
		}
	}
	clear(out)
	w.out = out[:0]
	relayWraps.Put(w)
	return err
}

var errFrameTooLong = errors.New("frame too long for a RELAY message")

// Punch starts a fresh handshake with p sent only over UDP, directly: to addrs and to
// p's candidate addresses (and its current UDP address), never through a relay or over
// WebSocket; its retransmissions go the same way, for at most punchGiveUp. Both ends
// punching at once open their NATs to each other; a handshake that completes over UDP
// moves p's traffic to UDP at both ends. A punch does not replace a handshake that
// renews p's live session (it is skipped). Unusable addresses (invalid, port 0,
// unspecified, multicast) are ignored; at most 2×MaxCandidates addresses are used. On a
// node without UDP (Config.DisableUDP) it does nothing.
func (p *Peer) Punch(addrs []netip.AddrPort) {
	n := p.node
	if n.cfg.DisableUDP || p.cfg.AnyName {
		return
	}
	var dests []conn.Endpoint
	var seen []netip.AddrPort
	add := func(ap netip.AddrPort, ep conn.Endpoint) {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() || len(dests) >= 2*MaxCandidates {
			return
		}
		for _, s := range seen {
			if s == ap {
				return
			}
		}
		if ep == nil {
			var err error
			if ep, err = n.bind.ParseEndpoint(ap.String()); err != nil {
				return
			}
		}
		seen = append(seen, ap)
		dests = append(dests, ep)
	}
	for _, ap := range addrs {
		add(ap, nil)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return
	}
	if ini := p.handshake.init; ini != nil && ini.punch == nil && p.keys.current.Load() != nil {
		// A handshake renewing the live session is in flight: the punch waits for the
		// next one. Replaced by punches (which any member can trigger), the renewal
		// would never complete, and the session would die at RejectAfter.
		return
	}
	if ep := p.path.udp.Load(); ep != nil {
		add(addrPortOf(*ep), *ep)
	}
	for i, c := range p.handshake.candidates {
		if p.handshake.badCandidates&(1<<i) == 0 {
			add(addrPortOf(c), c)
		}
	}
	if len(dests) == 0 {
		return
	}
	n.log.Debug("punching", "peer", p.cfg.Name, "addresses", len(dests))
	p.dropInitLocked() // a fresh series: the punch replaces a handshake in flight
	p.startHandshakeToLocked(time.Now(), dests)
}

// punchGiveUp bounds a punch's retransmissions: a punch that has not completed by then
// is dropped quietly (the peer keeps its session, on the relay), so that it does not
// hold up the handshakes that go the usual way.
const punchGiveUp = 10 * time.Second
