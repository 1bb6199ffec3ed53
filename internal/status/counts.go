package status

// The states of a peer, as PeerState names them: with a session (up), or without one
// because the peer refused this node's handshake, its endpoint name has no address, it
// had a session that ended (idle: sessions are lazy), or it never had one.
const (
	PeerUp         = "up"
	PeerRefused    = "refused"
	PeerUnresolved = "unresolved"
	PeerIdle       = "idle"
	PeerNever      = "never"
)

// PeerStates lists the states in the order `status` lists peers: those with a session
// first, then the ones that need looking at, then the quiet ones.
var PeerStates = []string{PeerUp, PeerRefused, PeerUnresolved, PeerIdle, PeerNever}

// PeerState is the state of p (one of PeerStates).
func PeerState(p Peer) string {
	switch {
	case p.Path != "" && p.Path != "none":
		return PeerUp
	case p.Refused != "":
		return PeerRefused
	case p.EndpointError != "":
		return PeerUnresolved
	case !p.LastHandshake.IsZero():
		return PeerIdle
	}
	return PeerNever
}

// PeerCounts counts an interface's peers by path and by state, so that a node with a
// thousand peers can be read at a glance. Total = Up + Refused + Unresolved + Idle +
// Never, and Up = UDP + WS + Relay.
type PeerCounts struct {
	Total      int `json:"total"`
	Up         int `json:"up"`
	UDP        int `json:"udp"`
	WS         int `json:"ws"`
	Relay      int `json:"relay"`
	Refused    int `json:"refused"`
	Unresolved int `json:"unresolved"`
	Idle       int `json:"idle"`
	Never      int `json:"never"`
}

// CountPeers counts ps by path and state.
func CountPeers(ps []Peer) PeerCounts {
	c := PeerCounts{Total: len(ps)}
	for _, p := range ps {
		switch PeerState(p) {
		case PeerUp:
			c.Up++
			switch p.Path {
			case "udp":
				c.UDP++
			case "ws":
				c.WS++
			case "relay":
				c.Relay++
			}
		case PeerRefused:
			c.Refused++
		case PeerUnresolved:
			c.Unresolved++
		case PeerIdle:
			c.Idle++
		default:
			c.Never++
		}
	}
	return c
}
