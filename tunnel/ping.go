package tunnel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stt-tun/stt-tun/stt"
)

// ErrUnknownPeer reports a peer name that the running configuration does not have.
var ErrUnknownPeer = errors.New("no such peer")

// PingReply is the answer to one Ping.
type PingReply struct {
	RTT time.Duration
	// Path is the transport the echo went and came back on, "udp" or "ws": a peer
	// answers an echo the way it came.
	Path string
	// Endpoint is the underlay address the echo was sent to (for "ws", the TCP address
	// at the other end of the WebSocket).
	Endpoint string
}

// sessionPoll is how often Ping looks whether a handshake it started has finished.
const sessionPoll = 10 * time.Millisecond

// Ping sends one STT-level echo (a PING control message) through the session with the
// named peer and waits for the answer until ctx ends. Without a session it starts a
// handshake and waits for it first, as the first packet to a peer would. It measures
// the tunnel itself: no packet goes through the TUN device or the peer's IP stack.
func (t *Tunnel) Ping(ctx context.Context, name string) (PingReply, error) {
	p := t.peerNamed(name)
	if p == nil {
		return PingReply{}, fmt.Errorf("%w named %q on %s", ErrUnknownPeer, name, t.ifaceName())
	}
	sp := p.sp
	for {
		path := sp.Path()
		ep := sp.Endpoint()
		rtt, err := sp.Ping(ctx)
		if err == nil {
			r := PingReply{RTT: rtt, Path: path}
			if ep.IsValid() {
				r.Endpoint = ep.String()
			}
			return r, nil
		}
		if r, ok := sp.Refusal(); ok {
			// Nothing will answer before the peer's operator acts: say why at once.
			return PingReply{}, fmt.Errorf("refused by %s: %s", name, r.Reason)
		}
		if !errors.Is(err, stt.ErrNoSession) {
			return PingReply{}, fmt.Errorf("no reply from %s: %w", name, err)
		}
		// Ping asked for a handshake; wait for the session it makes.
		tick := time.NewTicker(sessionPoll)
		for !sp.HasSession() {
			if r, ok := sp.Refusal(); ok {
				tick.Stop()
				return PingReply{}, fmt.Errorf("refused by %s: %s", name, r.Reason)
			}
			select {
			case <-ctx.Done():
				tick.Stop()
				return PingReply{}, fmt.Errorf("no session with %s: the handshake did not complete: %w", name, ctx.Err())
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

// peerNamed returns the configured peer with that name, or nil.
func (t *Tunnel) peerNamed(name string) *peer {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, p := range t.peers {
		if p.cfg.Name == name {
			return p
		}
	}
	return nil
}
