package mesh

// seedoffer.go is SEED_OFFER (docs/protocol.md 10.8): how a member hands the next seed of
// an admin's ROTATE statement to another member, sealed end to end to that member's
// X25519 key, so that the members relaying it, and anyone who records the traffic, learn
// nothing of it. The body carries the statement itself, which the seal is bound to: a
// sealed seed cannot be moved under another statement (another switch time, or another
// list of excluded members).
//
// Like the other message parsers, ParseSeedOffer takes hostile input: exact lengths, no
// allocation. OpenSeedOffer adds every check a receiver makes that needs no state of its
// own: the statement (its admin, its signature, its kind), that the receiver is not
// excluded, the seal, and that the opened seed is the one the statement names. Whether
// the statement is the newest ROTATE the receiver holds is the caller's to decide.

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// MsgSeedOffer is the control message type of SEED_OFFER.
const MsgSeedOffer byte = 0x8D

// Sizes of SEED_OFFER.
const (
	// SealedSeedLen is a sealed seed: 32 bytes of ciphertext and the 16-byte tag.
	SealedSeedLen = 32 + chacha20poly1305.Overhead
	seedOfferTail = 32 + SealedSeedLen // ephemeral key, sealed seed
	// MaxRotateLen is the longest ROTATE statement: 64 excluded keys.
	MaxRotateLen = statementHeaderLen + rotatePayloadMinLen + 32*MaxExcluded + ed25519.SignatureSize
	// MinSeedOfferBody and MaxSeedOfferBody bound a SEED_OFFER body.
	MinSeedOfferBody = 2 + statementMinLen + seedOfferTail
	MaxSeedOfferBody = 2 + MaxRotateLen + seedOfferTail
	// MaxExcludedSent is the most excluded keys of a ROTATE a node signs or hands on:
	// its SEED_OFFER then fits 1200 bytes (216 + 32 × 30 = 1176), as every gossip
	// message does. stt sends each datagram with Don't Fragment and never fragments
	// one, and control messages are reliable and in order: a larger offer would be
	// lost at every retransmission and stall every later message to that member.
	MaxExcludedSent = 30
)

// seedOfferLabel is the HKDF info of the key that seals a seed.
const seedOfferLabel = "stt-tun seed offer v1"

// SeedOffer is a SEED_OFFER body, its statement unparsed.
type SeedOffer struct {
	Statement []byte // the ROTATE statement's bytes; a sub-slice of the parsed body
	Ephemeral [32]byte
	Sealed    [SealedSeedLen]byte
}

// Errors of SEED_OFFER. SeedOfferReason names each for counting.
var (
	ErrSeedOfferMalformed = errors.New("mesh: seed offer malformed")
	ErrSeedOfferStatement = errors.New("mesh: seed offer statement refused")
	ErrSeedOfferNotRotate = errors.New("mesh: seed offer statement is not a rotation")
	ErrSeedOfferExcluded  = errors.New("mesh: seed offer to a member the rotation excludes")
	ErrSeedOfferSeal      = errors.New("mesh: seed offer does not open")
	ErrSeedOfferSeedID    = errors.New("mesh: seed offer seed is not the rotation's next seed")
)

// Reasons a SEED_OFFER is refused or taken, as counted (mesh_seed_offer_*). The tunnel
// adds its own: stale (not the newest rotation held), refused (the seed could not be
// staged), superseded (the operator replaced the seed file by hand during the rotation).
const (
	OfferAccepted   = "accepted"
	OfferMalformed  = "malformed"
	OfferStatement  = "bad_statement"
	OfferNotRotate  = "not_rotate"
	OfferExcluded   = "excluded"
	OfferBadSeal    = "bad_seal"
	OfferWrongSeed  = "wrong_seed"
	OfferStale      = "stale"
	OfferRefused    = "refused"
	OfferNoAdmins   = "no_admins"
	OfferDuplicated = "duplicate"
	OfferSuperseded = "superseded"
)

// SeedOfferReasons lists every reason a received SEED_OFFER is counted under, in a
// fixed order.
var SeedOfferReasons = [...]string{OfferAccepted, OfferDuplicated, OfferMalformed, OfferStatement, OfferNotRotate,
	OfferExcluded, OfferBadSeal, OfferWrongSeed, OfferStale, OfferRefused, OfferNoAdmins, OfferSuperseded}

// SeedOfferReason returns the counting reason of an error of ParseSeedOffer or
// OpenSeedOffer.
func SeedOfferReason(err error) string {
	switch {
	case err == nil:
		return OfferAccepted
	case errors.Is(err, ErrSeedOfferStatement):
		return OfferStatement
	case errors.Is(err, ErrSeedOfferNotRotate):
		return OfferNotRotate
	case errors.Is(err, ErrSeedOfferExcluded):
		return OfferExcluded
	case errors.Is(err, ErrSeedOfferSeal):
		return OfferBadSeal
	case errors.Is(err, ErrSeedOfferSeedID):
		return OfferWrongSeed
	default:
		return OfferMalformed
	}
}

// ParseSeedOffer checks the layout of a SEED_OFFER body: statement length u16 (that of a
// ROTATE statement), the statement, the ephemeral key, the sealed seed, and nothing
// after. The statement is not parsed; Statement is a sub-slice of b.
func ParseSeedOffer(b []byte) (SeedOffer, error) {
	if len(b) < MinSeedOfferBody || len(b) > MaxSeedOfferBody {
		return SeedOffer{}, fmt.Errorf("%w: %d bytes", ErrSeedOfferMalformed, len(b))
	}
	n := int(binary.LittleEndian.Uint16(b))
	if n < statementMinLen || n > MaxRotateLen || 2+n+seedOfferTail != len(b) {
		return SeedOffer{}, fmt.Errorf("%w: statement of %d bytes in %d", ErrSeedOfferMalformed, n, len(b))
	}
	p := b[2+n:]
	return SeedOffer{Statement: b[2 : 2+n : 2+n], Ephemeral: [32]byte(p[:32]), Sealed: [SealedSeedLen]byte(p[32:])}, nil
}

