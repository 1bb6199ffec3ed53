// The timers: one goroutine (timerLoop) ticks every peer; Peer.tick runs each expiry,
// a function of its own named expired*, in a fixed order. Limits (limits.go) holds
// their durations.

package stt

import (
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// timerLoop drives every peer's timers: handshake retransmission, rekeys,
// keepalives, dead-peer detection and session expiry.
func (n *Node) timerLoop() {
	defer n.wg.Done()
	t := time.NewTicker(n.limits.Tick)
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
		n.expireRelays(now)
		for _, p := range peers {
			p.tick(now)
			p.tickPMTU(now)
		}
	}
}

// tick runs the peer's timers: one function per expiry, in this order. Called from the
// timer loop every Tick, and at once when something kicks it.
func (p *Peer) tick(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return
	}
	cur := p.expiredSessionsLocked(now)
	if p.expiredIdleLocked(now, cur) {
		cur = nil
	}
	cur, seedRekey := p.expiredSeedLocked(now, cur)
	need := p.handshake.want || seedRekey
	if p.expiredUnconfirmedLocked(now, cur) || p.expiredRekeyLocked(now, cur) {
		need = true
	}
	p.expiredLookupLocked(now)
	if p.expiredDeadPeerLocked(now) {
		need = true
	}
	if p.cfg.PersistentKeepalive > 0 && cur == nil && p.cfg.IdleTimeout <= 0 && !p.cfg.AnyName {
		// A persistent keepalive keeps a session up, not only the NAT mapping; but not
		// one that closes when idle, and a wildcard holds none.
		need = true
	}
	if p.refusedLocked(now) {
		// Refused: wait out the back-off (refusalBackoff) before asking again.
		need = false
	}
	p.expiredRetransmitHandshakeLocked(now, need)
	p.tickPathLocked(now, cur)
	if cur != nil {
		p.expiredSendKeepaliveLocked(now, cur)
	}
}

// expiredSessionsLocked takes sessions past RejectAfterTime off the receive path,
// forgets an AUTH_PROOF no cookie may answer any more, and lets go of the session a
// rekey replaced once the new one is confirmed. It returns the current session, if
// any is left. Called with p.mu held.
func (p *Peer) expiredSessionsLocked(now time.Time) *session {
	n := p.node
	t := &n.limits
	cur := p.keys.current.Load()
	if p.keys.previous != nil && p.keys.previous.expired(now, t) {
		n.index.remove(p.keys.previous)
		p.keys.previous = nil
	}
	if p.keys.older != nil && p.keys.older.expired(now, t) {
		n.index.remove(p.keys.older)
		p.keys.older = nil
	}
	if cur != nil && cur.expired(now, t) {
		n.index.remove(cur)
		p.keys.current.CompareAndSwap(cur, nil)
		cur = nil
	}
	if p.handshake.proof != nil && (cur == nil || cur.confirmed.Load() || !now.Before(p.handshake.proof.nextRetry)) {
		p.forgetProofLocked()
	}
	if cur != nil && cur.confirmed.Load() {
		p.keys.standby.Store(nil)
	}
	return cur
}

// expiredIdleLocked closes the session of a peer with an IdleTimeout when neither data
// nor a reliable control message has gone either way for that long, and reports
// whether it did. Data is seen in the traffic counters, so that the packet path does
// nothing for this timer; keepalives, PINGs and other unreliable control messages are
// not counted, and do not keep a session open. A session with reliable messages not yet
// acknowledged, or datagrams waiting, is in use. Called with p.mu held.
func (p *Peer) expiredIdleLocked(now time.Time, cur *session) bool {
	if p.cfg.IdleTimeout <= 0 || cur == nil {
		return false
	}
	t := p.mono(now)
	if pk := p.counters.txPackets.Load() + p.counters.rxPackets.Load(); pk != p.idle.packets || p.idle.lastUse == 0 {
		p.idle.packets, p.idle.lastUse = pk, t
	}
	if t-max(p.idle.lastUse, p.times.lastReliable.Load(), p.times.lastRelayed.Load()) < int64(p.cfg.IdleTimeout) || len(p.queue) > 0 || cur.rel.backlog() > 0 {
		return false
	}
	p.closeIdleLocked()
	return true
}

