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
