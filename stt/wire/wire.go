// Package wire holds the byte layout of STT messages as docs/protocol.md fixes it:
// message types and lengths, field offsets, the DATA frame header and the control
// message codec. It does no cryptography and keeps no state.
package wire

import (
	"encoding/binary"
	"errors"
)

// Version is the protocol version carried in byte 1 of handshake messages.
const Version = 1

// Message types, byte 0 of every message.
const (
	TypeHello       = 0x01
	TypeChallenge   = 0x02
	TypeAuthProof   = 0x03
	TypeCookieReply = 0x04
	TypeData        = 0x05
	TypeRelay       = 0x06
)

// Fixed message lengths.
const (
	HelloLen       = 180
	ChallengeLen   = 180
	AuthProofLen   = 140
	CookieReplyLen = 64
)

// HELLO field offsets.
const (
	HelloSenderOff  = 4
	HelloNoiseOff   = 8
	HelloPayloadLen = 108 // encrypted: timestamp 12, capabilities 4, padding 76, tag 16
	HelloMAC1Off    = 148
	HelloMAC2Off    = 164
)

// CHALLENGE field offsets.
const (
	ChallengeSenderOff   = 4
	ChallengeReceiverOff = 8
	ChallengeNoiseOff    = 12
	ChallengePayloadLen  = 40 // plaintext: capabilities 4, cipher 1, reserved 3, name 32 (+16 tag on the wire)
	ChallengeMAC1Off     = 148
	ChallengeMAC2Off     = 164
)

// AUTH_PROOF field offsets.
const (
	AuthSenderOff   = 4
	AuthReceiverOff = 8
	AuthNoiseOff    = 12
	AuthPayloadLen  = 32 // plaintext: name 32 (+16 tag on the wire)
	AuthMAC1Off     = 108
	AuthMAC2Off     = 124
)

// COOKIE_REPLY field offsets.
const (
	CookieReceiverOff = 4
	CookieNonceOff    = 8
	CookieSealedOff   = 32
)

// MACLen is the length of mac1, mac2 and a cookie.
const MACLen = 16

// NameLen is the fixed size of a node name field; names are 1..NameLen bytes, zero padded.
const NameLen = 32

// Capability bits exchanged in the handshake.
const (
	CapHardwareAES = 1 << 0
)

// CipherID names the AEAD of a session's DATA frames.
type CipherID uint8

// Ciphers a responder may choose.
const (
	CipherChaCha20Poly1305 CipherID = 1
	CipherAES256GCM        CipherID = 2
)

// String returns the cipher's conventional name.
func (c CipherID) String() string {
	switch c {
	case CipherChaCha20Poly1305:
		return "chacha20-poly1305"
	case CipherAES256GCM:
		return "aes-256-gcm"
	}
	return "unknown"
}

// DATA frame layout.
const (
	HeaderLen        = 16
	TagLen           = 16
	Overhead         = HeaderLen + TagLen
	MinDataLen       = Overhead
	MaxMessageLen    = 65535
	DataStreamOff    = 2
	DataReceiverOff  = 4
	DataCounterOff   = 8
	MaxPayloadLen    = MaxMessageLen - Overhead
	ControlStream    = 0
	ControlHeaderLen = 3
)

// RELAY message layout (docs/protocol.md section 9.1): type, three reserved zero bytes,
// the relay id, then one complete STT message of types 0x01..0x05.
const (
	RelayHeaderLen = 8
	RelayIDOff     = 4
	MinRelayLen    = RelayHeaderLen + MinDataLen // the shortest inner message is a DATA frame
	MaxRelayInner  = MaxMessageLen - RelayHeaderLen
)

// ErrReserved reports reserved bytes that are not zero.
var ErrReserved = errors.New("reserved bytes not zero")

// ErrNested reports a RELAY message inside a RELAY message.
var ErrNested = errors.New("nested relay message")

// PutRelayHeader writes a RELAY header with id into b[:RelayHeaderLen].
func PutRelayHeader(b []byte, id uint32) {
	_ = b[RelayHeaderLen-1]
	b[0], b[1], b[2], b[3] = TypeRelay, 0, 0, 0
	binary.LittleEndian.PutUint32(b[RelayIDOff:], id)
}

