package mesh

// statement_store.go keeps the signed statements a node has accepted: per (admin, kind,
// target) only the newest, where the target is the revoked key of a REVOKE and nothing
// for a ROTATE. Statements do not expire: a revocation is permanent, and a rotation is
// kept after its effect ends so that a member that was away still learns it. The store
// is bounded and never evicts (that would lift a revocation): when full it refuses.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"time"
)

// DefaultMaxStatements bounds the number of statements a store holds.
const DefaultMaxStatements = 4096

type statementKey struct {
	admin  [32]byte
	kind   StatementKind
	target [32]byte // the revoked key of a REVOKE; zero for a ROTATE
}

type statementEntry struct {
	st  *Statement
	raw []byte
}

// StatementStore holds verified statements of the configured admins. It is not safe for
// concurrent use.
type StatementStore struct {
	netID   [16]byte
	admins  []ed25519.PublicKey
	max     int
	m       map[statementKey]*statementEntry
	revoked map[[32]byte]struct{} // targets of every REVOKE held; only grows
	rot     *statementEntry       // the newest ROTATE held
	counts  map[string]uint64
	sorted  [][]byte // raw statements sorted bytewise; nil when stale
	sum     Summary
}

// NewStatementStore returns an empty store for the network netID obeying the admin keys
// admins (copied), holding at most max statements (DefaultMaxStatements if max <= 0).
func NewStatementStore(netID [16]byte, admins []ed25519.PublicKey, max int) *StatementStore {
	if max <= 0 {
		max = DefaultMaxStatements
	}
	as := make([]ed25519.PublicKey, len(admins))
	for i, a := range admins {
		as[i] = bytes.Clone(a)
	}
	counts := make(map[string]uint64, len(StatementReasons))
	for _, r := range StatementReasons {
		counts[r] = 0
	}
	return &StatementStore{netID: netID, admins: as, max: max, m: make(map[statementKey]*statementEntry),
		revoked: make(map[[32]byte]struct{}), counts: counts}
}

// newer reports whether the statement (issued, raw) replaces e: a later Issued, or the
// same Issued and bytes that compare higher, so that every node keeps the same one of two
// statements an admin signed in the same nanosecond, whatever order they arrive in.
func (e *statementEntry) newer(issued uint64, raw []byte) bool {
	if issued != e.st.Issued {
		return issued > e.st.Issued
	}
	return bytes.Compare(raw, e.raw) > 0
}

// peekKey reads the store key and issued time of raw from its header, unverified, or
// reports false when raw is too short or of an unknown kind (the parser says why).
func peekKey(raw []byte) (statementKey, uint64, bool) {
	var k statementKey
	if len(raw) < statementMinLen || len(raw) > MaxStatementLen {
		return k, 0, false
	}
	k.kind = StatementKind(raw[0])
	k.admin = [32]byte(raw[9:statementHeaderLen])
	switch k.kind {
	case StatementRevoke:
		k.target = [32]byte(raw[statementHeaderLen:])
	case StatementRotate:
	default:
		return k, 0, false
	}
	return k, binary.LittleEndian.Uint64(raw[1:9]), true
}

// Offer offers the statement raw at time now and says whether it was stored and, either
// way, why (one of StatementReasons). A statement is refused when ParseStatement refuses
// it, when it is not newer than the one held for its (admin, kind, target) (stale: checked
// from the header before the signature, since most offers are duplicates of a flood),
// when it was issued more than MaxClockSkew after now (future; it is taken when offered
// again later), or when it is new and the store is full. raw is copied when stored.
func (s *StatementStore) Offer(raw []byte, now time.Time) (accepted bool, reason string) {
	return s.offer(raw, now, true)
}

// restore is Offer for a statement this node held already (its statements file, or its
// store when the admin keys change): it is not checked against the clock again. A node
// whose clock is behind (booted without a real-time clock, before NTP) must not lift
// the revocations it held, nor drop them from its file.
func (s *StatementStore) restore(raw []byte, now time.Time) (accepted bool, reason string) {
	return s.offer(raw, now, false)
}

