package mesh

import (
	"bytes"
	"crypto/ed25519"
	"slices"
	"testing"
	"time"
)

// FuzzParseStatement: no panic; the layout is canonical (what decodes re-encodes to the
// same bytes); a statement that verifies is exactly what its admin signs; every refusal
// has a counting reason.
func FuzzParseStatement(f *testing.F) {
	rev, rot := goldenBytes(f, goldenRevoke), goldenBytes(f, goldenRotate)
	f.Add(rev)
	f.Add(rot)
	f.Add(rev[:len(rev)-1])
	f.Add(rot[:statementMinLen])
	f.Add(append(bytes.Clone(rot), 0))
	f.Add(make([]byte, MaxStatementLen+1))
	many := bytes.Clone(rot)
	many[statementHeaderLen+28] = 255
	f.Add(many)
	netID := NetworkID(testSeed)
	admin := testAdmin()
	admins := []ed25519.PublicKey{adminPub(adminN(1)), adminPub(admin)}
	known := map[string]bool{}
	for _, r := range StatementReasons {
		known[r] = true
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if st, body, err := decodeStatement(b, admins); err == nil {
			if !bytes.Equal(appendStatementBody(nil, st), body) {
				t.Fatalf("layout not canonical: %x", b)
			}
			if len(b) > MaxStatementLen {
				t.Fatal("oversize statement decoded")
			}
		}
		st, err := ParseStatement(b, netID, admins)
		if err != nil {
			if r := StatementReason(err); !known[r] || r == ReasonAccepted || st != nil {
				t.Fatalf("refusal %v with reason %q", err, r)
			}
			return
		}
		// Only the admin could have signed it: it is what signing its content gives.
		again := *st
		if bytes.Equal(st.Admin, adminPub(admin)) {
			if m, err := again.Marshal(admin, netID); err != nil || !bytes.Equal(m, b) {
				t.Fatalf("parsed statement does not re-sign to its bytes: %v", err)
			}
		}
	})
}

// FuzzStatementStore offers a store sequences of genuine, forged and mutated statements
// at advancing times and checks it against a model: it takes exactly the statements the
// model says (genuine, of an admin, not from the future, newest per (admin, kind,
// target), within the bound), and Revoked, Rotation, All and Summary agree with it.
func FuzzStatementStore(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})
	f.Add([]byte{11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0})
	f.Add([]byte{0x45, 0x85, 3, 0x40, 0x40, 12, 13, 12})
	netID := NetworkID(testSeed)
	a, b, outsider := testAdmin(), adminN(1), adminN(2)
	admins := []ed25519.PublicKey{adminPub(a), adminPub(b)}
	sign := func(s Statement, k ed25519.PrivateKey) []byte {
		raw, err := s.Marshal(k, netID)
		if err != nil {
			f.Fatal(err)
		}
		return raw
	}
	rotateTo := func(issued uint64, next byte) Statement {
		s := testRotate(issued)
		s.Rotate.NextSeedID = [16]byte{next}
		return s
	}
	type item struct {
		raw     []byte
		genuine bool // signed by an admin
	}
	pool := []item{
		{sign(testRevoke(issuedAt(time.Second), [32]byte{1}), a), true},
		{sign(testRevoke(issuedAt(2*time.Second), [32]byte{1}), a), true},
		{sign(testRevoke(issuedAt(time.Second), [32]byte{2}), a), true},
		{sign(testRevoke(issuedAt(time.Second), [32]byte{1}), b), true},
		{sign(rotateTo(issuedAt(time.Second), 1), a), true},
		{sign(rotateTo(issuedAt(2*time.Second), 2), a), true},
		{sign(rotateTo(issuedAt(2*time.Second), 3), a), true}, // same Issued as the one before
		{sign(rotateTo(issuedAt(time.Second), 4), b), true},
		{sign(rotateTo(issuedAt(3*time.Second), 5), b), true},
		{sign(testRevoke(issuedAt(20*time.Minute), [32]byte{3}), a), true}, // future until now moves on
		{sign(testRevoke(issuedAt(time.Second), [32]byte{4}), outsider), false},
		{sign(rotateTo(issuedAt(time.Second), 6), outsider), false},
		{sign(testRevoke(issuedAt(time.Second), [32]byte{5}), b), true},
		{sign(testRevoke(issuedAt(time.Second), [32]byte{6}), b), true},
	}
	const max = 6
	f.Fuzz(func(t *testing.T, ops []byte) {
		s := NewStatementStore(netID, admins, max)
		type held struct {
			issued uint64
			raw    []byte
		}
		model := map[statementKey]held{}
		now := testNow
		for i := 0; i < len(ops) && i < 64; i++ {
			op := ops[i]
			if op&0x40 != 0 {
				now = now.Add(10 * time.Minute)
			}
			it := pool[int(op&0x3f)%len(pool)]
			raw, genuine := it.raw, it.genuine
			if op&0x80 != 0 && i+1 < len(ops) { // a mutated copy: every byte is signed
				i++
				raw = bytes.Clone(raw)
				raw[int(ops[i])%len(raw)] ^= 1 << (ops[i] % 8)
				genuine = false
			}
			want := false
			k, issued, _ := peekKey(raw)
			if genuine && time.Unix(0, int64(issued)).Before(now.Add(MaxClockSkew+1)) {
				h, ok := model[k]
				switch {
				case !ok:
					want = len(model) < max
				case issued != h.issued:
					want = issued > h.issued
				default:
					want = bytes.Compare(raw, h.raw) > 0
				}
			}
			got, reason := s.Offer(raw, now)
			if got != want {
				t.Fatalf("op %d: offer %x: got %v (%s), model says %v", i, raw[:9], got, reason, want)
			}
			if want {
				model[k] = held{issued, raw}
			}
		}
		// The store agrees with the model.
		var raws [][]byte
		var newest *held
		for k, h := range model {
			raws = append(raws, h.raw)
			if k.kind == StatementRotate && (newest == nil || h.issued > newest.issued ||
				h.issued == newest.issued && bytes.Compare(h.raw, newest.raw) > 0) {
				newest = &h
			}
		}
		slices.SortFunc(raws, bytes.Compare)
		if all := s.All(); !slices.EqualFunc(all, raws, bytes.Equal) {
			t.Fatalf("All: %d statements, model %d", len(all), len(raws))
		}
		if c, h := s.Summary(); c != uint32(len(raws)) || h != SummaryOfStatements(raws).Hash || s.Len() > max {
			t.Fatalf("summary %d %x", c, h)
		}
		for target := byte(1); target <= 6; target++ {
			want := false
			for k := range model {
				want = want || k.kind == StatementRevoke && k.target == [32]byte{target}
			}
			if s.Revoked([32]byte{target}) != want {
				t.Fatalf("Revoked(%d) = %v, model %v", target, !want, want)
			}
		}
		switch r := s.Rotation(); {
		case newest == nil && r != nil, newest != nil && r == nil:
			t.Fatalf("rotation %v, model %v", r, newest)
		case newest != nil:
			if _, raw := s.RotationStatement(); !bytes.Equal(raw, newest.raw) {
				t.Fatal("rotation is not the model's newest")
			}
		}
	})
}
