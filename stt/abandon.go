package stt

// Abandon ends our handshake in flight with the peer when nothing needs it: no datagram
// waits for the session and no session is up to be rekeyed. It reports whether it ended
// one. The mesh dials a few members to gossip with; one behind a NAT that no punch has
// opened never answers, and its handshake would otherwise repeat HELLOs for
// HandshakeGiveUp.
func (p *Peer) Abandon() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.handshake.init == nil || len(p.queue) > 0 || p.keys.current.Load() != nil {
		return false
	}
	p.dropInitLocked()
	p.handshake.want = false
	return true
}
