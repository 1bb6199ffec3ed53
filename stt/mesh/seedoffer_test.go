package mesh

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"

	"golang.org/x/crypto/curve25519"
)

// The vector of docs/protocol.md 10.8: the ROTATE of 10.7 (goldenRotate) and its next
// seed 0x20..0x3f, sealed with the ephemeral X25519 private key 0x80..0x9f to the member
// whose X25519 private key is 0xa0..0xbf. Checked against an independent implementation
// of the spec (Python, cryptography's X25519, HKDF and ChaCha20-Poly1305) when made.
const (
	goldenOfferMember    = "605a725d2a4adfeeb1a29e17edd621c1b7593ee8cdbc44ac6c4ab6e2f805d23c"
	goldenOfferEphemeral = "493e82fc74464a59268817623d2053c5eb8e2cc4a988b4fee179ec6b010d531d"
	goldenOfferSealed    = "ef0a145be09547e78a918edbb8a913c0b31b9f5b9cc5f2243ff2e50c62ee8ea90e9c1590ef33e7c0601dc4e601450f58"
	goldenSeedOffer      = "a600" + goldenRotate + goldenOfferEphemeral + goldenOfferSealed
)

func bytesFrom(start byte) (s [32]byte) {
	for i := range s {
		s[i] = start + byte(i)
	}
	return
}

// offerMember is an X25519 key pair of a member that receives offers.
func offerMember(start byte) (priv, pub [32]byte) {
	priv = bytesFrom(start)
	p, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		panic(err)
	}
	return priv, [32]byte(p)
}

func mustSeal(t testing.TB, statement []byte, next, member [32]byte) []byte {
	t.Helper()
	o, err := SealSeed(rand.Reader, statement, next, member)
	if err != nil {
		t.Fatalf("SealSeed: %v", err)
	}
	b, err := AppendSeedOffer(nil, o)
	if err != nil {
		t.Fatalf("AppendSeedOffer: %v", err)
	}
	return b
}

func TestGoldenSeedOffer(t *testing.T) {
	priv, pub := offerMember(0xa0)
	checkHex(t, "member key", pub[:], goldenOfferMember)
	rot := hexBytes(t, goldenRotate)
	eph := bytesFrom(0x80)
	o, err := SealSeed(bytes.NewReader(eph[:]), rot, testNextSeed, pub)
	if err != nil {
		t.Fatal(err)
	}
	b, err := AppendSeedOffer(nil, o)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "SEED_OFFER", b, goldenSeedOffer)
	st, raw, seed, err := OpenSeedOffer(b, NetworkID(testSeed), []ed25519.PublicKey{adminPub(testAdmin())}, priv, pub)
	if err != nil {
		t.Fatalf("golden offer refused: %v", err)
	}
	if seed != testNextSeed || !bytes.Equal(raw, rot) || st.Rotate.SwitchAt != uint64(testNow.Unix())+3600 {
		t.Errorf("golden offer opened to seed %x, statement %x", seed, raw)
	}
}

