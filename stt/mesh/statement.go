package mesh

// statement.go is the signed statement: a network-wide command (revoke a member, rotate
// the seed) signed by an administrator's Ed25519 key (docs/protocol.md, "Signed
// statements"). Members obey only statements of the admin keys they are configured with.
// This file holds the Go form, the wire layout, signing and the parser; the store that
// keeps the newest statement per (admin, kind, target) is statement_store.go.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// StatementKind says what a statement commands.
type StatementKind uint8

// Statement kinds.
const (
	StatementRevoke StatementKind = 1 // a member's key is revoked, for good
	StatementRotate StatementKind = 2 // the network moves to a next seed
)

func (k StatementKind) String() string {
	switch k {
	case StatementRevoke:
		return "revoke"
	case StatementRotate:
		return "rotate"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Statement is a command signed by an admin key. Exactly one of Revoke and Rotate is set,
// the one of Kind. A parsed Statement is shared and must not be modified.
type Statement struct {
	Kind   StatementKind
	Issued uint64 // the admin's signing time, unix ns; newer wins
	Admin  ed25519.PublicKey
	Revoke *Revocation
	Rotate *Rotation
}

// Revocation is the payload of a REVOKE statement.
type Revocation struct {
	Target [32]byte // the revoked member's X25519 key
	Name   string   // its name when the admin knew it (0..32 bytes), for display only
}

// Rotation is the payload of a ROTATE statement: the seed whose SeedID is NextSeedID
// replaces the current one at SwitchAt; the current one is still accepted for Overlap
// seconds after that. The members of Excluded are not given the next seed.
type Rotation struct {
	NextSeedID [16]byte
	SwitchAt   uint64 // unix seconds
	Overlap    uint32 // seconds
	Excluded   [][32]byte
}

// Limits of a statement.
const (
	MaxStatementLen     = 4096
	MaxExcluded         = 64
	statementHeaderLen  = 1 + 8 + ed25519.PublicKeySize // kind, issued, admin key
	revokePayloadMinLen = 32 + 1
	rotatePayloadMinLen = 16 + 8 + 4 + 1
	statementMinLen     = statementHeaderLen + rotatePayloadMinLen + ed25519.SignatureSize // the shorter payload
	maxSwitchAt         = 1 << 40
)

// The label a statement's signature starts with, and the one of a seed id.
const (
	statementSigLabel = "stt-tun statement v1\x00"
	seedIDLabel       = "stt-tun seed id v1"
)

// SeedID names a seed without revealing it: SHA-256("stt-tun seed id v1" || seed)[0:16].
func SeedID(seed [32]byte) [16]byte {
	h := sha256.New()
	h.Write([]byte(seedIDLabel))
	h.Write(seed[:])
	var sum [32]byte
	h.Sum(sum[:0])
	return [16]byte(sum[:16])
}

// Errors of ParseStatement and Marshal. StatementReason names each for counting.
var (
	ErrStatementMalformed    = errors.New("mesh: statement malformed")
	ErrStatementTooLarge     = errors.New("mesh: statement too large")
	ErrStatementUnknownKind  = errors.New("mesh: statement of an unknown kind")
	ErrStatementUnknownAdmin = errors.New("mesh: statement signed by a key that is not an admin")
	ErrStatementSignature    = errors.New("mesh: statement signature does not verify")
)

// Reasons a statement is refused, as counted (metric labels). StatementReason maps an
// error of ParseStatement to one; StatementStore.Offer adds the store's own.
const (
	ReasonAccepted     = "accepted"
	ReasonMalformed    = "malformed"
	ReasonTooLarge     = "too_large"
	ReasonUnknownKind  = "unknown_kind"
	ReasonUnknownAdmin = "unknown_admin"
	ReasonBadSignature = "bad_signature"
	ReasonStale        = "stale"  // not newer than the one held for its (admin, kind, target)
	ReasonFuture       = "future" // issued more than MaxClockSkew ahead of the receiver's clock
	ReasonFull         = "full"   // a new (admin, kind, target) while the store is full
)

// StatementReasons lists every reason StatementStore.Offer returns, in a fixed order.
var StatementReasons = [...]string{ReasonAccepted, ReasonMalformed, ReasonTooLarge, ReasonUnknownKind,
	ReasonUnknownAdmin, ReasonBadSignature, ReasonStale, ReasonFuture, ReasonFull}

// StatementReason returns the counting reason of an error of ParseStatement.
func StatementReason(err error) string {
	switch {
	case err == nil:
		return ReasonAccepted
	case errors.Is(err, ErrStatementTooLarge):
		return ReasonTooLarge
	case errors.Is(err, ErrStatementUnknownKind):
		return ReasonUnknownKind
	case errors.Is(err, ErrStatementUnknownAdmin):
		return ReasonUnknownAdmin
	case errors.Is(err, ErrStatementSignature):
		return ReasonBadSignature
	default:
		return ReasonMalformed
	}
}

func badStatement(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrStatementMalformed}, a...)...)
}

