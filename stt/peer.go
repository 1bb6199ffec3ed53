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
type Peer struct {
	node *Node
	cfg  PeerConfig

	udpEP   atomic.Pointer[conn.Endpoint]  // latest UDP address: configured, or where authenticated frames came from
	udpAP   atomic.Pointer[netip.AddrPort] // udpEP's address, stored with it
	wsEP    atomic.Pointer[wsEndpoint]     // WebSocket connection to the peer, if any
	onWS    atomic.Bool                    // the peer's traffic currently goes over WebSocket
	current atomic.Pointer[session]
	// standby is the confirmed session a rekey replaced: the initiator keeps sending on
	// it until the new one is confirmed, so a lost AUTH_PROOF loses no data.
	standby atomic.Pointer[session]
	// moved is the peer's frame that last moved its traffic (see follow); moveMu
	// orders moves made by concurrent receivers.
	moved    atomic.Pointer[pathMove]
	moveMu   sync.Mutex
	chooser  atomic.Bool   // this node holds the peer's WebSocket URL: it chooses the path
	sessions atomic.Uint64 // sessions made with the peer, numbering them

	// Times in nanoseconds since node.epoch; 0 = never.
	lastSent        atomic.Int64
	lastRecv        atomic.Int64
	lastRecvData    atomic.Int64
	firstUnanswered atomic.Int64 // first data or keepalive echo sent since we last heard from the peer
	// sentUnanswered counts data datagrams sent since we last heard from the peer: if
	// the path is then given up as dead, they are presumed lost (DropFallback).
	sentUnanswered atomic.Uint64
	// holding: the path is being switched (UDP gave no answer, the WebSocket is being
	// dialed); datagrams wait in queue instead of going into the dead path.
	holding atomic.Bool

	txBytes, rxBytes     atomic.Uint64
	txPackets, rxPackets atomic.Uint64
	drops                atomic.Uint64
	rtt                  atomic.Int64 // smoothed, ns

	mu            sync.Mutex
	previous      *session
	init          *initiation
	proof         *initiation // the initiation whose AUTH_PROOF was sent last
	cookie        []byte
	cookieAt      time.Time
	wantHandshake bool
	lastTimestamp [12]byte
	lastHandshake time.Time
	static        [32]byte
	staticKnown   bool
	queue         [][]byte
	lastPing      time.Time
	pings         map[uint32]chan time.Duration
	pingSeq       uint32
	removed       bool
	lastProbe     time.Time
	wsDialing     bool
	wsDialFails   int
	wsDialFailed  time.Time
	resolving     bool // a lookup of cfg.Endpoint runs in the background
	// unresolved: cfg.Endpoint is a name that has given no address since it was
	// configured. The timers look it up again, lookupFails times failed so far, from
	// nextLookup on; lookupErr says why the last lookup failed. lookupDone is closed
	// when the first lookup of the name ends (answer or failure).
	unresolved  bool
	lookupFails int
	nextLookup  time.Time
	lookupErr   string
	lookupDone  chan struct{}
	// The peer refused our latest handshake (docs/protocol.md 4.8): the refusal code
	// (0 = none), since when, until when no new handshake starts, and how many refusals
	// in a row (for the back-off).
	refusal      uint16
	refusedSince time.Time
	refusedUntil time.Time
	refusals     int
}

// Name is the peer's configured name.
func (p *Peer) Name() string { return p.cfg.Name }

// Tag is the opaque value given in PeerConfig.
func (p *Peer) Tag() any { return p.cfg.Tag }

// Endpoint is the peer's current underlay address, or the zero value.
func (p *Peer) Endpoint() netip.AddrPort {
	if ep := p.sendEndpoint(); ep != nil {
		return addrPortOf(ep)
	}
	return netip.AddrPort{}
}

// UDPEndpoint is the peer's latest UDP address, or the zero value.
func (p *Peer) UDPEndpoint() netip.AddrPort {
	if ap := p.udpAP.Load(); ap != nil {
		return *ap
	}
	return netip.AddrPort{}
}

// WSEndpoint is the TCP address at the other end of the peer's WebSocket connection
// (the peer, or a proxy before it), or the zero value without one.
func (p *Peer) WSEndpoint() netip.AddrPort {
	if we := p.wsEP.Load(); we != nil {
		return we.addr
	}
	return netip.AddrPort{}
}

// PublicKey is the peer's static key, pinned or learned, and whether it is known.
func (p *Peer) PublicKey() ([32]byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.static, p.staticKnown
}

// LastHandshake is when the latest session with this peer was established: confirmed by
// the peer (its FINAL or first frame, for a handshake this node started).
func (p *Peer) LastHandshake() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastHandshake
}

