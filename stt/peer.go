package stt

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
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

// initiation is a handshake this node started, kept until it completes or is replaced.
type initiation struct {
	peer      *Peer
	hs        *handshake.Initiation
	index     uint32
	firstSent time.Time // of the first attempt in this series
	nextRetry time.Time
	attempt   int
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
	if p.node != nil {
		p.node.addrGen.Add(1) // after the store: the timers then see the new address
	}
}

func (p *Peer) mono(t time.Time) int64 { return int64(t.Sub(p.node.epoch)) }

// Send seals and sends a batch of datagrams to the peer. pkts[i] holds wire.HeaderLen
// bytes of headroom followed by the payload, and must have wire.TagLen bytes of spare
// capacity; it is sealed in place and pkts[i] is extended to the frame. flows[i] keeps
// datagrams of one flow on one stream. Without a session the datagrams are copied into a
// bounded queue and a handshake starts.
func (p *Peer) Send(pkts [][]byte, flows []uint16) error {
	n := p.node
	now := time.Now()
	s := p.current.Load()
	if s != nil && !s.confirmed.Load() {
		if sb := p.standby.Load(); sb != nil && !sb.expired(now, &n.timers) {
			s = sb
		}
	}
	if s == nil || s.expired(now, &n.timers) {
		p.enqueue(pkts)
		return nil
	}
	if p.holding.Load() && p.hold(pkts) {
		return nil
	}
	first, ok := s.reserve(len(pkts), n.timers.RejectAfterMessages)
	if !ok {
		p.enqueue(pkts)
		return nil
	}
	bytes := p.sealBatch(s, pkts, flows, first)
	if first+uint64(len(pkts)) >= n.timers.RekeyAfterMessages {
		n.kick()
	}
	return p.transmit(pkts, now, bytes, true)
}

// transmit sends sealed frames to the current endpoint and accounts for them.
func (p *Peer) transmit(frames [][]byte, now time.Time, payloadBytes uint64, data bool) error {
	ep := p.sendEndpoint()
	if ep == nil {
		p.drops.Add(uint64(len(frames)))
		p.node.ctr.drops[DropSendError].Add(uint64(len(frames)))
		return errNoEndpoint
	}
	if err := p.node.send(frames, ep); err != nil {
		p.drops.Add(uint64(len(frames)))
		p.node.ctr.drops[DropSendError].Add(uint64(len(frames)))
		if data {
			// A path that refuses sends (a local firewall answers EPERM) is as dead
			// as one that drops them: start the same clock.
			p.firstUnanswered.CompareAndSwap(0, p.mono(now))
		}
		return err
	}
	t := p.mono(now)
	p.lastSent.Store(t)
	if data {
		p.txPackets.Add(uint64(len(frames)))
		p.txBytes.Add(payloadBytes)
		// Set once per silence: a failing CompareAndSwap would still take the cache
		// line, which the receive path reads, on every batch while the peer is quiet.
		if p.firstUnanswered.Load() == 0 {
			p.firstUnanswered.CompareAndSwap(0, t)
		}
		if _, ws := ep.(*wsEndpoint); !ws && p.chooser.Load() {
			// Only a node that may move the path away from UDP needs the count.
			p.sentUnanswered.Add(uint64(len(frames)))
			if p.onWS.Load() {
				// The move came between choosing UDP and counting: it may have
				// taken the count before this batch was in it.
				p.countFallbackLost()
			}
		}
	}
	return nil
}

var errNoEndpoint = errors.New("peer has no known endpoint")

