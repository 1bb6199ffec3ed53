package mesh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// Fixed inputs of the statement vectors: the admin's Ed25519 seed is bytes 0x60..0x7f,
// the next seed of the rotation bytes 0x20..0x3f.
var (
	testAdminSeed = func() (s [32]byte) {
		for i := range s {
			s[i] = byte(0x60 + i)
		}
		return
	}()
	testNextSeed = func() (s [32]byte) {
		for i := range s {
			s[i] = byte(0x20 + i)
		}
		return
	}()
)

func testAdmin() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(testAdminSeed[:]) }

// adminN is a second, third… admin key.
func adminN(n int) ed25519.PrivateKey {
	s := edSeedN(n)
	s[3] = 0xad
	return ed25519.NewKeyFromSeed(s[:])
}

func adminPub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

func testRevoke(issued uint64, target [32]byte) Statement {
	return Statement{Kind: StatementRevoke, Issued: issued, Revoke: &Revocation{Target: target, Name: "alpha"}}
}

func testRotate(issued uint64) Statement {
	return Statement{Kind: StatementRotate, Issued: issued, Rotate: &Rotation{
		NextSeedID: SeedID(testNextSeed), SwitchAt: uint64(testNow.Unix()) + 3600, Overlap: 600,
		Excluded: [][32]byte{NewIdentity(testEdSeed).Public}}}
}

func mustSign(t testing.TB, s Statement, admin ed25519.PrivateKey, netID [16]byte) []byte {
	t.Helper()
	b, err := s.Marshal(admin, netID)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return b
}

func TestStatementRoundTrip(t *testing.T) {
	netID := NetworkID(testSeed)
	admin := testAdmin()
	admins := []ed25519.PublicKey{adminPub(adminN(1)), adminPub(admin)}
	rot := testRotate(7)
	rot.Rotate.Excluded = [][32]byte{{9}, {1}, {5}} // Marshal sorts them
	for _, in := range []Statement{testRevoke(uint64(testNow.UnixNano()), NewIdentity(testEdSeed).Public),
		{Kind: StatementRevoke, Issued: 1, Revoke: &Revocation{Target: [32]byte{1}}}, // no name
		testRotate(uint64(testNow.UnixNano())), rot,
		{Kind: StatementRotate, Issued: 1, Rotate: &Rotation{NextSeedID: [16]byte{1}, SwitchAt: 1}}, // none excluded
	} {
		b := mustSign(t, in, admin, netID)
		in.Admin = adminPub(admin)
		got, err := ParseStatement(b, netID, admins)
		if err != nil {
			t.Fatalf("%v: ParseStatement: %v", in.Kind, err)
		}
		if !reflect.DeepEqual(*got, in) {
			t.Errorf("parsed %+v, want %+v", got, in)
		}
		if !bytes.Equal(got.Admin, adminPub(admin)) {
			t.Errorf("admin %x", got.Admin)
		}
	}
	if want := [][32]byte{{1}, {5}, {9}}; !reflect.DeepEqual(rot.Rotate.Excluded, want) {
		t.Errorf("excluded after Marshal %v, want sorted", rot.Rotate.Excluded)
	}
}

// resign replaces the signature of b by a valid one over its (possibly altered) body, so
// that a refusal is seen to come from the check under test and not from the signature.
func resignStatement(b []byte, admin ed25519.PrivateKey, netID [16]byte) []byte {
	body := b[:len(b)-ed25519.SignatureSize]
	msg := statementSignedMessage(nil, netID, body)
	return append(bytes.Clone(body), ed25519.Sign(admin, msg)...)
}

