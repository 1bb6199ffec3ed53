package stt

import (
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// Refusals (docs/protocol.md section 4.8). A responder that verified an AUTH_PROOF but
// will not make the session (no [[peer]] of that name, or a pinned key that differs)
// answers with one frame sealed under that handshake's keys instead of FINAL. Only the
// initiator that sent the AUTH_PROOF can open it, and no one else can make one, so the
// initiator may believe it: it drops the session, shows the refusal, and backs off.

// refuse sends the refusal for a verified AUTH_PROOF whose Result the node will not
// turn into a session. The caller has released (or will release) res.LocalIndex.
func (n *Node) refuse(res handshake.Result, ep conn.Endpoint, code uint16) {
	frame, err := handshake.SealRefusal(make([]byte, 0, wire.HeaderLen+wire.ControlHeaderLen+wire.CloseBodyLen+wire.TagLen), res, code)
	if err != nil {
		return
	}
	if err := n.sendHandshake(frame, ep); err != nil {
		n.drop(DropSendError)
	}
}

// refusalReason is the text `status` shows for a refusal code.
func refusalReason(code uint16) string {
	switch code {
	case wire.CodeNotPeer:
		return "not a configured peer"
	case wire.CodePinMismatch:
		return "our key is not the public_key it pins for us"
	case wire.CodeRevoked:
		return "our key was revoked by an admin of the network"
	}
	return ""
}

// refusalName is the machine-readable name of a refusal code, as status JSON and the
// drop counters of the responder name the cause: "unknown_peer", "pin_mismatch",
// "revoked".
func refusalName(code uint16) string {
	switch code {
	case wire.CodeNotPeer:
		return DropUnknownPeer.String()
	case wire.CodePinMismatch:
		return DropPinMismatch.String()
	case wire.CodeRevoked:
		return DropRevoked.String()
	}
	return ""
}

// Refusal is why the peer refused our latest handshake: Name is "unknown_peer",
// "pin_mismatch" or "revoked", Reason the words `status` shows. The zero value: not refused.
type Refusal struct {
	Name, Reason string
	Since        time.Time // when the first refusal of this kind arrived
	RetryAt      time.Time // when this node tries again
}

// Refusal reports the peer's standing refusal, if any. It is cleared when a session
// with the peer is confirmed.
func (p *Peer) Refusal() (Refusal, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refused.code == 0 {
		return Refusal{}, false
	}
	return Refusal{Name: refusalName(p.refused.code), Reason: refusalReason(p.refused.code), Since: p.refused.since, RetryAt: p.refused.until}, true
}

// refusalBackoff is how long an initiator waits after its nth consecutive refusal
// (n ≥ 1) before it tries the peer again: HandshakeRetry (1 s) doubling per refusal up
// to RekeyAfterTime (120 s). A refusal comes from a configuration only an operator
// changes, so hammering the peer gains nothing; short first waits keep the recovery
// quick when the operator is fixing it right now (a handful of tries in the first
// minute, then one every two minutes).
func (t *Limits) refusalBackoff(n int) time.Duration {
	d := t.HandshakeRetry << min(max(n-1, 0), 10)
	if d <= 0 || d > t.RekeyAfterTime {
		d = t.RekeyAfterTime
	}
	return d
}

// refusedBy acts on an authenticated refusal under our unconfirmed session s: the
// session goes (the responder has none), the peer shows the refusal, and no handshake
// starts before the back-off has passed. One info line per change of refusal.
func (p *Peer) refusedBy(s *session, code uint16, now time.Time) {
	n := p.node
	p.mu.Lock()
	defer p.mu.Unlock()
	// The responder has no session with us: it refuses us now, and whatever made it
	// refuse (our [[peer]] removed, a new pin) ended the sessions it had with us too. So
	// the session a rekey was replacing goes as well; only receiving on the previous
	// one stays possible until it expires, as after any rekey.
	if p.keys.current.CompareAndSwap(s, nil) {
		if sb := p.keys.standby.Swap(nil); sb != nil && sb != p.keys.previous && sb != p.keys.older {
			n.index.remove(sb)
		}
	}
	if p.keys.previous == s {
		p.keys.previous = nil
	}
	if p.keys.older == s {
		p.keys.older = nil
	}
	n.index.remove(s)
	if p.handshake.proof != nil {
		p.forgetProofLocked()
	}
	p.refused.count++
	if p.refused.code != code {
		p.refused.since = now
		n.log.Info("peer refused our handshake", "peer", p.cfg.Name, "reason", refusalReason(code), "code", refusalName(code))
	}
	p.refused.code = code
	wait := n.limits.refusalBackoff(p.refused.count)
	p.refused.until = now.Add(wait)
	n.log.Debug("refused; next handshake after back-off", "peer", p.cfg.Name, "wait", wait)
	// What waited for this session cannot be delivered.
	p.dropQueueLocked(DropRefused)
	p.handshake.want = false
}

// refusedLocked reports whether the peer refused us and the back-off still runs.
// Called with p.mu held.
func (p *Peer) refusedLocked(now time.Time) bool {
	return p.refused.code != 0 && now.Before(p.refused.until)
}