// enqueue copies datagrams into the handshake queue, dropping the oldest when full.
func (p *Peer) enqueue(pkts [][]byte) {
	p.mu.Lock()
	if p.refusedLocked(time.Now()) {
		// The peer refused us: nothing would carry these before the back-off ends.
		// Remember that there is traffic, so that a handshake starts when it does.
		p.drops.Add(uint64(len(pkts)))
		p.node.ctr.drops[DropRefused].Add(uint64(len(pkts)))
		p.wantHandshake = true
		p.mu.Unlock()
		return
	}
	for _, pkt := range pkts {
		if len(p.queue) >= MaxQueued {
			p.queue[0] = nil
			p.queue = p.queue[1:]
			p.drops.Add(1)
			p.node.drop(DropNoSession)
		}
		b := make([]byte, len(pkt), len(pkt)+wire.TagLen)
		copy(b, pkt)
		p.queue = append(p.queue, b)
	}
	p.wantHandshake = true
	p.mu.Unlock()
	p.node.kick()
}

// flushQueueLocked sends what waited for a session. Called with p.mu held.
func (p *Peer) flushQueueLocked(s *session) {
	if len(p.queue) == 0 {
		return
	}
	q := p.queue
	p.queue = nil
	first, ok := s.reserve(len(q), p.node.timers.RejectAfterMessages)
	if !ok {
		// The session may not seal that many (only with a REJECT_AFTER_MESSAGES
		// lowered below the queue's length): the datagrams are lost, and counted as
		// those a full queue pushes out are.
		p.drops.Add(uint64(len(q)))
		p.node.ctr.drops[DropNoSession].Add(uint64(len(q)))
		return
	}
	// Queued datagrams lost their flow numbers; one stream keeps them in order.
	bytes := p.sealBatch(s, q, nil, first)
	_ = p.transmit(q, time.Now(), bytes, true)
}

// sealBatch seals pkts in place on s, with the counters reserved from first on, each
// on the stream of flows[i], or all on the stream of flow 0 when flows is nil. It
// returns the payload bytes sealed.
func (p *Peer) sealBatch(s *session, pkts [][]byte, flows []uint16, first uint64) uint64 {
	nonce := p.node.getNonce()
	var bytes uint64
	stream := s.streamFor(0)
	for i := range pkts {
		bytes += uint64(len(pkts[i]) - wire.HeaderLen)
		if flows != nil {
			stream = s.streamFor(flows[i])
		}
		pkts[i] = s.seal(pkts[i], stream, first+uint64(i), nonce)
	}
	p.node.putNonce(nonce)
	return bytes
}

// sendControl seals one stream-0 payload on s and sends it on the current path.
func (p *Peer) sendControl(s *session, payload []byte) {
	p.sendControlVia(s, payload, nil)
}

// sendControlVia seals one stream-0 payload on s and sends it to ep, or on the
// current path when ep is nil. Answers to probes go back the way the probe came.
func (p *Peer) sendControlVia(s *session, payload []byte, ep conn.Endpoint) {
	if s.expired(time.Now(), &p.node.timers) {
		return // the timer has not taken it away yet, but it seals nothing more
	}
	first, ok := s.reserve(1, p.node.timers.RejectAfterMessages)
	if !ok {
		return
	}
	frame := make([]byte, wire.HeaderLen, wire.HeaderLen+len(payload)+wire.TagLen)
	frame = append(frame, payload...)
	nonce := p.node.getNonce()
	frame = s.seal(frame, wire.ControlStream, first, nonce)
	p.node.putNonce(nonce)
	if ep == nil {
		_ = p.transmit([][]byte{frame}, time.Now(), 0, false)
		return
	}
	if err := p.node.send([][]byte{frame}, ep); err != nil {
		p.node.drop(DropSendError)
	}
}

// recvRun accumulates what a run of frames from one peer in a receive batch did to
// the peer, so that the shared counters and clocks are written once per run rather
// than once per frame (they share cache lines with the sending goroutine).
type recvRun struct {
	p           *Peer
	packets     uint64
	bytes       uint64
	any, data   bool
	unconfirmed *session
}

