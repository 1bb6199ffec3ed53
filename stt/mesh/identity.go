package mesh

// identity.go derives a member's keys from its Ed25519 seed: the signing key for its
// record, and the X25519 key the Noise handshake uses, which is the Montgomery form of
// the same curve point, so a record's signing key names exactly one X25519 key.

import (
	"crypto/ed25519"
	"errors"

	"filippo.io/edwards25519"
)

// Identity is a member's key pair: Signing signs its record; Public is its X25519 public
// key, the key that names it everywhere else (status, pins, handshakes).
type Identity struct {
	Signing ed25519.PrivateKey
	Public  [32]byte
}

// NewIdentity derives the identity of the Ed25519 seed edSeed. Its Public is the public
// key of the X25519 private key the node's handshakes use, which the key file derives
// from the same seed (config.X25519FromEd25519Seed, as libsodium's
// crypto_sign_ed25519_sk_to_curve25519).
func NewIdentity(edSeed [32]byte) Identity {
	priv := ed25519.NewKeyFromSeed(edSeed[:])
	pub, err := X25519FromSigningKey(priv.Public().(ed25519.PublicKey))
	if err != nil {
		// A key derived from a seed is a multiple of the base point: always canonical
		// and of prime order.
		panic("mesh: derived Ed25519 public key rejected: " + err.Error())
	}
	return Identity{Signing: priv, Public: pub}
}

// ErrBadSigningKey is returned for an Ed25519 public key that is not the canonical
// encoding of a point of the prime-order subgroup.
var ErrBadSigningKey = errors.New("mesh: invalid Ed25519 public key")

// X25519FromSigningKey returns the X25519 public key (Montgomery u coordinate) of the
// Ed25519 public key pk. It refuses a key of the wrong length, a non-canonical
// encoding, and any point outside the prime-order subgroup (small-order points and
// points with a torsion component), so that no two accepted signing keys that differ
// only by torsion map to the same X25519 key.
func X25519FromSigningKey(pk ed25519.PublicKey) ([32]byte, error) {
	var out [32]byte
	if len(pk) != ed25519.PublicKeySize {
		return out, ErrBadSigningKey
	}
	p, err := new(edwards25519.Point).SetBytes(pk)
	if err != nil {
		return out, ErrBadSigningKey
	}
	var enc [32]byte
	copy(enc[:], p.Bytes())
	if enc != [32]byte(pk) {
		return out, ErrBadSigningKey // SetBytes accepts non-canonical encodings
	}
	if p.Equal(edwards25519.NewIdentityPoint()) == 1 {
		return out, ErrBadSigningKey
	}
	// [L]P must be the identity: [L-1]P == -P.
	lm1 := edwards25519.NewScalar().Subtract(edwards25519.NewScalar(), scalarOne())
	q := new(edwards25519.Point).ScalarMult(lm1, p)
	if q.Equal(new(edwards25519.Point).Negate(p)) != 1 {
		return out, ErrBadSigningKey
	}
	copy(out[:], p.BytesMontgomery())
	if out == ([32]byte{}) {
		return out, ErrBadSigningKey
	}
	return out, nil
}

func scalarOne() *edwards25519.Scalar {
	var b [32]byte
	b[0] = 1
	s, _ := edwards25519.NewScalar().SetCanonicalBytes(b[:])
	return s
}
