package tunnel

import (
	"time"

	"github.com/stt-tun/stt-tun/stt"
)

// peerFigures are one peer's figures as both status and metrics show them, read once.
type peerFigures struct {
	path     string // stt.PathNone without a session
	endpoint string // where traffic would go now, "" if nowhere
	up       bool   // the peer has a usable session
	refused  string // the name of the peer's standing refusal, "" if none
	stats    stt.PeerStats
	drops    uint64 // the peer's drops in stt and in the tunnel layer
	rtt      time.Duration
	lastHS   time.Time // zero if never
}

// figuresOf reads sp's figures; tunDrops are the tunnel layer's drops of its packets.
func figuresOf(sp *stt.Peer, tunDrops uint64) peerFigures {
	f := peerFigures{path: stt.PathNone}
	if sp.HasSession() {
		f.path, f.up = sp.Path(), true
	}
	// The endpoint is where traffic would go now: a UDP address, or for "ws" the TCP
	// address at the other end of the WebSocket (the peer, or a proxy before it).
	if ep := sp.Endpoint(); ep.IsValid() {
		f.endpoint = ep.String()
	}
	f.stats = sp.Stats()
	f.drops = f.stats.Drops + tunDrops
	f.rtt = sp.RTT()
	f.lastHS = sp.LastHandshake()
	if r, ok := sp.Refusal(); ok {
		f.refused = r.Name
	}
	return f
}

// tunDrops are the tunnel layer's drops of the peer's packets.
func (p *peer) tunDrops() uint64 { return p.srcDenied.Load() + p.loops.Load() }