// add records one authenticated frame of s, switching runs when the peer changes.
// The path and roaming are updated per frame: a probe (a lone PING) moves no path, it is
// answered the way it came.
func (r *recvRun) add(s *session, ctr uint64, ep conn.Endpoint, now time.Time, size int, data, probe bool) {
	p := s.peer
	if p != r.p {
		r.flush(now)
		r.p = p
	}
	if p.learnEndpoint(ep, probe, s, ctr) {
		// Tell the peer over UDP at once, so that its traffic follows ours back.
		p.sendControl(s, nil)
	}
	r.any = true
	if !s.confirmed.Load() {
		r.unconfirmed = s
	}
	if data {
		r.data = true
		r.packets++
		r.bytes += uint64(size - wire.Overhead)
	}
}

// flush writes the run's effects to its peer.
func (r *recvRun) flush(now time.Time) {
	p := r.p
	if p == nil || !r.any {
		*r = recvRun{}
		return
	}
	t := p.mono(now)
	p.lastRecv.Store(t)
	if p.firstUnanswered.Load() != 0 {
		p.firstUnanswered.Store(0)
	}
	if p.sentUnanswered.Load() != 0 {
		p.sentUnanswered.Store(0)
	}
	if r.unconfirmed != nil && r.unconfirmed.confirmed.CompareAndSwap(false, true) {
		p.confirmedSession(r.unconfirmed, now)
	}
	if r.data {
		p.lastRecvData.Store(t)
		p.rxPackets.Add(r.packets)
		p.rxBytes.Add(r.bytes)
	}
	*r = recvRun{}
}

// startHandshakeLocked sends a fresh HELLO. Called with p.mu held.
func (p *Peer) startHandshakeLocked(now time.Time) {
	n := p.node
	ep := p.sendEndpoint()
	if ep == nil || p.removed {
		if ep == nil && p.wantsWS() {
			p.dialWSLocked()
		}
		return
	}
	first := now
	attempt := 0
	if old := p.init; old != nil {
		first, attempt = old.firstSent, old.attempt+1
		p.dropInitLocked()
	}
	var cookie []byte
	if p.cookie != nil && now.Sub(p.cookieAt) < 120*time.Second {
		cookie = p.cookie
	}
	idx := n.index.reserve()
	hs, hello, err := n.hs.Initiate(idx, cookie, make([]byte, 0, wire.HelloLen))
	if err != nil {
		n.index.release(idx)
		n.log.Warn("cannot start handshake", "peer", p.cfg.Name, "err", err)
		return
	}
	delay := n.timers.HandshakeRetry << min(attempt, 10)
	if delay > n.timers.HandshakeRetryMax || delay <= 0 {
		delay = n.timers.HandshakeRetryMax
	}
	jitter := time.Duration(rand.Int64N(int64(delay)/5*2+1)) - delay/5
	in := &initiation{peer: p, hs: hs, index: idx, firstSent: first, nextRetry: now.Add(delay + jitter), attempt: attempt}
	p.init = in
	n.mu.Lock()
	n.inits[idx] = in
	n.mu.Unlock()
	n.ctr.handshakesStart.Add(1)
	_ = n.send([][]byte{hello}, ep)
}

func (p *Peer) dropInitLocked() {
	in := p.init
	if in == nil {
		return
	}
	p.init = nil
	n := p.node
	n.mu.Lock()
	delete(n.inits, in.index)
	n.mu.Unlock()
	n.index.release(in.index)
}