// closeIdleLocked ends the peer's sessions because they are idle: CLOSE tells the peer
// to drop its side, and no handshake starts until Send or SendReliable asks for one.
// Unlike dropSessionsLocked it keeps the handshake replay state: the key has not
// changed. Called with p.mu held.
func (p *Peer) closeIdleLocked() {
	n := p.node
	p.dropInitLocked()
	p.forgetProofLocked()
	cur, sb := p.keys.current.Swap(nil), p.keys.standby.Swap(nil)
	for _, s := range [...]*session{cur, sb} {
		if s != nil {
			p.sendCloseCode(s, wire.CodeNone) // a normal close
		}
	}
	n.index.remove(cur, sb, p.keys.previous, p.keys.older)
	p.keys.previous, p.keys.older = nil, nil
	p.handshake.want = false
	p.times.firstUnanswered.Store(0)
	p.path.sentUnanswered.Store(0)
	p.idle.lastUse = 0
	n.log.Debug("idle session closed", "peer", p.cfg.Name, "idle_timeout", p.cfg.IdleTimeout)
}

// sentRecently reports whether this node sent the peer anything, or relayed traffic
// through or for it, within RekeyAfterTime: an idle peer is not rekeyed.
func (p *Peer) sentRecently(now time.Time) bool {
	return p.mono(now)-max(p.times.lastSent.Load(), p.times.lastRelayed.Load()) < int64(p.node.limits.RekeyAfterTime)
}

// expiredUnconfirmedLocked reports whether our session was never confirmed (the
// AUTH_PROOF or the FINAL was lost) for two handshake retries while there is traffic:
// start over rather than wait for the dead-peer timer. Called with p.mu held.
func (p *Peer) expiredUnconfirmedLocked(now time.Time, cur *session) bool {
	return cur != nil && cur.initiator && !cur.confirmed.Load() &&
		now.Sub(cur.created) >= 2*p.node.limits.HandshakeRetry && p.sentRecently(now)
}

// expiredRekeyLocked reports whether the current session is due for new keys: old
// enough (session.rekeyAfter: jittered, and the responder waits a little longer, so that
// the two rarely race) or near its message limit, while there is traffic. Called with
// p.mu held.
func (p *Peer) expiredRekeyLocked(now time.Time, cur *session) bool {
	t := &p.node.limits
	if cur == nil || !p.sentRecently(now) {
		return false
	}
	// The jittered age is worked out only past the earliest it can be (the hash costs).
	age := now.Sub(cur.created)
	return age >= t.RekeyAfterTime-t.RekeyAfterTime/jitterDiv && age >= cur.rekeyAfter(t) ||
		cur.sendCounter.Load() >= t.RekeyAfterMessages
}

// expiredLookupLocked looks up again an endpoint name that has given no address yet,
// once its back-off has passed. Called with p.mu held.
func (p *Peer) expiredLookupLocked(now time.Time) {
	if p.lookup.unresolved && !now.Before(p.lookup.next) {
		p.reresolveLocked()
	}
}

// expiredDeadPeerLocked reports whether the peer has not answered for DeadPeerTimeout
// since we first sent it something: the session may be gone at the other end, so a
// handshake is due, and an endpoint name is looked up again in case it moved. Called
// with p.mu held.
func (p *Peer) expiredDeadPeerLocked(now time.Time) bool {
	fu := p.times.firstUnanswered.Load()
	if fu == 0 || p.mono(now)-fu < int64(p.node.limits.DeadPeerTimeout) {
		return false
	}
	p.times.firstUnanswered.Store(0)
	if p.cfg.Endpoint != "" {
		p.reresolveLocked()
	}
	return true
}

