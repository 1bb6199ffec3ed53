package mesh

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"slices"
	"testing"
	"time"
)

// stmtFixture signs statements of two admins for the golden network.
type stmtFixture struct {
	t      *testing.T
	netID  [16]byte
	a, b   ed25519.PrivateKey
	admins []ed25519.PublicKey
}

func newStmtFixture(t *testing.T) *stmtFixture {
	a, b := testAdmin(), adminN(1)
	return &stmtFixture{t: t, netID: NetworkID(testSeed), a: a, b: b, admins: []ed25519.PublicKey{adminPub(a), adminPub(b)}}
}

func (f *stmtFixture) store(max int) *StatementStore {
	return NewStatementStore(f.netID, f.admins, max)
}

// at is the issued time of a statement made d after testNow.
func issuedAt(d time.Duration) uint64 { return uint64(testNow.Add(d).UnixNano()) }

func (f *stmtFixture) revoke(admin ed25519.PrivateKey, issued uint64, target byte) []byte {
	return mustSign(f.t, testRevoke(issued, [32]byte{target}), admin, f.netID)
}

func (f *stmtFixture) rotate(admin ed25519.PrivateKey, issued uint64, next byte) []byte {
	s := testRotate(issued)
	s.Rotate.NextSeedID = [16]byte{next}
	return mustSign(f.t, s, admin, f.netID)
}

func offerStatement(t *testing.T, s *StatementStore, raw []byte, now time.Time, want string) {
	t.Helper()
	ok, reason := s.Offer(raw, now)
	if reason != want || ok != (want == ReasonAccepted) {
		t.Fatalf("Offer: %v %s, want %s", ok, reason, want)
	}
}

// Per (admin, REVOKE, target) only the newest is kept: the same statement twice and an
// older one after a newer are stale; other targets and other admins are independent.
func TestStatementStoreRefusesReplayAndOlderRevocations(t *testing.T) {
	f := newStmtFixture(t)
	s := f.store(0)
	newer, older := f.revoke(f.a, issuedAt(2*time.Second), 1), f.revoke(f.a, issuedAt(time.Second), 1)
	offerStatement(t, s, newer, testNow, ReasonAccepted)
	offerStatement(t, s, newer, testNow, ReasonStale)                             // replay
	offerStatement(t, s, bytes.Clone(newer), testNow.Add(time.Hour), ReasonStale) // replay, later
	offerStatement(t, s, older, testNow, ReasonStale)                             // reordered
	offerStatement(t, s, f.revoke(f.a, issuedAt(time.Second), 2), testNow, ReasonAccepted)
	offerStatement(t, s, f.revoke(f.b, issuedAt(time.Second), 1), testNow, ReasonAccepted) // another admin, older: its own
	offerStatement(t, s, f.revoke(f.a, issuedAt(3*time.Second), 1), testNow, ReasonAccepted)
	if s.Len() != 3 {
		t.Errorf("%d statements held, want 3", s.Len())
	}
	for k, want := range map[byte]bool{1: true, 2: true, 3: false} {
		if s.Revoked([32]byte{k}) != want {
			t.Errorf("Revoked(%d) = %v", k, !want)
		}
	}
	var listed []string
	for _, r := range s.Revocations() {
		listed = append(listed, fmt.Sprintf("%d by %x at %d", r.Revoke.Target[0], r.Admin[:2], r.Issued))
	}
	// Sorted by target, then admin key; each target's newest only.
	want := []string{fmt.Sprintf("1 by %x at %d", adminPub(f.a)[:2], issuedAt(3*time.Second)),
		fmt.Sprintf("1 by %x at %d", adminPub(f.b)[:2], issuedAt(time.Second)),
		fmt.Sprintf("2 by %x at %d", adminPub(f.a)[:2], issuedAt(time.Second))}
	if bytes.Compare(adminPub(f.a), adminPub(f.b)) > 0 {
		want[0], want[1] = want[1], want[0]
	}
	if !slices.Equal(listed, want) {
		t.Errorf("revocations %q, want %q", listed, want)
	}
	if s.Count(ReasonStale) != 3 || s.Count(ReasonAccepted) != 4 {
		t.Errorf("counted %d stale, %d accepted", s.Count(ReasonStale), s.Count(ReasonAccepted))
	}
}