// consumeChallenge continues our handshake: check the responder's identity, send
// AUTH_PROOF and install the session.
func (p *Peer) consumeChallenge(in *initiation, msg []byte, ep conn.Endpoint) {
	n := p.node
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.init != in {
		n.drop(DropHandshake)
		return
	}
	info, err := in.hs.ReadChallenge(msg)
	if err != nil {
		n.dropHandshake(err, addrPortOf(ep))
		return
	}
	if info.PeerName != p.cfg.Name {
		n.drop(DropUnknownPeer)
		n.log.Warn("peer answered with another name", "peer", p.cfg.Name, "name", info.PeerName)
		return
	}
	if p.cfg.PublicKey != nil && subtle.ConstantTimeCompare(info.PeerStatic[:], p.cfg.PublicKey[:]) != 1 {
		n.drop(DropPinMismatch)
		n.log.Warn("peer's key does not match the pinned key; refusing", "peer", p.cfg.Name)
		return
	}
	var cookie []byte
	if p.cookie != nil && time.Since(p.cookieAt) < 120*time.Second {
		cookie = p.cookie
	}
	proof, res, err := in.hs.WriteAuthProof(cookie, make([]byte, 0, wire.AuthProofLen))
	if err != nil {
		n.dropHandshake(err, addrPortOf(ep))
		return
	}
	now := time.Now()
	s, err := newSession(p, res.LocalIndex, res.RemoteIndex, true, res.Cipher, &res.SendKey, &res.RecvKey, now)
	if err != nil {
		n.drop(DropHandshake)
		return
	}
	// The index stays reserved until install turns it into the session. The
	// initiation stays findable for a while: a responder under load may answer the
	// AUTH_PROOF with a cookie, and then it is sent again with mac2.
	p.init = nil
	p.forgetProofLocked()
	p.proof = in
	in.nextRetry = now.Add(handshake.HalfOpenTimeout)
	if err := n.send([][]byte{proof}, ep); err != nil {
		n.index.release(in.index)
		return
	}
	p.learnEndpoint(ep, false, s, handshakeCtr)
	p.installLocked(s, res.PeerStatic, now)
}

// consumeCookie stores a cookie for our in-flight handshake; the next retransmission
// carries it.
func (p *Peer) consumeCookie(in *initiation, msg []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.init != in && p.proof != in {
		p.node.drop(DropHandshake)
		return
	}
	c, err := in.hs.ReadCookieReply(msg)
	if err != nil {
		p.node.dropHandshake(err, netip.AddrPort{})
		return
	}
	p.cookie, p.cookieAt = c, time.Now()
	if in == p.proof {
		proof, err := in.hs.ResendAuthProof(c, make([]byte, 0, wire.AuthProofLen))
		if err != nil {
			p.node.dropHandshake(err, netip.AddrPort{})
			return
		}
		if ep := p.sendEndpoint(); ep != nil {
			_ = p.node.send([][]byte{proof}, ep)
		}
	}
}

// forgetProofLocked stops answering cookies for the last AUTH_PROOF sent.
func (p *Peer) forgetProofLocked() {
	if p.proof == nil {
		return
	}
	n := p.node
	n.mu.Lock()
	delete(n.inits, p.proof.index)
	n.mu.Unlock()
	p.proof = nil
}

// completeResponder installs a responder session after the per-peer checks.
func (p *Peer) completeResponder(res handshake.Result, ep conn.Endpoint) {
	n := p.node
	p.mu.Lock()
	defer p.mu.Unlock()
	reject := func(r DropReason) {
		n.index.release(res.LocalIndex)
		n.drop(r)
	}
	if p.removed {
		reject(DropUnknownPeer)
		n.refuse(res, ep, wire.CodeNotPeer)
		return
	}
	if p.cfg.PublicKey != nil && subtle.ConstantTimeCompare(res.PeerStatic[:], p.cfg.PublicKey[:]) != 1 {
		reject(DropPinMismatch)
		n.warnDrop(DropPinMismatch, "handshake with a key other than the pinned one; refusing", "peer", p.cfg.Name)
		n.refuse(res, ep, wire.CodePinMismatch)
		return
	}
	// A new static key for the same name restarts the timestamp sequence only if the
	// key is not pinned; replay protection is per key.
	if p.staticKnown && p.static == res.PeerStatic && handshake.CompareTimestamp(res.Timestamp, p.lastTimestamp) <= 0 {
		reject(DropStaleTimestamp)
		return
	}
	now := time.Now()
	s, err := newSession(p, res.LocalIndex, res.RemoteIndex, false, res.Cipher, &res.SendKey, &res.RecvKey, now)
	if err != nil {
		reject(DropHandshake)
		return
	}
	p.lastTimestamp = res.Timestamp
	p.learnEndpoint(ep, false, s, handshakeCtr)
	p.installLocked(s, res.PeerStatic, now)
	p.sendControl(s, wire.AppendControl(nil, wire.CtlFinal, nil))
	p.flushQueueLocked(s)
}

