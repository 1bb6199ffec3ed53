package wire

import (
	"encoding/binary"
	"errors"
)

// Control message types carried on stream 0.
const (
	CtlFinal       = 0x01
	CtlPing        = 0x02
	CtlPong        = 0x03
	CtlClose       = 0x04
	CtlError       = 0x05
	CtlStreamOpen  = 0x06
	CtlStreamClose = 0x07
	CtlAck         = 0x08
	CtlRekey       = 0x09
	CtlReliable    = 0x0A
	// CtlExtensionMin is the first type of the extension range 0x80..0xFF.
	CtlExtensionMin = 0x80
)

// Body sizes of the fixed-size control messages.
const (
	PingBodyLen     = 12
	CloseBodyLen    = 2
	StreamBodyLen   = 2
	AckBodyLen      = 4
	ReliableHdrLen  = 4
	MaxErrorReason  = 200
	ErrorBodyMinLen = 2
)

// Error codes carried by CLOSE and ERROR.
const (
	CodeNone         = 0
	CodeShutdown     = 1
	CodeProtocol     = 2
	CodeNotPermitted = 3
	CodeResource     = 4
	CodeRekey        = 5
	// CodeNotPeer and CodePinMismatch are refusals (docs/protocol.md 4.8): a responder
	// that verified an AUTH_PROOF tells the initiator why it will not make the session.
	CodeNotPeer     = 6 // the initiator's name is not a configured peer of the responder
	CodePinMismatch = 7 // the initiator's static key is not the one pinned for its name
	CodeRevoked     = 8 // the initiator's static key was revoked by an admin of the network
)

// IsRefusalCode reports whether code is one a responder refuses a handshake with.
func IsRefusalCode(code uint16) bool {
	return code == CodeNotPeer || code == CodePinMismatch || code == CodeRevoked
}

// AppendRefusal appends the stream-0 payload of a refusal: one CLOSE with code.
func AppendRefusal(b []byte, code uint16) []byte {
	return AppendControl(b, CtlClose, binary.LittleEndian.AppendUint16(nil, code))
}

// RefusalCode reports whether a stream-0 payload is a refusal, and its code: exactly
// one CLOSE message whose code is a refusal code, nothing before or after it.
func RefusalCode(payload []byte) (uint16, bool) {
	if len(payload) != ControlHeaderLen+CloseBodyLen || payload[0] != CtlClose ||
		binary.LittleEndian.Uint16(payload[1:]) != CloseBodyLen {
		return 0, false
	}
	code := binary.LittleEndian.Uint16(payload[3:])
	return code, IsRefusalCode(code)
}

// ErrControlTruncated reports a control message whose length runs past its payload.
var ErrControlTruncated = errors.New("control message truncated")

// ErrControlBody reports a control body whose size does not fit its type.
var ErrControlBody = errors.New("control message body has the wrong size")

// ControlMsg is one parsed control message. Body aliases the payload it came from.
type ControlMsg struct {
	Type byte
	Body []byte
}

// ControlIter walks the control messages of a stream-0 payload without allocating.
type ControlIter struct {
	rest []byte
	err  error
}

// NewControlIter returns an iterator over payload.
func NewControlIter(payload []byte) ControlIter { return ControlIter{rest: payload} }

// Next returns the next message and true, or false at the end or on a truncated one
// (then Err says so).
func (it *ControlIter) Next() (ControlMsg, bool) {
	if len(it.rest) == 0 || it.err != nil {
		return ControlMsg{}, false
	}
	if len(it.rest) < ControlHeaderLen {
		it.err = ErrControlTruncated
		return ControlMsg{}, false
	}
	l := int(binary.LittleEndian.Uint16(it.rest[1:3]))
	if ControlHeaderLen+l > len(it.rest) {
		it.err = ErrControlTruncated
		return ControlMsg{}, false
	}
	m := ControlMsg{Type: it.rest[0], Body: it.rest[ControlHeaderLen : ControlHeaderLen+l]}
	it.rest = it.rest[ControlHeaderLen+l:]
	return m, true
}

// Err reports whether iteration stopped on malformed input.
func (it *ControlIter) Err() error { return it.err }

// AppendControl appends one control message to b.
func AppendControl(b []byte, typ byte, body []byte) []byte {
	b = append(b, typ, 0, 0)
	binary.LittleEndian.PutUint16(b[len(b)-2:], uint16(len(body)))
	return append(b, body...)
}

// CheckControlBody validates the body size of a known control type. Unknown and
// extension types pass: their bodies are opaque here.
func CheckControlBody(m ControlMsg) error {
	n := len(m.Body)
	ok := true
	switch m.Type {
	case CtlFinal, CtlRekey:
		ok = n == 0
	case CtlPing, CtlPong:
		ok = n == PingBodyLen
	case CtlClose:
		ok = n == CloseBodyLen
	case CtlError:
		ok = n >= ErrorBodyMinLen && n <= ErrorBodyMinLen+MaxErrorReason
	case CtlStreamOpen, CtlStreamClose:
		ok = n == StreamBodyLen
	case CtlAck:
		ok = n == AckBodyLen
	case CtlProbe:
		ok = n >= ProbeIDLen
	case CtlProbeAck:
		ok = n == ProbeAckBodyLen
	case CtlReliable:
		ok = n >= ReliableHdrLen+ControlHeaderLen &&
			int(binary.LittleEndian.Uint16(m.Body[ReliableHdrLen+1:]))+ReliableHdrLen+ControlHeaderLen == n
	}
	if !ok {
		return ErrControlBody
	}
	return nil
}

// ParseReliable splits a RELIABLE body (already checked) into its sequence and inner message.
func ParseReliable(body []byte) (seq uint32, inner ControlMsg) {
	seq = binary.LittleEndian.Uint32(body)
	in := body[ReliableHdrLen:]
	return seq, ControlMsg{Type: in[0], Body: in[ControlHeaderLen:]}
}
