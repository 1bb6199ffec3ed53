package stt

import "sync/atomic"

// DropReason says why the node discarded a message. Every discarded input is counted
// under exactly one reason.
type DropReason int

// Drop reasons.
const (
	DropMalformed       DropReason = iota // wrong length or unknown type
	DropUnknownIndex                      // DATA for no live session
	DropAuth                              // DATA that failed to open
	DropReplay                            // DATA whose counter was seen or is too old
	DropExpired                           // DATA under an expired session
	DropBadMAC1                           // handshake without the seed's mac1
	DropHandshake                         // handshake message that failed otherwise
	DropHandshakeReplay                   // HELLO seen before
	DropVersion                           // handshake of another protocol version
	DropRateLimited                       // handshake refused under load
	DropUnknownPeer                       // handshake from a name not configured
	DropPinMismatch                       // handshake whose static key is not the pinned one
	DropStaleTimestamp                    // AUTH_PROOF whose HELLO timestamp is not newer than the last
	DropControl                           // malformed control message
	DropNoSession                         // outbound datagram no session could carry: pushed out of a full queue, queued when the handshake gave up, or in a queue longer than a new session may seal
	DropSendError                         // the transport refused a send
	DropRefused                           // outbound datagram for a peer that refused our handshake, during the back-off
	DropFallback                          // outbound datagram lost to a move from UDP to WebSocket: sent over UDP after its last answer, or held for a move that failed
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"malformed", "unknown_index", "auth", "replay", "expired", "bad_mac1", "handshake",
	"handshake_replay", "version", "rate_limited", "unknown_peer", "pin_mismatch",
	"stale_timestamp", "control", "no_session", "send_error", "refused", "fallback",
}

// String names the reason as metrics and status show it.
func (r DropReason) String() string {
	if r < 0 || r >= numDropReasons {
		return "unknown"
	}
	return dropNames[r]
}

// Handshake reports whether r is a refused or failed handshake message rather than a
// dropped packet or control message.
func (r DropReason) Handshake() bool {
	return r >= DropBadMAC1 && r <= DropStaleTimestamp
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
}

// Stats is a snapshot of a node's counters.
type Stats struct {
	HandshakesDone    uint64
	HandshakesStarted uint64
	CookieRepliesSent uint64
	HandshakeDHOps    uint64
	Sessions          int
	PendingHandshakes int
	DropsTotal        uint64
	Drops             [numDropReasons]uint64 // indexed by DropReason
}

// PeerStats is a snapshot of one peer's traffic counters.
type PeerStats struct {
	TxBytes, RxBytes     uint64
	TxPackets, RxPackets uint64
	Drops                uint64 // datagrams for this peer dropped (queue full, send errors, policy)
}
