package mesh

import (
	"crypto/ed25519"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// resign replaces the signature of raw (after the caller changed its body) with a valid
// one by id for netID, so that parse errors other than the signature can be reached.
func resign(raw []byte, id Identity, netID [16]byte) []byte {
	body := raw[:len(raw)-ed25519.SignatureSize]
	out := append([]byte(nil), body...)
	return append(out, ed25519.Sign(id.Signing, signedMessage(nil, netID, body))...)
}

func TestRecordAlteredInAnyByteFails(t *testing.T) {
	id := NewIdentity(testEdSeed)
	netID := NetworkID(testSeed)
	raw := mustMarshal(t, testRecord(), id, netID)
	if _, err := ParseRecord(raw, netID, testNow); err != nil {
		t.Fatalf("unaltered: %v", err)
	}
	for i := range raw {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			b := append([]byte(nil), raw...)
			b[i] ^= x
			if r, err := ParseRecord(b, netID, testNow); err == nil {
				t.Fatalf("byte %d ^ %#x: accepted %+v", i, x, r)
			}
		}
	}
	// Truncated or extended, too.
	for n := range len(raw) {
		if _, err := ParseRecord(raw[:n], netID, testNow); err == nil {
			t.Fatalf("truncated to %d: accepted", n)
		}
	}
	if _, err := ParseRecord(append(append([]byte(nil), raw...), 0), netID, testNow); err == nil {
		t.Fatal("extended by a byte: accepted")
	}
}

func TestRecordSignedForAnotherNetworkFails(t *testing.T) {
	id := NewIdentity(testEdSeed)
	var otherSeed [32]byte
	otherSeed[31] = 9
	raw := mustMarshal(t, testRecord(), id, NetworkID(otherSeed))
	if _, err := ParseRecord(raw, NetworkID(testSeed), testNow); !errors.Is(err, ErrRecordSignature) {
		t.Fatalf("record of another network: %v, want ErrRecordSignature", err)
	}
}

// A record names its member only through its signing key; a member cannot make a record
// that parses as another member's by putting that member's key in it.
func TestRecordCannotClaimAnotherMembersKey(t *testing.T) {
	netID := NetworkID(testSeed)
	victim, attacker := NewIdentity(edSeedN(1)), NewIdentity(edSeedN(2))
	raw := mustMarshal(t, testRecord(), attacker, netID)
	r, err := ParseRecord(raw, netID, testNow)
	if err != nil || r.Key != attacker.Public {
		t.Fatalf("attacker's own record: key %x, %v", r.Key, err)
	}
	// Signing key field swapped for the victim's, signed by the attacker.
	forged := append([]byte(nil), raw...)
	copy(forged[24:56], victim.Signing.Public().(ed25519.PublicKey))
	forged = resign(forged, attacker, netID)
	if r, err := ParseRecord(forged, netID, testNow); !errors.Is(err, ErrRecordSignature) {
		t.Fatalf("record naming the victim's key signed by the attacker: %+v, %v", r, err)
	}
	// The same with the victim's key plus a torsion point (same X25519 key for clamped
	// scalars): refused before the signature is even checked.
	withTorsion := append([]byte(nil), raw...)
	t8 := mustHex(t, "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
	copy(withTorsion[24:56], t8)
	if _, err := ParseRecord(resign(withTorsion, attacker, netID), netID, testNow); !errors.Is(err, ErrRecordMalformed) {
		t.Fatalf("small-order signing key: %v, want ErrRecordMalformed", err)
	}
}

func TestRecordExpiryAndFuture(t *testing.T) {
	id := NewIdentity(testEdSeed)
	netID := NetworkID(testSeed)
	r := testRecord()
	raw := mustMarshal(t, r, id, netID)
	if _, err := ParseRecord(raw, netID, r.Expires.Add(-time.Second)); err != nil {
		t.Fatalf("a second before expiry: %v", err)
	}
	for _, at := range []time.Time{r.Expires, r.Expires.Add(time.Hour)} {
		if _, err := ParseRecord(raw, netID, at); !errors.Is(err, ErrRecordExpired) {
			t.Fatalf("at %v: %v, want ErrRecordExpired", at, err)
		}
	}
	r.Expires = testNow.Add(MaxLifetime + MaxClockSkew + time.Second)
	raw = mustMarshal(t, r, id, netID)
	if _, err := ParseRecord(raw, netID, testNow); !errors.Is(err, ErrRecordFuture) {
		t.Fatalf("expires beyond MaxLifetime: %v, want ErrRecordFuture", err)
	}
	if _, err := ParseRecord(raw, netID, testNow.Add(2*time.Second)); err != nil {
		t.Fatalf("the same record 2 s later: %v", err)
	}
}

func TestRecordOversizeRefused(t *testing.T) {
	id := NewIdentity(testEdSeed)
	netID := NetworkID(testSeed)
	if _, err := ParseRecord(make([]byte, MaxRecordLen+1), netID, testNow); !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("%d bytes: %v, want ErrRecordTooLarge", MaxRecordLen+1, err)
	}
	big := func(mod func(*Record)) error {
		r := testRecord()
		mod(&r)
		_, err := r.Marshal(id, netID)
		return err
	}
	addr := netip.MustParsePrefix("10.0.0.1/32")
	ep := Endpoint{Kind: EndpointLocal, Addr: netip.MustParseAddrPort("192.0.2.1:1")}
	for name, mod := range map[string]func(*Record){
		"9 addresses": func(r *Record) { r.Addresses = make([]netip.Prefix, 9); fill(r.Addresses, addr) },
		"17 prefixes": func(r *Record) { r.Prefixes = make([]netip.Prefix, 17); fill(r.Prefixes, addr) },
		"9 endpoints": func(r *Record) { r.Endpoints = make([]Endpoint, 9); fill(r.Endpoints, ep) },
		"ws url 201":  func(r *Record) { r.WSURL = "wss://" + strings.Repeat("a", 195) },
	} {
		if err := big(mod); !errors.Is(err, ErrRecordTooLarge) {
			t.Errorf("%s: %v, want ErrRecordTooLarge", name, err)
		}
	}
	// Counts beyond the limits on the wire (with a valid signature) are malformed.
	r := testRecord()
	r.Addresses = nil
	raw := mustMarshal(t, r, id, netID)
	i := recordHeaderLen + 1 + len(r.Name)
	if raw[i] != 0 {
		t.Fatalf("layout: address count at %d is %d", i, raw[i])
	}
	raw[i] = MaxAddresses + 1
	if _, err := ParseRecord(resign(raw, id, netID), netID, testNow); !errors.Is(err, ErrRecordMalformed) {
		t.Fatalf("address count %d: %v", MaxAddresses+1, err)
	}
}

