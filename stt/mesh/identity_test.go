package mesh

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"

	"filippo.io/edwards25519"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Keys that are not canonical encodings of prime-order points are refused: else two
// signing keys (P and P+T for a torsion point T) would name one X25519 key.
func TestX25519FromSigningKeyRejectsBadPoints(t *testing.T) {
	id := NewIdentity(testEdSeed)
	pub := id.Signing.Public().(ed25519.PublicKey)
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		t.Fatal(err)
	}
	// A point of order 8.
	t8, err := new(edwards25519.Point).SetBytes(mustHex(t, "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"))
	if err != nil {
		t.Fatal(err)
	}
	mixed := new(edwards25519.Point).Add(p, t8).Bytes()
	cases := map[string][]byte{
		"identity":             mustHex(t, "0100000000000000000000000000000000000000000000000000000000000000"),
		"order 8":              t8.Bytes(),
		"order 4 (y=0)":        mustHex(t, "0000000000000000000000000000000000000000000000000000000000000000"),
		"order 2 (y=-1)":       mustHex(t, "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"non-canonical y=p+1":  mustHex(t, "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"non-canonical -0":     mustHex(t, "0100000000000000000000000000000000000000000000000000000000000080"),
		"key plus torsion":     mixed,
		"short":                pub[:31],
		"not a point (y=2)":    mustHex(t, "0200000000000000000000000000000000000000000000000000000000000000"),
		"all ones (y > p, ~0)": mustHex(t, "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
	}
	for name, k := range cases {
		if x, err := X25519FromSigningKey(k); !errors.Is(err, ErrBadSigningKey) {
			t.Errorf("%s: accepted (X25519 %x), want ErrBadSigningKey", name, x)
		}
	}
	if x, err := X25519FromSigningKey(pub); err != nil || x != id.Public {
		t.Fatalf("own key: %x, %v", x, err)
	}
}

func TestAddressDerivation(t *testing.T) {
	a, b := NewIdentity(edSeedN(1)), NewIdentity(edSeedN(2))
	pfx := NetworkPrefix(testSeed)
	if pfx.Bits() != 48 || pfx.Addr().As16()[0] != 0xfd || pfx.Masked() != pfx {
		t.Fatalf("network prefix %v", pfx)
	}
	mp := MemberPrefix(testSeed)
	if mp.Bits() != 64 || !pfx.Contains(mp.Addr()) || mp.Addr().As16()[6] != 0 || mp.Addr().As16()[7] != 0 {
		t.Fatalf("member prefix %v", mp)
	}
	aa, ba := MemberAddr(testSeed, a.Public), MemberAddr(testSeed, b.Public)
	if !mp.Contains(aa) || !mp.Contains(ba) || aa == ba {
		t.Fatalf("member addresses %v %v in %v", aa, ba, mp)
	}
	var other [32]byte
	other[0] = 1
	if NetworkPrefix(other) == pfx || NetworkID(other) == NetworkID(testSeed) {
		t.Fatal("another seed gives the same prefix or id")
	}
	if MemberAddr(other, a.Public) == aa {
		t.Fatal("another seed gives the same member address")
	}
	_ = netip.Addr{}
}

// A network's identity is the seed derivation (existing networks keep their addresses)
// and survives its raw form (the seed file's network line), so addresses follow the
// identity, not whichever seed is current.
func TestNetworkIdentityKeepsSeedDerivedAddresses(t *testing.T) {
	n := NetworkOf(testSeed)
	if n.ID != NetworkID(testSeed) || n.Prefix.String() != goldenPrefix {
		t.Fatalf("NetworkOf = %x %v, want the seed's id and %s", n.ID, n.Prefix, goldenPrefix)
	}
	id := NewIdentity(testEdSeed)
	if got := n.MemberAddr(id.Public).String(); got != goldenMemberAddr {
		t.Fatalf("member address %s, want %s", got, goldenMemberAddr)
	}
	if n.MemberPrefix() != MemberPrefix(testSeed) {
		t.Fatalf("member prefix %v, want %v", n.MemberPrefix(), MemberPrefix(testSeed))
	}
	if back := NetworkFromRaw(n.Raw()); back != n {
		t.Fatalf("raw round trip %v, want %v", back, n)
	}
	var other [32]byte
	other[0] = 9
	if MemberAddrIn(n.Prefix, id.Public) == MemberAddr(other, id.Public) {
		t.Fatal("the address follows the seed, not the identity")
	}
}
