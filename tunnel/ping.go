package tunnel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt"
)

// sessionPoll is how often Ping looks whether a handshake it started has finished.
const sessionPoll = 10 * time.Millisecond

// Ping sends one STT-level echo (a PING control message) through the session with the
// named peer and waits for the answer until ctx ends. Without a session it starts a
// handshake and waits for it first, as the first packet to a peer would. It measures
// the tunnel itself: no packet goes through the TUN device or the peer's IP stack.
func (t *Tunnel) Ping(ctx context.Context, name string) (status.PingReply, error) {
	p := t.peerNamed(name)
	if p == nil {
		return status.PingReply{}, fmt.Errorf("%w named %q on %s", status.ErrUnknownPeer, name, t.ifaceName())
	}
	sp := p.sp
	p.pinged.Store(time.Now().UnixNano())
	for {
		path := sp.Path()
		ep := sp.Endpoint()
		via := sp.RelayVia()
		rtt, err := sp.Ping(ctx)
		if err == nil {
			r := status.PingReply{RTT: rtt, Path: path}
			if path == stt.PathRelay && via != nil {
				r.Via = via.Name()
			} else if ep.IsValid() {
				r.Endpoint = ep.String()
			}
			return r, nil
		}
		if r, ok := sp.Refusal(); ok {
			// Nothing will answer before the peer's operator acts: say why at once.
			return status.PingReply{}, fmt.Errorf("refused by %s: %s", name, r.Reason)
		}
		if !errors.Is(err, stt.ErrNoSession) {
			return status.PingReply{}, fmt.Errorf("no reply from %s: %w", name, err)
		}
		// Ping asked for a handshake; wait for the session it makes.
		tick := time.NewTicker(sessionPoll)
		for !sp.HasSession() {
			if r, ok := sp.Refusal(); ok {
				tick.Stop()
				return status.PingReply{}, fmt.Errorf("refused by %s: %s", name, r.Reason)
			}
			select {
			case <-ctx.Done():
				tick.Stop()
				return status.PingReply{}, fmt.Errorf("no session with %s: the handshake did not complete: %w", name, ctx.Err())
			case <-tick.C:
			}
		}
		tick.Stop()
	}
}

// ifaceName is the interface's name, which no reload changes.
func (t *Tunnel) ifaceName() string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.cfg.Interface.Name
}

// peerNamed returns the configured peer or mesh member with that name, or nil.
func (t *Tunnel) peerNamed(name string) *peer {
	if p := t.configPeer(name); p != nil {
		return p
	}
	if t.mesh != nil {
		// mesh.mu is taken before t.mu elsewhere, so never while holding t.mu.
		t.mesh.mu.Lock()
		defer t.mesh.mu.Unlock()
		for _, mb := range t.mesh.members {
			if mb.name == name && mb.p != nil {
				return mb.p
			}
		}
	}
	return nil
}

// configPeer returns the [[peer]] with that name, or nil.
func (t *Tunnel) configPeer(name string) *peer {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, p := range t.peers {
		if p.cfg.Name == name {
			return p
		}
	}
	return nil
}