// ParseRelay reads a RELAY message that passed CheckLength: its relay id and its inner
// message, after checking that the reserved bytes are zero and that the inner message is
// one of types 0x01..0x05 with the length its type requires (a RELAY inside a RELAY is
// malformed). It allocates nothing and authenticates nothing.
func ParseRelay(b []byte) (id uint32, inner []byte, err error) {
	if len(b) < MinRelayLen {
		return 0, nil, ErrShort
	}
	if b[1]|b[2]|b[3] != 0 {
		return 0, nil, ErrReserved
	}
	inner = b[RelayHeaderLen:]
	if inner[0] == TypeRelay {
		return 0, nil, ErrNested
	}
	if _, err := CheckLength(inner); err != nil {
		return 0, nil, err
	}
	return binary.LittleEndian.Uint32(b[RelayIDOff:]), inner, nil
}

// Header is the clear part of a DATA frame, authenticated as associated data.
type Header struct {
	Stream   uint16
	Receiver uint32
	Counter  uint64
}

// ErrShort reports a message shorter than its type requires.
var ErrShort = errors.New("message too short")

// ErrLength reports a message whose length does not fit its type.
var ErrLength = errors.New("message length does not fit its type")

// ErrType reports an unknown message type.
var ErrType = errors.New("unknown message type")

// ErrVersion reports a handshake message of another protocol version.
var ErrVersion = errors.New("handshake message of another protocol version")

// PutHeader writes h as a DATA header into b[:HeaderLen].
func PutHeader(b []byte, h Header) {
	_ = b[HeaderLen-1]
	b[0] = TypeData
	b[1] = 0
	binary.LittleEndian.PutUint16(b[DataStreamOff:], h.Stream)
	binary.LittleEndian.PutUint32(b[DataReceiverOff:], h.Receiver)
	binary.LittleEndian.PutUint64(b[DataCounterOff:], h.Counter)
}

// ParseHeader reads the header of a DATA frame. It checks the type and the length
// bounds; it does not authenticate anything.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < MinDataLen {
		return Header{}, ErrShort
	}
	if len(b) > MaxMessageLen {
		return Header{}, ErrLength
	}
	if b[0] != TypeData {
		return Header{}, ErrType
	}
	return Header{
		Stream:   binary.LittleEndian.Uint16(b[DataStreamOff:]),
		Receiver: binary.LittleEndian.Uint32(b[DataReceiverOff:]),
		Counter:  binary.LittleEndian.Uint64(b[DataCounterOff:]),
	}, nil
}

// CheckLength validates the length of a message against its type byte and returns the
// type. Fixed-length types must match exactly; DATA and RELAY must lie within their
// bounds (RELAY's inner message is checked by ParseRelay).
func CheckLength(b []byte) (byte, error) {
	if len(b) == 0 {
		return 0, ErrShort
	}
	t := b[0]
	var want int
	switch t {
	case TypeHello:
		want = HelloLen
	case TypeChallenge:
		want = ChallengeLen
	case TypeAuthProof:
		want = AuthProofLen
	case TypeCookieReply:
		want = CookieReplyLen
	case TypeData:
		if len(b) < MinDataLen {
			return t, ErrShort
		}
		if len(b) > MaxMessageLen {
			return t, ErrLength
		}
		return t, nil
	case TypeRelay:
		if len(b) < MinRelayLen {
			return t, ErrShort
		}
		if len(b) > MaxMessageLen {
			return t, ErrLength
		}
		return t, nil
	default:
		return t, ErrType
	}
	// A handshake message of another version may have another length; say which it
	// was, so that an incompatible peer is told apart from garbage.
	if len(b) >= 2 && b[1] != Version {
		return t, ErrVersion
	}
	if len(b) != want {
		return t, ErrLength
	}
	return t, nil
}

// Nonce writes the 12-byte AEAD nonce for counter into n.
func Nonce(n *[12]byte, counter uint64) {
	n[0], n[1], n[2], n[3] = 0, 0, 0, 0
	binary.LittleEndian.PutUint64(n[4:], counter)
}
