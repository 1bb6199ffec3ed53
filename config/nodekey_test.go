package config

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/edwards25519"
)

// TestX25519FromEd25519SeedLibsodiumVector checks the derivation against values
// libsodium computed once for RFC 8032's first test key: crypto_sign_seed_keypair,
// then crypto_sign_ed25519_sk_to_curve25519 and crypto_sign_ed25519_pk_to_curve25519.
func TestX25519FromEd25519SeedLibsodiumVector(t *testing.T) {
	var seed [32]byte
	hex.Decode(seed[:], []byte("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
	const (
		wantPriv = "307c83864f2833cb427a2ef1c00a013cfdff2768d980c0a3a520f006904de94f"
		wantPub  = "d85e07ec22b0ad881537c2f44d662d1a143cf830c57aca4305d85c7a90f6b62e"
	)
	k := NodeKeyFromSeed(seed)
	if got := hex.EncodeToString(k.X25519[:]); got != wantPriv {
		t.Errorf("X25519 private key %s, libsodium says %s", got, wantPriv)
	}
	pub := k.PublicKey()
	if got := hex.EncodeToString(pub[:]); got != wantPub {
		t.Errorf("X25519 public key %s, libsodium says %s", got, wantPub)
	}
	if k.Legacy || k.Ed25519Seed != seed {
		t.Errorf("NodeKeyFromSeed: %+v", k)
	}
}

// TestX25519PublicIsMontgomeryOfEd25519Public: for random seeds, the X25519 public
// key of the derived private key is the Montgomery form of the Ed25519 public key, so
// a member record's signing key names the handshake key.
func TestX25519PublicIsMontgomeryOfEd25519Public(t *testing.T) {
	for range 64 {
		var seed [32]byte
		rand.Read(seed[:])
		edPub := ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
		p, err := new(edwards25519.Point).SetBytes(edPub)
		if err != nil {
			t.Fatal(err)
		}
		want := p.BytesMontgomery()
		got := PublicKey(X25519FromEd25519Seed(seed))
		if hex.EncodeToString(got[:]) != hex.EncodeToString(want) {
			t.Fatalf("seed %x: X25519 public %x, Montgomery form of the Ed25519 public key %x", seed, got, want)
		}
	}
}

func TestNodeKeyEncodeDecode(t *testing.T) {
	k, err := GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := GenerateNodeKey()
	if k.Ed25519Seed == k2.Ed25519Seed {
		t.Error("two keys are equal")
	}
	enc := k.Encode()
	if !strings.HasPrefix(enc, "ed25519:") || len(enc) != len("ed25519:")+44 {
		t.Errorf("encoded %q", enc)
	}
	got, err := DecodeNodeKey(" " + enc + "\n")
	if err != nil || got != k {
		t.Errorf("DecodeNodeKey(Encode()) = %v, %v", got, err)
	}

	// A bare base64 key is a legacy X25519 key, used as it is.
	x, _ := GenerateKey()
	legacy, err := DecodeNodeKey(EncodeKey(x))
	if err != nil || !legacy.Legacy || legacy.X25519 != x || legacy.Ed25519Seed != ([32]byte{}) {
		t.Errorf("legacy: %+v, %v", legacy, err)
	}
	if legacy.Encode() != EncodeKey(x) {
		t.Errorf("legacy encodes as %q", legacy.Encode())
	}

	for _, c := range []struct{ in, want string }{
		{"ed25519:", "ed25519 key is empty"},
		{"ed25519:" + enc[8:48], "ed25519 key is 40 characters long"},
		{"ED25519:" + enc[8:], "unknown format"},
		{"x25519:" + enc[8:], "unknown format"},
		{"ed25519: " + enc[8:] + " x", "ed25519 key is 46 characters long"},
	} {
		_, err := DecodeNodeKey(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("DecodeNodeKey(%q) = %v, want %q", c.in, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), enc[8:30]) {
			t.Errorf("error reveals the key: %v", err)
		}
	}
	// Printing a NodeKey shows its public key only.
	for _, s := range []string{k.String(), k.GoString(), legacy.String()} {
		if strings.Contains(s, EncodeKey(k.Ed25519Seed)) || strings.Contains(s, EncodeKey(k.X25519)) || strings.Contains(s, EncodeKey(x)) {
			t.Errorf("String reveals the key: %s", s)
		}
	}
}

// TestLoadKeyBothFormats: a key file in either format loads; LoadKey creates nothing.
func TestLoadKeyBothFormats(t *testing.T) {
	dir := t.TempDir()
	k, _ := GenerateNodeKey()
	x, _ := GenerateKey()
	newPath, oldPath := filepath.Join(dir, "new.key"), filepath.Join(dir, "old.key")
	writeFile(t, newPath, k.Encode()+"\n", 0o600)
	writeFile(t, oldPath, EncodeKey(x)+"\n", 0o600)
	if got, err := LoadKey(newPath); err != nil || got != k {
		t.Errorf("new format: %v, %v", got, err)
	}
	if got, created, err := LoadOrCreateKey(oldPath); err != nil || created || !got.Legacy || got.X25519 != x {
		t.Errorf("legacy: %v created=%v %v", got, created, err)
	}
	missing := filepath.Join(dir, "missing.key")
	if _, err := LoadKey(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Error("LoadKey created the file")
	}
	writeFile(t, newPath, k.Encode()+"\n", 0o644)
	if _, err := LoadKey(newPath); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("mode 0644: %v", err)
	}
}