func fill[T any](s []T, v T) {
	for i := range s {
		s[i] = v
	}
}

func TestRecordContentRules(t *testing.T) {
	id := NewIdentity(testEdSeed)
	netID := NetworkID(testSeed)
	for name, mod := range map[string]func(*Record){
		"empty name":          func(r *Record) { r.Name = "" },
		"name with space":     func(r *Record) { r.Name = "a b" },
		"name 33 bytes":       func(r *Record) { r.Name = strings.Repeat("n", 33) },
		"unmasked prefix":     func(r *Record) { r.Prefixes = []netip.Prefix{netip.MustParsePrefix("10.1.2.3/16")} },
		"multicast address":   func(r *Record) { r.Addresses = []netip.Prefix{netip.MustParsePrefix("224.0.0.1/32")} },
		"4in6 prefix":         func(r *Record) { r.Prefixes = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")} },
		"endpoint port 0":     func(r *Record) { r.Endpoints[0].Addr = netip.MustParseAddrPort("192.0.2.1:0") },
		"endpoint kind 0":     func(r *Record) { r.Endpoints[0].Kind = 0 },
		"unspecified ep":      func(r *Record) { r.Endpoints[0].Addr = netip.MustParseAddrPort("0.0.0.0:1") },
		"http url":            func(r *Record) { r.WSURL = "http://x" },
		"url with space":      func(r *Record) { r.WSURL = "wss://x y" },
		"version 0":           func(r *Record) { r.Version = 0 },
		"no expiry":           func(r *Record) { r.Expires = time.Time{} },
		"endpoint zoned addr": func(r *Record) { r.Endpoints[0].Addr = netip.MustParseAddrPort("[fe80::1%eth0]:1") },
	} {
		r := testRecord()
		mod(&r)
		if _, err := r.Marshal(id, netID); !errors.Is(err, ErrRecordMalformed) {
			t.Errorf("%s: %v, want ErrRecordMalformed", name, err)
		}
	}
	// Flags other than relay, a format other than 1, reserved bits: malformed even when signed.
	raw := mustMarshal(t, testRecord(), id, netID)
	for name, off := range map[string]struct {
		i int
		v byte
	}{"flags bit 1": {5, 2}, "format 2": {4, 2}, "reserved": {6, 1}} {
		b := append([]byte(nil), raw...)
		b[off.i] = off.v
		if _, err := ParseRecord(resign(b, id, netID), netID, testNow); !errors.Is(err, ErrRecordMalformed) {
			t.Errorf("%s: %v, want ErrRecordMalformed", name, err)
		}
	}
	rr := testRecord()
	rr.Relay = true
	p, err := ParseRecord(mustMarshal(t, rr, id, netID), netID, testNow)
	if err != nil || !p.Relay {
		t.Fatalf("relay flag: %+v %v", p, err)
	}
}