// Every check of OpenSeedOffer refuses what it is for, under its own reason, and only
// the genuine offer opens.
func TestSeedOfferRefusals(t *testing.T) {
	netID := NetworkID(testSeed)
	admin := testAdmin()
	admins := []ed25519.PublicKey{adminPub(admin)}
	priv, pub := offerMember(0xa0)
	otherPriv, otherPub := offerMember(0xc0)
	issued := uint64(testNow.UnixNano())
	rot := mustSign(t, testRotate(issued), admin, netID) // excludes the member of testEdSeed
	good := mustSeal(t, rot, testNextSeed, pub)

	later := testRotate(issued)
	later.Rotate.SwitchAt += 60
	rotLater := mustSign(t, later, admin, netID)
	moved := mustSeal(t, rot, testNextSeed, pub)
	copy(moved[2:], rotLater) // same length: the seal of one statement under another

	wrongSeed := mustSeal(t, rot, testSeed, pub) // seals a seed other than the one named
	revoke := mustSign(t, testRevoke(issued, otherPub), admin, netID)
	notRotate := mustSeal(t, revoke, testNextSeed, pub)
	byOutsider := mustSeal(t, mustSign(t, testRotate(issued), adminN(2), netID), testNextSeed, pub)
	otherNet := mustSeal(t, mustSign(t, testRotate(issued), admin, NetworkID(testNextSeed)), testNextSeed, pub)
	excludedSelf := testRotate(issued)
	excludedSelf.Rotate.Excluded = append(excludedSelf.Rotate.Excluded, pub)
	excluded := mustSeal(t, mustSign(t, excludedSelf, admin, netID), testNextSeed, pub)
	lowOrder := bytes.Clone(good)
	copy(lowOrder[2+len(rot):], make([]byte, 32)) // ephemeral key zero: shared secret zero
	lenField := func(n int) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint16(b, uint16(n))
		return b
	}

	cases := []struct {
		name   string
		b      []byte
		priv   [32]byte
		self   [32]byte
		reason string
	}{
		{"genuine", good, priv, pub, OfferAccepted},
		{"empty", nil, priv, pub, OfferMalformed},
		{"truncated", good[:len(good)-1], priv, pub, OfferMalformed},
		{"trailing byte", append(bytes.Clone(good), 0), priv, pub, OfferMalformed},
		{"length short", lenField(len(rot) - 1), priv, pub, OfferMalformed},
		{"length long", lenField(len(rot) + 1), priv, pub, OfferMalformed},
		{"length huge", lenField(0xffff), priv, pub, OfferMalformed},
		{"statement byte flipped", flipByte(good, 2+20), priv, pub, OfferStatement},
		{"signature flipped", flipByte(good, 2+len(rot)-1), priv, pub, OfferStatement},
		{"signed by a non-admin", byOutsider, priv, pub, OfferStatement},
		{"signed for another network", otherNet, priv, pub, OfferStatement},
		{"revoke, not rotate", notRotate, priv, pub, OfferNotRotate},
		{"receiver excluded", excluded, priv, pub, OfferExcluded},
		{"sealed to another member", good, otherPriv, otherPub, OfferBadSeal},
		{"seal moved to another statement", moved, priv, pub, OfferBadSeal},
		{"ephemeral flipped", flipByte(good, 2+len(rot)+3), priv, pub, OfferBadSeal},
		{"ciphertext flipped", flipByte(good, len(good)-20), priv, pub, OfferBadSeal},
		{"tag flipped", flipByte(good, len(good)-1), priv, pub, OfferBadSeal},
		{"low-order ephemeral", lowOrder, priv, pub, OfferBadSeal},
		{"seed not the one named", wrongSeed, priv, pub, OfferWrongSeed},
	}
	for _, c := range cases {
		st, raw, seed, err := OpenSeedOffer(c.b, netID, admins, c.priv, c.self)
		if got := SeedOfferReason(err); got != c.reason {
			t.Errorf("%s: reason %q (%v), want %q", c.name, got, err, c.reason)
			continue
		}
		if err != nil && (st != nil || raw != nil || seed != [32]byte{}) {
			t.Errorf("%s: refused offer returned a statement or seed", c.name)
		}
		if err == nil && (seed != testNextSeed || !bytes.Equal(raw, rot)) {
			t.Errorf("%s: opened to %x", c.name, seed)
		}
	}
}

// The offer is as long as its statement says, at both ends of the statement's range.
func TestSeedOfferLengths(t *testing.T) {
	netID := NetworkID(testSeed)
	admin := testAdmin()
	admins := []ed25519.PublicKey{adminPub(admin)}
	priv, pub := offerMember(0xa0)
	for _, n := range []int{0, MaxExcluded} {
		s := testRotate(uint64(testNow.UnixNano()))
		s.Rotate.Excluded = nil
		for i := range n {
			k := bytesFrom(byte(i + 1))
			s.Rotate.Excluded = append(s.Rotate.Excluded, k)
		}
		b := mustSeal(t, mustSign(t, s, admin, netID), testNextSeed, pub)
		want := 2 + statementMinLen + 32*n + seedOfferTail
		if len(b) != want || (n == 0 && len(b) != MinSeedOfferBody) || (n == MaxExcluded && len(b) != MaxSeedOfferBody) {
			t.Errorf("%d excluded: offer of %d bytes, want %d", n, len(b), want)
		}
		if _, _, _, err := OpenSeedOffer(b, netID, admins, priv, pub); err != nil {
			t.Errorf("%d excluded: %v", n, err)
		}
	}
	if _, err := SealSeed(rand.Reader, make([]byte, MaxRotateLen+1), testNextSeed, pub); !errors.Is(err, ErrSeedOfferMalformed) {
		t.Errorf("sealing with an oversize statement: %v", err)
	}
	if _, err := SealSeed(rand.Reader, hexBytes(t, goldenRotate), testNextSeed, [32]byte{}); err == nil {
		t.Error("sealed to a zero (low-order) member key")
	}
}

