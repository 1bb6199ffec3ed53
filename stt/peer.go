package stt

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Peer is a remote node the local node exchanges datagrams with.
//
// Its state is grouped by what guards it. The groups read by the packet path (keys,
// path, times, counters) are atomics, so that Send and the receive goroutines take no
// lock; everything else is guarded by mu, which the timers, the handshake and Update
// take. A field of an atomic group that is a plain value says so.
type Peer struct {
	node *Node

	keys     peerKeys     // the sessions: atomics; previous and older under mu
	path     path         // where frames go (path.go): atomics, moves under path.moveMu
	times    peerTimes    // the clocks the timers read: atomics
	counters peerCounters // traffic figures: atomics
	pmtu     pmtuState    // path MTU discovery (pmtu.go)

	// mu guards cfg (but Name, Tag and AnyName, which never change) and every field
	// below.
	mu        sync.Mutex
	cfg       PeerConfig
	handshake handshakeState
	queue     [][]byte // datagrams waiting for a session, or for a move of the path (path.holding)
	// relQueue holds the reliable control messages SendReliable was given while the
	// peer had no session (at most reliableQueueMax); the next session takes them.
	relQueue []relMsg
	ping     pingState
	lookup   lookupState
	refused  refusalState
	idle     idleState
	wildcard wildcardState
	seed     seedRekeyState // seeds.go
	removed  bool
}

// peerKeys are the peer's sessions. current and standby are atomics, read by the
// packet path and written with Peer.mu held; previous is guarded by Peer.mu.
type peerKeys struct {
	current atomic.Pointer[session]
	// standby is the confirmed session a rekey replaced: the initiator keeps sending on
	// it until the new one is confirmed, so a lost AUTH_PROOF loses no data.
	standby atomic.Pointer[session]
	made    atomic.Uint64 // sessions made with the peer, numbering them (session.gen)
	// previous is the session current replaced, kept for receiving until it expires.
	// Guarded by Peer.mu.
	previous *session
	// older is the session previous replaced, kept for receiving until it expires too.
	// Two handshakes that complete in quick succession (rekeys or punches from both ends
	// that cross) install two sessions within a round trip, while the peer may still
	// send on the session before them: it keeps sending on its standby until its own new
	// session is confirmed. Guarded by Peer.mu.
	older *session
}

// peerTimes are the clocks the timers read, in nanoseconds since node.epoch (0 =
// never). Atomics: the packet path writes them.
type peerTimes struct {
	lastSent        atomic.Int64
	lastRecv        atomic.Int64
	lastRecvData    atomic.Int64
	firstUnanswered atomic.Int64 // first data or keepalive echo sent since we last heard from the peer
	lastReliable    atomic.Int64 // a reliable control message sent or delivered (the idle timer)
	// lastRelayed: frames of another peer went to or through this one, a relay or a
	// relay's end (relay.go): the session with it is in use (the idle timer, rekeys).
	lastRelayed atomic.Int64
}

// peerCounters are the peer's traffic figures. Atomics.
type peerCounters struct {
	txBytes, rxBytes     atomic.Uint64
	txPackets, rxPackets atomic.Uint64
	drops                atomic.Uint64
	rtt                  atomic.Int64 // smoothed, ns
}

// handshakeState is the handshake side of the peer (handshake_peer.go). Guarded by
// Peer.mu.
type handshakeState struct {
	init          *initiation // the handshake in flight, if any
	proof         *initiation // the initiation whose AUTH_PROOF was sent last
	cookie        []byte      // the responder's latest cookie, for mac2
	cookieAt      time.Time
	want          bool      // a handshake is wanted: traffic waits, or a rekey was asked for
	lastTimestamp [12]byte  // of the peer's latest accepted HELLO, against replay
	last          time.Time // when the latest session was confirmed (LastHandshake)
	static        [32]byte  // the peer's static key, pinned or learned
	staticKnown   bool
	// candidates are cfg.Candidates as endpoints: more addresses each HELLO goes to
	// while the peer has no working endpoint. badCandidates has bit i set when
	// candidates[i] answered as a node of another name: it is skipped until the
	// candidates change or a session is confirmed.
	candidates    []conn.Endpoint
	badCandidates uint8
}