// RTT is the smoothed round-trip time measured with PING, 0 if unknown.
func (p *Peer) RTT() time.Duration { return time.Duration(p.rtt.Load()) }

// HasSession reports whether the peer has a usable session: one the peer has confirmed
// (an unconfirmed one may never be: the AUTH_PROOF may be lost or refused), or the
// confirmed one a rekey is replacing.
func (p *Peer) HasSession() bool {
	now := time.Now()
	for _, s := range [...]*session{p.current.Load(), p.standby.Load()} {
		if s != nil && s.confirmed.Load() && !s.expired(now, &p.node.timers) {
			return true
		}
	}
	return false
}

// Cipher names the AEAD of the current session, "" without one.
func (p *Peer) Cipher() string {
	if s := p.current.Load(); s != nil {
		return s.cipherID.String()
	}
	return ""
}

// Stats returns the peer's traffic counters.
func (p *Peer) Stats() PeerStats {
	return PeerStats{
		TxBytes: p.txBytes.Load(), RxBytes: p.rxBytes.Load(),
		TxPackets: p.txPackets.Load(), RxPackets: p.rxPackets.Load(),
		Drops: p.drops.Load(),
	}
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
	p.udpEP.Store(&ep)
	p.udpAP.Store(&ap)
}

func (p *Peer) mono(t time.Time) int64 { return int64(t.Sub(p.node.epoch)) }

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
	if p.resolving || p.removed || name == "" {
		return
	}
	if _, err := netip.ParseAddrPort(name); err == nil {
		return
	}
	n := p.node
	if n.ctx == nil || n.ctx.Err() != nil {
		return
	}
	p.resolving = true
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, resolveTimeout)
		ap, err := n.resolveContext(ctx, name)
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		p.resolving = false
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
			if p.unresolved {
				p.lookupFailedLocked(err)
				return
			}
			// Peer addresses are logged at debug level only.
			n.log.Debug("endpoint lookup failed; keeping the address", "peer", p.cfg.Name, "err", err)
			return
		}
		if p.unresolved {
			if p.lookupFails > 0 {
				n.log.Info("peer's endpoint name resolves now", "peer", p.cfg.Name)
			}
			p.unresolved, p.lookupFails, p.lookupErr = false, 0, ""
			p.endLookupLocked()
			if p.wantHandshake || p.init != nil {
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
		if p.init != nil {
			// Retransmit the handshake to the new address now, not at its next retry.
			p.init.nextRetry = time.Now()
			n.kick()
		}
	}()
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
	p.lookupFails++
	p.lookupErr = err.Error()
	p.nextLookup = time.Now().Add(min(lookupRetry<<min(p.lookupFails-1, 10), lookupRetryMax))
	if p.lookupFails == 1 {
		n.log.Warn("peer's endpoint name does not resolve; the peer starts without an address and the name is looked up again in the background",
			"peer", p.cfg.Name, "reason", lookupReason(err))
	}
	n.log.Debug("endpoint lookup failed", "peer", p.cfg.Name, "err", err, "retry_in", time.Until(p.nextLookup).Round(time.Millisecond))
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
	p.unresolved, p.lookupFails, p.lookupErr, p.nextLookup = true, 0, "", time.Time{}
	p.lookupDone = make(chan struct{})
	p.reresolveLocked()
}

// endLookupLocked releases those waiting for the first lookup. Called with p.mu held.
func (p *Peer) endLookupLocked() {
	if p.lookupDone != nil {
		close(p.lookupDone)
		p.lookupDone = nil
	}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// LookupDone is closed once the first lookup of the peer's endpoint name has ended,
// with an address or without; at once for an IP address, or no endpoint.
func (p *Peer) LookupDone() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lookupDone == nil {
		return closedChan
	}
	return p.lookupDone
}

// EndpointError says why the peer's endpoint name has no address yet ("" when it has
// one, or is an IP address); the name is looked up again in the background.
func (p *Peer) EndpointError() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.unresolved {
		return ""
	}
	return p.lookupErr
}

// ErrNoSession reports an operation that needs a session the peer does not have yet.
var ErrNoSession = errors.New("no session with peer")

// Rekey starts a new handshake now, keeping the current session until it completes.
func (p *Peer) Rekey() {
	p.mu.Lock()
	p.wantHandshake = true
	p.mu.Unlock()
	p.node.kick()
}

func (p *Peer) shutdown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removed = true
	p.endLookupLocked()
	// The handshake dropSessionsLocked asks for never starts: a removed peer runs no
	// timers and completes no handshake.
	p.dropSessionsLocked()
	p.queue = nil
}
