// Handshake orchestration: starting, continuing and completing the handshakes of
// stt/handshake with a peer, and installing the session they make.

package stt

import (
	"crypto/subtle"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// initiation is a handshake this node started, kept until it completes or is replaced.
type initiation struct {
	peer      *Peer                 // guarded by Node.mu: a wildcard's moves to the peer it reached
	hs        *handshake.Initiation // its LocalIndex names it in n.inits and the index table
	firstSent time.Time             // of the first attempt in this series
	nextRetry time.Time
	attempt   int
	// punch, when set, is the UDP addresses a punch (Peer.Punch) sends this
	// handshake's HELLOs to, instead of the peer's path.
	punch []conn.Endpoint
}

// startHandshakeLocked sends a fresh HELLO. Called with p.mu held.
func (p *Peer) startHandshakeLocked(now time.Time) { p.startHandshakeToLocked(now, nil) }

// startHandshakeToLocked sends a fresh HELLO: to punch, UDP addresses only, when it is
// given or the handshake it retransmits was a punch; else on the peer's path (and to its
// candidates while that does not answer). Called with p.mu held.
func (p *Peer) startHandshakeToLocked(now time.Time, punch []conn.Endpoint) {
	n := p.node
	if punch == nil && p.handshake.init != nil {
		punch = p.handshake.init.punch
	}
	ep := p.target()
	cands := p.handshake.candidates
	if n.cfg.DisableUDP || p.handshake.badCandidates == 1<<len(cands)-1 {
		cands = nil // none, or none worth a HELLO
	}
	if punch != nil {
		ep, cands = nil, punch
	}
	if p.removed {
		return
	}
	if ep == nil && punch == nil {
		if p.chooser() {
			p.dialWSLocked()
		}
		if len(cands) == 0 {
			return
		}
	}
	first := now
	attempt := 0
	if old := p.handshake.init; old != nil {
		first, attempt = old.firstSent, old.attempt+1
		p.dropInitLocked()
	}
	cookie := p.cookieLocked(now)
	idx := n.index.reserve()
	// Retries take turns over the seeds held (seeds.go): a peer still on the other
	// seed of a rotation answers one of them.
	hs, hello, err := n.hs.InitiateSeed(attempt, idx, cookie, make([]byte, 0, wire.HelloLen))
	if err != nil {
		n.index.release(idx)
		n.log.Warn("cannot start handshake", "peer", p.cfg.Name, "err", err)
		return
	}
	delay := n.limits.HandshakeRetry << min(attempt, 10)
	if delay > n.limits.HandshakeRetryMax || delay <= 0 {
		delay = n.limits.HandshakeRetryMax
	}
	jitter := time.Duration(rand.Int64N(int64(delay)/5*2+1)) - delay/5
	ini := &initiation{peer: p, hs: hs, firstSent: first, nextRetry: now.Add(delay + jitter), attempt: attempt, punch: punch}
	p.handshake.init = ini
	n.mu.Lock()
	n.inits[idx] = ini
	n.mu.Unlock()
	n.ctr.handshakesStart.Add(1)
	if ep != nil {
		_ = n.sendHandshake(hello, ep)
	}
	// Without an endpoint, or when the endpoint left the last HELLO unanswered, the
	// candidates get it too; the one that answers becomes the endpoint (learnEndpoint).
	// A punch goes to its addresses, every one of them every time.
	if punch != nil {
		for _, c := range punch {
			_ = n.sendHandshake(hello, c)
		}
		return
	}
	if len(cands) > 0 && (ep == nil || attempt > 0 && isUDP(ep)) {
		var cur netip.AddrPort
		if ep != nil {
			cur = addrPortOf(ep)
		}
		for i, c := range cands {
			if p.handshake.badCandidates&(1<<i) == 0 && addrPortOf(c) != cur {
				_ = n.sendHandshake(hello, c)
			}
		}
	}
}

func (p *Peer) dropInitLocked() {
	ini := p.handshake.init
	if ini == nil {
		return
	}
	p.handshake.init = nil
	n := p.node
	n.mu.Lock()
	delete(n.inits, ini.hs.LocalIndex())
	n.mu.Unlock()
	n.index.release(ini.hs.LocalIndex())
}

// consumeChallenge continues our handshake: check the responder's identity, send
// AUTH_PROOF and install the session.
func (p *Peer) consumeChallenge(ini *initiation, msg []byte, ep conn.Endpoint) {
	if p.cfg.AnyName {
		p.consumeWildcardChallenge(ini, msg, ep)
		return
	}
	n := p.node
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.handshake.init != ini {
		n.drop(DropHandshake)
		return
	}
	if e, ok := ep.(*relayEndpoint); ok && e.peer != p {
		// An answer to our handshake with p through another peer's relay path.
		n.drop(DropRelayWrongSource)
		return
	}
	info, err := ini.hs.ReadChallenge(msg)
	if err != nil {
		n.dropHandshake(err, addrPortOf(ep))
		return
	}
	if info.PeerName != p.cfg.Name {
		n.drop(DropUnknownPeer)
		n.log.Warn("peer answered with another name", "peer", p.cfg.Name, "name", info.PeerName)
		p.badCandidateLocked(ep)
		return
	}
	if p.pinMismatchLocked(info.PeerStatic) {
		n.drop(DropPinMismatch)
		n.log.Warn("peer's key does not match the pinned key; refusing", "peer", p.cfg.Name)
		return
	}
	if n.isRevoked(info.PeerStatic) {
		p.dropInitLocked() // a retry would meet the same key
		p.handshake.want = false
		n.refuseRevoked(p.cfg.Name)
		return
	}
	p.proveLocked(p, ini, ep, time.Now())
}

// badCandidateLocked marks the candidate address ep, which answered as a node of
// another name, as not worth a HELLO, and starts the handshake over at once without it:
// the answer spent this one. At most once per candidate. Called with p.mu held.
func (p *Peer) badCandidateLocked(ep conn.Endpoint) {
	if _, ws := ep.(*wsEndpoint); ws {
		return
	}
	from := addrPortOf(ep)
	for i, c := range p.handshake.candidates {
		if addrPortOf(c) == from && p.handshake.badCandidates&(1<<i) == 0 {
			p.handshake.badCandidates |= 1 << i
			if p.handshake.init != nil {
				p.handshake.init.nextRetry = time.Now()
				p.node.kick()
			}
			return
		}
	}
}

// consumeWildcardChallenge continues a wildcard peer's handshake (PeerConfig.AnyName):
// the responder may have any name. One that is this node itself is not used; else the
// handshake is completed on the peer of that name, admitted if there is none
// (Config.Admit), with that peer's pin. Lock order: the wildcard's mu before the
// target's; a wildcard is never a target.
func (w *Peer) consumeWildcardChallenge(ini *initiation, msg []byte, ep conn.Endpoint) {
	n := w.node
	w.mu.Lock()
	if w.handshake.init != ini {
		w.mu.Unlock()
		n.drop(DropHandshake)
		return
	}
	info, err := ini.hs.ReadChallenge(msg)
	if err != nil {
		w.mu.Unlock()
		n.dropHandshake(err, addrPortOf(ep))
		return
	}
	own := n.PublicKey()
	if info.PeerName == n.cfg.Name || subtle.ConstantTimeCompare(info.PeerStatic[:], own[:]) == 1 {
		// The address is this node's own (or a node that holds our key): stop.
		n.ctr.selfReached.Add(1)
		if !w.wildcard.self {
			n.log.Warn("a bootstrap address answers as this node itself; not using it", "peer", w.cfg.Name)
		}
		w.wildcard.self = true
		w.dropInitLocked()
		w.handshake.want = false
		w.mu.Unlock()
		return
	}
	if w.pinMismatchLocked(info.PeerStatic) {
		w.dropInitLocked() // a retry would meet the same key
		w.handshake.want = false
		w.mu.Unlock()
		n.drop(DropPinMismatch)
		n.warnDrop(DropPinMismatch, "bootstrap address answered with a key other than the pinned one; refusing", "peer", w.cfg.Name)
		return
	}
	if n.isRevoked(info.PeerStatic) {
		w.dropInitLocked() // a retry would meet the same key, until the bootstrap retry
		w.handshake.want = false
		w.mu.Unlock()
		n.refuseRevoked(info.PeerName)
		return
	}
	w.mu.Unlock()

	// Admit is called with no lock held.
	t := n.Peer(info.PeerName)
	if t == nil {
		t = n.admit(info.PeerName, info.PeerStatic)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.handshake.init != ini {
		// A retransmission replaced this handshake meanwhile; its answer will do.
		n.drop(DropHandshake)
		return
	}
	if t == nil || t.cfg.AnyName {
		// Nobody to complete it on, and a retry would answer the same.
		n.drop(DropUnknownPeer)
		n.logDrop(DropUnknownPeer, nil, info.PeerName)
		w.dropInitLocked()
		w.handshake.want = false
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.removed {
		n.drop(DropUnknownPeer)
		return
	}
	if t.pinMismatchLocked(info.PeerStatic) {
		w.dropInitLocked() // a retry would meet the same key
		w.handshake.want = false
		n.drop(DropPinMismatch)
		n.warnDrop(DropPinMismatch, "bootstrap address answered with a key other than the one pinned for that peer; refusing", "peer", t.cfg.Name)
		return
	}
	if n.isRevoked(info.PeerStatic) { // revoked while Admit ran
		w.dropInitLocked()
		w.handshake.want = false
		n.refuseRevoked(t.cfg.Name)
		return
	}
	if t.proveLocked(w, ini, ep, time.Now()) {
		w.handshake.want = false
		w.wildcard = wildcardState{reached: true, name: info.PeerName, key: info.PeerStatic}
		n.log.Debug("bootstrap address reached a node", "peer", w.cfg.Name, "name", info.PeerName)
	}
}

// proveLocked completes on p the handshake ini that from started (p itself, or a
// wildcard peer), whose CHALLENGE came from ep and passed the checks: it sends the
// AUTH_PROOF and installs the session. The initiation moves to p, so that a cookie
// answering the AUTH_PROOF finds it. It reports whether the AUTH_PROOF went out. Called
// with p.mu and from.mu held.
func (p *Peer) proveLocked(from *Peer, ini *initiation, ep conn.Endpoint, now time.Time) bool {
	n := p.node
	proof, res, err := ini.hs.WriteAuthProof(from.cookieLocked(now), make([]byte, 0, wire.AuthProofLen))
	if err != nil {
		n.dropHandshake(err, addrPortOf(ep))
		return false
	}
	s, err := newSession(p, res.LocalIndex, res.RemoteIndex, true, res.Cipher, &res.SendKey, &res.RecvKey, now)
	if err != nil {
		n.drop(DropHandshake)
		return false
	}
	s.seed = res.SeedID
	// The index stays reserved until install turns it into the session. The
	// initiation stays findable for a while: a responder under load may answer the
	// AUTH_PROOF with a cookie, and then it is sent again with mac2.
	from.handshake.init = nil
	if from != p {
		// The peer's own handshake, if one runs, is overtaken.
		p.dropInitLocked()
		if from.handshake.cookie != nil && p.cookieLocked(now) == nil {
			p.handshake.cookie, p.handshake.cookieAt = from.handshake.cookie, from.handshake.cookieAt
		}
		n.mu.Lock()
		ini.peer = p
		n.mu.Unlock()
	}
	p.forgetProofLocked()
	p.handshake.proof = ini
	ini.nextRetry = now.Add(handshake.HalfOpenTimeout)
	if err := n.sendHandshake(proof, ep); err != nil {
		n.index.release(ini.hs.LocalIndex())
		return false
	}
	p.learnEndpoint(ep, false, s, handshakeCtr)
	p.installLocked(s, res.PeerStatic, now)
	return true
}

// consumeCookie stores a cookie for our in-flight handshake; the next retransmission
// carries it.
func (p *Peer) consumeCookie(ini *initiation, msg []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.handshake.init != ini && p.handshake.proof != ini {
		p.node.drop(DropHandshake)
		return
	}
	c, err := ini.hs.ReadCookieReply(msg)
	if err != nil {
		p.node.dropHandshake(err, netip.AddrPort{})
		return
	}
	p.handshake.cookie, p.handshake.cookieAt = c, time.Now()
	if ini == p.handshake.proof {
		proof, err := ini.hs.ResendAuthProof(c, make([]byte, 0, wire.AuthProofLen))
		if err != nil {
			p.node.dropHandshake(err, netip.AddrPort{})
			return
		}
		if ep := p.target(); ep != nil {
			_ = p.node.sendHandshake(proof, ep)
		}
	}
}

// forgetProofLocked stops answering cookies for the last AUTH_PROOF sent.
func (p *Peer) forgetProofLocked() {
	if p.handshake.proof == nil {
		return
	}
	n := p.node
	n.mu.Lock()
	delete(n.inits, p.handshake.proof.hs.LocalIndex())
	n.mu.Unlock()
	p.handshake.proof = nil
}

// handleHandshake processes HELLO, CHALLENGE, AUTH_PROOF and COOKIE_REPLY.
func (n *Node) handleHandshake(msg []byte, ep conn.Endpoint, out []byte) {
	src := addrPortOf(ep)
	switch msg[0] {
	case wire.TypeHello:
		reply, err := n.hs.HandleHello(msg, src, out)
		if err != nil {
			n.dropHandshake(err, src)
		}
		if reply != nil {
			if reply[0] == wire.TypeCookieReply {
				n.ctr.cookiesSent.Add(1)
			}
			_ = n.sendHandshake(reply, ep)
		}
	case wire.TypeAuthProof:
		res, reply, err := n.hs.HandleAuthProof(msg, src, out)
		if reply != nil {
			// Under load: the initiator must prove its address with a cookie first.
			n.ctr.cookiesSent.Add(1)
			_ = n.sendHandshake(reply, ep)
			return
		}
		if err != nil {
			n.dropHandshake(err, src)
			return
		}
		n.completeResponder(res, ep)
	case wire.TypeChallenge, wire.TypeCookieReply:
		// Both answer a handshake of ours, which their receiver index names.
		off := wire.ChallengeReceiverOff
		if msg[0] == wire.TypeCookieReply {
			off = wire.CookieReceiverOff
		}
		ini, p := n.initiation(binary.LittleEndian.Uint32(msg[off:]))
		switch {
		case ini == nil:
			n.drop(DropHandshake)
		case msg[0] == wire.TypeChallenge:
			p.consumeChallenge(ini, msg, ep)
		default:
			p.consumeCookie(ini, msg)
		}
	}
}

// completeResponder installs the session a verified AUTH_PROOF produced, after the
// checks that need the peer: known name (or admitted: Config.Admit), pinned key, fresh
// timestamp. A wildcard peer, and this node's own name or key, are no peer to make a
// session with.
func (n *Node) completeResponder(res handshake.Result, ep conn.Endpoint) {
	if n.isRevoked(res.PeerStatic) {
		// Before Admit: a revoked key is admitted nowhere. (Checked again under the
		// peer's lock, against a revocation that comes meanwhile.)
		n.index.release(res.LocalIndex)
		n.refuseRevoked(res.PeerName)
		n.refuse(res, ep, wire.CodeRevoked)
		return
	}
	p := n.Peer(res.PeerName)
	own := n.PublicKey()
	if p == nil && res.PeerName != n.cfg.Name && subtle.ConstantTimeCompare(res.PeerStatic[:], own[:]) != 1 {
		p = n.admit(res.PeerName, res.PeerStatic)
	}
	if p == nil || p.cfg.AnyName {
		n.index.release(res.LocalIndex)
		n.drop(DropUnknownPeer)
		n.logDrop(DropUnknownPeer, nil, res.PeerName)
		n.refuse(res, ep, wire.CodeNotPeer)
		return
	}
	if up, fresh := p.completeResponder(res, ep); up {
		n.sessionUp(p, fresh)
	}
}

// admit asks Config.Admit about an authenticated node named name with key static that
// no peer has, one call at a time, and returns the peer to make the session on, or nil.
// Called with no lock held.
func (n *Node) admit(name string, static [32]byte) *Peer {
	if n.cfg.Admit == nil {
		return nil
	}
	n.admitMu.Lock()
	defer n.admitMu.Unlock()
	if p := n.Peer(name); p != nil {
		return p // admitted by the call before
	}
	p, err := n.cfg.Admit(name, static)
	if err != nil || p == nil {
		n.log.Debug("node not admitted", "name", name, "err", err)
		return nil
	}
	if p.node != n || p.cfg.Name != name {
		n.log.Warn("Admit returned a peer of another name or node; refusing", "name", name, "peer", p.cfg.Name)
		return nil
	}
	return p
}

// sessionUp calls Config.SessionUp. Called with no lock held.
func (n *Node) sessionUp(p *Peer, fresh bool) {
	if n.cfg.SessionUp != nil {
		n.cfg.SessionUp(p, fresh)
	}
}

// completeResponder installs a responder session after the per-peer checks, and
// reports whether it did (the session is confirmed at once) and whether it is the
// peer's first confirmed session (confirmedLocked).
func (p *Peer) completeResponder(res handshake.Result, ep conn.Endpoint) (up, fresh bool) {
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
		return false, false
	}
	if e, ok := ep.(*relayEndpoint); ok && e.peer != p {
		// p's handshake through another peer's relay path: the relay misroutes it.
		reject(DropRelayWrongSource)
		return false, false
	}
	if p.pinMismatchLocked(res.PeerStatic) {
		reject(DropPinMismatch)
		n.warnDrop(DropPinMismatch, "handshake with a key other than the pinned one; refusing", "peer", p.cfg.Name)
		n.refuse(res, ep, wire.CodePinMismatch)
		return false, false
	}
	if n.isRevoked(res.PeerStatic) {
		reject(DropRevoked)
		n.refuse(res, ep, wire.CodeRevoked)
		return false, false
	}
	// A new static key for the same name restarts the timestamp sequence only if the
	// key is not pinned; replay protection is per key.
	if p.handshake.staticKnown && p.handshake.static == res.PeerStatic && handshake.CompareTimestamp(res.Timestamp, p.handshake.lastTimestamp) <= 0 {
		reject(DropStaleTimestamp)
		return false, false
	}
	now := time.Now()
	s, err := newSession(p, res.LocalIndex, res.RemoteIndex, false, res.Cipher, &res.SendKey, &res.RecvKey, now)
	if err != nil {
		reject(DropHandshake)
		return false, false
	}
	s.seed = res.SeedID
	p.handshake.lastTimestamp = res.Timestamp
	p.learnEndpoint(ep, false, s, handshakeCtr)
	fresh = p.installLocked(s, res.PeerStatic, now)
	p.sendControl(s, wire.AppendControl(nil, wire.CtlFinal, nil))
	p.flushQueueLocked(s)
	p.flushReliableLocked(s, now)
	return true, fresh
}

// installLocked makes s the current session; the one it replaces stays for receiving.
// For a responder's session, confirmed already, it reports whether it is the peer's
// first confirmed one (confirmedLocked). Called with p.mu held.
func (p *Peer) installLocked(s *session, static [32]byte, now time.Time) (fresh bool) {
	n := p.node
	n.index.install(s)
	old := p.keys.current.Swap(s)
	// When s replaces a current session, the one before stays for receiving
	// (peerKeys.older): after crossing handshakes the peer may still be sending on it.
	// Without a current one (closed, expired) nothing is sent on it any more.
	n.index.remove(p.keys.older)
	p.keys.older = nil
	if old != nil {
		p.keys.older = p.keys.previous
	} else {
		n.index.remove(p.keys.previous)
	}
	p.keys.previous = old
	if old != nil {
		s.rel.inherit(&old.rel)
	}
	if len(p.relQueue) > 0 {
		// What SendReliable was given while there was no session.
		s.rel.adopt(p.relQueue)
		p.relQueue = nil
	}
	if old != nil && s.initiator && old.confirmed.Load() {
		p.keys.standby.Store(old)
	} else {
		p.keys.standby.Store(nil)
	}
	p.handshake.static, p.handshake.staticKnown = static, true
	p.handshake.want = false
	p.times.firstUnanswered.Store(0)
	if s.confirmed.Load() {
		// A responder's session: the AUTH_PROOF confirmed it. Ours counts once the
		// peer confirms it (confirmedSession).
		fresh = p.confirmedLocked(s, now)
	}
	if s.initiator {
		p.flushQueueLocked(s)
		p.flushReliableLocked(s, now)
	}
	n.log.Debug("session established", "peer", p.cfg.Name, "initiator", s.initiator, "cipher", s.cipherID.String())
	return fresh
}

// flushReliableLocked sends the reliable control messages s holds that are due: those
// SendReliable queued while there was no session, or a replaced session left
// unacknowledged. Called with p.mu held.
func (p *Peer) flushReliableLocked(s *session, now time.Time) {
	if payload := s.rel.appendDue(nil, now, p.RTT(), p.controlBudget()); payload != nil {
		p.sendControl(s, payload)
	}
}

// confirmedSession records that s, made by our handshake, was confirmed by the peer:
// only now does the handshake count as completed, and a standing refusal ends. s is
// marked confirmed under p.mu, in the same step that ends the refusal: marked outside
// it, HasSession said yes while Refusal still showed the peer refusing us (a status
// with a live session and "refused", seen under load).
func (p *Peer) confirmedSession(s *session, now time.Time) {
	n := p.node
	p.mu.Lock()
	if !s.confirmed.CompareAndSwap(false, true) {
		p.mu.Unlock()
		return // another receiver got there first
	}
	if p.keys.current.Load() != s && p.keys.previous != s {
		p.mu.Unlock()
		return // already replaced or dropped
	}
	fresh := p.confirmedLocked(s, now)
	p.mu.Unlock()
	n.log.Debug("session confirmed", "peer", p.cfg.Name)
	n.sessionUp(p, fresh)
}

// confirmedLocked counts a completed handshake: the peer has shown it holds the keys of
// s. It reports whether s is the peer's first confirmed session: no other confirmed one
// that has not expired is held (not a rekey). Called with p.mu held.
func (p *Peer) confirmedLocked(s *session, now time.Time) (fresh bool) {
	n := p.node
	fresh = true
	for _, o := range [...]*session{p.keys.standby.Load(), p.keys.previous} {
		if o != nil && o != s && o.confirmed.Load() && !o.expired(now, &n.limits) {
			fresh = false
		}
	}
	p.handshake.last = now
	p.handshake.badCandidates = 0 // an address that was another node's may be the peer's later
	n.ctr.handshakesDone.Add(1)
	p.refused.count = 0
	if p.refused.code != 0 {
		p.refused.code = 0
		n.log.Info("peer accepts our handshake again", "peer", p.cfg.Name)
	}
	return fresh
}

// dropSessionsLocked forgets every session and handshake with the peer and asks for a
// new handshake, telling the peer so that it does not send into the void. Called with
// p.mu held.
func (p *Peer) dropSessionsLocked() {
	n := p.node
	p.dropInitLocked()
	p.forgetProofLocked()
	cur := p.keys.current.Swap(nil)
	if cur != nil {
		p.sendClose(cur)
		p.handshake.want = true
	}
	n.index.remove(cur, p.keys.previous, p.keys.older)
	p.keys.previous, p.keys.older = nil, nil
	// Replay protection of handshakes is per key; the next key starts afresh.
	p.handshake.lastTimestamp = [12]byte{}
}

// initiation is our handshake in flight that the index idx names, and the peer it is
// for now (a wildcard's moves to the peer it reached), or nil.
func (n *Node) initiation(idx uint32) (*initiation, *Peer) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	ini := n.inits[idx]
	if ini == nil {
		return nil, nil
	}
	return ini, ini.peer
}

// pinMismatchLocked reports whether key is not the key the peer's configuration pins
// (there is no pin: false). Called with p.mu held.
func (p *Peer) pinMismatchLocked(key [32]byte) bool {
	return p.cfg.PublicKey != nil && subtle.ConstantTimeCompare(key[:], p.cfg.PublicKey[:]) != 1
}

// cookieLocked is the responder's cookie for mac2 while the responder still accepts
// it (it changes its cookie secret every handshake.CookieSecretLifetime), else nil.
// Called with p.mu held.
func (p *Peer) cookieLocked(now time.Time) []byte {
	if p.handshake.cookie != nil && now.Sub(p.handshake.cookieAt) < handshake.CookieSecretLifetime {
		return p.handshake.cookie
	}
	return nil
}

// Connect asks for a session with the peer without sending anything: a handshake
// starts at once unless one runs, a session is up, or the peer refused us recently; an
// endpoint name is looked up again.
// The mesh uses it to dial bootstrap addresses and to keep a few members connected.
func (p *Peer) Connect() {
	if s := p.keys.current.Load(); s != nil && !s.expired(time.Now(), &p.node.limits) {
		return
	}
	p.mu.Lock()
	// An endpoint given as a name is looked up again for each dial, so that a bootstrap
	// address that moved is found at its new address; the handshake starts when the
	// lookup ends. Started at once, it went to the old address, and when it completed
	// there before the lookup did (a loaded machine), the node had reached the old
	// node again and did not dial the new address at all.
	if p.lookup.running {
		p.lookup.dial, p.lookup.again = true, true
	} else if p.reresolveLocked(); p.lookup.running {
		p.lookup.dial = true
	} else {
		p.handshake.want = true
	}
	p.mu.Unlock()
	p.node.kick()
}

// Connecting reports whether a handshake of ours with the peer is in flight.
func (p *Peer) Connecting() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.handshake.init != nil || p.handshake.proof != nil
}
