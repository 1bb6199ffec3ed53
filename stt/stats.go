package stt

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/internal/lograte"
	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// DropReason says why the node discarded a message. Every discarded input is counted
// under exactly one reason.
type DropReason int

// Drop reasons.
const (
	DropMalformed        DropReason = iota // wrong length or unknown type
	DropUnknownIndex                       // DATA for no live session
	DropAuth                               // DATA that failed to open
	DropReplay                             // DATA whose counter was seen or is too old
	DropExpired                            // DATA under an expired session
	DropBadMAC1                            // handshake without the seed's mac1
	DropHandshake                          // handshake message that failed otherwise
	DropHandshakeReplay                    // HELLO seen before
	DropVersion                            // handshake of another protocol version
	DropRateLimited                        // handshake refused under load
	DropUnknownPeer                        // handshake from a name not configured
	DropPinMismatch                        // handshake whose static key is not the pinned one
	DropStaleTimestamp                     // AUTH_PROOF whose HELLO timestamp is not newer than the last
	DropRevoked                            // handshake completed with a static key an admin revoked (SetRevoked)
	DropControl                            // malformed control message
	DropNoSession                          // outbound datagram no session could carry: pushed out of a full queue, queued when the handshake gave up, or in a queue longer than a new session may seal
	DropSendError                          // the transport refused a send
	DropRefused                            // outbound datagram for a peer that refused our handshake, during the back-off
	DropFallback                           // outbound datagram lost to a move from UDP to WebSocket or a relay: sent over UDP after its last answer, or held for a move that failed
	DropRelayUnknownID                     // RELAY whose id names no route of this relay nor a relay path of this end
	DropRelayWrongSource                   // RELAY that did not come from the endpoint of the peer its id belongs to (a relay's from-end, an end's relay), or whose inner message belongs to another peer
	DropRelayMalformed                     // RELAY with non-zero reserved bytes, or an inner message of a wrong type (a nested RELAY) or length
	DropRelayNoRoute                       // RELAY the relay could not forward: its to-end has no live session or no path, or a frame too long to wrap
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"malformed", "unknown_index", "auth", "replay", "expired", "bad_mac1", "handshake",
	"handshake_replay", "version", "rate_limited", "unknown_peer", "pin_mismatch",
	"stale_timestamp", "revoked", "control", "no_session", "send_error", "refused", "fallback",
	"relay_unknown_id", "relay_wrong_source", "relay_malformed", "relay_no_route",
}

// String names the reason as metrics and status show it.
func (r DropReason) String() string {
	if r < 0 || r >= numDropReasons {
		return "unknown"
	}
	return dropNames[r]
}

// IsHandshake reports whether r is a refused or failed handshake message rather than a
// dropped packet or control message.
func (r DropReason) IsHandshake() bool {
	return r >= DropBadMAC1 && r <= DropRevoked
}

// DropReasons lists every reason, for callers that export the counters.
func DropReasons() []DropReason {
	rs := make([]DropReason, numDropReasons)
	for i := range rs {
		rs[i] = DropReason(i)
	}
	return rs
}

type counters struct {
	drops           [numDropReasons]atomic.Uint64
	handshakesDone  atomic.Uint64
	handshakesStart atomic.Uint64
	cookiesSent     atomic.Uint64
	selfReached     atomic.Uint64
	pmtu            pmtuCounters          // path MTU discovery, every peer's (pmtu.go)
	tx              [numTxKinds]txCounter // frames sent, by kind (txkinds.go)
}

// Stats is a snapshot of a node's counters.
type Stats struct {
	HandshakesDone    uint64
	HandshakesStarted uint64
	CookieRepliesSent uint64
	// SelfReached counts CHALLENGEs to a wildcard peer's handshake that came from this
	// node itself (its own name or key): a bootstrap address that is this node's own.
	SelfReached       uint64
	HandshakeDHOps    uint64
	Sessions          int
	PendingHandshakes int
	DropsTotal        uint64
	Drops             [numDropReasons]uint64 // indexed by DropReason
	// RelayForwardedPackets and RelayForwardedBytes count the RELAY messages this node
	// forwarded as a relay, and their bytes (whole messages).
	RelayForwardedPackets uint64
	RelayForwardedBytes   uint64
	// RelayRoutes is the number of route pairs open at this relay now.
	RelayRoutes int
	// RelayRefused counts RelayOpen calls refused at a bound (ErrRelayFull,
	// ErrRelayShareFull).
	RelayRefused uint64
	// PMTU is the path MTU discovery's counters over every peer since the node started
	// (PeerStats has each peer's).
	PMTU PMTUCounters
	// Tx counts the frames this node sent other than DATA carrying packets, by kind
	// (indexed by TxKind), relayed frames under their own kind.
	Tx [numTxKinds]TxCount
}