// Per admin one ROTATE is kept, the newest; Rotation is the newest of all admins.
func TestStatementStoreKeepsTheNewestRotation(t *testing.T) {
	f := newStmtFixture(t)
	s := f.store(0)
	if s.Rotation() != nil {
		t.Fatal("rotation in an empty store")
	}
	offerStatement(t, s, f.rotate(f.a, issuedAt(time.Second), 1), testNow, ReasonAccepted)
	offerStatement(t, s, f.rotate(f.b, issuedAt(3*time.Second), 3), testNow, ReasonAccepted)
	offerStatement(t, s, f.rotate(f.a, issuedAt(2*time.Second), 2), testNow, ReasonAccepted) // newer than a's, older than b's
	if r := s.Rotation(); r == nil || r.NextSeedID[0] != 3 {
		t.Fatalf("rotation %+v, want b's (3)", r)
	}
	offerStatement(t, s, f.rotate(f.a, issuedAt(time.Second), 1), testNow, ReasonStale)
	offerStatement(t, s, f.rotate(f.a, issuedAt(4*time.Second), 4), testNow, ReasonAccepted)
	if r := s.Rotation(); r == nil || r.NextSeedID[0] != 4 {
		t.Fatalf("rotation %+v, want a's newest (4)", r)
	}
	if st, raw := s.RotationStatement(); st == nil || !bytes.Equal(st.Admin, adminPub(f.a)) || len(raw) == 0 {
		t.Errorf("rotation statement %+v", st)
	}
	if s.Len() != 2 {
		t.Errorf("%d statements held, want one per admin", s.Len())
	}
}

// Two statements of one admin and target with the same Issued: every store keeps the
// same one, whatever order they come in, so that summaries converge.
func TestStatementStoreTieBreakIsOrderIndependent(t *testing.T) {
	f := newStmtFixture(t)
	x, y := f.rotate(f.a, issuedAt(0), 1), f.rotate(f.a, issuedAt(0), 2)
	s1, s2 := f.store(0), f.store(0)
	s1.Offer(x, testNow)
	s1.Offer(y, testNow)
	s2.Offer(y, testNow)
	s2.Offer(x, testNow)
	c1, h1 := s1.Summary()
	c2, h2 := s2.Summary()
	if c1 != 1 || c1 != c2 || h1 != h2 || s1.Rotation().NextSeedID != s2.Rotation().NextSeedID {
		t.Errorf("stores differ: %d %x, %d %x", c1, h1, c2, h2)
	}
}

// Refusals of the parser reach the store's counts; the store keeps nothing of them.
func TestStatementStoreCountsRefusals(t *testing.T) {
	f := newStmtFixture(t)
	s := NewStatementStore(f.netID, f.admins[1:], 0) // a is not an admin here
	good := f.revoke(f.b, issuedAt(0), 1)
	offerStatement(t, s, f.revoke(f.a, issuedAt(0), 1), testNow, ReasonUnknownAdmin)
	offerStatement(t, s, flipByte(good, len(good)-1), testNow, ReasonBadSignature)
	offerStatement(t, s, good[:40], testNow, ReasonMalformed)
	offerStatement(t, s, make([]byte, MaxStatementLen+1), testNow, ReasonTooLarge)
	bad := bytes.Clone(good)
	bad[0] = 7
	offerStatement(t, s, bad, testNow, ReasonUnknownKind)
	other := NewStatementStore([16]byte{1}, f.admins, 0)
	offerStatement(t, other, good, testNow, ReasonBadSignature) // another network
	if s.Len() != 0 || s.Revoked([32]byte{1}) {
		t.Fatal("a refused statement was kept")
	}
	for _, r := range []string{ReasonUnknownAdmin, ReasonBadSignature, ReasonMalformed, ReasonTooLarge, ReasonUnknownKind} {
		if s.Count(r) != 1 {
			t.Errorf("%s counted %d times", r, s.Count(r))
		}
	}
	offerStatement(t, s, good, testNow, ReasonAccepted)
}

// A statement issued beyond the clock skew is refused, and taken when offered again once
// the receiver's clock has caught up.
func TestStatementStoreRefusesFutureUntilItIsDue(t *testing.T) {
	f := newStmtFixture(t)
	s := f.store(0)
	ahead := f.revoke(f.a, issuedAt(MaxClockSkew+time.Second), 1)
	offerStatement(t, s, ahead, testNow, ReasonFuture)
	offerStatement(t, s, f.revoke(f.a, issuedAt(MaxClockSkew), 2), testNow, ReasonAccepted) // within the skew
	offerStatement(t, s, ahead, testNow.Add(time.Second), ReasonAccepted)
	huge := mustSign(t, testRevoke(1<<63, [32]byte{3}), f.a, f.netID) // beyond int64 nanoseconds
	offerStatement(t, s, huge, testNow.Add(100*365*24*time.Hour), ReasonFuture)
}