// pingState is the STT echo of the peer. Guarded by Peer.mu.
type pingState struct {
	last    time.Time
	waiting map[uint32]chan time.Duration // Ping calls waiting for their PONG, by sequence
	seq     uint32
	// txAtProbe is the data packets sent when the last RTT probe went out: a probe is
	// due while data flows either way, and a sender whose peer only acknowledges
	// (keepalives, no data) probes too.
	txAtProbe uint64
}

// lookupState is the background lookup of cfg.Endpoint when it is a name. Guarded by
// Peer.mu.
type lookupState struct {
	running bool // a lookup runs in the background
	// dial: Connect asked for a handshake, which starts once the lookup running ends
	// (with the address it found); again: Connect came while a lookup was already
	// running, whose answer may predate what Connect should find, so one more runs.
	dial, again bool
	// unresolved: cfg.Endpoint is a name that has given no address since it was
	// configured. The timers look it up again, fails times failed so far, from next
	// on; err says why the last lookup failed. done is closed when the first lookup of
	// the name ends (answer or failure).
	unresolved bool
	fails      int
	next       time.Time
	err        string
	done       chan struct{}
}

// refusalState is the peer's refusal of our latest handshake (docs/protocol.md 4.8):
// the refusal code (0 = none), since when, until when no new handshake starts, and how
// many refusals in a row (for the back-off). Guarded by Peer.mu.
type refusalState struct {
	code         uint16
	since, until time.Time
	count        int
}

// idleState is the idle timer of a peer with an IdleTimeout (expiredIdleLocked).
// Guarded by Peer.mu.
type idleState struct {
	// packets is the peer's data packets, sent and received, when the timer last
	// looked; lastUse (mono, 0 = not started) is when it last saw them change.
	packets uint64
	lastUse int64
}

// wildcardState is what a wildcard peer (PeerConfig.AnyName) found at its address.
// Guarded by Peer.mu.
type wildcardState struct {
	reached bool // a handshake reached a node, name and key below
	name    string
	key     [32]byte
	self    bool // the latest CHALLENGE came from this node itself
}

// Name is the peer's configured name.
func (p *Peer) Name() string { return p.cfg.Name }

// Tag is the opaque value given in PeerConfig.
func (p *Peer) Tag() any { return p.cfg.Tag }

// Endpoint is the peer's current underlay address (through a relay: the relay's), or
// the zero value.
func (p *Peer) Endpoint() netip.AddrPort {
	if ep := p.target(); ep != nil {
		return addrPortOf(ep)
	}
	return netip.AddrPort{}
}

// UDPEndpoint is the peer's latest UDP address, or the zero value.
func (p *Peer) UDPEndpoint() netip.AddrPort {
	if ap := p.path.udpAP.Load(); ap != nil {
		return *ap
	}
	return netip.AddrPort{}
}

// WSEndpoint is the TCP address at the other end of the peer's WebSocket connection
// (the peer, or a proxy before it), or the zero value without one.
func (p *Peer) WSEndpoint() netip.AddrPort {
	if we := p.path.ws.Load(); we != nil {
		return we.addr
	}
	return netip.AddrPort{}
}

// PublicKey is the peer's static key, pinned or learned, and whether it is known.
func (p *Peer) PublicKey() ([32]byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.handshake.static, p.handshake.staticKnown
}

// LastHandshake is when the latest session with this peer was established: confirmed by
// the peer (its FINAL or first frame, for a handshake this node started).
func (p *Peer) LastHandshake() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.handshake.last
}

// RTT is the smoothed round-trip time measured with PING, 0 if unknown.
func (p *Peer) RTT() time.Duration { return time.Duration(p.counters.rtt.Load()) }

// HasSession reports whether the peer has a usable session: one the peer has confirmed
// (an unconfirmed one may never be: the AUTH_PROOF may be lost or refused), or the
// confirmed one a rekey is replacing.
func (p *Peer) HasSession() bool {
	now := time.Now()
	for _, s := range [...]*session{p.keys.current.Load(), p.keys.standby.Load()} {
		if s != nil && s.confirmed.Load() && !s.expired(now, &p.node.limits) {
			return true
		}
	}
	return false
}

