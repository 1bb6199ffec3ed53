package stt

import "time"

// Unanswered is how long the oldest data datagram or keepalive sent to the peer since
// it last answered has been waiting for an answer; 0 when the peer has answered
// everything sent so far. The mesh reads it to see a direct path that died (a NAT that
// forgot its mapping) before the session times out.
func (p *Peer) Unanswered() time.Duration {
	fu := p.times.firstUnanswered.Load()
	if fu == 0 {
		return 0
	}
	return time.Duration(p.mono(time.Now()) - fu)
}

// Limits returns the node's limits, with the defaults filled in.
func (n *Node) Limits() Limits { return n.limits }

// Waiting reports whether datagrams wait in the peer's queue for a session (or for a
// move of its path): traffic wants the peer, as opposed to a dial that only keeps a
// session up.
func (p *Peer) Waiting() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue) > 0
}
