package stt

// revoke.go refuses static keys an admin revoked (docs/protocol.md 10.8): a handshake
// that authenticates one of them, as responder or initiator, makes no session (drop
// reason revoked), and the sessions already made with one are closed at once.

// SetRevoked replaces the set of revoked static keys. From then on a handshake with any
// of them is refused when it completes, whichever side started it; the sessions of the
// peers whose session key is one of them are closed now (they start no new handshake
// until something asks for one, which is then refused), and the relay routes through or
// to such peers are dropped.
func (n *Node) SetRevoked(keys [][32]byte) {
	set := make(map[[32]byte]struct{}, len(keys))
	for _, k := range keys {
		set[k] = struct{}{}
	}
	n.revoked.Store(&set)
	if len(set) == 0 {
		return
	}
	for _, p := range n.Peers() {
		if p.revokeIfRevoked() {
			n.forgetRelays(p)
		}
	}
}

// isRevoked reports whether key is revoked. Lock-free: called at handshake completion.
func (n *Node) isRevoked(key [32]byte) bool {
	set := n.revoked.Load()
	if set == nil || len(*set) == 0 {
		return false
	}
	_, ok := (*set)[key]
	return ok
}

// refuseRevoked counts and logs a handshake refused for a revoked key.
func (n *Node) refuseRevoked(name string) {
	n.drop(DropRevoked)
	n.logDrop(DropRevoked, nil, name)
}

// revokeIfRevoked closes p's sessions when the key they were made with, or the key p
// pins, is revoked, and reports whether it did.
func (p *Peer) revokeIfRevoked() bool {
	n := p.node
	p.mu.Lock()
	defer p.mu.Unlock()
	hit := p.handshake.staticKnown && n.isRevoked(p.handshake.static)
	if p.cfg.PublicKey != nil && n.isRevoked(*p.cfg.PublicKey) {
		hit = true
	}
	if !hit {
		return false
	}
	had := p.keys.current.Load() != nil || p.keys.previous != nil || p.keys.older != nil
	p.dropSessionsLocked()
	p.handshake.want = false
	if had {
		n.log.Info("closed the session of a peer whose key was revoked", "peer", p.cfg.Name)
	}
	return true
}

// Revoked reports whether key is one of the revoked keys.
func (n *Node) Revoked(key [32]byte) bool { return n.isRevoked(key) }
