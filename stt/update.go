package stt

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/conn"
)

// ErrPeerRemoved reports an operation on a peer that RemovePeer has forgotten.
var ErrPeerRemoved = errors.New("peer was removed")

// Update changes a running peer's settings in place, for a configuration reload: its
// endpoint, candidates, persistent keepalive, idle timeout, pinned key and WebSocket
// settings. Name, AnyName and Tag cannot change; Update refuses another name or AnyName
// and ignores pc.Tag.
//
// The session survives every change but one: a pin that does not match the key the
// current session was made with drops the session (and any handshake in flight), and a
// new handshake must present the pinned key. A new endpoint is used at once; the session
// does not depend on the address. Changed WebSocket settings close a WebSocket
// connection to the peer, so that the next one is dialed with them; the session moves to
// UDP or to that new connection.
//
// An endpoint given as a host name is looked up in the background, as AddPeer does: the
// peer keeps its current address until the name answers (LookupDone), and a name that
// does not resolve is looked up again until it does.
func (p *Peer) Update(pc PeerConfig) error {
	if pc.Name != p.cfg.Name {
		return fmt.Errorf("stt: peer %s: Update cannot rename a peer to %q", p.cfg.Name, pc.Name)
	}
	if pc.AnyName != p.cfg.AnyName {
		return fmt.Errorf("stt: peer %s: Update cannot make a wildcard peer of a named one, or the reverse", p.cfg.Name)
	}
	n := p.node
	cands, err := n.parseCandidates(pc.Candidates)
	if err != nil {
		return fmt.Errorf("stt: peer %s: %w", pc.Name, err)
	}
	p.mu.Lock()
	endpointChanged := pc.Endpoint != p.cfg.Endpoint
	p.mu.Unlock()
	var ep conn.Endpoint
	name := false
	if endpointChanged && pc.Endpoint != "" {
		ap, err := netip.ParseAddrPort(pc.Endpoint)
		switch {
		case err == nil:
			ep, err = n.bind.ParseEndpoint(ap.String())
			if err != nil {
				return fmt.Errorf("stt: peer %s: endpoint: %w", pc.Name, err)
			}
		default:
			if _, _, err := net.SplitHostPort(pc.Endpoint); err != nil {
				return fmt.Errorf("stt: peer %s: endpoint %q: %w", pc.Name, pc.Endpoint, err)
			}
			name = true
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return fmt.Errorf("stt: peer %s: %w", pc.Name, ErrPeerRemoved)
	}
	if ep != nil {
		p.storeUDP(ep)
		// Look for the peer at the new address now rather than after the dead-peer timer.
		p.times.firstUnanswered.Store(0)
	}
	// An endpoint removed from the configuration leaves the learned address in place:
	// the peer may be connected from where it is, as for a peer that never had one.
	p.cfg.Endpoint = pc.Endpoint
	p.cfg.PersistentKeepalive = pc.PersistentKeepalive
	p.cfg.IdleTimeout = pc.IdleTimeout
	if !slices.Equal(pc.Candidates, p.cfg.Candidates) {
		p.handshake.candidates, p.handshake.badCandidates = cands, 0
	}
	p.cfg.Candidates = slices.Clone(pc.Candidates)
	if endpointChanged {
		if name {
			p.startLookupLocked()
		} else {
			p.lookup.unresolved, p.lookup.err = false, ""
			p.endLookupLocked()
		}
	}

	switch {
	case pc.PublicKey == nil:
		p.cfg.PublicKey = nil
	default:
		pin := *pc.PublicKey
		p.cfg.PublicKey = &pin
		if p.handshake.staticKnown && p.handshake.static != pin {
			p.dropSessionsLocked()
			n.log.Info("pinned key changed; the session with the old key is closed", "peer", p.cfg.Name)
		}
		p.handshake.static, p.handshake.staticKnown = pin, true
	}

	if ws := pc.wsSettings(); *ws != *p.cfg.wsSettings() {
		p.cfg.WSURL, p.cfg.WSProxy, p.cfg.WSCAFile, p.cfg.WSInsecure = pc.WSURL, pc.WSProxy, pc.WSCAFile, pc.WSInsecure
		p.path.wsConf.Store(ws)
		if we := p.path.ws.Load(); we != nil {
			// The connection's watcher clears path.ws and moves the traffic off it.
			_ = we.c.Close()
		}
	}
	n.kick()
	return nil
}

// SessionID identifies the peer's current session (this node's index for it), and
// reports whether there is one. A different value after a handshake means new keys; the
// same value means the same session.
func (p *Peer) SessionID() (uint32, bool) {
	s := p.keys.current.Load()
	if s == nil {
		return 0, false
	}
	return s.localIndex, true
}

// Config returns the peer's configuration as it is now, for a caller that changes a
// few fields and passes it to Update.
func (p *Peer) Config() PeerConfig {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}