// installLocked makes s the current session; the one it replaces stays for receiving.
func (p *Peer) installLocked(s *session, static [32]byte, now time.Time) {
	n := p.node
	n.index.install(s)
	old := p.current.Swap(s)
	if p.previous != nil {
		n.index.remove(p.previous)
	}
	p.previous = old
	if old != nil {
		s.rel.inherit(&old.rel)
	}
	if old != nil && s.initiator && old.confirmed.Load() {
		p.standby.Store(old)
	} else {
		p.standby.Store(nil)
	}
	p.static, p.staticKnown = static, true
	p.wantHandshake = false
	p.firstUnanswered.Store(0)
	if s.confirmed.Load() {
		// A responder's session: the AUTH_PROOF confirmed it. Ours counts once the
		// peer confirms it (confirmedSession).
		p.confirmedLocked(now)
	}
	if s.initiator {
		p.flushQueueLocked(s)
	}
	n.log.Debug("session established", "peer", p.cfg.Name, "initiator", s.initiator, "cipher", s.cipherID.String())
}

// tick runs the peer's timers.
func (p *Peer) tick(now time.Time) {
	n := p.node
	t := &n.timers
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return
	}
	cur := p.current.Load()
	// Expire sessions.
	if p.previous != nil && p.previous.expired(now, t) {
		n.index.remove(p.previous)
		p.previous = nil
	}
	if cur != nil && cur.expired(now, t) {
		n.index.remove(cur)
		p.current.CompareAndSwap(cur, nil)
		cur = nil
	}
	if p.proof != nil && (cur == nil || cur.confirmed.Load() || !now.Before(p.proof.nextRetry)) {
		p.forgetProofLocked()
	}
	if cur != nil && cur.confirmed.Load() {
		p.standby.Store(nil)
	}
	// Our session never confirmed: the AUTH_PROOF or the FINAL was lost. Start over
	// rather than wait for the dead-peer timer.
	unconfirmed := cur != nil && cur.initiator && !cur.confirmed.Load() && now.Sub(cur.created) >= 2*t.HandshakeRetry
	nowMono := p.mono(now)
	sentRecently := nowMono-p.lastSent.Load() < int64(t.RekeyAfterTime)
	need := p.wantHandshake || (unconfirmed && sentRecently)
	if cur != nil && sentRecently {
		age := now.Sub(cur.created)
		if (cur.initiator && age >= t.RekeyAfterTime) || (!cur.initiator && age >= t.responderRekeyAfter()) ||
			cur.sendCounter.Load() >= t.RekeyAfterMessages {
			need = true
		}
	}
	if p.unresolved && !now.Before(p.nextLookup) {
		p.reresolveLocked()
	}
	if fu := p.firstUnanswered.Load(); fu != 0 && nowMono-fu >= int64(t.DeadPeerTimeout) {
		need = true
		p.firstUnanswered.Store(0)
		if p.cfg.Endpoint != "" {
			p.reresolveLocked()
		}
	}
	if p.cfg.PersistentKeepalive > 0 && cur == nil {
		need = true
	}
	if p.refusedLocked(now) {
		// Refused: wait out the back-off (refusalBackoff) before asking again.
		need = false
	}
	switch {
	case p.init != nil && !now.Before(p.init.nextRetry):
		if now.Sub(p.init.firstSent) >= t.HandshakeGiveUp {
			n.log.Info("handshake gave up", "peer", p.cfg.Name)
			p.dropInitLocked()
			p.wantHandshake = false
			p.drops.Add(uint64(len(p.queue)))
			n.ctr.drops[DropNoSession].Add(uint64(len(p.queue)))
			p.queue = nil
		} else {
			p.startHandshakeLocked(now)
		}
	case p.init == nil && need:
		p.startHandshakeLocked(now)
	}
	p.tickPathLocked(now, cur)
	if cur == nil {
		return
	}
	// Keepalives: answer received data we have not answered, and keep NAT mappings.
	lastSent := p.lastSent.Load()
	passive := p.lastRecvData.Load() > lastSent && nowMono-lastSent >= int64(t.KeepaliveTimeout)
	persistent := p.cfg.PersistentKeepalive > 0 && nowMono-lastSent >= int64(p.cfg.PersistentKeepalive)
	var payload []byte
	// A persistent keepalive is an echo request: its answer shows the path still works,
	// and its silence starts the same clock as unanswered data, so that an idle peer
	// whose UDP dies moves to WebSocket (and, later, re-handshakes) as a busy one does.
	if persistent || (cur.confirmed.Load() && now.Sub(p.lastPing) >= t.RTTProbeInterval && nowMono-p.lastRecv.Load() < int64(t.RTTProbeInterval)*2) {
		payload = p.pingPayloadLocked(now, nil)
	}
	payload = cur.rel.appendDue(payload, now, p.RTT())
	if payload != nil || passive {
		p.sendControl(cur, payload)
		if persistent {
			p.firstUnanswered.CompareAndSwap(0, nowMono)
		}
	}
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