// Every refusal of ParseStatement, each on an input that is valid but for the one fault
// (re-signed where the fault is in the signed bytes), with its reason.
func TestParseStatementRefusals(t *testing.T) {
	netID := NetworkID(testSeed)
	admin := testAdmin()
	admins := []ed25519.PublicKey{adminPub(admin)}
	rev := mustSign(t, testRevoke(uint64(testNow.UnixNano()), NewIdentity(testEdSeed).Public), admin, netID)
	rot := mustSign(t, testRotate(uint64(testNow.UnixNano())), admin, netID)
	body := func(b []byte) []byte { return bytes.Clone(b[:len(b)-ed25519.SignatureSize]) }
	sig := func(b []byte) []byte { return b[len(b)-ed25519.SignatureSize:] }
	signed := func(body []byte) []byte { return resignStatement(append(body, make([]byte, 64)...), admin, netID) }
	edit := func(b []byte, f func(p []byte) []byte) []byte { return signed(f(body(b))) }
	const hdr = statementHeaderLen
	excluded := func(n int) []byte { // a ROTATE with n excluded keys 1, 2, …
		p := body(rot)[:hdr+28]
		p = append(p, byte(n))
		for i := 1; i <= n; i++ {
			p = append(p, append([]byte{byte(i >> 8), byte(i)}, make([]byte, 30)...)...)
		}
		return signed(p)
	}
	cases := []struct {
		name, reason string
		b            []byte
		admins       []ed25519.PublicKey
		netID        *[16]byte
	}{
		{name: "empty", reason: ReasonMalformed, b: nil},
		{name: "one byte short", reason: ReasonMalformed, b: rev[:len(rev)-1]},
		{name: "shorter than any statement", reason: ReasonMalformed, b: rot[:statementMinLen-1]},
		{name: "byte after the payload", reason: ReasonMalformed, b: edit(rev, func(p []byte) []byte { return append(p, 0) })},
		{name: "over 4096 bytes", reason: ReasonTooLarge, b: append(bytes.Clone(rev), make([]byte, MaxStatementLen)...)},
		{name: "kind 0", reason: ReasonUnknownKind, b: edit(rev, func(p []byte) []byte { p[0] = 0; return p })},
		{name: "kind 3", reason: ReasonUnknownKind, b: edit(rev, func(p []byte) []byte { p[0] = 3; return p })},
		{name: "kind 3, not an admin", reason: ReasonUnknownKind, b: edit(rev, func(p []byte) []byte { p[0] = 3; return p }),
			admins: []ed25519.PublicKey{adminPub(adminN(1))}},
		{name: "REVOKE with a ROTATE payload", reason: ReasonMalformed, b: edit(rot, func(p []byte) []byte { p[0] = 1; return p })},
		{name: "not an admin", reason: ReasonUnknownAdmin, b: rev, admins: []ed25519.PublicKey{adminPub(adminN(1))}},
		{name: "no admins", reason: ReasonUnknownAdmin, b: rev, admins: []ed25519.PublicKey{}},
		{name: "another admin's key in the header", reason: ReasonUnknownAdmin,
			b: edit(rev, func(p []byte) []byte { copy(p[9:], adminPub(adminN(1))); return p })},
		// The admin key is checked before the signature: a forged statement naming a
		// non-admin costs no verification.
		{name: "not an admin, bad signature", reason: ReasonUnknownAdmin,
			b: append(body(rev), make([]byte, 64)...), admins: []ed25519.PublicKey{adminPub(adminN(1))}},
		{name: "signature bit flipped", reason: ReasonBadSignature, b: append(body(rev), flipByte(sig(rev), 3)...)},
		{name: "body bit flipped", reason: ReasonBadSignature, b: append(flipByte(body(rev), 50), sig(rev)...)},
		{name: "issued changed", reason: ReasonBadSignature, b: append(flipByte(body(rot), 1), sig(rot)...)},
		{name: "another network", reason: ReasonBadSignature, b: rev, netID: &[16]byte{1}},
		{name: "signed by another key", reason: ReasonBadSignature, b: resignStatement(rev, adminN(1), netID)},
		{name: "issued 0", reason: ReasonMalformed, b: edit(rev, func(p []byte) []byte { clear(p[1:9]); return p })},
		{name: "revoked key zero", reason: ReasonMalformed, b: edit(rev, func(p []byte) []byte { clear(p[hdr : hdr+32]); return p })},
		{name: "name length beyond the end", reason: ReasonMalformed, b: edit(rev, func(p []byte) []byte { p[hdr+32]++; return p })},
		{name: "name length short of the end", reason: ReasonMalformed, b: edit(rev, func(p []byte) []byte { p[hdr+32]--; return p })},
		{name: "name of 33 bytes", reason: ReasonMalformed, b: edit(rev, func(p []byte) []byte {
			return append(append(p[:hdr+32], 33), strings.Repeat("n", 33)...)
		})},
		{name: "name with a space", reason: ReasonMalformed, b: edit(rev, func(p []byte) []byte { p[hdr+33+1] = ' '; return p })},
		{name: "name not UTF-8", reason: ReasonMalformed, b: edit(rev, func(p []byte) []byte { p[hdr+33] = 0xff; return p })},
		{name: "next seed id zero", reason: ReasonMalformed, b: edit(rot, func(p []byte) []byte { clear(p[hdr : hdr+16]); return p })},
		{name: "switch at 0", reason: ReasonMalformed, b: edit(rot, func(p []byte) []byte { clear(p[hdr+16 : hdr+24]); return p })},
		{name: "switch at 2^40", reason: ReasonMalformed, b: edit(rot, func(p []byte) []byte {
			binary.LittleEndian.PutUint64(p[hdr+16:], 1<<40)
			return p
		})},
		{name: "excluded count beyond the end", reason: ReasonMalformed, b: edit(rot, func(p []byte) []byte { p[hdr+28]++; return p })},
		{name: "excluded count short of the end", reason: ReasonMalformed, b: edit(rot, func(p []byte) []byte { p[hdr+28]--; return p })},
		{name: "65 excluded keys", reason: ReasonTooLarge, b: excluded(65)},
		{name: "255 excluded keys claimed", reason: ReasonTooLarge, b: edit(rot, func(p []byte) []byte { p[hdr+28] = 255; return p })},
		{name: "excluded keys out of order", reason: ReasonMalformed, b: edit(excluded(3), func(p []byte) []byte {
			p[hdr+29+1], p[hdr+29+32+1] = p[hdr+29+32+1], p[hdr+29+1]
			return p
		})},
		{name: "excluded key twice", reason: ReasonMalformed, b: edit(excluded(2), func(p []byte) []byte { p[hdr+29+32+1] = 1; return p })},
		{name: "excluded key zero", reason: ReasonMalformed, b: edit(excluded(1), func(p []byte) []byte { p[hdr+29+1] = 0; return p })},
	}
	// The controls: 64 excluded keys parse, and each case's unaltered source does.
	for _, b := range [][]byte{excluded(MaxExcluded), rev, rot} {
		if _, err := ParseStatement(b, netID, admins); err != nil {
			t.Fatalf("control refused: %v", err)
		}
	}
	for _, c := range cases {
		as, n := admins, netID
		if c.admins != nil {
			as = c.admins
		}
		if c.netID != nil {
			n = *c.netID
		}
		s, err := ParseStatement(c.b, n, as)
		if s != nil || err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if got := StatementReason(err); got != c.reason {
			t.Errorf("%s: refused as %s (%v), want %s", c.name, got, err, c.reason)
		}
	}
}

