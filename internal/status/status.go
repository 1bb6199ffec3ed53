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
	// PeerCounts summarises Peers by path and state (counts.go); the CLI fills it in
	// what `status --json` prints, the daemon leaves it nil.
	PeerCounts *PeerCounts `json:"peer_counts,omitempty"`
	Peers      []Peer      `json:"peers"`
	// Counters are the node's cumulative counters since it started, by name; see
	// docs/status-schema.md for what each one means.
	Counters map[string]uint64 `json:"counters,omitempty"`
	// Mesh is the discovery side, present when [discovery] is configured.
	Mesh *Mesh `json:"mesh,omitempty"`
	// Seed names the network seed the node uses, and the next one during a rotation.
	Seed *Seed `json:"seed,omitempty"`
}

// Seed names the seeds a node holds by their short ids (the first 8 hex digits of
// their SeedID), never the seeds themselves.
type Seed struct {
	// ID is the current seed: the one new handshakes use, except from From on during a
	// rotation, when the next one is.
	ID string `json:"id"`
	// NextID, From and Until describe a rotation in progress: the next seed is used
	// from From on; ID is accepted until Until. Absent without one.
	NextID string    `json:"next_id,omitempty"`
	From   time.Time `json:"from,omitzero"`
	Until  time.Time `json:"until,omitzero"`
	// Transient is true when the next seed came from a reload of a seed file replaced by
	// a bare new seed: the old one's grace is not in the file, and ends with a restart.
	Transient bool `json:"transient,omitempty"`
	// Rotation is set when the next seed came from an admin's rotation statement (seed
	// rotate) rather than from the seed file.
	Rotation *Rotation `json:"rotation,omitempty"`
	// Superseded is the short id of the next seed of an in-band rotation that a reload
	// of a seed file written by hand superseded on this node: it neither offers that
	// seed nor stages it from other members' offers.
	Superseded string `json:"superseded,omitempty"`
}

// Mesh is what a node knows of the mesh it belongs to.
type Mesh struct {
	// Address is this node's key-derived IPv6 address; Network the mesh's /48.
	Address string `json:"address"`
	Network string `json:"network"`
	// Members counts the members this node knows (not itself), Connected those with a
	// session now.
	Members   int `json:"members"`
	Connected int `json:"connected"`
	// Reflected are the addresses other members see this node's traffic come from.
	Reflected []Reflection `json:"reflected"`
	// Bootstrap is one entry per [discovery] bootstrap address.
	Bootstrap []Bootstrap `json:"bootstrap"`
	// RecordVersion is the version of this node's own record.
	RecordVersion uint64 `json:"record_version"`
	// NAT is what the reflections say of this node's NAT: "public", "easy" (one
	// mapping for every destination), "hard" (a mapping per destination),
	// "udp-blocked" or "unknown".
	NAT string `json:"nat"`
	// Relay says this node relays for other members (`relay = true`); Relaying counts
	// the pairs of members it forwards between now.
	Relay    bool `json:"relay"`
	Relaying int  `json:"relaying"`
	// NetworkID is the network id (hex) that admin statements are signed for; Admins
	// are the admin keys this node obeys ([membership] admins, base64).
	NetworkID string   `json:"network_id"`
	Admins    []string `json:"admins"`
	// Revoked lists the members an admin revoked; Statements counts the statements held
	// (the counters mesh_statement_* count those offered, by outcome).
	Revoked    []Revoked `json:"revoked"`
	Statements int       `json:"statements"`
}

// Revoked is one revocation held: the key revoked, the name the admin gave it (or the
// one this node knew it by), the admin key that signed it and when.
type Revoked struct {
	Key    string `json:"key"`
	Name   string `json:"name,omitempty"`
	By     string `json:"by"`
	Issued string `json:"issued"` // RFC 3339, UTC
}