// Two offers of the same seed to the same member share nothing but the statement: the
// ephemeral key is fresh each time.
func TestSeedOfferEphemeralFresh(t *testing.T) {
	_, pub := offerMember(0xa0)
	rot := hexBytes(t, goldenRotate)
	a, b := mustSeal(t, rot, testNextSeed, pub), mustSeal(t, rot, testNextSeed, pub)
	if bytes.Equal(a[len(rot):], b[len(rot):]) {
		t.Error("two offers with the same ephemeral key and seal")
	}
}

func hexBytes(t testing.TB, h string) []byte {
	t.Helper()
	b, err := hex.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzSeedOffer: no panic; the layout is canonical (what parses re-encodes to the same
// bytes); an offer opens only to the seed its genuine statement names, for a member it
// does not exclude; every refusal has a counting reason.
func FuzzSeedOffer(f *testing.F) {
	good := hexBytes(f, goldenSeedOffer)
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(append(bytes.Clone(good), 0))
	f.Add(good[:MinSeedOfferBody])
	f.Add(make([]byte, MaxSeedOfferBody+1))
	f.Add(flipByte(good, len(good)-1))
	netID := NetworkID(testSeed)
	admins := []ed25519.PublicKey{adminPub(adminN(1)), adminPub(testAdmin())}
	priv, pub := offerMember(0xa0)
	known := map[string]bool{}
	for _, r := range SeedOfferReasons {
		known[r] = true
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if o, err := ParseSeedOffer(b); err == nil {
			again, err := AppendSeedOffer(nil, o)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("layout not canonical: %x (%v)", b, err)
			}
		}
		st, raw, seed, err := OpenSeedOffer(b, netID, admins, priv, pub)
		if err != nil {
			if r := SeedOfferReason(err); !known[r] || r == OfferAccepted || st != nil || seed != ([32]byte{}) {
				t.Fatalf("refusal %v with reason %q", err, r)
			}
			return
		}
		if st.Kind != StatementRotate || SeedID(seed) != st.Rotate.NextSeedID || !bytes.Equal(raw, b[2:2+len(raw)]) {
			t.Fatalf("opened an offer that does not hold: %x", b)
		}
		for _, k := range st.Rotate.Excluded {
			if k == pub {
				t.Fatal("opened an offer that excludes its receiver")
			}
		}
	})
}

// What sealing and opening one offer cost (an X25519 each way, HKDF, ChaCha20-Poly1305,
// SHA-256 of the statement); opening excludes the statement's signature, which the store
// checks.
func BenchmarkSeedOffer(b *testing.B) {
	priv, pub := offerMember(0xa0)
	rot := hexBytes(b, goldenRotate)
	st, err := ParseStatement(rot, NetworkID(testSeed), []ed25519.PublicKey{adminPub(testAdmin())})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("seal", func(b *testing.B) {
		for b.Loop() {
			if _, err := SealSeed(rand.Reader, rot, testNextSeed, pub); err != nil {
				b.Fatal(err)
			}
		}
	})
	o, _ := SealSeed(rand.Reader, rot, testNextSeed, pub)
	b.Run("open", func(b *testing.B) {
		for b.Loop() {
			if _, err := o.Open(st, priv, pub); err != nil {
				b.Fatal(err)
			}
		}
	})
}