func flipByte(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 0x10
	return b
}

// Marshal refuses what the parser would.
func TestStatementMarshalRefuses(t *testing.T) {
	netID := NetworkID(testSeed)
	tooMany := testRotate(1)
	tooMany.Rotate.Excluded = make([][32]byte, MaxExcluded+1)
	for i := range tooMany.Rotate.Excluded {
		tooMany.Rotate.Excluded[i][0] = byte(i + 1)
	}
	for name, c := range map[string]struct {
		s   Statement
		err error
	}{
		"no payload":       {Statement{Kind: StatementRevoke, Issued: 1}, ErrStatementMalformed},
		"both payloads":    {Statement{Kind: StatementRotate, Issued: 1, Revoke: &Revocation{Target: [32]byte{1}}, Rotate: testRotate(1).Rotate}, ErrStatementMalformed},
		"revoke with both": {Statement{Kind: StatementRevoke, Issued: 1, Revoke: &Revocation{Target: [32]byte{1}}, Rotate: testRotate(1).Rotate}, ErrStatementMalformed},
		"unknown kind":     {Statement{Kind: 9, Issued: 1}, ErrStatementUnknownKind},
		"issued 0":         {testRevoke(0, [32]byte{1}), ErrStatementMalformed},
		"long name":        {Statement{Kind: StatementRevoke, Issued: 1, Revoke: &Revocation{Target: [32]byte{1}, Name: strings.Repeat("x", 33)}}, ErrStatementMalformed},
		"excluded twice":   {Statement{Kind: StatementRotate, Issued: 1, Rotate: &Rotation{NextSeedID: [16]byte{1}, SwitchAt: 1, Excluded: [][32]byte{{1}, {1}}}}, ErrStatementMalformed},
		"65 excluded":      {tooMany, ErrStatementTooLarge},
		"switch at 2^40":   {Statement{Kind: StatementRotate, Issued: 1, Rotate: &Rotation{NextSeedID: [16]byte{1}, SwitchAt: 1 << 40}}, ErrStatementMalformed},
		"zero next seed":   {Statement{Kind: StatementRotate, Issued: 1, Rotate: &Rotation{SwitchAt: 1}}, ErrStatementMalformed},
		"zero revoke key":  {testRevoke(1, [32]byte{}), ErrStatementMalformed},
	} {
		if _, err := c.s.Marshal(testAdmin(), netID); !errors.Is(err, c.err) {
			t.Errorf("%s: %v, want %v", name, err, c.err)
		}
	}
	short := testRotate(1)
	if _, err := short.Marshal(ed25519.PrivateKey{1, 2}, netID); err == nil {
		t.Error("short admin key accepted")
	}
}