// Reflection is one member's view of where this node's traffic comes from.
type Reflection struct {
	By        string `json:"by"`        // the member's name
	Address   string `json:"address"`   // IP:port
	Transport string `json:"transport"` // "udp" or "ws"
}

// Bootstrap is the state of one bootstrap address.
type Bootstrap struct {
	Target string `json:"target"`
	// Reached is the name of the member that answered there last, "" if none has.
	Reached string `json:"reached,omitempty"`
	// Self is true when the address is this node's own.
	Self bool `json:"self,omitempty"`
}

// Peer describes one configured peer.
type Peer struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key,omitempty"` // base64, learned or pinned
	Endpoint  string `json:"endpoint,omitempty"`   // current underlay address
	// EndpointError says why the configured endpoint name has no address yet; it is
	// looked up again in the background.
	EndpointError   string    `json:"endpoint_error,omitempty"`
	Path            string    `json:"path"` // "udp", "ws", "relay" or "none"
	AllowedPrefixes []string  `json:"allowed_prefixes"`
	LastHandshake   time.Time `json:"last_handshake,omitzero"`
	RTT             float64   `json:"rtt_ms,omitempty"`
	TxBytes         uint64    `json:"tx_bytes"`
	RxBytes         uint64    `json:"rx_bytes"`
	TxPackets       uint64    `json:"tx_packets"`
	RxPackets       uint64    `json:"rx_packets"`
	Drops           uint64    `json:"drops"`
	// Refused is why the peer refuses this node's handshakes: "unknown_peer" (it has
	// no [[peer]] for this node), "pin_mismatch" (it pins another key for it) or
	// "revoked" (an admin revoked this node's key); "" (absent in JSON) when it does not.
	Refused string `json:"refused,omitempty"`
	// Source is how the node learned of the peer: "config" ([[peer]]), "bootstrap",
	// "gossip" (another member's record) or "handshake" (it made contact first).
	Source string `json:"source,omitempty"`
	// MeshAddress is the member's key-derived IPv6 address (mesh members only).
	MeshAddress string `json:"mesh_address,omitempty"`
	// Candidates are the endpoints the member's record announces.
	Candidates []string `json:"candidates,omitempty"`
	// Refusals say which of the member's claims (or its record) this node refused and why.
	Refusals []string `json:"refusals,omitempty"`
	// RelayVia names the member that relays the traffic when Path is "relay".
	RelayVia string `json:"relay_via,omitempty"`
	// Seed is the short id of the seed the current session was made under (Seed.ID or
	// Seed.NextID during a rotation); absent without a session.
	Seed string `json:"seed,omitempty"`
	// PathMTU is the largest inner packet known to reach the peer over its path (path
	// MTU discovery); 0 (absent) when none is known or needed (WebSocket, no session,
	// discovery off). PathMTUDatagram is the UDP payload that carries it, PathMTUState
	// the discovery's state: "probing", "confirmed", "lowering" or "minimum".
	PathMTU         int    `json:"path_mtu,omitempty"`
	PathMTUDatagram int    `json:"path_mtu_datagram,omitempty"`
	PathMTUState    string `json:"path_mtu_state,omitempty"`
	// PathReason says why a member this node wants to reach has no direct path (yet):
	// "punching", "punch failed", "punch failed, relayed", "udp blocked", "no relay
	// reachable"; absent when the path is direct or the member is not wanted.
	PathReason string `json:"path_reason,omitempty"`
}

// PingReply is the answer to one STT-level echo sent to a peer.
type PingReply struct {
	RTT time.Duration
	// Path is the transport the echo went and came back on, "udp", "ws" or "relay": a
	// peer answers an echo the way it came.
	Path string
	// Via names the member that relayed the echo when Path is "relay".
	Via string
	// Endpoint is the underlay address the echo was sent to (for "ws", the TCP address
	// at the other end of the WebSocket).
	Endpoint string
}

// ErrUnknownPeer reports a peer name that the running configuration does not have.
var ErrUnknownPeer = errors.New("no such peer")