// checkDisplayName: empty, or the rules of a record's name.
func checkDisplayName(s string) error {
	if s == "" {
		return nil
	}
	if err := checkRecordName(s); err != nil {
		return badStatement("revoked name: %v", err)
	}
	return nil
}

// check applies every rule to the content of s (not to its admin key).
func (s *Statement) check() error {
	if s.Issued == 0 {
		return badStatement("issued 0")
	}
	switch s.Kind {
	case StatementRevoke:
		if s.Revoke == nil || s.Rotate != nil {
			return badStatement("revoke needs exactly a revocation")
		}
		if s.Revoke.Target == ([32]byte{}) {
			return badStatement("revoked key zero")
		}
		return checkDisplayName(s.Revoke.Name)
	case StatementRotate:
		if s.Rotate == nil || s.Revoke != nil {
			return badStatement("rotate needs exactly a rotation")
		}
		r := s.Rotate
		if r.NextSeedID == ([16]byte{}) {
			return badStatement("next seed id zero")
		}
		if r.SwitchAt == 0 || r.SwitchAt >= maxSwitchAt {
			return badStatement("switch at %d", r.SwitchAt)
		}
		if len(r.Excluded) > MaxExcluded {
			return fmt.Errorf("%w: %d excluded keys (limit %d)", ErrStatementTooLarge, len(r.Excluded), MaxExcluded)
		}
		for i := range r.Excluded {
			if r.Excluded[i] == ([32]byte{}) {
				return badStatement("excluded key zero")
			}
			if i > 0 && compareKeys(&r.Excluded[i-1], &r.Excluded[i]) >= 0 {
				return badStatement("excluded keys not strictly increasing")
			}
		}
		return nil
	}
	return fmt.Errorf("%w: %d", ErrStatementUnknownKind, uint8(s.Kind))
}

// appendStatementBody appends every byte of s before the signature.
func appendStatementBody(b []byte, s *Statement) []byte {
	b = append(b, byte(s.Kind))
	b = binary.LittleEndian.AppendUint64(b, s.Issued)
	b = append(b, s.Admin...)
	switch s.Kind {
	case StatementRevoke:
		b = append(b, s.Revoke.Target[:]...)
		b = append(b, byte(len(s.Revoke.Name)))
		b = append(b, s.Revoke.Name...)
	case StatementRotate:
		r := s.Rotate
		b = append(b, r.NextSeedID[:]...)
		b = binary.LittleEndian.AppendUint64(b, r.SwitchAt)
		b = binary.LittleEndian.AppendUint32(b, r.Overlap)
		b = append(b, byte(len(r.Excluded)))
		for i := range r.Excluded {
			b = append(b, r.Excluded[i][:]...)
		}
	}
	return b
}

func statementSignedMessage(dst []byte, netID [16]byte, body []byte) []byte {
	dst = append(dst, statementSigLabel...)
	dst = append(dst, netID[:]...)
	return append(dst, body...)
}