func (s *StatementStore) offer(raw []byte, now time.Time, checkClock bool) (accepted bool, reason string) {
	if k, issued, ok := peekKey(raw); ok {
		if e := s.m[k]; e != nil && !e.newer(issued, raw) {
			return s.count(ReasonStale)
		}
	}
	// This is the only staleness check: a statement that parses always has a key.
	st, err := ParseStatement(raw, s.netID, s.admins)
	if err != nil {
		return s.count(StatementReason(err))
	}
	if int64(st.Issued) < 0 || checkClock && time.Unix(0, int64(st.Issued)).After(now.Add(MaxClockSkew)) {
		return s.count(ReasonFuture)
	}
	k, _, _ := peekKey(raw)
	e := s.m[k]
	if e == nil && len(s.m) >= s.max {
		return s.count(ReasonFull)
	}
	if e == nil {
		e = &statementEntry{}
		s.m[k] = e
	}
	e.st, e.raw = st, bytes.Clone(raw)
	switch st.Kind {
	case StatementRevoke:
		s.revoked[st.Revoke.Target] = struct{}{}
	case StatementRotate:
		if s.rot == nil || s.rot.newer(st.Issued, e.raw) {
			s.rot = &statementEntry{st: st, raw: e.raw}
		}
	}
	s.sorted = nil
	s.counts[ReasonAccepted]++
	return true, ReasonAccepted
}

func (s *StatementStore) count(reason string) (bool, string) {
	s.counts[reason]++
	return false, reason
}

// Revoked reports whether a statement held revokes the X25519 key key.
func (s *StatementStore) Revoked(key [32]byte) bool {
	_, ok := s.revoked[key]
	return ok
}

// Rotation returns the rotation of the newest ROTATE held (by Issued, of any admin), or
// nil. It is shared and must not be modified.
func (s *StatementStore) Rotation() *Rotation {
	if s.rot == nil {
		return nil
	}
	return s.rot.st.Rotate
}

// RotationStatement returns the newest ROTATE held and its bytes, or nil.
func (s *StatementStore) RotationStatement() (*Statement, []byte) {
	if s.rot == nil {
		return nil, nil
	}
	return s.rot.st, s.rot.raw
}

// Revocations returns every REVOKE held, sorted by revoked key, then admin key: what
// status shows. The statements are shared and must not be modified.
func (s *StatementStore) Revocations() []*Statement {
	var out []*Statement
	for _, e := range s.m {
		if e.st.Kind == StatementRevoke {
			out = append(out, e.st)
		}
	}
	slices.SortFunc(out, func(a, b *Statement) int {
		if c := compareKeys(&a.Revoke.Target, &b.Revoke.Target); c != 0 {
			return c
		}
		return bytes.Compare(a.Admin, b.Admin)
	})
	return out
}

// Len is the number of statements held.
func (s *StatementStore) Len() int { return len(s.m) }

func (s *StatementStore) sortedRaw() [][]byte {
	if s.sorted == nil {
		s.sorted = make([][]byte, 0, len(s.m))
		for _, e := range s.m {
			s.sorted = append(s.sorted, e.raw)
		}
		slices.SortFunc(s.sorted, bytes.Compare)
		s.sum = SummaryOfStatements(s.sorted)
	}
	return s.sorted
}

// All returns the bytes of every statement held, sorted bytewise: to gossip them and to
// persist them (offering them to an empty store restores it). The byte slices are the
// store's and must not be modified.
func (s *StatementStore) All() [][]byte {
	return slices.Clone(s.sortedRaw())
}

// Summary returns how many statements are held and the hash of SummaryOfStatements.
func (s *StatementStore) Summary() (count uint32, hash [16]byte) {
	s.sortedRaw()
	return s.sum.Count, s.sum.Hash
}

// SummaryOfStatements computes the summary of raw statements sorted bytewise: their
// count, and SHA-256 over each one's length (u16 LE) and bytes, cut to 16 bytes.
func SummaryOfStatements(sorted [][]byte) Summary {
	h := sha256.New()
	var l [2]byte
	for _, r := range sorted {
		binary.LittleEndian.PutUint16(l[:], uint16(len(r)))
		h.Write(l[:])
		h.Write(r)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return Summary{Count: uint32(len(sorted)), Hash: [16]byte(sum[:16])}
}

// Count returns how many offers ended with reason so far.
func (s *StatementStore) Count(reason string) uint64 { return s.counts[reason] }