// expiredRetransmitHandshakeLocked sends the handshake in flight again when its retry
// is due, or gives it up (and what waited for it) after HandshakeGiveUp; without one in
// flight it starts one if need says so. Called with p.mu held.
func (p *Peer) expiredRetransmitHandshakeLocked(now time.Time, need bool) {
	n := p.node
	if ini := p.handshake.init; ini != nil && ini.punch != nil && !now.Before(ini.nextRetry) &&
		(now.Sub(ini.firstSent) >= punchGiveUp || p.path.relay.Load() != nil && !p.HasSession()) {
		// A punch that got no answer: the peer stays where it is; a handshake that is
		// needed goes the usual way. Without a session, a peer with a relay path waits
		// for no more than the punch's first retry: the relay carries it meanwhile.
		n.log.Debug("punch got no answer", "peer", p.cfg.Name)
		p.dropInitLocked()
	}
	switch {
	case p.handshake.init != nil && !now.Before(p.handshake.init.nextRetry):
		if now.Sub(p.handshake.init.firstSent) >= n.limits.HandshakeGiveUp {
			n.log.Info("handshake gave up", "peer", p.cfg.Name)
			p.dropInitLocked()
			p.handshake.want = false
			p.dropQueueLocked(DropNoSession)
			p.relQueue = nil // idempotent messages, as reliable ones must be: sent again when wanted
		} else {
			p.startHandshakeLocked(now)
		}
	case p.handshake.init == nil && need:
		p.startHandshakeLocked(now)
	}
}

// expiredSendKeepaliveLocked sends on cur what the peer is owed: a keepalive answering
// data we have not answered (KeepaliveTimeout), a persistent keepalive, an RTT probe, and
// reliable control messages due for (re)transmission. Called with p.mu held.
func (p *Peer) expiredSendKeepaliveLocked(now time.Time, cur *session) {
	t := &p.node.limits
	nowMono := p.mono(now)
	lastSent := p.times.lastSent.Load()
	// The jittered intervals are worked out only once the plain ones' lower bound is
	// reached: a hash a peer and a tick is cost enough at a thousand peers.
	passive := p.times.lastRecvData.Load() > lastSent && nowMono-lastSent >= int64(jittered(t.KeepaliveTimeout, 1)) &&
		nowMono-lastSent >= int64(p.passiveKeepalive())
	persistent := p.cfg.PersistentKeepalive > 0 && nowMono-lastSent >= int64(jittered(p.cfg.PersistentKeepalive, 1)) &&
		nowMono-lastSent >= int64(p.keepaliveInterval())
	var payload []byte
	// A persistent keepalive is an echo request: its answer shows the path still works,
	// and its silence starts the same clock as unanswered data, so that an idle peer
	// whose UDP dies moves to WebSocket (and, later, re-handshakes) as a busy one does.
	// An RTT probe goes out while data flows (received lately, or sent since the last
	// probe), not on an idle session: there its answer would count as something heard
	// and keep the probes going forever, every RTTProbeInterval both ways.
	tx := p.counters.txPackets.Load()
	flowing := nowMono-p.times.lastRecvData.Load() < int64(t.RTTProbeInterval)*2 || tx != p.ping.txAtProbe
	if persistent || (cur.confirmed.Load() && now.Sub(p.ping.last) >= t.RTTProbeInterval && flowing) {
		payload = p.pingPayloadLocked(now, nil)
		p.ping.txAtProbe = tx
	}
	payload = cur.rel.appendDue(payload, now, p.RTT(), p.controlBudget())
	if payload != nil || passive {
		p.sendControl(cur, payload)
		if persistent {
			p.times.firstUnanswered.CompareAndSwap(0, nowMono)
		}
	}
}

