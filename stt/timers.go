package stt

import "time"

// Timers holds the protocol's time and count limits (docs/protocol.md section 7). The
// zero value of a field means its default; tests lower them to make rekeys happen.
type Timers struct {
	RekeyAfterTime      time.Duration
	RejectAfterTime     time.Duration
	RekeyAfterMessages  uint64
	RejectAfterMessages uint64
	KeepaliveTimeout    time.Duration
	DeadPeerTimeout     time.Duration
	HandshakeRetry      time.Duration // first retransmission delay
	HandshakeRetryMax   time.Duration
	HandshakeGiveUp     time.Duration
	RTTProbeInterval    time.Duration
	Tick                time.Duration // resolution of the timer loop
	FallbackAfter       time.Duration // UDP silent this long: move to WebSocket
	ProbeInterval       time.Duration // on WebSocket: probe UDP this often
}

// Default protocol limits.
const (
	DefaultRekeyAfterTime      = 120 * time.Second
	DefaultRejectAfterTime     = 180 * time.Second
	DefaultRekeyAfterMessages  = 1 << 32
	DefaultRejectAfterMessages = 1 << 33
	DefaultKeepaliveTimeout    = 10 * time.Second
	DefaultDeadPeerTimeout     = 15 * time.Second
	DefaultHandshakeRetry      = time.Second
	DefaultHandshakeRetryMax   = 8 * time.Second
	DefaultHandshakeGiveUp     = 90 * time.Second
	DefaultRTTProbeInterval    = 5 * time.Second
	DefaultTick                = 100 * time.Millisecond
	DefaultFallbackAfter       = 3 * time.Second
	DefaultProbeInterval       = 10 * time.Second
)

func (t Timers) withDefaults() Timers {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&t.RekeyAfterTime, DefaultRekeyAfterTime)
	set(&t.RejectAfterTime, DefaultRejectAfterTime)
	if t.RejectAfterTime < t.RekeyAfterTime+t.RekeyAfterTime/4 {
		// The old keys must outlive the rekey by enough for the new handshake to finish.
		t.RejectAfterTime = t.RekeyAfterTime + t.RekeyAfterTime/2
	}
	set(&t.KeepaliveTimeout, DefaultKeepaliveTimeout)
	set(&t.DeadPeerTimeout, DefaultDeadPeerTimeout)
	set(&t.HandshakeRetry, DefaultHandshakeRetry)
	set(&t.HandshakeRetryMax, DefaultHandshakeRetryMax)
	set(&t.HandshakeGiveUp, DefaultHandshakeGiveUp)
	set(&t.RTTProbeInterval, DefaultRTTProbeInterval)
	set(&t.Tick, DefaultTick)
	set(&t.FallbackAfter, DefaultFallbackAfter)
	set(&t.ProbeInterval, DefaultProbeInterval)
	if t.RekeyAfterMessages == 0 {
		t.RekeyAfterMessages = DefaultRekeyAfterMessages
	}
	if t.RejectAfterMessages == 0 {
		t.RejectAfterMessages = DefaultRejectAfterMessages
	}
	if t.RejectAfterMessages < t.RekeyAfterMessages {
		t.RejectAfterMessages = 2 * t.RekeyAfterMessages
	}
	return t
}

// responderRekeyAfter is when the responder of a session starts a rekey itself, later
// than the initiator so that the two rarely race.
func (t *Timers) responderRekeyAfter() time.Duration {
	return t.RekeyAfterTime + t.RekeyAfterTime/8
}

// timerLoop drives every peer's timers: handshake retransmission, rekeys,
// keepalives, dead-peer detection and session expiry.
func (n *Node) timerLoop() {
	defer n.wg.Done()
	t := time.NewTicker(n.timers.Tick)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.wake:
		}
		now := time.Now()
		n.hs.Sweep()
		peers := n.Peers()
		n.refreshPeerAddrs(peers)
		for _, p := range peers {
			p.tick(now)
		}
	}
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

// tickPathLocked moves the peer between UDP and WebSocket: to WebSocket when UDP does
// not answer (a handshake or data for longer than FallbackAfter), and back when a UDP
// probe is answered. Called with p.mu held.
func (p *Peer) tickPathLocked(now time.Time, cur *session) {
	n := p.node
	t := &n.timers
	if !p.wantsWS() {
		return
	}
	if !p.udpUsable() {
		// WebSocket is the only way: keep a connection while there is anything to do.
		if p.wsEP.Load() == nil && (p.init != nil || p.wantHandshake || cur != nil || p.cfg.PersistentKeepalive > 0) {
			p.dialWSLocked()
		}
		if p.wsEP.Load() != nil {
			// UDP went away (a reload) during a move: the WebSocket is the way now.
			p.releaseHeldLocked(cur)
		}
		return
	}
	if !p.onWS.Load() {
		stuck := p.init != nil && now.Sub(p.init.firstSent) >= t.FallbackAfter
		if fu := p.firstUnanswered.Load(); cur != nil && fu != 0 && p.mono(now)-fu >= int64(t.FallbackAfter) {
			stuck = true
		}
		if !stuck {
			// UDP answered after all: what waited for a move goes the way it was going.
			p.releaseHeldLocked(cur)
			return
		}
		if p.wsEP.Load() == nil {
			dialing := p.dialWSLocked() || p.wsDialing
			if dialing && cur != nil && cur.confirmed.Load() {
				// Until the WebSocket carries, datagrams wait rather than go into UDP.
				p.holding.Store(true)
			}
			return
		}
		n.log.Info("UDP does not answer; moving to WebSocket", "peer", p.cfg.Name)
		p.onWS.Store(true)
		p.firstUnanswered.Store(0)
		// What went over UDP since it last answered is presumed lost: count it.
		p.countFallbackLost()
		if cur != nil && cur.confirmed.Load() {
			// Tell the peer at once, so that its traffic follows; what waited for the
			// move follows the keepalive on the same stream.
			p.sendControl(cur, nil)
			p.releaseHeldLocked(cur)
		} else {
			p.startHandshakeLocked(now)
		}
		return
	}
	// On WebSocket: probe UDP now and then; a PONG over UDP moves us back.
	if cur != nil && now.Sub(p.lastProbe) >= t.ProbeInterval {
		p.lastProbe = now
		if ep := p.udpEP.Load(); ep != nil {
			p.sendControlVia(cur, p.pingPayloadLocked(now, nil), *ep)
		}
	}
}