// The store holds at most its bound and then refuses new statements (it never evicts:
// that would lift a revocation), while newer versions of those held are still taken.
func TestStatementStoreBound(t *testing.T) {
	f := newStmtFixture(t)
	s := f.store(3)
	for i := byte(1); i <= 3; i++ {
		offerStatement(t, s, f.revoke(f.a, issuedAt(0), i), testNow, ReasonAccepted)
	}
	offerStatement(t, s, f.revoke(f.a, issuedAt(0), 4), testNow, ReasonFull)
	offerStatement(t, s, f.rotate(f.a, issuedAt(0), 1), testNow, ReasonFull)
	offerStatement(t, s, f.revoke(f.a, issuedAt(time.Second), 2), testNow, ReasonAccepted) // replaces one held
	if s.Len() != 3 || s.Revoked([32]byte{4}) || !s.Revoked([32]byte{1}) {
		t.Errorf("len %d", s.Len())
	}
	if d := NewStatementStore(f.netID, f.admins, 0); d.max != DefaultMaxStatements || DefaultMaxStatements != 4096 {
		t.Errorf("default bound %d", d.max)
	}
}

// All and Summary do not depend on the order statements came in, and All restores a
// store: what the node persists and gossips.
func TestStatementStoreAllAndSummary(t *testing.T) {
	f := newStmtFixture(t)
	raws := [][]byte{f.revoke(f.a, issuedAt(0), 1), f.revoke(f.b, issuedAt(0), 1), f.rotate(f.a, issuedAt(0), 1),
		f.revoke(f.a, issuedAt(time.Second), 2), f.rotate(f.b, issuedAt(time.Second), 2)}
	s1, s2 := f.store(0), f.store(0)
	if c, h := s1.Summary(); c != 0 || h != SummaryOfStatements(nil).Hash {
		t.Errorf("empty summary %d %x", c, h)
	}
	for i := range raws {
		s1.Offer(raws[i], testNow)
		s2.Offer(raws[len(raws)-1-i], testNow)
	}
	c1, h1 := s1.Summary()
	c2, h2 := s2.Summary()
	if c1 != 5 || c1 != c2 || h1 != h2 {
		t.Fatalf("summaries %d %x, %d %x", c1, h1, c2, h2)
	}
	all := s1.All()
	if !slices.IsSortedFunc(all, bytes.Compare) || len(all) != 5 {
		t.Fatalf("All: %d, sorted %v", len(all), slices.IsSortedFunc(all, bytes.Compare))
	}
	s3 := f.store(0)
	for _, r := range all {
		offerStatement(t, s3, r, testNow, ReasonAccepted)
	}
	if c3, h3 := s3.Summary(); c3 != c1 || h3 != h1 || !s3.Revoked([32]byte{2}) || s3.Rotation().NextSeedID[0] != 2 {
		t.Error("a store restored from All differs")
	}
	// A change changes the summary.
	s3.Offer(f.revoke(f.b, issuedAt(time.Second), 1), testNow)
	if c3, h3 := s3.Summary(); c3 != c1 || h3 == h1 {
		t.Error("replacing a statement left the summary unchanged")
	}
	// The store copies what it keeps.
	r := f.revoke(f.a, issuedAt(time.Minute), 9)
	s1.Offer(r, testNow)
	r[0] = 0xff
	for _, b := range s1.All() {
		if b[0] == 0xff {
			t.Fatal("the store kept the caller's slice")
		}
	}
}

// Refusing a duplicate (the common case in a flood) costs no signature check and no
// allocation.
func TestStatementStoreDuplicateIsCheap(t *testing.T) {
	f := newStmtFixture(t)
	s := f.store(0)
	raw := f.revoke(f.a, issuedAt(0), 1)
	s.Offer(raw, testNow)
	if n := testing.AllocsPerRun(100, func() { s.Offer(raw, testNow) }); n != 0 {
		t.Errorf("%v allocations per duplicate", n)
	}
	// The duplicate is refused from the header: a copy with a broken signature that
	// would lose the tie-break is stale too, not bad_signature.
	lower := bytes.Clone(raw)
	i := len(lower) - 1
	for lower[i] == 0 {
		i--
	}
	lower[i]--
	offerStatement(t, s, lower, testNow, ReasonStale)
}

func TestStatementReasonsAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range StatementReasons {
		if seen[r] || r == "" {
			t.Errorf("reason %q twice or empty", r)
		}
		seen[r] = true
	}
	for _, err := range []error{ErrStatementMalformed, ErrStatementTooLarge, ErrStatementUnknownKind,
		ErrStatementUnknownAdmin, ErrStatementSignature, fmt.Errorf("%w: x", ErrStatementTooLarge)} {
		if !seen[StatementReason(err)] || StatementReason(err) == ReasonAccepted {
			t.Errorf("%v: reason %q", err, StatementReason(err))
		}
	}
}