// AppendSeedOffer appends the body of SEED_OFFER.
func AppendSeedOffer(b []byte, o SeedOffer) ([]byte, error) {
	if len(o.Statement) < statementMinLen || len(o.Statement) > MaxRotateLen {
		return b, fmt.Errorf("%w: statement of %d bytes", ErrSeedOfferMalformed, len(o.Statement))
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(o.Statement)))
	b = append(b, o.Statement...)
	b = append(b, o.Ephemeral[:]...)
	return append(b, o.Sealed[:]...), nil
}

// sealKey derives the key that seals a seed from the X25519 shared secret of the
// ephemeral and member keys: HKDF-SHA256 with both public keys as salt and the label as
// info. It refuses an all-zero shared secret (a low-order key on either side).
func sealKey(priv, peerPub, eph, member [32]byte) ([]byte, error) {
	dh, err := curve25519.X25519(priv[:], peerPub[:])
	if err != nil {
		return nil, err
	}
	var salt [64]byte
	copy(salt[:32], eph[:])
	copy(salt[32:], member[:])
	return hkdf.Key(sha256.New, dh, salt[:], seedOfferLabel, chacha20poly1305.KeySize)
}

// SealSeed seals the seed next of the ROTATE statement statement (its bytes, as signed)
// to the member whose X25519 public key is member, with an ephemeral key read from rnd
// (crypto/rand.Reader; fixed bytes only for test vectors).
func SealSeed(rnd io.Reader, statement []byte, next, member [32]byte) (SeedOffer, error) {
	var o SeedOffer
	if len(statement) < statementMinLen || len(statement) > MaxRotateLen {
		return o, fmt.Errorf("%w: statement of %d bytes", ErrSeedOfferMalformed, len(statement))
	}
	var ephPriv [32]byte
	if _, err := io.ReadFull(rnd, ephPriv[:]); err != nil {
		return o, err
	}
	defer clear(ephPriv[:])
	ephPub, err := curve25519.X25519(ephPriv[:], curve25519.Basepoint)
	if err != nil {
		return o, err
	}
	o.Ephemeral = [32]byte(ephPub)
	key, err := sealKey(ephPriv, member, o.Ephemeral, member)
	if err != nil {
		return o, fmt.Errorf("mesh: seal to member key: %w", err)
	}
	defer clear(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return o, err
	}
	ad := sha256.Sum256(statement)
	var nonce [chacha20poly1305.NonceSize]byte // zero: every key seals one seed
	aead.Seal(o.Sealed[:0], nonce[:], next[:], ad[:])
	o.Statement = statement
	return o, nil
}

// open opens the sealed seed with the member's X25519 key pair (priv, self).
func (o *SeedOffer) open(priv, self [32]byte) ([32]byte, error) {
	var seed [32]byte
	key, err := sealKey(priv, o.Ephemeral, o.Ephemeral, self)
	if err != nil {
		return seed, fmt.Errorf("%w: %v", ErrSeedOfferSeal, err)
	}
	defer clear(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return seed, err
	}
	ad := sha256.Sum256(o.Statement)
	var nonce [chacha20poly1305.NonceSize]byte
	if _, err := aead.Open(seed[:0], nonce[:], o.Sealed[:], ad[:]); err != nil {
		return seed, ErrSeedOfferSeal
	}
	return seed, nil
}

// Open checks an offer whose statement the caller has parsed (st, from o.Statement):
// that it is a ROTATE, that self is not one of its excluded keys, that the seed opens
// with the key pair (priv, self), and that the opened seed is the statement's next
// seed. It returns the seed.
func (o *SeedOffer) Open(st *Statement, priv, self [32]byte) ([32]byte, error) {
	if st.Kind != StatementRotate || st.Rotate == nil {
		return [32]byte{}, ErrSeedOfferNotRotate
	}
	for i := range st.Rotate.Excluded {
		if st.Rotate.Excluded[i] == self {
			return [32]byte{}, ErrSeedOfferExcluded
		}
	}
	seed, err := o.open(priv, self)
	if err != nil {
		return seed, err
	}
	if SeedID(seed) != st.Rotate.NextSeedID {
		clear(seed[:])
		return seed, ErrSeedOfferSeedID
	}
	return seed, nil
}

// OpenSeedOffer makes every check of a SEED_OFFER body b received by the member (priv,
// self) of the network netID that obeys admins, in order from the cheapest: the layout,
// the statement (ParseStatement: its size, kind, admin, fields, signature), its kind
// ROTATE, self not excluded, the seal, the seed id. It returns the statement, its bytes
// (a sub-slice of b) and the next seed. Whether the statement is the newest rotation the
// member holds is the caller's to check.
func OpenSeedOffer(b []byte, netID [16]byte, admins []ed25519.PublicKey, priv, self [32]byte) (*Statement, []byte, [32]byte, error) {
	o, err := ParseSeedOffer(b)
	if err != nil {
		return nil, nil, [32]byte{}, err
	}
	st, err := ParseStatement(o.Statement, netID, admins)
	if err != nil {
		return nil, nil, [32]byte{}, fmt.Errorf("%w: %w", ErrSeedOfferStatement, err)
	}
	seed, err := o.Open(st, priv, self)
	if err != nil {
		return nil, nil, [32]byte{}, err
	}
	return st, o.Statement, seed, nil
}