// pingPayloadLocked builds a PING whose answer reports to ch (may be nil).
func (p *Peer) pingPayloadLocked(now time.Time, ch chan time.Duration) []byte {
	p.pingSeq++
	p.lastPing = now
	if ch != nil {
		if p.pings == nil {
			p.pings = make(map[uint32]chan time.Duration)
		}
		if len(p.pings) >= 64 {
			clear(p.pings)
		}
		p.pings[p.pingSeq] = ch
	}
	var body [wire.PingBodyLen]byte
	binary.LittleEndian.PutUint32(body[:4], p.pingSeq)
	binary.LittleEndian.PutUint64(body[4:], uint64(p.mono(now)))
	return wire.AppendControl(nil, wire.CtlPing, body[:])
}

// Ping sends an STT-level echo over the current session and waits for the answer.
func (p *Peer) Ping(ctx context.Context) (time.Duration, error) {
	s := p.current.Load()
	if s == nil || s.expired(time.Now(), &p.node.timers) {
		p.mu.Lock()
		p.wantHandshake = true
		p.mu.Unlock()
		p.node.kick()
		return 0, ErrNoSession
	}
	ch := make(chan time.Duration, 1)
	p.mu.Lock()
	payload := p.pingPayloadLocked(time.Now(), ch)
	seq := p.pingSeq
	p.mu.Unlock()
	p.sendControl(s, payload)
	select {
	case d := <-ch:
		return d, nil
	case <-ctx.Done():
		p.mu.Lock()
		delete(p.pings, seq)
		p.mu.Unlock()
		return 0, ctx.Err()
	}
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

// SendReliable queues a control message (a STREAM_OPEN, STREAM_CLOSE or extension) for
// reliable, in-order delivery on stream 0.
func (p *Peer) SendReliable(typ byte, body []byte) error {
	s := p.current.Load()
	if s == nil || s.expired(time.Now(), &p.node.timers) {
		return ErrNoSession
	}
	payload, err := s.rel.enqueue(typ, body, time.Now())
	if err != nil {
		return err
	}
	if payload != nil {
		p.sendControl(s, payload)
	}
	return nil
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
}

// sendClose tells the peer that s is closed because this side shuts it down.
func (p *Peer) sendClose(s *session) {
	p.sendControl(s, wire.AppendControl(nil, wire.CtlClose, []byte{wire.CodeShutdown, 0}))
}
