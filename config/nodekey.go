package config

import (
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"
	"strings"
)

// ed25519Prefix starts a key file in the Ed25519 format.
const ed25519Prefix = "ed25519:"

// NodeKey is this node's identity as its key file holds it. A key file in the
// Ed25519 format holds a 32-byte Ed25519 seed, from which the X25519 private key of
// the handshake is derived (see X25519FromEd25519Seed); a legacy key file holds the
// X25519 private key itself and has no Ed25519 key. The node's public key, in status,
// pins and `stt-tun pubkey`, is the X25519 one either way.
type NodeKey struct {
	// X25519 is the private key the handshake uses.
	X25519 [32]byte
	// Ed25519Seed is the Ed25519 seed the X25519 key was derived from; zero when Legacy.
	Ed25519Seed [32]byte
	// Legacy is set for a key file in the old format: a bare base64 X25519 key.
	Legacy bool
}

// PublicKey returns the node's X25519 public key.
func (k NodeKey) PublicKey() [32]byte { return PublicKey(k.X25519) }

// Encode returns the key file's one line (without the newline): "ed25519:" and the
// base64 seed, or, for a legacy key, the base64 X25519 key.
func (k NodeKey) Encode() string {
	if k.Legacy {
		return EncodeKey(k.X25519)
	}
	return ed25519Prefix + EncodeKey(k.Ed25519Seed)
}

// String keeps a NodeKey that ends up in a log or an error from revealing it.
func (k NodeKey) String() string {
	if k.Legacy {
		return "NodeKey(legacy X25519, public " + EncodeKey(k.PublicKey()) + ")"
	}
	return "NodeKey(ed25519, public " + EncodeKey(k.PublicKey()) + ")"
}

// GoString is String, for %#v.
func (k NodeKey) GoString() string { return k.String() }

// NodeKeyFromSeed returns the node key of an Ed25519 seed.
func NodeKeyFromSeed(seed [32]byte) NodeKey {
	return NodeKey{X25519: X25519FromEd25519Seed(seed), Ed25519Seed: seed}
}

// GenerateNodeKey returns a new random key in the Ed25519 format.
func GenerateNodeKey() (NodeKey, error) {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return NodeKey{}, fmt.Errorf("generate key: %w", err)
	}
	k := NodeKeyFromSeed(seed)
	clear(seed[:])
	return k, nil
}

// X25519FromEd25519Seed derives the X25519 private key that belongs to an Ed25519
// seed, as libsodium's crypto_sign_ed25519_sk_to_curve25519 does: the first half of
// SHA-512(seed), clamped. It is the scalar Ed25519 signs with, so its X25519 public
// key is the Montgomery form of the Ed25519 public key.
func X25519FromEd25519Seed(seed [32]byte) [32]byte {
	h := sha512.Sum512(seed[:])
	var x [32]byte
	copy(x[:], h[:32])
	clear(h[:])
	x[0] &= 248
	x[31] &= 127
	x[31] |= 64
	return x
}

// DecodeNodeKey parses a key file's text: "ed25519:" and the base64 seed, or a bare
// base64 X25519 key (legacy). Surrounding white space is ignored. Its errors never
// include the input, which is secret.
func DecodeNodeKey(s string) (NodeKey, error) {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, ed25519Prefix); ok {
		seed, err := DecodeKey(rest)
		if err != nil {
			return NodeKey{}, fmt.Errorf("ed25519 %w", err)
		}
		k := NodeKeyFromSeed(seed)
		clear(seed[:])
		return k, nil
	}
	if strings.Contains(s, ":") {
		// Not base64, which has no ':': another "kind:" prefix, or a typo in it.
		return NodeKey{}, errors.New("key has an unknown format; a key file holds \"ed25519:\" and 44 characters of base64, or 44 characters of base64 (a legacy X25519 key)")
	}
	x, err := DecodeKey(s)
	if err != nil {
		return NodeKey{}, err
	}
	return NodeKey{X25519: x, Legacy: true}, nil
}