// tickPathLocked runs the path timers of a peer whose path this node chooses: for a
// peer it may reach over WebSocket, keep a connection where WebSocket is the only way
// and move to it when UDP does not answer; for a peer it asked a relay for, move to the
// relay when there is no direct path or UDP does not answer; and probe UDP while on
// either. The WebSocket comes first: a peer with a URL goes to the relay only when its
// WebSocket dial has failed, and leaves it when a WebSocket connects (without UDP).
// Called with p.mu held.
func (p *Peer) tickPathLocked(now time.Time, cur *session) {
	ws, relay := p.chooser(), p.relayChooser()
	on := p.path.on.Load()
	switch {
	case !ws && !relay:
	case on != onUDP:
		if p.udpUsable() || p.probeCandidates() {
			p.expiredProbeUDPLocked(now, cur)
		}
		if ws && on == onRelay && !p.udpUsable() {
			// On the relay for want of a WebSocket: keep dialing, and leave the relay
			// once one carries.
			p.keepWebSocketLocked(cur)
			if p.path.ws.Load() != nil && p.path.on.CompareAndSwap(onRelay, onUDP) {
				p.node.log.Info("peer path changed", "peer", p.cfg.Name, "path", PathWS)
				if cur != nil && cur.confirmed.Load() {
					p.sendControl(cur, nil)
				}
			}
		}
	case ws && !p.udpUsable():
		p.keepWebSocketLocked(cur)
		if p.probeCandidates() {
			// WebSocket as the only way, for want of a UDP address that answered:
			// probe the candidates (expiredProbeUDPLocked), one may answer now.
			p.expiredProbeUDPLocked(now, cur)
		}
		if relay && p.path.ws.Load() == nil && p.path.dial.fails > 0 {
			p.expiredFallbackToRelayLocked(now, cur)
		}
	case ws && relay && p.path.ws.Load() == nil && p.path.dial.fails > 0:
		// The WebSocket did not connect: the relay is the way left.
		p.expiredFallbackToRelayLocked(now, cur)
	case ws:
		p.expiredFallbackToWebSocketLocked(now, cur)
	default:
		p.expiredFallbackToRelayLocked(now, cur)
	}
}

// expiredFallbackToRelayLocked moves the peer's traffic to the relay this node asked
// for when the peer has no direct path, or UDP has not answered a handshake or data for
// FallbackAfter. With a confirmed session it tells the peer at once (a keepalive through
// the relay, which the follower follows); without one it starts a handshake through the
// relay. Called with p.mu held.
func (p *Peer) expiredFallbackToRelayLocked(now time.Time, cur *session) {
	n := p.node
	t := &n.limits
	stuck := !p.udpUsable() && p.path.ws.Load() == nil || p.udpSilentLocked(now, cur)
	if p.handshake.init != nil && p.handshake.init.punch == nil && now.Sub(p.handshake.init.firstSent) >= t.FallbackAfter {
		stuck = true
	}
	if !stuck {
		p.releaseHeldLocked(cur)
		return
	}
	if p.udpUsable() {
		n.log.Info("UDP does not answer; moving to the relay", "peer", p.cfg.Name, "via", p.path.relay.Load().via.cfg.Name)
	} else {
		n.log.Info("no direct path; moving to the relay", "peer", p.cfg.Name, "via", p.path.relay.Load().via.cfg.Name)
	}
	switch ini := p.handshake.init; {
	case p.moveLocked(onRelay, cur):
	case ini != nil && ini.punch != nil:
		// A punch in flight and no session: the session comes up through the relay
		// now; a later punch can still take it direct.
		p.dropInitLocked()
		p.startHandshakeLocked(now)
	case p.udpUsable() && (ini != nil || p.handshake.want || cur != nil):
		// The handshake went over UDP: again, through the relay. (Without a UDP
		// address it went through the relay already.)
		p.startHandshakeLocked(now)
	}
}