// PeerStats is a snapshot of one peer's traffic counters.
type PeerStats struct {
	TxBytes, RxBytes     uint64
	TxPackets, RxPackets uint64
	Drops                uint64 // datagrams for this peer dropped (queue full, send errors, policy)
	// PathMTU is Peer.PathMTU: the largest inner packet known to reach the peer on its
	// current path, 0 = none known or needed. PathMTUDatagram is the UDP payload that
	// carries it (frame overhead and, on a relay path, the RELAY header included), and
	// PathMTUState the state of the discovery (PMTUProbing, ...; "" = not probing).
	PathMTU         int
	PathMTUDatagram int
	PathMTUState    string
	// PMTU is the discovery's counters for this peer.
	PMTU PMTUCounters
}

func (n *Node) drop(r DropReason) { n.ctr.drops[r].Add(1) }

// drop counts k datagrams for the peer lost for reason r: in the peer's figures and
// the node's.
func (p *Peer) drop(r DropReason, k uint64) {
	p.counters.drops.Add(k)
	p.node.ctr.drops[r].Add(k)
}

// versionLogInterval bounds how often a node logs handshakes of another protocol
// version: an administrator needs to learn of an incompatible peer, but a flood of such
// messages must not become a flood of log lines.
const versionLogInterval = 10 * time.Second

// dropVersion counts a handshake message of another protocol version and logs it at
// most once per versionLogInterval, with the number of such messages since.
func (n *Node) dropVersion(v byte, ep conn.Endpoint) {
	n.drop(DropVersion)
	now := time.Now().UnixNano()
	last := n.versionLogged.Load()
	if now-last < int64(versionLogInterval) || !n.versionLogged.CompareAndSwap(last, now) {
		return
	}
	total := n.ctr.drops[DropVersion].Load()
	n.log.Info("handshake messages of an incompatible protocol version (a peer runs another stt-tun release?)",
		"version", v, "ours", wire.Version, "total", total)
	if ep != nil {
		n.log.Debug("incompatible protocol version", "version", v, "from", ep.DstToString())
	}
}

// dropLogInterval bounds how often a node writes the debug line of one drop reason: a
// flood of dropped handshakes must not become a flood of log lines. The line says how
// many drops of that reason it stands for.
const dropLogInterval = time.Second

// dropLog is the state of one reason's rate-limited log line.
type dropLog = lograte.Limiter

// logDrop writes the debug line for a dropped handshake message of reason r, at most
// once per dropLogInterval per reason, with the number of drops left unlogged since.
func (n *Node) logDrop(r DropReason, err error, name string) {
	if !n.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	s, ok := n.dropLogs[r].Allow(dropLogInterval)
	if !ok {
		return
	}
	attrs := []any{"reason", r.String()}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	if name != "" {
		attrs = append(attrs, "name", name)
	}
	if s > 0 {
		attrs = append(attrs, "suppressed", s)
	}
	n.log.Debug("handshake dropped", attrs...)
}

func (n *Node) dropHandshake(err error, src netip.AddrPort) {
	r := DropHandshake
	switch {
	case errors.Is(err, handshake.ErrBadMAC1):
		r = DropBadMAC1
	case errors.Is(err, handshake.ErrReplay):
		r = DropHandshakeReplay
	case errors.Is(err, handshake.ErrVersion):
		var ve *handshake.VersionError
		v := byte(0)
		if errors.As(err, &ve) {
			v = ve.Version
		}
		n.dropVersion(v, nil)
		return
	case errors.Is(err, handshake.ErrUnderLoad), errors.Is(err, handshake.ErrRateLimited):
		r = DropRateLimited
	}
	n.drop(r)
	n.logDrop(r, err, "")
}

// warnDrop writes the warn-level line for a handshake refused for reason r, at most
// once per dropLogInterval per reason, with the number of refusals left unlogged since:
// a member can make a node refuse handshakes at its handshake budget, and each must not
// be a line in the administrator's log. The drop itself is counted by the caller.
func (n *Node) warnDrop(r DropReason, msg string, attrs ...any) {
	s, ok := n.warnLogs[r].Allow(dropLogInterval)
	if !ok {
		return
	}
	if s > 0 {
		attrs = append(attrs, "suppressed", s)
	}
	n.log.Warn(msg, attrs...)
}
