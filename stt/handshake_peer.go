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
	peer      *Peer
	hs        *handshake.Initiation // its LocalIndex names it in n.inits and the index table
	firstSent time.Time             // of the first attempt in this series
	nextRetry time.Time
	attempt   int
}

// startHandshakeLocked sends a fresh HELLO. Called with p.mu held.
func (p *Peer) startHandshakeLocked(now time.Time) {
	n := p.node
	ep := p.target()
	if ep == nil || p.removed {
		if ep == nil && p.chooser() {
			p.dialWSLocked()
		}
		return
	}
	first := now
	attempt := 0
	if old := p.handshake.init; old != nil {
		first, attempt = old.firstSent, old.attempt+1
		p.dropInitLocked()
	}
	cookie := p.cookieLocked(now)
	idx := n.index.reserve()
	hs, hello, err := n.hs.Initiate(idx, cookie, make([]byte, 0, wire.HelloLen))
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
	ini := &initiation{peer: p, hs: hs, firstSent: first, nextRetry: now.Add(delay + jitter), attempt: attempt}
	p.handshake.init = ini
	n.mu.Lock()
	n.inits[idx] = ini
	n.mu.Unlock()
	n.ctr.handshakesStart.Add(1)
	_ = n.send([][]byte{hello}, ep)
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
	n := p.node
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.handshake.init != ini {
		n.drop(DropHandshake)
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
		return
	}
	if p.pinMismatchLocked(info.PeerStatic) {
		n.drop(DropPinMismatch)
		n.log.Warn("peer's key does not match the pinned key; refusing", "peer", p.cfg.Name)
		return
	}
	now := time.Now()
	proof, res, err := ini.hs.WriteAuthProof(p.cookieLocked(now), make([]byte, 0, wire.AuthProofLen))
	if err != nil {
		n.dropHandshake(err, addrPortOf(ep))
		return
	}
	s, err := newSession(p, res.LocalIndex, res.RemoteIndex, true, res.Cipher, &res.SendKey, &res.RecvKey, now)
	if err != nil {
		n.drop(DropHandshake)
		return
	}
	// The index stays reserved until install turns it into the session. The
	// initiation stays findable for a while: a responder under load may answer the
	// AUTH_PROOF with a cookie, and then it is sent again with mac2.
	p.handshake.init = nil
	p.forgetProofLocked()
	p.handshake.proof = ini
	ini.nextRetry = now.Add(handshake.HalfOpenTimeout)
	if err := n.send([][]byte{proof}, ep); err != nil {
		n.index.release(ini.hs.LocalIndex())
		return
	}
	p.learnEndpoint(ep, false, s, handshakeCtr)
	p.installLocked(s, res.PeerStatic, now)
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
			_ = p.node.send([][]byte{proof}, ep)
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
			_ = n.send([][]byte{reply}, ep)
		}
	case wire.TypeAuthProof:
		res, reply, err := n.hs.HandleAuthProof(msg, src, out)
		if reply != nil {
			// Under load: the initiator must prove its address with a cookie first.
			n.ctr.cookiesSent.Add(1)
			_ = n.send([][]byte{reply}, ep)
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
		ini := n.initiation(binary.LittleEndian.Uint32(msg[off:]))
		switch {
		case ini == nil:
			n.drop(DropHandshake)
		case msg[0] == wire.TypeChallenge:
			ini.peer.consumeChallenge(ini, msg, ep)
		default:
			ini.peer.consumeCookie(ini, msg)
		}
	}
}

// completeResponder installs the session a verified AUTH_PROOF produced, after the
// checks that need the peer: known name, pinned key, fresh timestamp.
func (n *Node) completeResponder(res handshake.Result, ep conn.Endpoint) {
	p := n.Peer(res.PeerName)
	if p == nil {
		n.index.release(res.LocalIndex)
		n.drop(DropUnknownPeer)
		n.logDrop(DropUnknownPeer, nil, res.PeerName)
		n.refuse(res, ep, wire.CodeNotPeer)
		return
	}
	p.completeResponder(res, ep)
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
	if p.pinMismatchLocked(res.PeerStatic) {
		reject(DropPinMismatch)
		n.warnDrop(DropPinMismatch, "handshake with a key other than the pinned one; refusing", "peer", p.cfg.Name)
		n.refuse(res, ep, wire.CodePinMismatch)
		return
	}
	// A new static key for the same name restarts the timestamp sequence only if the
	// key is not pinned; replay protection is per key.
	if p.handshake.staticKnown && p.handshake.static == res.PeerStatic && handshake.CompareTimestamp(res.Timestamp, p.handshake.lastTimestamp) <= 0 {
		reject(DropStaleTimestamp)
		return
	}
	now := time.Now()
	s, err := newSession(p, res.LocalIndex, res.RemoteIndex, false, res.Cipher, &res.SendKey, &res.RecvKey, now)
	if err != nil {
		reject(DropHandshake)
		return
	}
	p.handshake.lastTimestamp = res.Timestamp
	p.learnEndpoint(ep, false, s, handshakeCtr)
	p.installLocked(s, res.PeerStatic, now)
	p.sendControl(s, wire.AppendControl(nil, wire.CtlFinal, nil))
	p.flushQueueLocked(s)
}

// installLocked makes s the current session; the one it replaces stays for receiving.
func (p *Peer) installLocked(s *session, static [32]byte, now time.Time) {
	n := p.node
	n.index.install(s)
	old := p.keys.current.Swap(s)
	if p.keys.previous != nil {
		n.index.remove(p.keys.previous)
	}
	p.keys.previous = old
	if old != nil {
		s.rel.inherit(&old.rel)
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
		p.confirmedLocked(now)
	}
	if s.initiator {
		p.flushQueueLocked(s)
	}
	n.log.Debug("session established", "peer", p.cfg.Name, "initiator", s.initiator, "cipher", s.cipherID.String())
}

// confirmedSession records that s, made by our handshake, was confirmed by the peer:
// only now does the handshake count as completed, and a standing refusal ends.
func (p *Peer) confirmedSession(s *session, now time.Time) {
	n := p.node
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys.current.Load() != s && p.keys.previous != s {
		return // already replaced or dropped
	}
	p.confirmedLocked(now)
	n.log.Debug("session confirmed", "peer", p.cfg.Name)
}

// confirmedLocked counts a completed handshake: the peer has shown it holds the
// session's keys. Called with p.mu held.
func (p *Peer) confirmedLocked(now time.Time) {
	n := p.node
	p.handshake.last = now
	n.ctr.handshakesDone.Add(1)
	p.refused.count = 0
	if p.refused.code != 0 {
		p.refused.code = 0
		n.log.Info("peer accepts our handshake again", "peer", p.cfg.Name)
	}
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
	n.index.remove(cur, p.keys.previous)
	p.keys.previous = nil
	// Replay protection of handshakes is per key; the next key starts afresh.
	p.handshake.lastTimestamp = [12]byte{}
}

// initiation is our handshake in flight that the index idx names, or nil.
func (n *Node) initiation(idx uint32) *initiation {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.inits[idx]
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