// keepWebSocketLocked keeps a WebSocket connection to a peer UDP cannot reach while
// there is anything to do. Called with p.mu held.
func (p *Peer) keepWebSocketLocked(cur *session) {
	if p.path.ws.Load() == nil && (p.handshake.init != nil || p.handshake.want || cur != nil || p.cfg.PersistentKeepalive > 0) {
		p.dialWSLocked()
	}
	if p.path.ws.Load() != nil {
		// UDP went away (a reload) during a move: the WebSocket is the way now.
		p.releaseHeldLocked(cur)
	}
}

// expiredFallbackToWebSocketLocked moves the peer's traffic to WebSocket when UDP has
// not answered a handshake or data for FallbackAfter: it dials first (datagrams are held
// meanwhile), then moves. Called with p.mu held.
func (p *Peer) expiredFallbackToWebSocketLocked(now time.Time, cur *session) {
	n := p.node
	t := &n.limits
	stuck := p.handshake.init != nil && now.Sub(p.handshake.init.firstSent) >= t.FallbackAfter ||
		p.udpSilentLocked(now, cur)
	if !stuck {
		// UDP answered after all: what waited for a move goes the way it was going.
		p.releaseHeldLocked(cur)
		return
	}
	if p.path.ws.Load() == nil {
		dialing := p.dialWSLocked() || p.path.dial.running
		if dialing && cur != nil && cur.confirmed.Load() {
			// Until the WebSocket carries, datagrams wait rather than go into UDP.
			p.path.holding.Store(true)
		}
		return
	}
	n.log.Info("UDP does not answer; moving to WebSocket", "peer", p.cfg.Name)
	if !p.moveLocked(onWS, cur) {
		p.startHandshakeLocked(now)
	}
}

// udpSilentLocked reports whether the data or keepalives sent to the peer over its
// session have gone unanswered for FallbackAfter. Called with p.mu held.
func (p *Peer) udpSilentLocked(now time.Time, cur *session) bool {
	fu := p.times.firstUnanswered.Load()
	return cur != nil && fu != 0 && p.mono(now)-fu >= int64(p.node.limits.FallbackAfter)
}

// moveLocked moves the peer's traffic onto path to (WebSocket or the relay) after UDP
// failed: what went over UDP since it last answered is presumed lost and counted. With a
// confirmed session it tells the peer at once, so that its traffic follows, and what
// waited for the move follows that keepalive on the same stream; it reports whether it
// did (else the caller starts a handshake the new way). Called with p.mu held.
func (p *Peer) moveLocked(to uint32, cur *session) bool {
	p.path.on.Store(to)
	p.times.firstUnanswered.Store(0)
	p.countFallbackLost()
	if cur != nil && cur.confirmed.Load() {
		p.sendControl(cur, nil)
		p.releaseHeldLocked(cur)
		return true
	}
	return false
}

// probeCandidates reports whether the peer has no UDP address but candidate addresses
// a probe may try (the session came up over WebSocket or a relay before any answered).
// Called with p.mu held.
func (p *Peer) probeCandidates() bool {
	return !p.node.cfg.DisableUDP && p.path.udp.Load() == nil && len(p.handshake.candidates) > 0
}

// expiredProbeUDPLocked sends a PING over UDP every ProbeInterval while the peer's
// traffic is on WebSocket or a relay; a PONG over UDP moves it back. Called with p.mu held.
func (p *Peer) expiredProbeUDPLocked(now time.Time, cur *session) {
	if cur != nil && now.Sub(p.path.lastProbe) >= p.node.limits.ProbeInterval {
		p.path.lastProbe = now
		if ep := p.path.udp.Load(); ep != nil {
			p.sendControlVia(cur, p.pingPayloadLocked(now, nil), *ep)
		} else if p.probeCandidates() {
			// The session came up over WebSocket before any UDP address answered
			// (a first dial races the two): probe the candidates, so that the one
			// that answers becomes the UDP address and the traffic moves to it.
			for i, c := range p.handshake.candidates {
				if p.handshake.badCandidates&(1<<i) == 0 {
					p.sendControlVia(cur, p.pingPayloadLocked(now, nil), c)
				}
			}
		}
	}
}
