// Package status holds what a running tunnel reports about itself — its Status,
// each Peer's, and the PingReply to an echo — as the control socket carries it
// between the daemon and the CLI. The engine (tunnel) fills these values, the
// control socket (internal/ctl) carries them and the CLI renders them; this package
// imports none of them, so the control-socket protocol does not depend on the engine.
package status

import (
	"errors"
	"time"
)

// SchemaVersion is the version of the JSON form of Status that
// `stt-tun status --json` prints, documented in docs/status-schema.md. Within one
// version fields are only added; removing a field or changing its meaning bumps it.
const SchemaVersion = 1

// The states of Status.State.
const (
	StateStarting = "starting"
	StateUp       = "up"
	// StateDaemonGone is set by `stt-tun status`, not by a daemon: a journal of
	// routing changes remains but no daemon holds the interface's lock.
	StateDaemonGone = "daemon_gone"
)

// Status is a point-in-time view of a running tunnel, as `stt-tun status` shows it.
type Status struct {
	// SchemaVersion is this package's SchemaVersion in what `status --json`
	// prints; the daemon's control socket leaves it 0.
	SchemaVersion int `json:"schema_version,omitempty"`
	// State is StateStarting while the daemon brings the interface up, then StateUp;
	// StateDaemonGone in what `status` prints for routing a dead daemon left.
	State      string   `json:"state"`
	Interface  string   `json:"interface"`
	NodeName   string   `json:"node_name"`
	PublicKey  string   `json:"public_key"` // base64
	ListenPort int      `json:"listen_port"`
	MTU        int      `json:"mtu"`
	Addresses  []string `json:"addresses"`
	Peers      []Peer   `json:"peers"`
	// Counters are the node's cumulative counters since it started, by name; see
	// docs/status-schema.md for what each one means.
	Counters map[string]uint64 `json:"counters,omitempty"`
}

// Peer describes one configured peer.
type Peer struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key,omitempty"` // base64, learned or pinned
	Endpoint  string `json:"endpoint,omitempty"`   // current underlay address
	// EndpointError says why the configured endpoint name has no address yet; it is
	// looked up again in the background.
	EndpointError   string    `json:"endpoint_error,omitempty"`
	Path            string    `json:"path"` // "udp", "ws" or "none"
	AllowedPrefixes []string  `json:"allowed_prefixes"`
	LastHandshake   time.Time `json:"last_handshake,omitzero"`
	RTT             float64   `json:"rtt_ms,omitempty"`
	TxBytes         uint64    `json:"tx_bytes"`
	RxBytes         uint64    `json:"rx_bytes"`
	TxPackets       uint64    `json:"tx_packets"`
	RxPackets       uint64    `json:"rx_packets"`
	Drops           uint64    `json:"drops"`
	// Refused is why the peer refuses this node's handshakes: "unknown_peer" (it has
	// no [[peer]] for this node) or "pin_mismatch" (it pins another key for it); ""
	// (absent in JSON) when it does not.
	Refused string `json:"refused,omitempty"`
}

// PingReply is the answer to one STT-level echo sent to a peer.
type PingReply struct {
	RTT time.Duration
	// Path is the transport the echo went and came back on, "udp" or "ws": a peer
	// answers an echo the way it came.
	Path string
	// Endpoint is the underlay address the echo was sent to (for "ws", the TCP address
	// at the other end of the WebSocket).
	Endpoint string
}

// ErrUnknownPeer reports a peer name that the running configuration does not have.
var ErrUnknownPeer = errors.New("no such peer")