// The largest statement fits its limit with room; none is near 4096 bytes.
func TestStatementBounds(t *testing.T) {
	s := testRotate(1)
	s.Rotate.Excluded = make([][32]byte, MaxExcluded)
	for i := range s.Rotate.Excluded {
		s.Rotate.Excluded[i][0] = byte(i + 1)
	}
	b := mustSign(t, s, testAdmin(), NetworkID(testSeed))
	if want := statementHeaderLen + rotatePayloadMinLen + 32*MaxExcluded + 64; len(b) != want || len(b) > MaxStatementLen {
		t.Errorf("largest ROTATE %d bytes, want %d", len(b), want)
	}
	r := testRevoke(1, [32]byte{1})
	r.Revoke.Name = strings.Repeat("n", MaxNameLen)
	if b := mustSign(t, r, testAdmin(), NetworkID(testSeed)); len(b) != statementHeaderLen+revokePayloadMinLen+MaxNameLen+64 {
		t.Errorf("largest REVOKE %d bytes", len(b))
	}
}

func TestSeedIDDependsOnTheSeed(t *testing.T) {
	a, b := SeedID(testSeed), SeedID(testNextSeed)
	if a == b || a == ([16]byte{}) {
		t.Errorf("seed ids %x %x", a, b)
	}
	if NetworkID(testSeed) == a {
		t.Error("seed id equals the network id: the labels do not separate them")
	}
}

// Parsing allocates only the statement and its fields, whatever the count claims; a
// refusal before the signature allocates no more than its error.
func TestParseStatementAllocations(t *testing.T) {
	netID := NetworkID(testSeed)
	admins := []ed25519.PublicKey{adminPub(testAdmin())}
	s := testRotate(1)
	s.Rotate.Excluded = make([][32]byte, MaxExcluded)
	for i := range s.Rotate.Excluded {
		s.Rotate.Excluded[i][0] = byte(i + 1)
	}
	rot := mustSign(t, s, testAdmin(), netID)
	rev := mustSign(t, testRevoke(1, [32]byte{1}), testAdmin(), netID)
	lying := bytes.Clone(rot[:statementHeaderLen+rotatePayloadMinLen+64])
	lying[statementHeaderLen+28] = MaxExcluded // 64 keys claimed, none there
	for _, c := range []struct {
		name string
		b    []byte
		max  float64
	}{
		{"largest ROTATE", rot, 4},           // statement, rotation, excluded keys, admin key
		{"REVOKE", rev, 4},                   // statement, revocation, name, admin key
		{"count beyond the bytes", lying, 5}, // the error's formatting only (4 with go1.26)
		{"unknown admin", func() []byte { b := bytes.Clone(rev); b[20] ^= 1; return b }(), 0},
	} {
		n := testing.AllocsPerRun(50, func() { ParseStatement(c.b, netID, admins) })
		t.Logf("%s: %v allocations", c.name, n)
		if n > c.max {
			t.Errorf("%s: %v allocations per parse, want ≤ %v", c.name, n, c.max)
		}
	}
	// And in bytes: the 64 keys claimed would be 2 KiB.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		ParseStatement(lying, netID, admins)
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / 100
	t.Logf("count beyond the bytes: %d bytes per parse", per)
	if per > 512 {
		t.Errorf("a count beyond the bytes costs %d bytes per parse", per)
	}
}
