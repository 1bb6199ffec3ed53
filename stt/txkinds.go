package stt

import (
	"sync/atomic"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// txkinds.go counts what a node sends by kind: the frames (UDP payloads, or WebSocket
// messages) and their bytes, so that the cost of a node at rest can be told apart —
// keepalives, acknowledgements, gossip, path MTU probes, handshakes — without looking
// inside the encryption. Control frames are classified before they are sealed. DATA
// carrying packets is not counted here (the peers' counters have it, and the packet
// path takes no shared counter), nor RELAY messages forwarded (the relay's counters).

// TxKind is a kind of frame a node sends.
type TxKind int

// Kinds of frames sent.
const (
	TxKeepalive TxKind = iota // control frames with no message (keepalives, path announcements)
	TxAck                     // control frames carrying only ACKs of reliable messages
	TxPing                    // PING or PONG (persistent keepalives are PINGs)
	TxProbe                   // path MTU PROBE or PROBE_ACK
	TxReliable                // RELIABLE control messages (the mesh's gossip and NAT messages, streams), first or resent
	TxControl                 // other control frames (FINAL, CLOSE, REKEY, ...)
	TxHandshake               // handshake messages, cookie replies, refusals
	numTxKinds
)

var txKindNames = [numTxKinds]string{"keepalive", "ack", "ping", "probe", "reliable", "control", "handshake"}

// String names the kind as status counters show it (sent_<kind>_bytes).
func (k TxKind) String() string {
	if k < 0 || k >= numTxKinds {
		return "unknown"
	}
	return txKindNames[k]
}

// TxKinds lists every kind, for callers that export the counters.
func TxKinds() []TxKind {
	ks := make([]TxKind, numTxKinds)
	for i := range ks {
		ks[i] = TxKind(i)
	}
	return ks
}

// TxCount is what a node sent of one kind: frames and their bytes (STT framing and
// tag included, the UDP, IP or WebSocket headers not).
type TxCount struct{ Frames, Bytes uint64 }

type txCounter struct{ frames, bytes atomic.Uint64 }

func (n *Node) countTx(k TxKind, frames, bytes int) {
	c := &n.ctr.tx[k]
	c.frames.Add(uint64(frames))
	c.bytes.Add(uint64(bytes))
}

// controlKind classifies a stream-0 payload by its first message other than an ACK
// (inside a RELIABLE, the reliable message itself): only ACKs is TxAck, nothing at all
// TxKeepalive.
func controlKind(payload []byte) TxKind {
	if len(payload) == 0 {
		return TxKeepalive
	}
	it := wire.NewControlIter(payload)
	k := TxAck
	for {
		m, ok := it.Next()
		if !ok {
			return k
		}
		switch m.Type {
		case wire.CtlAck:
			continue
		case wire.CtlPing, wire.CtlPong:
			return TxPing
		case wire.CtlProbe, wire.CtlProbeAck:
			return TxProbe
		case wire.CtlReliable:
			return TxReliable
		default:
			return TxControl
		}
	}
}
