package config

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"testing"

	"github.com/stt-tun/stt-tun/stt/mesh"
)

// The X25519 public key of the mesh identity is the public key of the private key the
// key file derives for the handshake: the key the handshake uses and the key the
// record's signing key names agree. (Here rather than in stt/mesh, which config
// imports.)
func TestX25519PublicKeyMatchesDerivedPrivateKey(t *testing.T) {
	for n := range 20 {
		var seed [32]byte
		seed[0], seed[1], seed[2] = byte(n), byte(n>>8), 0xa5
		priv := X25519FromEd25519Seed(seed)
		k, err := ecdh.X25519().NewPrivateKey(priv[:])
		if err != nil {
			t.Fatal(err)
		}
		id := mesh.NewIdentity(seed)
		if [32]byte(k.PublicKey().Bytes()) != id.Public {
			t.Fatalf("seed %d: X25519 public of derived private %x, identity says %x", n, k.PublicKey().Bytes(), id.Public)
		}
		if !id.Signing.Public().(ed25519.PublicKey).Equal(ed25519.NewKeyFromSeed(seed[:]).Public()) {
			t.Fatalf("seed %d: signing key is not the seed's", n)
		}
	}
}