// Cipher names the AEAD of the current session, "" without one.
func (p *Peer) Cipher() string {
	if s := p.keys.current.Load(); s != nil {
		return s.cipherID.String()
	}
	return ""
}

// Stats returns the peer's traffic counters.
func (p *Peer) Stats() PeerStats {
	s := PeerStats{
		TxBytes: p.counters.txBytes.Load(), RxBytes: p.counters.rxBytes.Load(),
		TxPackets: p.counters.txPackets.Load(), RxPackets: p.counters.rxPackets.Load(),
		Drops: p.counters.drops.Load(),
	}
	p.pmtuStats(&s)
	return s
}

// resolveTimeout bounds one background lookup of a peer's endpoint name.
const resolveTimeout = 5 * time.Second

// reresolveLocked looks the peer's configured endpoint name up again, in the
// background: a slow or dead DNS server must hold up neither the timer loop, which runs
// every peer's timers, nor this peer's lock, which Send takes to queue. At most one
// lookup runs per peer. Its result becomes the peer's UDP address only if the
// configured endpoint is still the name looked up (a reload may have changed it) and
// the peer was not removed; the handshake in flight is then sent there at once. An IP
// address needs no lookup. Called with p.mu held.
func (p *Peer) reresolveLocked() {
	name := p.cfg.Endpoint
	if p.lookup.running || p.removed || name == "" {
		return
	}
	if _, err := netip.ParseAddrPort(name); err == nil {
		return
	}
	n := p.node
	if n.ctx == nil || n.ctx.Err() != nil {
		return
	}
	p.lookup.running = true
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, resolveTimeout)
		ap, err := n.resolveContext(ctx, name)
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		defer p.lookupEndedLocked() // runs before the unlock, after the result is taken
		p.lookup.running = false
		if n.ctx.Err() != nil { // the node is closing
			p.endLookupLocked()
			return
		}
		if p.removed {
			p.endLookupLocked()
			return
		}
		if p.cfg.Endpoint != name {
			n.kick() // the name configured since then waits for its lookup
			return
		}
		if err != nil {
			if p.lookup.unresolved {
				p.lookupFailedLocked(err)
				return
			}
			// Peer addresses are logged at debug level only.
			n.log.Debug("endpoint lookup failed; keeping the address", "peer", p.cfg.Name, "err", err)
			return
		}
		if p.lookup.unresolved {
			if p.lookup.fails > 0 {
				n.log.Info("peer's endpoint name resolves now", "peer", p.cfg.Name)
			}
			p.lookup.unresolved, p.lookup.fails, p.lookup.err = false, 0, ""
			p.endLookupLocked()
			if p.handshake.want || p.handshake.init != nil {
				n.kick() // the handshake waited for the address
			}
		}
		if ap == p.UDPEndpoint() {
			return
		}
		if err := p.setEndpoint(ap); err != nil {
			n.log.Debug("endpoint lookup gave an unusable address", "peer", p.cfg.Name, "err", err)
			return
		}
		n.log.Debug("endpoint name now has another address", "peer", p.cfg.Name, "endpoint", name, "addr", ap)
		if p.handshake.init != nil {
			// Retransmit the handshake to the new address now, not at its next retry.
			p.handshake.init.nextRetry = time.Now()
			n.kick()
		}
	}()
}

// lookupEndedLocked starts what waited for the lookup that just ended: one more lookup
// (again), or the handshake Connect asked for (dial), to the address it found — or,
// should it have failed, to the address the peer had. Called with p.mu held.
func (p *Peer) lookupEndedLocked() {
	l := &p.lookup
	if p.removed || p.node.ctx.Err() != nil {
		l.dial, l.again = false, false
		return
	}
	if l.again {
		l.again = false
		if p.reresolveLocked(); l.running {
			return // dial, if asked for, waits for this one
		}
	}
	if l.dial {
		l.dial = false
		p.handshake.want = true
		p.node.kick()
	}
}