// Marshal signs s with the admin key admin for the network netID and returns its bytes.
// It sets s.Admin from admin and sorts a copy of s.Rotate.Excluded into it (the wire
// order is strictly increasing). Kind, Issued and the payload are the caller's to set.
func (s *Statement) Marshal(admin ed25519.PrivateKey, netID [16]byte) ([]byte, error) {
	if len(admin) != ed25519.PrivateKeySize {
		return nil, errors.New("mesh: admin key of the wrong length")
	}
	s.Admin = admin.Public().(ed25519.PublicKey)
	if s.Kind == StatementRotate && s.Rotate != nil && len(s.Rotate.Excluded) > 1 {
		ex := append([][32]byte(nil), s.Rotate.Excluded...)
		sortKeys(ex)
		s.Rotate.Excluded = ex
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	b := appendStatementBody(make([]byte, 0, 256), s)
	if len(b)+ed25519.SignatureSize > MaxStatementLen { // not reachable within the limits above
		return nil, fmt.Errorf("%w: %d bytes", ErrStatementTooLarge, len(b)+ed25519.SignatureSize)
	}
	msg := statementSignedMessage(make([]byte, 0, len(statementSigLabel)+16+len(b)), netID, b)
	return append(b, ed25519.Sign(admin, msg)...), nil
}

func sortKeys(ks [][32]byte) {
	for i := 1; i < len(ks); i++ { // insertion sort: at most MaxExcluded keys
		for j := i; j > 0 && compareKeys(&ks[j-1], &ks[j]) > 0; j-- {
			ks[j-1], ks[j] = ks[j], ks[j-1]
		}
	}
}

// decodeStatement checks the layout of b and its admin key, without the signature, and
// returns the statement and the bytes the signature covers (after the label and netID).
func decodeStatement(b []byte, admins []ed25519.PublicKey) (*Statement, []byte, error) {
	if len(b) > MaxStatementLen {
		return nil, nil, fmt.Errorf("%w: %d bytes", ErrStatementTooLarge, len(b))
	}
	if len(b) < statementMinLen {
		return nil, nil, badStatement("%d bytes", len(b))
	}
	body := b[:len(b)-ed25519.SignatureSize]
	kind := StatementKind(body[0])
	if kind != StatementRevoke && kind != StatementRotate {
		return nil, nil, fmt.Errorf("%w: %d", ErrStatementUnknownKind, uint8(kind))
	}
	adminKey := body[9:statementHeaderLen]
	var admin ed25519.PublicKey
	for _, a := range admins {
		if bytes.Equal(a, adminKey) {
			admin = a
			break
		}
	}
	if admin == nil {
		return nil, nil, ErrStatementUnknownAdmin
	}
	var rev *Revocation
	var rot *Rotation
	p := body[statementHeaderLen:]
	// Lengths and counts are checked against the bytes before anything is allocated.
	switch kind {
	case StatementRevoke:
		// target [32], name length u8, name
		if len(p) < revokePayloadMinLen || len(p) != revokePayloadMinLen+int(p[32]) {
			return nil, nil, badStatement("revoke payload of %d bytes", len(p))
		}
		rev = &Revocation{Target: [32]byte(p[:32]), Name: string(p[33:])}
	case StatementRotate:
		// next seed id [16], switch at u64, overlap u32, n u8, n × key [32]
		if len(p) < rotatePayloadMinLen {
			return nil, nil, badStatement("rotate payload of %d bytes", len(p))
		}
		n := int(p[28])
		if n > MaxExcluded {
			return nil, nil, fmt.Errorf("%w: %d excluded keys (limit %d)", ErrStatementTooLarge, n, MaxExcluded)
		}
		if len(p) != rotatePayloadMinLen+32*n {
			return nil, nil, badStatement("rotate payload of %d bytes for %d excluded keys", len(p), n)
		}
		rot = &Rotation{NextSeedID: [16]byte(p[:16]), SwitchAt: binary.LittleEndian.Uint64(p[16:24]),
			Overlap: binary.LittleEndian.Uint32(p[24:28])}
		if n > 0 {
			rot.Excluded = make([][32]byte, n)
			for i := range n {
				rot.Excluded[i] = [32]byte(p[29+32*i:])
			}
		}
	}
	s := &Statement{Kind: kind, Issued: binary.LittleEndian.Uint64(body[1:9]), Revoke: rev, Rotate: rot}
	if err := s.check(); err != nil {
		return nil, nil, err
	}
	s.Admin = bytes.Clone(admin)
	return s, body, nil
}

// ParseStatement parses and verifies a statement received for the network netID: its
// size, its kind, that its admin key is one of admins (before the signature: that is
// cheap), its layout and fields, and its signature, which binds netID. Errors wrap one of
// the ErrStatement* values; StatementReason names them.
func ParseStatement(b []byte, netID [16]byte, admins []ed25519.PublicKey) (*Statement, error) {
	s, body, err := decodeStatement(b, admins)
	if err != nil {
		return nil, err
	}
	var buf [len(statementSigLabel) + 16 + MaxStatementLen]byte
	if !ed25519.Verify(s.Admin, statementSignedMessage(buf[:0], netID, body), b[len(body):]) {
		return nil, ErrStatementSignature
	}
	return s, nil
}
