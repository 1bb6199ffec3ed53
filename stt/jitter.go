// Jitter of the periodic timers: peers whose sessions came up together (a restart, a
// network back after an outage) would otherwise rekey together, and peers configured
// alike would send their keepalives together, every period, for ever. Each timer's
// period is shortened by a fraction of itself that differs from peer to peer (and, for
// rekeys, from session to session), so that the load spreads over a window of
// jitterDiv-th of the period. Shortened only: a keepalive must not come later than
// configured (it keeps a NAT mapping open), and a session must be rekeyed before
// RejectAfterTime.

package stt

import (
	"encoding/binary"
	"hash/maphash"
	"time"
)

// jitterDiv: the timers spread over a 1/jitterDiv-th part of their period.
const jitterDiv = 8

// jitterSeed makes the fractions of one process unlike another's: two nodes started
// together spread their timers differently.
var jitterSeed = maphash.MakeSeed()

// jitterFrac is a fraction in [0, 1) fixed for the peer, its timer kind and gen.
func (p *Peer) jitterFrac(kind byte, gen uint64) float64 {
	var h maphash.Hash
	h.SetSeed(jitterSeed)
	_, _ = h.WriteString(p.cfg.Name)
	var b [9]byte
	b[0] = kind
	binary.LittleEndian.PutUint64(b[1:], gen)
	_, _ = h.Write(b[:])
	return float64(h.Sum64()>>11) / (1 << 53)
}

// jittered is d shortened by up to d/jitterDiv, by frac of that.
func jittered(d time.Duration, frac float64) time.Duration {
	return d - time.Duration(frac*float64(d/jitterDiv))
}

const (
	jitterRekey     = 'r'
	jitterKeepalive = 'k'
	jitterPassive   = 'p'
)

// rekeyAfter is the age at which s is due for new keys: for the initiator of the
// session, RekeyAfterTime less up to an eighth; for the responder, which waits a little
// longer so that the two rarely race, responderRekeyAfter less up to a sixteenth (so
// that it stays later than any initiator's). Both stay well within RejectAfterTime.
func (s *session) rekeyAfter(t *Limits) time.Duration {
	f := s.peer.jitterFrac(jitterRekey, s.gen)
	if s.initiator {
		return jittered(t.RekeyAfterTime, f)
	}
	return t.responderRekeyAfter() - time.Duration(f*float64(t.RekeyAfterTime/(2*jitterDiv)))
}

// keepaliveInterval is the peer's PersistentKeepalive, less up to an eighth.
func (p *Peer) keepaliveInterval() time.Duration {
	return jittered(p.cfg.PersistentKeepalive, p.jitterFrac(jitterKeepalive, 0))
}

// passiveKeepalive is KeepaliveTimeout less up to an eighth: the keepalive answering
// data this node has not answered otherwise.
func (p *Peer) passiveKeepalive() time.Duration {
	return jittered(p.node.limits.KeepaliveTimeout, p.jitterFrac(jitterPassive, 0))
}