// Lookups of a name that has never resolved are retried after lookupRetry, doubling
// with each failure up to lookupRetryMax.
const (
	lookupRetry    = time.Second
	lookupRetryMax = 30 * time.Second
)

// lookupFailedLocked records a failed lookup of a name that has given no address yet:
// the peer stays without one, and the timers try again later. The first failure is
// logged at warn, without the name (peer addresses and names are debug-level).
// Called with p.mu held.
func (p *Peer) lookupFailedLocked(err error) {
	n := p.node
	p.lookup.fails++
	p.lookup.err = err.Error()
	p.lookup.next = time.Now().Add(min(lookupRetry<<min(p.lookup.fails-1, 10), lookupRetryMax))
	if p.lookup.fails == 1 {
		n.log.Warn("peer's endpoint name does not resolve; the peer starts without an address and the name is looked up again in the background",
			"peer", p.cfg.Name, "reason", lookupReason(err))
	}
	n.log.Debug("endpoint lookup failed", "peer", p.cfg.Name, "err", err, "retry_in", time.Until(p.lookup.next).Round(time.Millisecond))
	p.endLookupLocked()
}

// lookupReason is why a lookup failed, without the name looked up.
func lookupReason(err error) string {
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.IsNotFound:
		return "no such host"
	case errors.As(err, &de) && de.IsTimeout, errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.As(err, &de):
		return de.Err
	}
	return "lookup failed"
}

// startLookupLocked makes the peer's configured endpoint, a name, wait for its first
// lookup, and starts it. Called with p.mu held.
func (p *Peer) startLookupLocked() {
	p.endLookupLocked()
	p.lookup.unresolved, p.lookup.fails, p.lookup.err, p.lookup.next = true, 0, "", time.Time{}
	p.lookup.done = make(chan struct{})
	p.reresolveLocked()
}

// endLookupLocked releases those waiting for the first lookup. Called with p.mu held.
func (p *Peer) endLookupLocked() {
	if p.lookup.done != nil {
		close(p.lookup.done)
		p.lookup.done = nil
	}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// LookupDone is closed once the first lookup of the peer's endpoint name has ended,
// with an address or without; at once for an IP address, or no endpoint.
func (p *Peer) LookupDone() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lookup.done == nil {
		return closedChan
	}
	return p.lookup.done
}

// EndpointError says why the peer's endpoint name has no address yet ("" when it has
// one, or is an IP address); the name is looked up again in the background.
func (p *Peer) EndpointError() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.lookup.unresolved {
		return ""
	}
	return p.lookup.err
}

// Reached reports whom the wildcard peer's latest handshake reached: the node name and
// static key its address answered with, on whose peer the session was made. ok is false
// before any (and always for a peer that is not a wildcard).
func (p *Peer) Reached() (name string, key [32]byte, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wildcard.name, p.wildcard.key, p.wildcard.reached
}

// ReachedSelf reports whether the wildcard peer's address last answered as this node
// itself (its own name or static key): a bootstrap address that is this node's own. The
// wildcard then stops trying until Rekey.
func (p *Peer) ReachedSelf() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wildcard.self
}

// IsWildcard reports whether the peer is a wildcard (PeerConfig.AnyName).
func (p *Peer) IsWildcard() bool { return p.cfg.AnyName }

// ErrNoSession reports an operation that needs a session the peer does not have yet.
var ErrNoSession = errors.New("no session with peer")

// Rekey starts a new handshake now, keeping the current session until it completes.
func (p *Peer) Rekey() {
	p.mu.Lock()
	p.handshake.want = true
	p.mu.Unlock()
	p.node.kick()
}

func (p *Peer) shutdown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removed = true
	p.node.addrGen.Add(1) // its address leaves the set of configured peers' addresses
	p.endLookupLocked()
	// The handshake dropSessionsLocked asks for never starts: a removed peer runs no
	// timers and completes no handshake.
	p.dropSessionsLocked()
	p.queue = nil
	p.relQueue = nil
}
